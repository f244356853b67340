// fp32 GEMM that reads fp32, bf16 or fp16 operands, widening 16-bit values while it packs
// them into the panels its micro-kernel streams (BLIS's loop structure: a 6×16 AVX2/FMA
// register tile, or 6×32 with AVX-512, K blocked to about 256, A blocks of 168 rows kept in
// L2, B panels in L3).
//
// The result does not depend on the thread count: threads split C's rows (or columns), and
// every element sums its products in the same order (along K, a K block at a time, into C).
//
// Why it exists: without bf16 dot products a 16-bit model's products are fp32 products of
// widened operands. Widening a whole operand into fp32 scratch before sgemm writes and reads
// it once more than needed; packing has to copy every operand anyway, so widening there is
// free and the products stay the same (a 16-bit value is exact in fp32).
#include "ckernels.h"
#include "rounding.h"
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MR 6
#define NR_MAX 32   // a tile's columns: 16 (two ymm registers per row) or 32 (two zmm)
#define KC 256       // K block depth aimed at: a 6×16 tile's B sliver (16 KB) stays in L1
#define KC_MAX 384   // a K up to this is one block
#define MC 168
#define NC 4064     // a multiple of both tile widths
#define ROWS_AHEAD 12   // how far ahead packing fetches the stored rows it reads one at a time
#define SLIVER_PAD 16   // floats after each packed sliver (see sliver_stride)

#define ATTR __attribute__((target("avx2,fma,f16c")))
#define ATTR512 __attribute__((target("avx512f,fma,f16c")))

enum { FMT_F32 = TESSERA_F32, FMT_BF16 = TESSERA_BF16, FMT_F16 = TESSERA_F16 };

typedef struct {
    const char *base;   // element (r, c) of the stored matrix at base + (r·ld + c)·size
    int64_t ld;
    int trans;          // op(X) = Xᵀ
    int fmt;
} operand;

static inline int64_t elem_size(int fmt) { return fmt == FMT_F32 ? 4 : 2; }

ATTR static inline __m256 load8(const char *p, int fmt) {
    if (fmt == FMT_F32) return _mm256_loadu_ps((const float *)p);
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (fmt == FMT_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

ATTR static inline float load1(const char *p, int fmt) {
    if (fmt == FMT_F32) { float f; memcpy(&f, p, 4); return f; }
    uint16_t h; memcpy(&h, p, 2);
    if (fmt == FMT_BF16) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
    return _cvtsh_ss(h);
}

ATTR static inline void transpose8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20); r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20); r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31); r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31); r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// MARK: Packing

// Floats from one packed sliver (kc rows of `width`) to the next. Packing row by row (not
// `across`) writes a row into every sliver in turn; slivers kc·width floats apart (16 KB for
// B's 16-wide ones at kc 256, 6 KB for A's) fall into one or two L1 sets, more lines than
// those sets hold, so each store missed L1. 64 bytes more apart they spread over the sets
// (packing's share of small's weight-gradient products 8% -> 4.5%); B's slivers stay 64-byte
// aligned. Transposed slivers are written one at a time and keep the plain stride.
static inline int64_t sliver_stride(int64_t kc, int64_t width, int across) {
    return kc * width + (across ? 0 : SLIVER_PAD);
}

// Fetches `bytes` from p into L1 (`to_l1`) or L2. Packing reads short runs of rows far apart
// (a K step's row, or a sliver's few rows of one K block): too short for the hardware
// prefetchers to follow, so without this every run waits on memory (+1–5% GFLOP/s on the
// backward products).
static inline void prefetch_run(const char *p, int64_t bytes, int to_l1) {
    for (int64_t o = 0; o < bytes; o += 64) {
        if (to_l1) _mm_prefetch(p + o, _MM_HINT_T0); else _mm_prefetch(p + o, _MM_HINT_T1);
    }
    if (to_l1) _mm_prefetch(p + bytes - 1, _MM_HINT_T0); else _mm_prefetch(p + bytes - 1, _MM_HINT_T1);
}

// `count` contiguous values from src, widened, then zeros up to `width` (an edge sliver's padding).
ATTR static inline void copy_run(float *dst, const char *src, int64_t count, int64_t width, int fmt) {
    int64_t size = elem_size(fmt), j = 0;
    for (; j < count; j++) dst[j] = load1(src + j * size, fmt);
    for (; j < width; j++) dst[j] = 0;
}

