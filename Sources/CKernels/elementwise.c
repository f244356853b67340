// Element-wise kernels written as plain loops over branch-free math so the compiler
// vectorises them; each is compiled three times, for AVX-512, for AVX2 + FMA + F16C and for
// the baseline (SSE2), and the widest copy the CPU runs is chosen at run time.
#include "ckernels.h"
#include "rounding.h"
#include "dispatch.h"
#include <dnnl.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

// e^x with a degree-6 polynomial after range reduction x = n·ln2 + r, |r| ≤ ln2/2;
// relative error below 2e-7 over the fp32 range (inputs clamped to [-87.3, 88.7]).
static inline float fast_exp(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    float n = __builtin_roundf(x * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.42860682030941723e-6f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * bits_to_float((uint32_t)((int32_t)n + 127) << 23);
}

// tanh(u) = 1 − 2/(e^{2u} + 1); |u| is clamped at 9 where tanh is 1 to fp32 precision.
static inline float fast_tanh(float u) {
    u = u < -9.0f ? -9.0f : (u > 9.0f ? 9.0f : u);
    return 1.0f - 2.0f / (fast_exp(2.0f * u) + 1.0f);
}

#define GELU_K 0.7978845608028654f

// GELU is bound by arithmetic (an exp polynomial and a division per element), not by memory:
// eight vectors in flight per iteration hide the division's latency, which one vector per
// iteration leaves exposed. Interleaving only regroups independent elements, so every level
// computes the same bits as before. Zen 5, one thread, 12.6M elements: bf16 forward
// 7.2 -> 4.5 ms, backward 8.0 -> 5.2; fp32 4.3 -> 3.2 and 5.6 -> 4.5; AVX2 copies' bf16
// 15.8 -> 12.5 and 16.8 -> 10.9. (The conversions are bound by memory: no change there.)
#define GELU_LOOP _Pragma("clang loop vectorize(assume_safety) interleave_count(8)")

// GELU with its slope, element by element; the loops below are vectorised over these (and
// the conversions of rounding.h).
static inline float gelu_value(float v) { return 0.5f * v * (1.0f + fast_tanh(GELU_K * (v + 0.044715f * v * v * v))); }
static inline float gelu_slope(float v) {
    float th = fast_tanh(GELU_K * (v + 0.044715f * v * v * v));
    return 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * GELU_K * (1.0f + 3.0f * 0.044715f * v * v);
}

#define DEFINE_KERNELS(SUFFIX, ATTR)                                                              \
    ATTR static void gelu_fwd_##SUFFIX(float *out, const float *x, int64_t n) {                   \
        /* out may alias x (in place); element i reads only x[i]. */                              \
        GELU_LOOP                                                                                 \
        for (int64_t i = 0; i < n; i++) {                                                         \
            out[i] = gelu_value(x[i]);                                                            \
        }                                                                                         \
    }                                                                                             \
    ATTR static void gelu_bwd_##SUFFIX(float *dx, const float *x, const float *dy, int64_t n) {   \
        /* dx may alias dy; each element reads only its own inputs, so vectorising is safe. */    \
        GELU_LOOP                                                                                 \
        for (int64_t i = 0; i < n; i++) {                                                         \
            dx[i] = dy[i] * gelu_slope(x[i]);                                                     \
        }                                                                                         \
    }                                                                                             \
    ATTR static float exp_shift_sum_##SUFFIX(float *x, int64_t n, float shift) {                  \
        /* Lane-wise partial sums: a fixed order for a given n, so still deterministic. */         \
        _Pragma("clang fp reassociate(on)")                                                       \
        float s = 0.0f;                                                                           \
        for (int64_t i = 0; i < n; i++) { float e = fast_exp(x[i] - shift); x[i] = e; s += e; }   \
        return s;                                                                                 \
    }                                                                                             \
    ATTR static float max_value_##SUFFIX(const float *x, int64_t n, float init) {                 \
        /* 16 independent lanes: a scalar max chain waits on each compare; order does not */     \
        /* matter for a maximum, so the result is the same bits as a sequential scan. */          \
        float lane[16];                                                                           \
        for (int j = 0; j < 16; j++) lane[j] = init;                                              \
        int64_t i = 0;                                                                            \
        for (; i + 16 <= n; i += 16)                                                              \
            for (int j = 0; j < 16; j++) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];       \
        float m = init;                                                                           \
        for (int j = 0; j < 16; j++) m = lane[j] > m ? lane[j] : m;                               \
        for (; i < n; i++) m = x[i] > m ? x[i] : m;                                               \
        return m;                                                                                 \
    }                                                                                             \
    ATTR static void to_bf16_##SUFFIX(uint16_t *dst, const float *src, int64_t n) {               \
        _Pragma("clang loop vectorize(assume_safety)") for (int64_t i = 0; i < n; i++) dst[i] = round_bf16(src[i]); \
    }                                                                                             \
    ATTR static void from_bf16_##SUFFIX(float *dst, const uint16_t *src, int64_t n) {             \
        _Pragma("clang loop vectorize(assume_safety)") for (int64_t i = 0; i < n; i++) dst[i] = widen_bf16(src[i]); \
    }                                                                                             \
    ATTR static void to_f16_##SUFFIX(uint16_t *dst, const float *src, int64_t n) {                \
        _Pragma("clang loop vectorize(assume_safety)") for (int64_t i = 0; i < n; i++) dst[i] = round_f16(src[i]); \
    }                                                                                             \
    ATTR static void from_f16_##SUFFIX(float *dst, const uint16_t *src, int64_t n) {              \
        _Pragma("clang loop vectorize(assume_safety)") for (int64_t i = 0; i < n; i++) dst[i] = widen_f16(src[i]); \
    }

