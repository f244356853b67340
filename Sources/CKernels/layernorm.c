// LayerNorm over rows of C values, forward (optionally on a residual sum formed row by row
// as it is read) and backward, compiled once per level.
//
// Bits: the same at every level, and those of the Swift loops these replaced. A row's sums
// run in 16 lanes (element i in lane i mod 16), the lanes are added in order starting from
// −0 and the elements past the last whole 16 after them; nothing is fused into a
// multiply-add (contract off), so vector width and FMA units change the speed only.
#include "ckernels.h"
#include "dispatch.h"
#include "rounding.h"
#include <stdint.h>

// 16 lanes as one value of the compiler's vector extension: clang's SLP pass left lanes kept
// in an array scalar. At each level it becomes one zmm, two ymm or four xmm registers.
// (Macros, not functions: a 64-byte vector passed by value changes the ABI below AVX-512.)
typedef float lanes16 __attribute__((vector_size(64)));
#define LOAD16(V, P) lanes16 V; __builtin_memcpy(&V, (P), sizeof V)
#define ADD_LANES(RESULT, V)                                                                       \
    RESULT = -0.0f;                                                                                \
    for (int q = 0; q < 16; q++) RESULT += (V)[q]

// Σ over the row of EXPR (of the vector or scalar X at element i), 16 lanes then the
// remainder, as described above.
#define ROW_SUM(RESULT, EXPR)                                                                      \
    {                                                                                              \
        lanes16 lane_ = {0};                                                                       \
        for (int64_t i = 0; i < whole; i += 16) { LOAD16(X, x + i); lane_ += (EXPR); }             \
        ADD_LANES(RESULT, lane_);                                                                  \
        for (int64_t i = whole; i < C; i++) { float X = x[i]; RESULT += (EXPR); }                  \
    }

// out = (x − mean)·rstd·w (+ b), stored by STORE(i, value).
#define NORMALISE(STORE)                                                                           \
    if (b) {                                                                                       \
        _Pragma("clang loop vectorize(assume_safety)") for (int64_t i = 0; i < C; i++)              \
            STORE(i, (x[i] - m) * s * w[i] + b[i]);                                                \
    } else {                                                                                       \
        _Pragma("clang loop vectorize(assume_safety)") for (int64_t i = 0; i < C; i++)              \
            STORE(i, (x[i] - m) * s * w[i]);                                                       \
    }
#define STORE_F32(i, v) o32[i] = (v)
#define STORE_BF16(i, v) o16[i] = round_bf16(v)
#define STORE_F16(i, v) o16[i] = round_f16(v)

