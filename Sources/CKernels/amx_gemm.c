// bf16 block products on AMX tiles (Intel Sapphire Rapids on): the attention kernel's blocks
// (64–128 rows, columns and depth). oneDNN's matmul runs them on the same tiles, but each call
// pays for a primitive execution and a stream, and for a transposed operand its own copy; on
// a Xeon family 6 model 207 that cost was most of a block's time (64×64×64: 1.8 µs a call).
//
// Its order: each element of C summed by tdpbf16ps over the depth 32 elements (16 pairs) at a
// time, in order, into one accumulator that starts at C (beta = 1) or at zero, the odd depth
// and the last chunk padded with zeros. That is the order of oneDNN's AMX brgemm on the blocks
// attention runs at head size 64, with the strides they have there, so those bits are
// oneDNN's (checked against its matmul in the tests, and by the golden trajectories); on other
// shapes and strides oneDNN 2.6 picks other code, and the kernel keeps its own order.
//
// Linux grants a process the tiles' 8 KiB of register state only when it asks
// (arch_prctl ARCH_REQ_XCOMP_PERM); oneDNN asks before it runs AMX code, and so does this file.
#include "ckernels.h"
#include "pairs.h"
#include <immintrin.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX_ATTR __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

// Tiles 0–3 hold a 32×32 block of C (16×16 each, [rows][columns] as 0 1 / 2 3), 4–5 two
// 16-row strips of A (32 depth elements each), 6–7 two 16-column strips of B (16 pairs each).
#define BLOCK 32
#define CHUNK_PAIRS 16

// Operands packed by the calling thread, and its tile sums, grown as needed (attention's
// threads live as long as the process, so they are never freed).
static _Thread_local uint32_t *packed_a, *packed_b, *sums;
static _Thread_local int64_t capacity_a, capacity_b, capacity_sums;

/// The LDTILECFG operand: palette 1, every tile 16 rows of 64 bytes.
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
} tile_config;

// Whether Linux lets this process use the tiles (asked once).
static int tiles_granted(void) {
    static _Atomic int granted = -1;
    int g = atomic_load(&granted);
    if (g < 0) {
        enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
        g = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
        atomic_store(&granted, g);
    }
    return g;
}

// MARK: Operands in tiles' layout

// A as tiles read it: row r's pairs at a + r·stride bytes, `chunks`·16 pairs per row, zero
// past k and (from m to the next multiple of 32) past the last row. A stored with its depth
// contiguous in whole chunks and whole blocks of rows is read where it is.
AMX_ATTR static const char *tile_rows_of_a(int ta, int64_t m, int64_t k, const uint16_t *a, int64_t lda,
                                           int64_t chunks, int64_t *stride) {
    int64_t padded_m = (m + BLOCK - 1) / BLOCK * BLOCK, words = chunks * CHUNK_PAIRS, pairs = (k + 1) / 2;
    if (!ta && k % (2 * CHUNK_PAIRS) == 0 && m % BLOCK == 0) {
        *stride = 2 * lda;
        return (const char *)a;
    }
    // Otherwise packed: transposed, A's columns first as pairs of rows of the stored k×m
    // (pairs × padded_m words), then those words transposed into rows; as it is, copied row
    // by row with zeros after them.
    int64_t staging = ta ? pairs * padded_m : 0;
    uint32_t *q = tessera_reserve_words(&packed_a, &capacity_a, padded_m * words + staging);
    if (!q) return NULL;
    if (ta) {
        uint32_t *t = q + padded_m * words;
        tessera_pack_row_pairs(t, padded_m, a, lda, k, m, padded_m);
        tessera_transpose_words(q, words, (const char *)t, 4 * padded_m, padded_m, pairs, words, 0);
    } else {
        for (int64_t r = 0; r < m; r++) {
            memcpy(q + r * words, a + r * lda, (size_t)k * 2);
            memset((char *)(q + r * words) + 2 * k, 0, (size_t)(4 * words - 2 * k));
        }
        memset(q + m * words, 0, (size_t)((padded_m - m) * words * 4));
    }
    *stride = 4 * words;
    return (const char *)q;
}

