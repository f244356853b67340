// Open MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, ...) are macros over addresses of global
// structs, which Swift cannot import; these getters expose them as plain values.
#include <mpi.h>

static inline MPI_Comm tessera_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype tessera_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype tessera_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype tessera_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype tessera_mpi_uint16(void) { return MPI_UINT16_T; }
static inline MPI_Datatype tessera_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Op tessera_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op tessera_mpi_max(void) { return MPI_MAX; }
static inline MPI_Request tessera_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline void *tessera_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Status *tessera_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Info tessera_mpi_info_null(void) { return MPI_INFO_NULL; }
static inline int tessera_mpi_comm_type_shared(void) { return MPI_COMM_TYPE_SHARED; }