// AdamW over n elements; with `low` it also stores each updated parameter rounded to bf16 or
// fp16 (the model's compute copy, written while the value is in a register instead of in a
// pass of its own). The update is the same expression either way, so the same bits. The
// gradient is scaled (clipped) as it is read, in a statement of its own so nothing fuses it:
// the bits of scaling the gradients in a pass before, without that pass over memory.
#define ADAMW_LOOP(STORE_LOW)                                                                     \
    for (int64_t i = 0; i < n; i++) {                                                             \
        float gi = g[i] * g_scale;                                                                \
        float mi = b1 * m[i] + (1.0f - b1) * gi;                                                  \
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;                                             \
        m[i] = mi; v[i] = vi;                                                                     \
        float denom = __builtin_sqrtf(vi) * inv_bc2_sqrt + eps;                                   \
        float pi = p[i] * shrink - step_size * mi / denom;                                        \
        p[i] = pi;                                                                                \
        STORE_LOW                                                                                 \
    }

#define DEFINE_OPTIM(SUFFIX, ATTR)                                                                 \
    ATTR static void adamw_##SUFFIX(float *p, const float *g, float g_scale, float *m, float *v, int64_t n,   \
                                    float b1, float b2,                                           \
                                    float step_size, float inv_bc2_sqrt, float eps, float shrink, uint16_t *low, \
                                    int bf16) {                                                   \
        if (!low) {                                                                               \
            ADAMW_LOOP()                                                                          \
        } else if (bf16) {                                                                        \
            ADAMW_LOOP(low[i] = round_bf16(pi);)                                                  \
        } else {                                                                                  \
            ADAMW_LOOP(low[i] = round_f16(pi);)                                                   \
        }                                                                                         \
    }                                                                                             \
    ATTR static double sumsq_##SUFFIX(const float *x, int64_t n) {                                \
        double s = 0.0;                                                                           \
        _Pragma("clang loop vectorize(enable) interleave(enable)")                                \
        for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];                         \
        return s;                                                                                 \
    }