// Stored rows 0..<count (≤ width) from `base`, each contiguous over columns p0..<p0+kc,
// transposed into dst[p·width + r] with rows count..<width zero: a sliver of A (width MR) or
// of Bᵀ (width nr). Eight columns at a time through 8×8 transposes; width is at most 8 or a
// multiple of 8, so a group narrower than 8 is the only one, and each of its 8-lane stores
// spills into the next column's first lanes before that column's own store overwrites them;
// the last column's spill lands on the next sliver, packed after this one, or on the 16 spare
// floats at the end of the packing buffer.
ATTR static inline __attribute__((always_inline)) void pack_transposed(
    const char *base, int64_t ld, int fmt, int64_t count, int64_t width, int64_t p0, int64_t kc, float *dst) {
    int64_t size = elem_size(fmt), p = 0;
    if (count == width) {
        for (; p + 8 <= kc; p += 8) {
            for (int64_t j = 0; j < width; j += 8) {
                __m256 r[8];
                int q = 0;
                for (; q < 8 && j + q < width; q++) r[q] = load8(base + ((j + q) * ld + p0 + p) * size, fmt);
                for (; q < 8; q++) r[q] = _mm256_setzero_ps();
                transpose8(r);
                for (q = 0; q < 8; q++) _mm256_storeu_ps(dst + (p + q) * width + j, r[q]);
            }
        }
    }
    for (; p < kc; p++) {
        int64_t r = 0;
        for (; r < count; r++) dst[p * width + r] = load1(base + (r * ld + p0 + p) * size, fmt);
        for (; r < width; r++) dst[p * width + r] = 0;
    }
}

// Values 0..<count of stored rows p0..<p0+kc (row p at base + p·ld), each row read once and
// in order, into slivers of `width` values (sliver i at dst + i·sliver_stride, its row p at
// p·width), the last sliver zero-padded: A transposed (width MR) or B as stored (width nr).
// `readable` values exist in every row; width is 6 or a multiple of 8: six come from an
// eight-value load where eight are readable, stored whole, its two extra values landing on
// the sliver's next row (written after it) or, from the last row, in the padding (one store
// instead of two: −6% of packing's share of the backward products).
ATTR static inline __attribute__((always_inline)) void pack_rows(
    const char *base, int64_t ld, int fmt, int64_t count, int64_t readable, int64_t width, int64_t p0, int64_t kc,
    float *dst) {
    int64_t size = elem_size(fmt), loaded = (width + 7) / 8 * 8, stride = sliver_stride(kc, width, 0);
    for (int64_t p = 0; p < kc; p++) {
        const char *row = base + (p0 + p) * ld * size;
        if (p + ROWS_AHEAD < kc) prefetch_run(row + ROWS_AHEAD * ld * size, count * size, 1);
        int64_t s = 0;
        float *d = dst + p * width;   // row p of the sliver that value s starts
        if (width == MR)
            for (; s + MR <= count && s + 8 <= readable; s += MR, d += stride)
                _mm256_storeu_ps(d, load8(row + s * size, fmt));
        for (; s + width <= count && s + loaded <= readable; s += width, d += stride) {
            for (int64_t j = 0; j < width; j += 8) {
                __m256 v = load8(row + (s + j) * size, fmt);
                if (width - j >= 8) {
                    _mm256_storeu_ps(d + j, v);
                } else {
                    _mm_storeu_ps(d + j, _mm256_castps256_ps128(v));
                    _mm_storel_pi((__m64 *)(d + j + 4), _mm256_extractf128_ps(v, 1));
                }
            }
        }
        for (; s < count; s += width, d += stride) copy_run(d, row + s * size, count - s < width ? count - s : width, width, fmt);
    }
}