// dx += (w·dy − mean(w·dy) − x̂·mean(w·dy·x̂))·rstd and dw += x̂·dy, then ROUND(i) (the row of
// dx rounded into the next product's operand, or nothing).
#define INPUT_GRADIENT(ROUND)                                                                      \
    _Pragma("clang loop vectorize(assume_safety)") for (int64_t i = 0; i < C; i++) {               \
        float norm = (x[i] - m) * s, dnorm = w[i] * dy[i];                                         \
        dx[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;                                \
        dw[i] += norm * dy[i];                                                                     \
        ROUND                                                                                      \
    }

#define DEFINE_LAYERNORM(SUFFIX, ATTR)                                                             \
    ATTR static void ln_forward_##SUFFIX(float *out32, uint16_t *out16, int bf16, float *mean, float *rstd,  \
                                         const float *inp, float *sum, const float *addend, const float *w,  \
                                         const float *b, int64_t rows, int64_t C, float eps) {     \
        _Pragma("clang fp contract(off)")                                                          \
        int64_t whole = C / 16 * 16;                                                               \
        for (int64_t r = 0; r < rows; r++) {                                                       \
            const float *x = inp + r * C;                                                          \
            if (sum) {                                                                             \
                float *xs = sum + r * C;                                                           \
                const float *a = addend + r * C;                                                   \
                _Pragma("clang loop vectorize(assume_safety)") for (int64_t i = 0; i < C; i++) xs[i] = xs[i] + a[i]; \
                x = xs;                                                                            \
            }                                                                                      \
            float m, v;                                                                            \
            ROW_SUM(m, X)                                                                          \
            m /= (float)C;                                                                         \
            ROW_SUM(v, (X - m) * (X - m))                                                          \
            v /= (float)C;                                                                         \
            float s = 1.0f / __builtin_sqrtf(v + eps);                                             \
            float *o32 = out32 ? out32 + r * C : 0;                                                \
            uint16_t *o16 = out16 ? out16 + r * C : 0;                                             \
            if (o32) { NORMALISE(STORE_F32) }                                                      \
            else if (bf16) { NORMALISE(STORE_BF16) }                                               \
            else { NORMALISE(STORE_F16) }                                                          \
            mean[r] = m;                                                                           \
            rstd[r] = s;                                                                           \
        }                                                                                          \
    }                                                                                              \
    ATTR static void ln_backward_##SUFFIX(float *dinp, float *dw, float *db, const float *dout,    \
                                          const float *inp, const float *w, const float *mean,     \
                                          const float *rstd, int64_t rows, int64_t C, uint16_t *rounded, \
                                          int bf16) {                                              \
        _Pragma("clang fp contract(off)")                                                          \
        int64_t whole = C / 16 * 16;                                                               \
        for (int64_t r = 0; r < rows; r++) {                                                       \
            const float *x = inp + r * C, *dy = dout + r * C;                                      \
            float *dx = dinp + r * C, m = mean[r], s = rstd[r];                                    \
            /* Both sums in one pass, each in its own 16 lanes (as ROW_SUM adds them). */          \
            lanes16 lane_d = {0}, lane_dn = {0};                                                   \
            for (int64_t i = 0; i < whole; i += 16) {                                              \
                LOAD16(xv, x + i); LOAD16(wv, w + i); LOAD16(dyv, dy + i);                         \
                lanes16 norm = (xv - m) * s, dnorm = wv * dyv;                                     \
                lane_d += dnorm;                                                                   \
                lane_dn += dnorm * norm;                                                           \
            }                                                                                      \
            float dnorm_mean, dnorm_norm_mean;                                                     \
            ADD_LANES(dnorm_mean, lane_d);                                                         \
            ADD_LANES(dnorm_norm_mean, lane_dn);                                                   \
            for (int64_t i = whole; i < C; i++) {                                                  \
                float norm = (x[i] - m) * s, dnorm = w[i] * dy[i];                                 \
                dnorm_mean += dnorm;                                                               \
                dnorm_norm_mean += dnorm * norm;                                                   \
            }                                                                                      \
            dnorm_mean /= (float)C;                                                                \
            dnorm_norm_mean /= (float)C;                                                           \
            uint16_t *dx16 = rounded ? rounded + r * C : 0;                                        \
            if (!dx16) { INPUT_GRADIENT() }                                                        \
            else if (bf16) { INPUT_GRADIENT(dx16[i] = round_bf16(dx[i]);) }                        \
            else { INPUT_GRADIENT(dx16[i] = round_f16(dx[i]);) }                                   \
            if (db) {                                                                              \
                _Pragma("clang loop vectorize(assume_safety)") for (int64_t i = 0; i < C; i++) db[i] += dy[i]; \
            }                                                                                      \
        }                                                                                          \
    }

DEFINE_LAYERNORM(generic, )
DEFINE_LAYERNORM(avx2, LEVEL_AVX2)
DEFINE_LAYERNORM(avx512, LEVEL_AVX512)

void tessera_layernorm_forward(float *out32, uint16_t *out16, int bf16, float *mean, float *rstd, const float *inp,
                               const float *weight, const float *bias, int64_t rows, int64_t C, float eps) {
    DISPATCH(ln_forward, out32, out16, bf16, mean, rstd, inp, 0, 0, weight, bias, rows, C, eps);
}

void tessera_layernorm_forward_sum(float *out32, uint16_t *out16, int bf16, float *mean, float *rstd, float *sum,
                                   const float *addend, const float *weight, const float *bias, int64_t rows, int64_t C,
                                   float eps) {
    DISPATCH(ln_forward, out32, out16, bf16, mean, rstd, sum, sum, addend, weight, bias, rows, C, eps);
}

void tessera_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                                const float *weight, const float *mean, const float *rstd, int64_t rows, int64_t C,
                                uint16_t *rounded, int bf16) {
    DISPATCH(ln_backward, dinp, dweight, dbias, dout, inp, weight, mean, rstd, rows, C, rounded, bf16);
}