// GELU of a 16-bit model in one pass: the pre-activation is rounded and stored (backward
// reads it), GELU is taken of the rounded value, and the output is rounded (or, where the GEMM
// stored the rounded pre-activation itself, just the second half); and backward
// from the stored pre-activation, writing the input gradient in fp32 and rounded, or rounded
// only (where nothing reads the fp32 values: no bias gradient to sum).
#define DEFINE_LOW_GELU(SUFFIX, ATTR)                                                             \
    ATTR static void gelu_fwd_bf16_##SUFFIX(uint16_t *pre, uint16_t *out, const float *x, int64_t n) { \
        GELU_LOOP                                                                                 \
        for (int64_t i = 0; i < n; i++) {                                                         \
            uint16_t h = round_bf16(x[i]);                                                        \
            pre[i] = h;                                                                           \
            out[i] = round_bf16(gelu_value(widen_bf16(h)));                                       \
        }                                                                                         \
    }                                                                                             \
    ATTR static void gelu_fwd_f16_##SUFFIX(uint16_t *pre, uint16_t *out, const float *x, int64_t n) { \
        GELU_LOOP                                                                                 \
        for (int64_t i = 0; i < n; i++) {                                                         \
            uint16_t h = round_f16(x[i]);                                                         \
            pre[i] = h;                                                                           \
            out[i] = round_f16(gelu_value(widen_f16(h)));                                         \
        }                                                                                         \
    }                                                                                             \
    ATTR static void gelu_stored_bf16_##SUFFIX(const uint16_t *pre, uint16_t *out, int64_t n) {   \
        GELU_LOOP                                                                                 \
        for (int64_t i = 0; i < n; i++) out[i] = round_bf16(gelu_value(widen_bf16(pre[i])));     \
    }                                                                                             \
    ATTR static void gelu_stored_f16_##SUFFIX(const uint16_t *pre, uint16_t *out, int64_t n) {    \
        GELU_LOOP                                                                                 \
        for (int64_t i = 0; i < n; i++) out[i] = round_f16(gelu_value(widen_f16(pre[i])));       \
    }                                                                                             \
    ATTR static void gelu_bwd_bf16_##SUFFIX(float *dx, uint16_t *dx16, const uint16_t *pre, const float *dy, int64_t n) { \
        GELU_LOOP                                                                                 \
        for (int64_t i = 0; i < n; i++) {                                                         \
            float d = dy[i] * gelu_slope(widen_bf16(pre[i]));                                     \
            dx[i] = d;                                                                            \
            dx16[i] = round_bf16(d);                                                              \
        }                                                                                         \
    }                                                                                             \
    ATTR static void gelu_bwd_f16_##SUFFIX(float *dx, uint16_t *dx16, const uint16_t *pre, const float *dy, int64_t n) { \
        GELU_LOOP                                                                                 \
        for (int64_t i = 0; i < n; i++) {                                                         \
            float d = dy[i] * gelu_slope(widen_f16(pre[i]));                                      \
            dx[i] = d;                                                                            \
            dx16[i] = round_f16(d);                                                               \
        }                                                                                         \
    }                                                                                             \
    ATTR static void gelu_bwd_rounded_bf16_##SUFFIX(uint16_t *dx16, const uint16_t *pre, const float *dy, int64_t n) { \
        GELU_LOOP                                                                                 \
        for (int64_t i = 0; i < n; i++) dx16[i] = round_bf16(dy[i] * gelu_slope(widen_bf16(pre[i]))); \
    }                                                                                             \
    ATTR static void gelu_bwd_rounded_f16_##SUFFIX(uint16_t *dx16, const uint16_t *pre, const float *dy, int64_t n) { \
        GELU_LOOP                                                                                 \
        for (int64_t i = 0; i < n; i++) dx16[i] = round_f16(dy[i] * gelu_slope(widen_f16(pre[i]))); \
    }