// One block of slivers: indices first..<first+count of the dimension slivers split (op(A)'s
// rows, op(B)'s columns; `readable` of them exist from `first`), `width` to a sliver, over
// K = p0..<p0+kc, sliver i at dst + i·sliver_stride. `across`: that dimension runs across
// stored rows (A as stored, Bᵀ), each sliver a transposed copy; otherwise along them (A
// transposed, B as stored), where each stored row is read once, in order (sliver by sliver it
// would be walked `width` values at a time, a cache line fetched again for every sliver it spans).
ATTR static inline __attribute__((always_inline)) void pack_block_as(
    int fmt, const operand *x, int across, int64_t first, int64_t count, int64_t readable, int64_t width, int64_t p0,
    int64_t kc, float *dst) {
    int64_t size = elem_size(fmt);
    if (!across) {
        pack_rows(x->base + first * size, x->ld, fmt, count, readable, width, p0, kc, dst);
        return;
    }
    for (int64_t s = 0; s < count; s += width, dst += sliver_stride(kc, width, 1)) {
        for (int64_t r = s + width; r < s + 2 * width && r < readable; r++)   // the next sliver's rows
            prefetch_run(x->base + ((first + r) * x->ld + p0) * size, kc * size, 1);
        pack_transposed(x->base + (first + s) * x->ld * size, x->ld, fmt, count - s < width ? count - s : width, width,
                        p0, kc, dst);
    }
}

// pack_block_as compiled once per format, each with its format a constant: with the format
// read in every load, the transposing path kept its 8×8 block on the stack and tested the
// format at each load (a third of packing's time in the forward products).
ATTR static void pack_block(const operand *x, int across, int64_t first, int64_t count, int64_t readable, int64_t width,
                            int64_t p0, int64_t kc, float *dst) {
    switch (x->fmt) {
    case FMT_BF16: pack_block_as(FMT_BF16, x, across, first, count, readable, width, p0, kc, dst); break;
    case FMT_F16: pack_block_as(FMT_F16, x, across, first, count, readable, width, p0, kc, dst); break;
    default: pack_block_as(FMT_F32, x, across, first, count, readable, width, p0, kc, dst); break;
    }
}

// Fetches part `part` of `parts` of what pack_block reads for this block of A into L2. Spread
// over the micro-kernel calls of the block before it, the next block's rows arrive while that
// one computes, instead of while packing waits on them (the transposing reads of the backward
// products' dX packed in 5% of their time instead of 10%).
static void prefetch_block(const operand *x, int across, int64_t first, int64_t count, int64_t p0, int64_t kc,
                           int64_t part, int64_t parts) {
    int64_t size = elem_size(x->fmt), runs = across ? count : kc, bytes = (across ? kc : count) * size;
    for (int64_t r = runs * part / parts; r < runs * (part + 1) / parts; r++) {
        int64_t offset = across ? (first + r) * x->ld + p0 : (p0 + r) * x->ld + first;
        prefetch_run(x->base + offset * size, bytes, 0);
    }
}

// MARK: Micro-kernel

// C[0..<MR, 0..<2W] = beta·C + Σp a[p·MR + r]·b[p·2W + j] (beta 0: C is only written), each
// row of the tile in two registers of W floats: 12 accumulators, two B loads and six A
// broadcasts per step of p. The loops over rows unroll fully, so the tile stays in registers.
#define DEFINE_MICRO_KERNEL(NAME, ATTR_, V, W, ZERO, LOAD, LOADU, STOREU, SET1, FMADD, ADD)           \
    ATTR_ static void NAME(int64_t kc, const float *restrict a, const float *restrict b, float *c,        \
                           int64_t ldc, float beta) {                                                   \
        V acc[MR][2];                                                                                   \
        _Pragma("clang loop unroll(full)") for (int r = 0; r < MR; r++) {                              \
            acc[r][0] = acc[r][1] = ZERO();                                                             \
            /* The tile's rows are read (beta ≠ 0) or written after the loop: fetch them now. */        \
            _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);                                     \
            _mm_prefetch((const char *)(c + r * ldc + 2 * W - 1), _MM_HINT_T0);                         \
        }                                                                                               \
        _Pragma("clang loop unroll_count(4)") for (int64_t p = 0; p < kc; p++) {                       \
            V b0 = LOAD(b), b1 = LOAD(b + W);                                                           \
            _Pragma("clang loop unroll(full)") for (int r = 0; r < MR; r++) {                          \
                V av = SET1(a[r]);                                                                      \
                acc[r][0] = FMADD(av, b0, acc[r][0]);                                                   \
                acc[r][1] = FMADD(av, b1, acc[r][1]);                                                   \
            }                                                                                           \
            a += MR; b += 2 * W;                                                                        \
        }                                                                                               \
        _Pragma("clang loop unroll(full)") for (int r = 0; r < MR; r++) {                              \
            for (int h = 0; h < 2; h++) {                                                               \
                float *row = c + r * ldc + W * h;                                                       \
                V v = acc[r][h];                                                                        \
                if (beta == 1) v = ADD(v, LOADU(row));                                                  \
                else if (beta != 0) v = FMADD(SET1(beta), LOADU(row), v);                               \
                STOREU(row, v);                                                                         \
            }                                                                                           \
        }                                                                                               \
    }

