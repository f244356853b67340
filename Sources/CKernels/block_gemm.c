// Small bf16 products on bf16 dot products (AVX512-BF16): the attention kernel's block
// products (64–128 rows, columns and depth), which oneDNN's matmul ran at 45–60% of a thread's
// bf16 peak on Zen 5 because each call pays for a primitive execution, a stream and, for a
// transposed operand, oneDNN's own copy; here each call packs what it needs into a thread's
// buffers and runs a 6×64 register tile.
//
// The bits are oneDNN's: its brgemm kernels accumulate every element of C from zero with
// vdpbf16ps over the depth's pairs in order (the odd depth padded with a zero), then add C
// once for beta = 1; this kernel does the same with the same instruction, so the results are
// identical (checked against oneDNN's matmul in the tests, on every shape and layout the
// attention kernel uses, and by the golden trajectories).
#include "ckernels.h"
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BF16_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define TILE_ROWS 6
#define TILE_VECTORS 4   // 64 columns of C: 24 accumulators, 4 B vectors, one broadcast

// Packed operands of the calling thread, grown as needed (attention's threads live as long as
// the process, so they are never freed).
static _Thread_local uint32_t *packed_a, *packed_b;
static _Thread_local int64_t capacity_a, capacity_b;

static uint32_t *reserve(uint32_t **buffer, int64_t *capacity, int64_t words) {
    if (words <= *capacity) return *buffer;
    free(*buffer);
    *buffer = aligned_alloc(64, (size_t)((words * 4 + 63) / 64 * 64));
    *capacity = *buffer ? words : 0;
    return *buffer;
}

// MARK: Packing into pairs along the depth

// dst[p·ldd + j] = (x[2p][j], x[2p+1][j]) as one 32-bit word (low half first) for p < ⌈k/2⌉,
// j < padded: pairs of consecutive rows interleaved, zero past n columns and past k rows.
BF16_ATTR static void pack_row_pairs(uint32_t *dst, int64_t ldd, const uint16_t *x, int64_t ld, int64_t k, int64_t n,
                                     int64_t padded) {
    for (int64_t p = 0; p < (k + 1) / 2; p++) {
        const uint16_t *r0 = x + 2 * p * ld, *r1 = r0 + ld;
        int last_odd = 2 * p + 1 >= k;
        for (int64_t j = 0; j < padded; j += 16) {
            int64_t w = n - j;
            __mmask16 m = w >= 16 ? 0xFFFF : w <= 0 ? 0 : (__mmask16)((1u << w) - 1);
            __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r0 + j));
            __m512i hi = last_odd ? _mm512_setzero_si512() : _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r1 + j));
            _mm512_store_si512(dst + p * ldd + j, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}

// A 16×16 transpose of 32-bit elements.
__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    // u[4i + c] holds, in its 128-bit lane L, element 4L + c of rows 4i … 4i + 3.
    for (int c = 0; c < 4; c++) {
        __m512i a = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), b = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);
        __m512i d = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88), e = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_i32x4(a, d, 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(a, d, 0xdd);
        r[4 + c] = _mm512_shuffle_i32x4(b, e, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(b, e, 0xdd);
    }
}

#define AVX512_ATTR __attribute__((target("avx512f,avx512bw,avx512vl")))

// dst[p·ldd + j] = 32-bit word p of row j (rows `stride` bytes apart from x) for p < words,
// j < padded: rows transposed 16 × 16 words at a time (gathered at the edges), zero past n
// rows; with `half_last` the last word keeps its low half only (an odd depth's last pair).
// bf16 pairs and fp32 values alike are 32-bit words here.
AVX512_ATTR static void transpose_words(uint32_t *dst, int64_t ldd, const char *x, int64_t stride, int64_t words,
                                        int64_t n, int64_t padded, int half_last) {
    __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                      _mm512_set1_epi32((int)stride));
    int64_t whole = half_last ? words - 1 : words;
    for (int64_t j = 0; j < padded; j += 16) {
        int64_t w = n - j;
        __mmask16 m = w >= 16 ? 0xFFFF : w <= 0 ? 0 : (__mmask16)((1u << w) - 1);
        const char *base = x + j * stride;
        int64_t p = 0;
        if (w >= 16)
            for (; p + 16 <= whole; p += 16) {
                __m512i r[16];
                for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(base + i * stride + 4 * p);
                transpose16(r);
                for (int i = 0; i < 16; i++) _mm512_store_si512(dst + (p + i) * ldd + j, r[i]);
            }
        for (; p < words; p++) {
            __m512i v = m ? _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, rows, base + 4 * p, 1)
                          : _mm512_setzero_si512();
            if (half_last && p == words - 1) v = _mm512_and_si512(v, _mm512_set1_epi32(0xFFFF));
            _mm512_store_si512(dst + p * ldd + j, v);
        }
    }
}

