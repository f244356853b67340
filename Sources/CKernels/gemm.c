// oneDNN GEMMs. fp32 goes through dnnl_sgemm (row-major, AVX-512 kernels). bf16 has no
// BLAS-style entry point in oneDNN 2.x, so a matmul primitive is built per shape, strides,
// beta and destination (fp32, or bf16 with a bias) and kept in a small cache: creating one
// costs far more than running it.
//
// The cache, its memory objects and the stream are per thread: tessera_parallel_tasks runs
// GEMMs from several OpenMP threads at once, and with Debian's oneDNN (built with
// DNNL_ENABLE_CONCURRENT_EXEC=OFF) a primitive must run on the thread that created it.
#include "ckernels.h"
#include <dnnl.h>
// OpenMP runtime (libgomp, which Debian's oneDNN uses); declared here so clang needs no omp.h.
extern void omp_set_num_threads(int);
extern int omp_get_max_threads(void);
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

int tessera_sgemm(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                  const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    return dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) == dnnl_success ? 0 : 1;
}

void tessera_set_threads(int n) { omp_set_num_threads(n > 0 ? n : 1); }
int tessera_get_threads(void) { return omp_get_max_threads(); }

// MARK: bf16 matmul primitives

typedef struct {
    int64_t key[11];
    dnnl_primitive_t prim;
    dnnl_memory_t a, b, c, bias;   // bias is NULL for a product without one
} cached_matmul;

#define CACHE_SIZE 64
static _Thread_local cached_matmul cache[CACHE_SIZE];
static _Thread_local int cache_used = 0, cache_next = 0;
static _Thread_local dnnl_stream_t stream = NULL;
static dnnl_engine_t engine = NULL;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;

static void create_engine(void) {
    if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success) engine = NULL;
}

static int ensure_engine(void) {
    pthread_once(&engine_once, create_engine);
    if (!engine) return 1;
    if (stream) return 0;
    return dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success;
}

// A (m×k) row-major with leading dimension lda, optionally given transposed (stored k×m).
static int md_2d(dnnl_memory_desc_t *md, int64_t rows, int64_t cols, int64_t ld, int trans, dnnl_data_type_t dt) {
    dnnl_dims_t dims = {rows, cols};
    dnnl_dims_t strides;
    if (trans) { strides[0] = 1; strides[1] = ld; } else { strides[0] = ld; strides[1] = 1; }
    return dnnl_memory_desc_init_by_strides(md, 2, dims, dt, strides) != dnnl_success;
}

// A product with an fp32 destination (C += beta·C as a sum post-op), or a bf16 one
// (`rounded`, beta 0) with an optional fp32 bias row added before the rounding.
static cached_matmul *lookup(int ta, int tb, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
                             float beta, int rounded, int bias) {
    int32_t beta_bits; memcpy(&beta_bits, &beta, 4);
    int64_t key[11] = {ta, tb, m, n, k, lda, ldb, ldc, beta_bits, rounded, bias};
    for (int i = 0; i < cache_used; i++)
        if (memcmp(cache[i].key, key, sizeof key) == 0) return &cache[i];
    dnnl_memory_desc_t amd, bmd, cmd, biasmd;
    if (md_2d(&amd, m, k, lda, ta, dnnl_bf16) || md_2d(&bmd, k, n, ldb, tb, dnnl_bf16) ||
        md_2d(&cmd, m, n, ldc, 0, rounded ? dnnl_bf16 : dnnl_f32) || md_2d(&biasmd, 1, n, n, 0, dnnl_f32))
        return NULL;
    dnnl_matmul_desc_t desc;
    if (dnnl_matmul_desc_init(&desc, &amd, &bmd, bias ? &biasmd : NULL, &cmd) != dnnl_success) return NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t ops = NULL;
    dnnl_primitive_attr_create(&attr);
    if (beta != 0.0f) {
        // C += A·B: a sum post-op with scale beta accumulates into the destination.
        dnnl_post_ops_create(&ops);
        dnnl_post_ops_append_sum(ops, beta);
        dnnl_primitive_attr_set_post_ops(attr, ops);
    }
    dnnl_primitive_desc_t pd;
    dnnl_status_t st = dnnl_primitive_desc_create(&pd, &desc, attr, engine, NULL);
    if (ops) dnnl_post_ops_destroy(ops);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success) return NULL;
    cached_matmul *slot;
    if (cache_used < CACHE_SIZE) slot = &cache[cache_used++];
    else {
        slot = &cache[cache_next];
        cache_next = (cache_next + 1) % CACHE_SIZE;
        dnnl_primitive_destroy(slot->prim);
        dnnl_memory_destroy(slot->a); dnnl_memory_destroy(slot->b); dnnl_memory_destroy(slot->c);
        if (slot->bias) dnnl_memory_destroy(slot->bias);
    }
    memcpy(slot->key, key, sizeof key);
    if (dnnl_primitive_create(&slot->prim, pd) != dnnl_success) { dnnl_primitive_desc_destroy(pd); return NULL; }
    dnnl_primitive_desc_destroy(pd);
    dnnl_memory_create(&slot->a, &amd, engine, DNNL_MEMORY_NONE);
    dnnl_memory_create(&slot->b, &bmd, engine, DNNL_MEMORY_NONE);
    dnnl_memory_create(&slot->c, &cmd, engine, DNNL_MEMORY_NONE);
    slot->bias = NULL;
    if (bias) dnnl_memory_create(&slot->bias, &biasmd, engine, DNNL_MEMORY_NONE);
    return slot;
}

static int run(cached_matmul *mm, const void *a, const void *b, const float *bias, void *c) {
    dnnl_memory_set_data_handle(mm->a, (void *)a);
    dnnl_memory_set_data_handle(mm->b, (void *)b);
    dnnl_memory_set_data_handle(mm->c, c);
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, mm->a}, {DNNL_ARG_WEIGHTS, mm->b}, {DNNL_ARG_DST, mm->c}};
    int count = 3;
    if (mm->bias) {
        dnnl_memory_set_data_handle(mm->bias, (void *)bias);
        args[count++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, mm->bias};
    }
    if (dnnl_primitive_execute(mm->prim, stream, count, args) != dnnl_success) return 3;
    return dnnl_stream_wait(stream) == dnnl_success ? 0 : 4;
}

int tessera_bf16_gemm(int ta, int tb, int64_t m, int64_t n, int64_t k,
                      const uint16_t *a, int64_t lda, const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    if (ensure_engine()) return 1;
    cached_matmul *mm = lookup(ta, tb, m, n, k, lda, ldb, ldc, beta, 0, 0);
    if (!mm) return 2;
    return run(mm, a, b, NULL, c);
}

int tessera_bf16_gemm_rounded(int ta, int tb, int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                              const uint16_t *b, int64_t ldb, const float *bias, uint16_t *c, int64_t ldc) {
    if (ensure_engine()) return 1;
    cached_matmul *mm = lookup(ta, tb, m, n, k, lda, ldb, ldc, 0.0f, 1, bias != NULL);
    if (!mm) return 2;
    return run(mm, a, b, bias, c);
}