DEFINE_MICRO_KERNEL(kernel_6x16, ATTR, __m256, 8, _mm256_setzero_ps, _mm256_load_ps, _mm256_loadu_ps,
                    _mm256_storeu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps)
// The same tile 32 columns wide in zmm registers: on CPUs with two 512-bit FMA units twice the
// AVX2 tile's flops per instruction; on Zen 4 (512-bit operations split in two) as many flops
// in half the instructions.
DEFINE_MICRO_KERNEL(kernel_6x32, ATTR512, __m512, 16, _mm512_setzero_ps, _mm512_load_ps, _mm512_loadu_ps,
                    _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps)

// MARK: Rounded output

// Where a product's result goes when it is stored in 16 bits (tessera_packed_gemm_rounded):
// each element of the last K block's tile plus the K blocks before it (summed in fp32 in C as
// usual) plus its column's bias, rounded.
typedef struct {
    int fmt;
    uint16_t *out;
    int64_t ldo;
    const float *bias;   // one per column of C, or NULL
} rounding;

// One tile's rows × cols results from `tile` (row stride nr), plus `before` (the earlier K
// blocks' sums, row stride ldb; NULL for the first), plus `bias`, rounded into `out`: the
// operations, in order, of the fp32 product into C, a bias pass and a rounding pass. A whole
// row of a tile W wide runs with W a constant, whose loops vectorise without remainders (with
// the width a variable they ran at the speed of a pass over memory).
#define DEFINE_ROUND_TILE(NAME, ROUND, W)                                                           \
    ATTR static void NAME(const float *tile, int64_t rows, int64_t cols, const float *before, int64_t ldb, \
                          const float *bias, uint16_t *out, int64_t ldo) {                          \
        for (int64_t r = 0; r < rows; r++) {                                                        \
            float v[W];                                                                             \
            const float *t = tile + r * W, *p = before ? before + r * ldb : NULL;                   \
            uint16_t *o = out + r * ldo;                                                            \
            if (cols == W) {                                                                        \
                for (int j = 0; j < W; j++) v[j] = t[j];                                            \
                if (p) for (int j = 0; j < W; j++) v[j] += p[j];                                    \
                if (bias) for (int j = 0; j < W; j++) v[j] += bias[j];                              \
                for (int j = 0; j < W; j++) o[j] = ROUND(v[j]);                                     \
            } else {                                                                                \
                for (int64_t j = 0; j < cols; j++) v[j] = t[j];                                     \
                if (p) for (int64_t j = 0; j < cols; j++) v[j] += p[j];                             \
                if (bias) for (int64_t j = 0; j < cols; j++) v[j] += bias[j];                       \
                for (int64_t j = 0; j < cols; j++) o[j] = ROUND(v[j]);                              \
            }                                                                                       \
        }                                                                                           \
    }
DEFINE_ROUND_TILE(round_tile_bf16_16, round_bf16, 16)
DEFINE_ROUND_TILE(round_tile_bf16_32, round_bf16, 32)
DEFINE_ROUND_TILE(round_tile_f16_16, round_f16, 16)
DEFINE_ROUND_TILE(round_tile_f16_32, round_f16, 32)

typedef void (*tile_rounder)(const float *tile, int64_t rows, int64_t cols, const float *before, int64_t ldb,
                             const float *bias, uint16_t *out, int64_t ldo);

static tile_rounder rounder(int fmt, int64_t nr) {
    if (fmt == FMT_BF16) return nr == 32 ? round_tile_bf16_32 : round_tile_bf16_16;
    return nr == 32 ? round_tile_f16_32 : round_tile_f16_16;
}

// MARK: Blocked loops

typedef void (*micro_kernel)(int64_t kc, const float *restrict a, const float *restrict b, float *c, int64_t ldc,
                             float beta);