DEFINE_LOW_GELU(generic, )
DEFINE_LOW_GELU(avx2, __attribute__((target("avx2,fma,f16c"))))
DEFINE_LOW_GELU(avx512, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"))))

// Strided blocks: an attention head's rows of hs values, converted into or out of the kernel's
// scratch. Sixteen values at a time with the count a constant, so each row's loop vectorises
// without the set-up and remainder a call per row paid (the per-row calls ran no faster than a
// pass over memory).
#define CONVERT_ROWS(CONVERT)                                                                     \
    for (int64_t r = 0; r < rows; r++) {                                                          \
        int64_t j = 0;                                                                            \
        for (; j + 16 <= cols; j += 16)                                                           \
            for (int q = 0; q < 16; q++) dst[r * ldd + j + q] = CONVERT(src[r * lds + j + q]);    \
        for (; j < cols; j++) dst[r * ldd + j] = CONVERT(src[r * lds + j]);                       \
    }
#define DEFINE_ROW_CONVERSIONS(SUFFIX, ATTR)                                                      \
    ATTR static void widen_rows_##SUFFIX(int bf16, float *dst, int64_t ldd, const uint16_t *src, int64_t lds, \
                                         int64_t rows, int64_t cols) {                            \
        if (bf16) { CONVERT_ROWS(widen_bf16) } else { CONVERT_ROWS(widen_f16) }                   \
    }                                                                                             \
    ATTR static void narrow_rows_##SUFFIX(int bf16, uint16_t *dst, int64_t ldd, const float *src, int64_t lds, \
                                          int64_t rows, int64_t cols) {                           \
        if (bf16) { CONVERT_ROWS(round_bf16) } else { CONVERT_ROWS(round_f16) }                   \
    }                                                                                             \
    ATTR static void narrow_scaled_##SUFFIX(int bf16, uint16_t *dst, const float *src, int64_t n, float s) { \
        if (bf16) {                                                                               \
            _Pragma("clang loop vectorize(assume_safety)") for (int64_t i = 0; i < n; i++) dst[i] = round_bf16(src[i] * s); \
        } else {                                                                                  \
            _Pragma("clang loop vectorize(assume_safety)") for (int64_t i = 0; i < n; i++) dst[i] = round_f16(src[i] * s); \
        }                                                                                         \
    }

// sums[j] += Σ_r x[r·ld + j]: each column summed in row order from its own value, the bits
// of the plain loop over rows; 256 columns at a time run down the rows with their running
// sums in L1, so each row's stretch is one vectorised pass.
#define COLUMN_STRIP 256
#define DEFINE_COLUMN_SUMS(SUFFIX, ATTR)                                                          \
    ATTR static void column_sums_##SUFFIX(float *sums, const float *x, int64_t rows, int64_t cols, int64_t ld) { \
        float acc[COLUMN_STRIP];                                                                  \
        for (int64_t j0 = 0; j0 < cols; j0 += COLUMN_STRIP) {                                     \
            int64_t w = cols - j0 < COLUMN_STRIP ? cols - j0 : COLUMN_STRIP;                      \
            for (int64_t j = 0; j < w; j++) acc[j] = sums[j0 + j];                                \
            for (int64_t r = 0; r < rows; r++) {                                                  \
                const float *row = x + r * ld + j0;                                               \
                _Pragma("clang loop vectorize(assume_safety)") for (int64_t j = 0; j < w; j++) acc[j] += row[j]; \
            }                                                                                     \
            for (int64_t j = 0; j < w; j++) sums[j0 + j] = acc[j];                                \
        }                                                                                         \
    }

// Attention backward's softmax gradient on a block pair with bf16 block products: for row i's
// first keys(i) columns (`half` for rows before `half`, else `keys`), dS = P·(dP − D_i)·scale
// into dp, and P and dS rounded to bf16 for the products, in one pass. The product is taken
// left to right as written, nothing fused: the bits of that loop followed by two conversions.
#define DEFINE_SOFTMAX_GRADIENT(SUFFIX, ATTR)                                                     \
    ATTR static void softmax_grad_bf16_##SUFFIX(const float *p, float *dp, int64_t ld, int64_t rows, int64_t half, \
                                                int64_t keys, const float *delta, float scale, uint16_t *p16, \
                                                uint16_t *ds16) {                                 \
        _Pragma("clang fp contract(off)")                                                         \
        for (int64_t i = 0; i < rows; i++) {                                                      \
            const float *pr = p + i * ld;                                                         \
            float *dr = dp + i * ld, d = delta[i];                                                \
            uint16_t *pl = p16 + i * ld, *dl = ds16 + i * ld;                                     \
            int64_t n = i < half ? half : keys;                                                   \
            _Pragma("clang loop vectorize(assume_safety)") for (int64_t j = 0; j < n; j++) {      \
                float s = pr[j] * (dr[j] - d) * scale;                                            \
                dr[j] = s;                                                                        \
                pl[j] = round_bf16(pr[j]);                                                        \
                dl[j] = round_bf16(s);                                                            \
            }                                                                                     \
        }                                                                                         \
    }

