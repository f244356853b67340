// Packing bf16 operands into pairs along the depth, the layout both bf16 dot products
// (vdpbf16ps, in block_gemm.c) and AMX tiles (tdpbf16ps, in amx_gemm.c) multiply: each 32-bit
// word holds two consecutive depth elements, low half first. Internal to CKernels.
#ifndef TESSERA_PAIRS_H
#define TESSERA_PAIRS_H
#include <immintrin.h>
#include <stdint.h>

/// `*buffer` grown to at least `words` 32-bit words, 64-byte aligned (its old contents lost);
/// NULL, with the capacity 0, when out of memory.
uint32_t *tessera_reserve_words(uint32_t **buffer, int64_t *capacity, int64_t words);

/// dst[p·ldd + j] = (x[2p][j], x[2p+1][j]) for p < ⌈k/2⌉, j < padded (a multiple of 16, ldd
/// too, dst 64-byte aligned): pairs of consecutive rows interleaved, zero past n columns and
/// past k rows. Needs AVX512-BF16's level (3).
void tessera_pack_row_pairs(uint32_t *dst, int64_t ldd, const uint16_t *x, int64_t ld, int64_t k, int64_t n,
                            int64_t padded);

/// dst[p·ldd + j] = (x[j][2p], x[j][2p+1]) for p < ⌈k/2⌉, j < padded: row j's pairs,
/// transposed, zero past n rows and past k columns. Needs AVX-512.
void tessera_pack_column_pairs(uint32_t *dst, int64_t ldd, const uint16_t *x, int64_t ld, int64_t k, int64_t n,
                               int64_t padded);

/// dst[p·ldd + j] = 32-bit word p of row j (rows `stride` bytes apart from x) for p < words,
/// j < padded: zero past n rows; with `half_last` the last word keeps its low half only (an
/// odd depth's last pair). Needs AVX-512.
void tessera_transpose_words(uint32_t *dst, int64_t ldd, const char *x, int64_t stride, int64_t words, int64_t n,
                             int64_t padded, int half_last);

/// The lanes of a 16-lane vector that `w` remaining elements fill: all from 16 on, none at 0
/// or below.
static inline __mmask16 tessera_lanes(int64_t w) { return w >= 16 ? 0xFFFF : w <= 0 ? 0 : (__mmask16)((1u << w) - 1); }

// A 16×16 transpose of 32-bit elements.
__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline void tessera_transpose16(__m512i r[16]) {
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

#endif