typedef struct { int64_t nr; micro_kernel run; } tile;   // B slivers of nr columns, and the kernel for them

typedef struct { float *a, *b; int64_t a_count, b_count; } pack_buffers;
static _Thread_local pack_buffers buffers;

static float *grow(float **p, int64_t *count, int64_t need) {
    if (*count >= need) return *p;
    free(*p);
    *p = aligned_alloc(64, (size_t)((need * 4 + 63) / 64 * 64));
    *count = *p ? need : 0;
    return *p;
}

// C (m×n, ldc) = op(A)·op(B) + beta·C on this thread; with `rd`, the result goes to rd's
// 16-bit output instead and C (beta 0) holds the sums of all K blocks but the last, so it is
// only written when K takes more than one.
ATTR static int gemm_serial(const operand *a, const operand *b, tile t, int64_t m, int64_t n, int64_t k,
                            float beta, float *c, int64_t ldc, const rounding *rd) {
    if (k == 0) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j];
        return 0;
    }
    float *pa = grow(&buffers.a, &buffers.a_count, MC / MR * sliver_stride(KC_MAX, MR, 0) + 16);
    float *pb = grow(&buffers.b, &buffers.b_count, NC / 16 * sliver_stride(KC_MAX, 16, 0) + 16);
    // K in equal blocks: a short last block (K = 384 as 256 + 128) would pass over all of C
    // again for little work; a K up to KC_MAX is one block, deeper than KC (+1–8% GFLOP/s on
    // the layer products with K = 384 or 1152 measured on Zen 4, none slower).
    int64_t blocks = k <= KC_MAX ? 1 : (k + KC - 1) / KC, depth = (k + blocks - 1) / blocks;
    if (!pa || !pb) return 1;
    int64_t nr = t.nr;
    float edge[MR * NR_MAX];
    for (int64_t jc = 0; jc < n; jc += NC) {
        int64_t nc = n - jc < NC ? n - jc : NC;
        for (int64_t pc = 0; pc < k; pc += depth) {
            int64_t kc = k - pc < depth ? k - pc : depth;
            float step_beta = pc == 0 ? beta : 1.0f;
            int64_t sa = sliver_stride(kc, MR, !a->trans), sb = sliver_stride(kc, nr, b->trans);
            pack_block(b, b->trans, jc, nc, nc, nr, pc, kc, pb);
            for (int64_t ic = 0; ic < m; ic += MC) {
                int64_t mc = m - ic < MC ? m - ic : MC;
                pack_block(a, !a->trans, ic, mc, m - ic, MR, pc, kc, pa);
                // The A block packed next: C's next rows, or its first rows at the next K block.
                int64_t next_ic = ic + MC < m ? ic + MC : 0, next_pc = ic + MC < m ? pc : pc + kc;
                int64_t next_mc = m - next_ic < MC ? m - next_ic : MC;
                int64_t next_kc = k - next_pc < depth ? k - next_pc : depth, slivers = (nc + nr - 1) / nr;
                for (int64_t jr = 0; jr < nc; jr += nr) {
                    int64_t cols = nc - jr < nr ? nc - jr : nr;
                    if (next_pc < k) prefetch_block(a, !a->trans, next_ic, next_mc, next_pc, next_kc, jr / nr, slivers);
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        int64_t rows = mc - ir < MR ? mc - ir : MR;
                        float *ct = c ? c + (ic + ir) * ldc + jc + jr : NULL;
                        if (rd && pc + kc == k) {
                            t.run(kc, pa + ir / MR * sa, pb + jr / nr * sb, edge, nr, 0);
                            rounder(rd->fmt, nr)(edge, rows, cols, pc > 0 ? ct : NULL, ldc,
                                                 rd->bias ? rd->bias + jc + jr : NULL,
                                                 rd->out + (ic + ir) * rd->ldo + jc + jr, rd->ldo);
                        } else if (rows == MR && cols == nr) {
                            t.run(kc, pa + ir / MR * sa, pb + jr / nr * sb, ct, ldc, step_beta);
                        } else {
                            t.run(kc, pa + ir / MR * sa, pb + jr / nr * sb, edge, nr, 0);
                            for (int64_t r = 0; r < rows; r++)
                                for (int64_t j = 0; j < cols; j++)
                                    ct[r * ldc + j] = edge[r * nr + j] + (step_beta == 0 ? 0 : step_beta * ct[r * ldc + j]);
                        }
                    }
                }
            }
        }
    }
    return 0;
}