// Attention backward's D_i = Σ_c dO[i][c]·O[i][c] over each row of one head (rows `ldg` and
// `ldo` elements apart, in the model's storage format), each sum from +0 in column order,
// product then add: the bits of the one-row loop it replaces. Rows run eight at a time, their
// chains interleaved in scalar registers, since one row's chain is bound by the adder's
// latency (clang's SLP pass packs the eight into one vector, filled an element at a time),
// and the rows sixteen ahead are prefetched: a head's rows are short pieces of long ones, read
// once, from memory. On `small`'s heads out of cache: 11.7 ms per four layers against 25 for
// the one-row loop, 15.2 without the prefetches (harness, one Zen 5 thread).
#define ROW_DOTS(NAME, TYPE, WIDEN, ATTR)                                                         \
    ATTR static void NAME(float *out, const TYPE *g, int64_t ldg, const TYPE *o, int64_t ldo, int64_t rows, \
                          int64_t n) {                                                            \
        _Pragma("clang fp contract(off)")                                                         \
        int64_t r = 0;                                                                            \
        for (; r + 8 <= rows; r += 8) {                                                           \
            float d[8] = {0};                                                                     \
            if (r + 24 <= rows)                                                                   \
                for (int q = 0; q < 8; q++)                                                       \
                    for (int64_t c = 0; c < n; c += 64 / (int64_t)sizeof(TYPE)) {                 \
                        __builtin_prefetch(g + (r + 16 + q) * ldg + c);                           \
                        __builtin_prefetch(o + (r + 16 + q) * ldo + c);                           \
                    }                                                                             \
            _Pragma("clang loop vectorize(disable)")                                              \
            for (int64_t c = 0; c < n; c++) {                                                     \
                _Pragma("clang loop vectorize(disable) unroll(full)")                             \
                for (int q = 0; q < 8; q++) d[q] += WIDEN(g[(r + q) * ldg + c]) * WIDEN(o[(r + q) * ldo + c]); \
            }                                                                                     \
            for (int q = 0; q < 8; q++) out[r + q] = d[q];                                        \
        }                                                                                         \
        for (; r < rows; r++) {                                                                   \
            float d = 0;                                                                          \
            for (int64_t c = 0; c < n; c++) d += WIDEN(g[r * ldg + c]) * WIDEN(o[r * ldo + c]);   \
            out[r] = d;                                                                           \
        }                                                                                         \
    }