// dst[p·ldd + j] = (x[j][2p], x[j][2p+1]) for p < ⌈k/2⌉, j < padded: row j's pairs, transposed,
// zero past n rows and past k columns.
BF16_ATTR static void pack_column_pairs(uint32_t *dst, int64_t ldd, const uint16_t *x, int64_t ld, int64_t k, int64_t n,
                                        int64_t padded) {
    transpose_words(dst, ldd, (const char *)x, 2 * ld, (k + 1) / 2, n, padded, (int)(k & 1));
}

// MARK: The register tile

// C[rows × 16·vectors] = A·B (+ C when accumulate): A's pair p of row r is the 32-bit word at
// a + r·row_step + p·pair_step (bf16 units), B's pairs p of these columns at b + p·ldb.
BF16_ATTR static inline __attribute__((always_inline)) void
tile(int rows, int vectors, int64_t pairs, const uint16_t *a, int64_t row_step, int64_t pair_step, const uint32_t *b,
     int64_t ldb, int accumulate, float *c, int64_t ldc, __mmask16 last) {
    __m512 acc[TILE_ROWS][TILE_VECTORS];
    for (int r = 0; r < TILE_ROWS; r++)
        for (int v = 0; v < TILE_VECTORS; v++) acc[r][v] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; p++) {
        __m512bh bv[TILE_VECTORS];
        for (int v = 0; v < vectors; v++) bv[v] = (__m512bh)_mm512_load_si512(b + p * ldb + 16 * v);
        for (int r = 0; r < rows; r++) {
            uint32_t pair;
            memcpy(&pair, a + r * row_step + p * pair_step, 4);
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)pair);
            for (int v = 0; v < vectors; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < vectors; v++) {
            __mmask16 m = v == vectors - 1 ? last : 0xFFFF;
            float *cp = c + r * ldc + 16 * v;
            __m512 x = acc[r][v];
            if (accumulate) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, cp));
            _mm512_mask_storeu_ps(cp, m, x);
        }
}

// C's tiles in 64-column strips (`vectors` of 16, the last one's valid lanes in `last`), six
// rows at a time and then the rows left, each through ROW(rows), which sees i, j, vectors and
// last.
#define FOR_EACH_TILE(ROW)                                                                  \
    for (int64_t j = 0; j < n; j += 16 * TILE_VECTORS) {                                    \
        int64_t w = n - j < 16 * TILE_VECTORS ? n - j : 16 * TILE_VECTORS;                  \
        int vectors = (int)((w + 15) / 16);                                                 \
        __mmask16 last = (__mmask16)(w % 16 ? (1u << (w % 16)) - 1 : 0xFFFF);                \
        int64_t i = 0;                                                                      \
        for (; i + TILE_ROWS <= m; i += TILE_ROWS) ROW(TILE_ROWS)                           \
        switch (m - i) {                                                                    \
        case 5: ROW(5) break;                                                               \
        case 4: ROW(4) break;                                                               \
        case 3: ROW(3) break;                                                               \
        case 2: ROW(2) break;                                                               \
        case 1: ROW(1) break;                                                               \
        default: break;                                                                     \
        }                                                                                   \
    }

// Constant rows and vectors for each call site, so the tile is unrolled into registers.
#define TILE_CASE(R, V) tile(R, V, pairs, ap + i * row_step, row_step, pair_step, bp + j, padded_n, accumulate, \
                             c + i * ldc + j, ldc, last)
// TILE(R, V) with the strip's vector count as a constant.
#define BY_VECTORS(TILE, R)                                            \
    switch (vectors) {                                                 \
    case 4: TILE(R, 4); break;                                         \
    case 3: TILE(R, 3); break;                                         \
    case 2: TILE(R, 2); break;                                         \
    default: TILE(R, 1);                                               \
    }
#define TILE_ROW(R) BY_VECTORS(TILE_CASE, R)

BF16_ATTR static int block_gemm(int ta, int tb, int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                                const uint16_t *b, int64_t ldb, int accumulate, float *c, int64_t ldc) {
    int64_t pairs = (k + 1) / 2, padded_n = (n + 15) / 16 * 16, padded_m = (m + 15) / 16 * 16;
    uint32_t *bp = reserve(&packed_b, &capacity_b, pairs * padded_n);
    if (!bp) return 1;
    if (tb) pack_column_pairs(bp, padded_n, b, ldb, k, n, padded_n);
    else pack_row_pairs(bp, padded_n, b, ldb, k, n, padded_n);
    // A's rows as they are stored when their pairs are adjacent (an odd depth would read past
    // a row's end for its last pair), otherwise pairs packed pair-major.
    const uint16_t *ap = a;
    int64_t row_step = lda, pair_step = 2;
    if (ta || (k & 1)) {
        uint32_t *q = reserve(&packed_a, &capacity_a, pairs * padded_m);
        if (!q) return 1;
        if (ta) pack_row_pairs(q, padded_m, a, lda, k, m, padded_m);
        else pack_column_pairs(q, padded_m, a, lda, k, m, padded_m);
        ap = (const uint16_t *)q;
        row_step = 2;
        pair_step = 2 * padded_m;
    }
    FOR_EACH_TILE(TILE_ROW)
    return 0;
}