// MARK: Entry point

typedef struct {
    operand a, b;
    tile tile;
    int64_t m, n, k, ldc, parts, split_rows;
    int64_t unit, units;   // the split's granule (a tile's rows or columns) and how many cover C
    float beta;
    float *c;
    rounding rd;   // rd.out NULL: the result is C itself
    int failed;
} split_gemm;

static void run_part(void *context, int64_t index, int64_t worker) {
    (void)worker;
    split_gemm *g = context;
    int64_t total = g->split_rows ? g->m : g->n;
    int64_t lo = g->units * index / g->parts * g->unit, hi = g->units * (index + 1) / g->parts * g->unit;
    if (hi > total) hi = total;
    if (lo >= hi) return;
    operand a = g->a, b = g->b;
    float *c = g->c;
    rounding rd = g->rd;
    if (g->split_rows) {
        a.base += (a.trans ? lo : lo * a.ld) * elem_size(a.fmt);
        if (c) c += lo * g->ldc;
        if (rd.out) rd.out += lo * rd.ldo;
        if (gemm_serial(&a, &b, g->tile, hi - lo, g->n, g->k, g->beta, c, g->ldc, rd.out ? &rd : NULL)) g->failed = 1;
    } else {
        b.base += (b.trans ? lo * b.ld : lo) * elem_size(b.fmt);
        if (c) c += lo;
        if (rd.out) { rd.out += lo; if (rd.bias) rd.bias += lo; }
        if (gemm_serial(&a, &b, g->tile, g->m, hi - lo, g->k, g->beta, c, g->ldc, rd.out ? &rd : NULL)) g->failed = 1;
    }
}

static int run_split(int fmt, int ta, int tb, int64_t m, int64_t n, int64_t k, const void *a, int64_t lda,
                     const void *b, int64_t ldb, float beta, float *c, int64_t ldc, rounding rd, int64_t threads) {
    int level = tessera_cpu_level();
    if (level < 1 || (fmt != FMT_F32 && fmt != FMT_BF16 && fmt != FMT_F16)) return 2;
    tile t = level >= 2 ? (tile){32, kernel_6x32} : (tile){16, kernel_6x16};
    split_gemm g = {
        .a = {a, lda, ta, fmt}, .b = {b, ldb, tb, fmt}, .tile = t,
        .m = m, .n = n, .k = k, .ldc = ldc, .beta = beta, .c = c, .rd = rd,
        .split_rows = m >= n, .unit = m >= n ? MR : t.nr,
    };
    // Each thread takes a band of rows (or columns) with its own packing: duplicated packing of
    // the shared operand costs O(k·n) against the band's O(m·n·k / threads) flops.
    g.units = ((m >= n ? m : n) + g.unit - 1) / g.unit;
    g.parts = threads < 1 ? 1 : threads;
    if (g.parts > g.units) g.parts = g.units > 0 ? g.units : 1;
    if ((double)m * n * k < 2e6 || tessera_in_parallel()) g.parts = 1;
    tessera_parallel_tasks(g.parts, g.parts, run_part, &g);
    return g.failed;
}

int tessera_packed_gemm(int fmt, int ta, int tb, int64_t m, int64_t n, int64_t k,
                        const void *a, int64_t lda, const void *b, int64_t ldb, float beta,
                        float *c, int64_t ldc, int64_t threads) {
    return run_split(fmt, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc, (rounding){0}, threads);
}

int tessera_packed_gemm_rounded(int fmt, int ta, int tb, int64_t m, int64_t n, int64_t k,
                                const void *a, int64_t lda, const void *b, int64_t ldb, const float *bias,
                                uint16_t *out, int64_t ldo, float *partial, int64_t ldp, int64_t threads) {
    if (fmt != FMT_BF16 && fmt != FMT_F16) return 2;
    if (k == 0 || (k > KC_MAX && !partial)) return 3;
    return run_split(fmt, ta, tb, m, n, k, a, lda, b, ldb, 0, partial, ldp, (rounding){fmt, out, ldo, bias}, threads);
}