#define SAME(x) (x)
#define DEFINE_ROW_DOTS(SUFFIX, ATTR)                                                             \
    ROW_DOTS(row_dots_f32_##SUFFIX, float, SAME, ATTR)                                            \
    ROW_DOTS(row_dots_bf16_##SUFFIX, uint16_t, widen_bf16, ATTR)                                  \
    ROW_DOTS(row_dots_f16_##SUFFIX, uint16_t, widen_f16, ATTR)

DEFINE_ROW_DOTS(generic, )
DEFINE_ROW_DOTS(avx2, LEVEL_AVX2)
DEFINE_ROW_DOTS(avx512, LEVEL_AVX512)

// x *= s, one rounding per element at any width: the bits of the scalar loop, in the
// CPU's widest vectors (Swift's own loop was built for SSE).
#define DEFINE_SCALE(SUFFIX, ATTR)                                                                \
    ATTR static void scale_##SUFFIX(float *x, int64_t n, float s) {                               \
        _Pragma("clang loop vectorize(assume_safety)") for (int64_t i = 0; i < n; i++) x[i] = x[i] * s; \
    }

DEFINE_SCALE(generic, )
DEFINE_SCALE(avx2, LEVEL_AVX2)
DEFINE_SCALE(avx512, LEVEL_AVX512)

DEFINE_SOFTMAX_GRADIENT(generic, )
DEFINE_SOFTMAX_GRADIENT(avx2, LEVEL_AVX2)
DEFINE_SOFTMAX_GRADIENT(avx512, LEVEL_AVX512)

DEFINE_COLUMN_SUMS(generic, )
DEFINE_COLUMN_SUMS(avx2, LEVEL_AVX2)
DEFINE_COLUMN_SUMS(avx512, LEVEL_AVX512)

DEFINE_ROW_CONVERSIONS(generic, )
DEFINE_ROW_CONVERSIONS(avx2, __attribute__((target("avx2,fma,f16c"))))
DEFINE_ROW_CONVERSIONS(avx512, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"))))

DEFINE_OPTIM(generic, )
DEFINE_OPTIM(avx2, __attribute__((target("avx2,fma,f16c"))))
DEFINE_OPTIM(avx512, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"))))

DEFINE_KERNELS(generic, )
DEFINE_KERNELS(avx2, __attribute__((target("avx2,fma,f16c"))))
DEFINE_KERNELS(avx512, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"))))

// Levels: 0 baseline, 1 AVX2 + FMA + F16C, 2 AVX-512 (F, BW, VL, DQ), 3 AVX-512 with BF16,
// 4 that and AMX-BF16 tiles, which oneDNN's bf16 matmul uses (Intel Sapphire Rapids on), and
// amx_gemm.c for attention's blocks.
static int hardware = -1, level = -1, ceiling = -1;

int tessera_cpu_hardware_level(void) {
    if (hardware < 0) {
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
        int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
        int bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
        int amx = bf16 && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16");
        hardware = amx ? 4 : bf16 ? 3 : avx512 ? 2 : avx2 ? 1 : 0;
    }
    return hardware;
}

// The highest level usable here: AMX counts only where oneDNN runs its matmul on it (the
// kernel grants the tiles' state to processes that ask, and ONEDNN_MAX_CPU_ISA may cap it).
// Asking oneDNN fixes its ISA, so this runs after TESSERA_ISA has set its cap.
static int usable_level(void) {
    if (ceiling < 0) {
        ceiling = tessera_cpu_hardware_level();
        if (ceiling == 4) {
            dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
            if (isa < dnnl_cpu_isa_avx512_core_amx || isa == dnnl_cpu_isa_all) ceiling = 3;
        }
    }
    return ceiling;
}

static const char *level_names[] = {"generic", "avx2", "avx512", "avx512bf16", "amx"};
#define LEVELS ((int)(sizeof level_names / sizeof level_names[0]))

const char *tessera_isa_level_name(int level) { return level >= 0 && level < LEVELS ? level_names[level] : "?"; }

int tessera_isa_level_named(const char *name) {
    for (int i = 0; i < LEVELS; i++)
        if (!strcmp(name, level_names[i])) return i;
    return -1;
}

// TESSERA_ISA=generic|avx2|avx512|avx512bf16 lowers the level, so one machine can run every
// copy (a name it does not know is refused where the CLI starts: see CPU.requestedLevelError).
int tessera_cpu_level(void) {
    if (level < 0) {
        const char *isa = getenv("TESSERA_ISA");
        int cap = isa ? tessera_isa_level_named(isa) : -1;
        if (cap >= 0) {
            // oneDNN dispatches on its own: cap it the same way (before its first use) unless
            // the user already did, so a forced level behaves like such a CPU throughout.
            static const char *onednn[] = {"SSE41", "AVX2", "AVX512_CORE", "AVX512_CORE_BF16", "ALL"};
            setenv("ONEDNN_MAX_CPU_ISA", onednn[cap], 0);
        }
        int l = usable_level();
        level = cap >= 0 && cap < l ? cap : l;
    }
    return level;
}

int tessera_cpu_usable_level(void) {
    tessera_cpu_level();   // TESSERA_ISA's cap on oneDNN first
    return usable_level();
}

void tessera_set_cpu_level(int requested) {
    int top = tessera_cpu_usable_level();
    level = requested < 0 ? -1 : (requested < top ? requested : top);
}

void tessera_gelu_forward(float *out, const float *x, int64_t n) { DISPATCH(gelu_fwd, out, x, n); }
void tessera_gelu_backward(float *dx, const float *x, const float *dy, int64_t n) { DISPATCH(gelu_bwd, dx, x, dy, n); }
float tessera_max_value(const float *x, int64_t n, float init) { return SELECT(max_value)(x, n, init); }
float tessera_exp_shift_sum(float *x, int64_t n, float shift) {
    return SELECT(exp_shift_sum)(x, n, shift);
}
void tessera_f32_to_bf16(uint16_t *dst, const float *src, int64_t n) { DISPATCH(to_bf16, dst, src, n); }
void tessera_bf16_to_f32(float *dst, const uint16_t *src, int64_t n) { DISPATCH(from_bf16, dst, src, n); }

void tessera_adamw(float *p, const float *g, float g_scale, float *m, float *v, int64_t n, float b1, float b2,
                   float step_size, float inv_bc2_sqrt, float eps, float shrink, uint16_t *low, int bf16) {
    DISPATCH(adamw, p, g, g_scale, m, v, n, b1, b2, step_size, inv_bc2_sqrt, eps, shrink, low, bf16);
}

void tessera_softmax_gradient_bf16(const float *p, float *dp, int64_t ld, int64_t rows, int64_t half, int64_t keys,
                                   const float *delta, float scale, uint16_t *p16, uint16_t *ds16) {
    DISPATCH(softmax_grad_bf16, p, dp, ld, rows, half, keys, delta, scale, p16, ds16);
}

void tessera_scale(float *x, int64_t n, float s) { DISPATCH(scale, x, n, s); }

void tessera_row_dots(int format, float *out, const void *g, int64_t ldg, const void *o, int64_t ldo, int64_t rows,
                      int64_t n) {
    if (format == 0) DISPATCH(row_dots_f32, out, g, ldg, o, ldo, rows, n);
    else if (format == 1) DISPATCH(row_dots_bf16, out, g, ldg, o, ldo, rows, n);
    else DISPATCH(row_dots_f16, out, g, ldg, o, ldo, rows, n);
}

void tessera_column_sums(float *sums, const float *x, int64_t rows, int64_t cols, int64_t ld) {
    DISPATCH(column_sums, sums, x, rows, cols, ld);
}

double tessera_sum_of_squares(const float *x, int64_t n) {
    return SELECT(sumsq)(x, n);
}

void tessera_f32_to_f16(uint16_t *dst, const float *src, int64_t n) { DISPATCH(to_f16, dst, src, n); }
void tessera_f16_to_f32(float *dst, const uint16_t *src, int64_t n) { DISPATCH(from_f16, dst, src, n); }
void tessera_widen_rows(int bf16, float *dst, int64_t ldd, const uint16_t *src, int64_t lds, int64_t rows,
                        int64_t cols) {
    DISPATCH(widen_rows, bf16, dst, ldd, src, lds, rows, cols);
}
void tessera_narrow_rows(int bf16, uint16_t *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows,
                         int64_t cols) {
    DISPATCH(narrow_rows, bf16, dst, ldd, src, lds, rows, cols);
}
void tessera_narrow_scaled(int bf16, uint16_t *dst, const float *src, int64_t n, float scale) {
    DISPATCH(narrow_scaled, bf16, dst, src, n, scale);
}

void tessera_gelu_forward_low(int bf16, uint16_t *pre, uint16_t *out, const float *x, int64_t n) {
    if (bf16) DISPATCH(gelu_fwd_bf16, pre, out, x, n); else DISPATCH(gelu_fwd_f16, pre, out, x, n);
}
void tessera_gelu_forward_stored(int bf16, const uint16_t *pre, uint16_t *out, int64_t n) {
    if (bf16) DISPATCH(gelu_stored_bf16, pre, out, n); else DISPATCH(gelu_stored_f16, pre, out, n);
}
void tessera_gelu_backward_low(int bf16, float *dx, uint16_t *dx16, const uint16_t *pre, const float *dy, int64_t n) {
    if (!dx) {
        if (bf16) DISPATCH(gelu_bwd_rounded_bf16, dx16, pre, dy, n); else DISPATCH(gelu_bwd_rounded_f16, dx16, pre, dy, n);
    } else if (bf16) DISPATCH(gelu_bwd_bf16, dx, dx16, pre, dy, n); else DISPATCH(gelu_bwd_f16, dx, dx16, pre, dy, n);
}
