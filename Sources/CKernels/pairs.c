// Packing bf16 operands into pairs along the depth (see pairs.h).
#include "pairs.h"
#include <immintrin.h>
#include <stdlib.h>

#define BF16_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define AVX512_ATTR __attribute__((target("avx512f,avx512bw,avx512vl")))

uint32_t *tessera_reserve_words(uint32_t **buffer, int64_t *capacity, int64_t words) {
    if (words <= *capacity) return *buffer;
    free(*buffer);
    *buffer = aligned_alloc(64, (size_t)((words * 4 + 63) / 64 * 64));
    *capacity = *buffer ? words : 0;
    return *buffer;
}

// MARK: Packing into pairs along the depth

// dst[p·ldd + j] = (x[2p][j], x[2p+1][j]) as one 32-bit word (low half first) for p < ⌈k/2⌉,
// j < padded: pairs of consecutive rows interleaved, zero past n columns and past k rows.
BF16_ATTR void tessera_pack_row_pairs(uint32_t *dst, int64_t ldd, const uint16_t *x, int64_t ld, int64_t k, int64_t n,
                                      int64_t padded) {
    for (int64_t p = 0; p < (k + 1) / 2; p++) {
        const uint16_t *r0 = x + 2 * p * ld, *r1 = r0 + ld;
        int last_odd = 2 * p + 1 >= k;
        for (int64_t j = 0; j < padded; j += 16) {
            __mmask16 m = tessera_lanes(n - j);
            __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r0 + j));
            __m512i hi = last_odd ? _mm512_setzero_si512() : _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r1 + j));
            _mm512_store_si512(dst + p * ldd + j, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}

// dst[p·ldd + j] = 32-bit word p of row j (rows `stride` bytes apart from x) for p < words,
// j < padded: rows transposed 16 × 16 words at a time (gathered at the edges), zero past n
// rows; with `half_last` the last word keeps its low half only (an odd depth's last pair).
// bf16 pairs and fp32 values alike are 32-bit words here.
AVX512_ATTR void tessera_transpose_words(uint32_t *dst, int64_t ldd, const char *x, int64_t stride, int64_t words,
                                         int64_t n, int64_t padded, int half_last) {
    __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                      _mm512_set1_epi32((int)stride));
    int64_t whole = half_last ? words - 1 : words;
    for (int64_t j = 0; j < padded; j += 16) {
        int64_t w = n - j;
        __mmask16 m = tessera_lanes(w);
        const char *base = x + j * stride;
        int64_t p = 0;
        if (w >= 16)
            for (; p + 16 <= whole; p += 16) {
                __m512i r[16];
                for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(base + i * stride + 4 * p);
                tessera_transpose16(r);
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
BF16_ATTR void tessera_pack_column_pairs(uint32_t *dst, int64_t ldd, const uint16_t *x, int64_t ld, int64_t k, int64_t n,
                                         int64_t padded) {
    tessera_transpose_words(dst, ldd, (const char *)x, 2 * ld, (k + 1) / 2, n, padded, (int)(k & 1));
}