// MARK: The tiles

AMX_ATTR static int amx_gemm(int ta, int tb, int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                             const uint16_t *b, int64_t ldb, int accumulate, float *c, int64_t ldc) {
    int64_t pairs = (k + 1) / 2, chunks = (pairs + CHUNK_PAIRS - 1) / CHUNK_PAIRS;
    int64_t padded_m = (m + BLOCK - 1) / BLOCK * BLOCK, padded_n = (n + BLOCK - 1) / BLOCK * BLOCK;
    // B as pairs of its depth rows, the chunks' padding zero.
    uint32_t *bp = tessera_reserve_words(&packed_b, &capacity_b, chunks * CHUNK_PAIRS * padded_n);
    if (!bp) return 1;
    if (tb) tessera_pack_column_pairs(bp, padded_n, b, ldb, k, n, padded_n);
    else tessera_pack_row_pairs(bp, padded_n, b, ldb, k, n, padded_n);
    memset(bp + pairs * padded_n, 0, (size_t)((chunks * CHUNK_PAIRS - pairs) * padded_n * 4));
    int64_t a_stride, b_stride = 4 * padded_n;
    const char *ap = tile_rows_of_a(ta, m, k, a, lda, chunks, &a_stride);
    if (!ap) return 1;

    // Loaded on every call: oneDNN's kernels, which run between attention's blocks on the same
    // threads, load configurations of their own.
    tile_config config = {.palette = 1};
    for (int t = 0; t < 8; t++) config.bytes_per_row[t] = 64, config.rows[t] = 16;
    _tile_loadconfig(&config);
    // C's 32×32 blocks go straight between C and the tiles when C has whole blocks; otherwise
    // through a padded copy.
    int whole = m % BLOCK == 0 && n % BLOCK == 0;
    float *s = whole ? NULL : (float *)tessera_reserve_words(&sums, &capacity_sums, padded_m * padded_n);
    if (!whole && !s) return 1;
    float *t = whole ? c : s;
    int64_t ldt = whole ? ldc : padded_n;
    if (accumulate && !whole)
        for (int64_t r = 0; r < padded_m; r++)
            for (int64_t j = 0; j < padded_n; j += 16)
                _mm512_store_ps(s + r * padded_n + j, _mm512_maskz_loadu_ps(tessera_lanes(r < m ? n - j : 0), c + r * ldc + j));
    for (int64_t i = 0; i < padded_m; i += BLOCK)
        for (int64_t j = 0; j < padded_n; j += BLOCK) {
            float *block = t + i * ldt + j;
            if (accumulate) {
                _tile_loadd(0, block, 4 * ldt);
                _tile_loadd(1, block + 16, 4 * ldt);
                _tile_loadd(2, block + 16 * ldt, 4 * ldt);
                _tile_loadd(3, block + 16 * ldt + 16, 4 * ldt);
            } else {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
            }
            for (int64_t q = 0; q < chunks; q++) {
                const char *ar = ap + i * a_stride + q * 64;
                const char *bc = (const char *)(bp + q * CHUNK_PAIRS * padded_n + j);
                _tile_loadd(4, ar, a_stride);
                _tile_loadd(5, ar + 16 * a_stride, a_stride);
                _tile_loadd(6, bc, b_stride);
                _tile_loadd(7, bc + 64, b_stride);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, block, 4 * ldt);
            _tile_stored(1, block + 16, 4 * ldt);
            _tile_stored(2, block + 16 * ldt, 4 * ldt);
            _tile_stored(3, block + 16 * ldt + 16, 4 * ldt);
        }
    if (!whole)
        for (int64_t r = 0; r < m; r++)
            for (int64_t j = 0; j < n; j += 16)
                _mm512_mask_storeu_ps(c + r * ldc + j, tessera_lanes(n - j), _mm512_load_ps(s + r * padded_n + j));
    return 0;
}

int tessera_amx_block_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                           const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    if (tessera_cpu_level() != 4 || (beta != 0.0f && beta != 1.0f) || !tiles_granted()) return 2;
    if (m <= 0 || n <= 0) return 0;
    return amx_gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta != 0.0f, c, ldc);
}