int tessera_bf16_block_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                            const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    if (tessera_cpu_level() < 3 || (beta != 0.0f && beta != 1.0f)) return 2;
    if (m <= 0 || n <= 0) return 0;
    return block_gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta != 0.0f, c, ldc);
}

// MARK: - fp32

// The fp32 attention products (fp32 models, and 16-bit ones on fp32 copies where there are no
// bf16 dot products) of 16–128 on a side, where oneDNN's sgemm spends much of each call
// outside its kernel (0.5–0.8 µs for a 32×32×32 product on Zen 5, a third of its rate).
//
// Bits: each element of C is its products fused-multiply-added from zero along the depth in
// order, then scaled by alpha and added to C once; oneDNN's AVX-512 sgemm gives the same bits
// on the attention kernel's shapes when alpha is a power of two (scaling is then exact,
// wherever it is applied: the head sizes 16, 64 and 256 of the recorded golden trajectories
// and the benchmark's small and gpt2). For other alphas (head size 32 or 128) oneDNN scales A
// before summing on some shapes; there the results are this kernel's, as correct, within a
// rounding of oneDNN's.
//
// AVX-512 only: an AVX2 version (6×16 tiles, B transposed element by element) ran these
// shapes at 74–118 GFLOP/s on one Zen 5 thread against oneDNN's AVX2 sgemm at 85–129, so below
// AVX-512 the products stay on oneDNN.

#define F32_ATTR_512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

// op(B)'s rows as contiguous floats where B is stored transposed: dst[p·ldd + j] = x[j·ld + p]
// for p < k, j < padded (zero past n).
F32_ATTR_512 static void transpose_block_f32(float *dst, int64_t ldd, const float *x, int64_t ld, int64_t k, int64_t n,
                                            int64_t padded) {
    transpose_words((uint32_t *)dst, ldd, (const char *)x, 4 * ld, k, n, padded, 0);
}

// C[rows × 16·vectors] = alpha·A·B (+ C): A's element (r, p) at a + r·ars + p·aps, B's row p
// at b + p·ldb (its columns past n may be read but are masked off on store).
F32_ATTR_512 static inline __attribute__((always_inline)) void
tile_f32_512(int rows, int vectors, int64_t k, const float *a, int64_t ars, int64_t aps, const float *b, int64_t ldb,
             float alpha, int accumulate, float *c, int64_t ldc, __mmask16 last) {
    __m512 acc[TILE_ROWS][TILE_VECTORS];
    for (int r = 0; r < TILE_ROWS; r++)
        for (int v = 0; v < TILE_VECTORS; v++) acc[r][v] = _mm512_setzero_ps();
    for (int64_t p = 0; p < k; p++) {
        __m512 bv[TILE_VECTORS];
        for (int v = 0; v < vectors; v++)
            bv[v] = _mm512_maskz_loadu_ps(v == vectors - 1 ? last : 0xFFFF, b + p * ldb + 16 * v);
        for (int r = 0; r < rows; r++) {
            __m512 av = _mm512_set1_ps(a[r * ars + p * aps]);
            for (int v = 0; v < vectors; v++) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
    }
    __m512 scale = _mm512_set1_ps(alpha);
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < vectors; v++) {
            __mmask16 m = v == vectors - 1 ? last : 0xFFFF;
            float *cp = c + r * ldc + 16 * v;
            __m512 x = _mm512_mul_ps(acc[r][v], scale);
            if (accumulate) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, cp));
            _mm512_mask_storeu_ps(cp, m, x);
        }
}

#define TILE_F32_512(R, V) tile_f32_512(R, V, k, ap + i * ars, ars, aps, bp + j, ldbp, alpha, accumulate, \
                                        c + i * ldc + j, ldc, last)
#define TILE_ROW_F32_512(R) BY_VECTORS(TILE_F32_512, R)

static _Thread_local float *transposed_b;
static _Thread_local int64_t capacity_t;

F32_ATTR_512 static int block_sgemm_512(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                                        int64_t lda, const float *b, int64_t ldb, int accumulate, float *c, int64_t ldc) {
    const float *bp = b;
    int64_t ldbp = ldb;
    if (tb) {
        int64_t padded = (n + 15) / 16 * 16;
        float *t = (float *)reserve((uint32_t **)&transposed_b, &capacity_t, k * padded);
        if (!t) return 1;
        transpose_block_f32(t, padded, b, ldb, k, n, padded);
        bp = t;
        ldbp = padded;
    }
    const float *ap = a;
    int64_t ars = ta ? 1 : lda, aps = ta ? lda : 1;
    FOR_EACH_TILE(TILE_ROW_F32_512)
    return 0;
}

int tessera_block_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                        int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    if (tessera_cpu_level() < 2 || (beta != 0.0f && beta != 1.0f)) return 2;
    if (m <= 0 || n <= 0) return 0;
    return block_sgemm_512(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta != 0.0f, c, ldc);
}
