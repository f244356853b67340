// Small C kernels behind the Swift `Kernels` module: oneDNN GEMMs (fp32 and bf16) and
// vectorised element-wise math with runtime CPU dispatch (AVX-512 when present).
#ifndef TESSERA_CKERNELS_H
#define TESSERA_CKERNELS_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Row-major C = alpha·op(A)·op(B) + beta·C in fp32 through oneDNN. Returns 0 on success.
int tessera_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/// Row-major C = op(A)·op(B) + beta·C with bf16 operands and fp32 accumulation/output,
/// through a cached oneDNN matmul primitive. Returns 0 on success.
int tessera_bf16_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                      const uint16_t *a, int64_t lda, const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc);
/// Row-major C = op(A)·op(B) + bias (one fp32 value per column; bias may be NULL) rounded to
/// bf16 (nearest even) as the matmul stores it: the bits of the fp32 product with the bias
/// added in fp32 and then rounded, without the fp32 pass over memory. Returns 0 on success.
int tessera_bf16_gemm_rounded(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                              const uint16_t *b, int64_t ldb, const float *bias, uint16_t *c, int64_t ldc);

/// What tessera_bf16_gemm computes, for small products inside a task (the attention kernel's
/// blocks), without oneDNN's per-call overhead: at level 3 AVX512-BF16 dot products in a
/// register tile, with oneDNN's bits; at level 4 AMX tiles (tessera_amx_block_gemm). Returns 0
/// on success, 1 when out of memory, 2 below level 3 (no bf16 dot products) or for a beta
/// other than 0 or 1.
int tessera_bf16_block_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                            const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc);
/// tessera_bf16_block_gemm at level 4, on AMX tiles: each element summed over the depth 32 at
/// a time, in order, into one accumulator that starts at C (beta 1) or zero, which is oneDNN's
/// order (and bits) on attention's blocks at head size 64. Returns 0 on success, 1 when out of
/// memory, 2 at other levels, where Linux refuses the tiles' state, or for a beta other than 0
/// or 1.
int tessera_amx_block_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                           const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc);

/// C += Aᵀ·B with bf16 A (k×m, row stride lda) and B (k×n, row stride ldb): a linear map's
/// weight gradient (output gradient ᵀ · input): the depth in blocks of 512, each summed from
/// zero with bf16 dot products, the block sums added in order, C added last, which are the
/// bits of tessera_bf16_gemm (oneDNN's) for dense operands (lda = m, ldb = ldc = n), on
/// `threads` OpenMP threads (one inside a parallel region). Returns 0 on success, 1 when out
/// of memory (C may then be partly updated), 2 below level 3.
int tessera_bf16_weight_gemm(int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda, const uint16_t *b,
                             int64_t ldb, float *c, int64_t ldc, int64_t threads);
/// Bytes of scratch tessera_bf16_weight_gemm holds for the process's life (packing and
/// partial-sum buffers, per thread) once it has run the products `shapes` (`count` triples m,
/// n, k) on `threads` threads.
int64_t tessera_bf16_weight_gemm_scratch(const int64_t *shapes, int64_t count, int64_t threads);

/// C = alpha·op(A)·op(B) + beta·C in fp32 for small products inside a task (the attention
/// kernel's blocks): each element's products fused-multiply-added from zero along the depth in
/// order, then scaled and added to C (oneDNN's AVX-512 sgemm's bits on those shapes when alpha
/// is a power of two), in AVX-512 register tiles. Returns 0 on success, 1 when out of memory,
/// 2 below level 2 (AVX-512) or for a beta other than 0 or 1.
int tessera_block_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                        int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/// Operand formats of tessera_packed_gemm.
enum { TESSERA_F32 = 0, TESSERA_BF16 = 1, TESSERA_F16 = 2 };
/// Row-major C = op(A)·op(B) + beta·C in fp32 with fp32, bf16 or fp16 operands (`format`,
/// both alike), widened while packed (needs tessera_cpu_level() ≥ 1: AVX2 + FMA + F16C kernels
/// at level 1, AVX-512 ones above; the level decides the result's bits).
/// Splits over `threads` OpenMP threads (one inside a parallel region); reentrant. Returns 0 on
/// success, 1 when out of memory, 2 when the level or format does not allow it.
int tessera_packed_gemm(int format, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                        const void *a, int64_t lda, const void *b, int64_t ldb, float beta,
                        float *c, int64_t ldc, int64_t threads);

/// out = op(A)·op(B) + bias rounded to bf16 or fp16 (`format`, the operands' format too; bias
/// one fp32 value per column, or NULL), with the bits of tessera_packed_gemm into fp32 (beta 0),
/// the bias added, then rounded to nearest even, but without a pass over an fp32 C: each tile
/// is rounded as it is finished. `partial` (m×n fp32, row stride ldp) holds the sums of the
/// earlier K blocks when K takes more than one (K above 384); it may be NULL otherwise. Returns
/// 0 on success, 1 when out of memory, 2 for the level or format, 3 for K = 0 or a missing
/// `partial`.
int tessera_packed_gemm_rounded(int format, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                                const void *a, int64_t lda, const void *b, int64_t ldb, const float *bias,
                                uint16_t *out, int64_t ldo, float *partial, int64_t ldp, int64_t threads);

/// Threads used by oneDNN (OpenMP) in this process.
void tessera_set_threads(int n);
int tessera_get_threads(void);

/// A task of tessera_parallel_tasks: `index` in 0..<count, `worker` in 0..<workers.
typedef void (*tessera_task_fn)(void *context, int64_t index, int64_t worker);
/// Runs fn(context, i, worker) for every i in 0..<count on up to `workers` OpenMP threads
/// (dynamic order; each task's oneDNN calls run single-threaded on its thread).
void tessera_parallel_tasks(int64_t count, int64_t workers, tessera_task_fn fn, void *context);
/// 1 inside a tessera_parallel_tasks (OpenMP) region.
int tessera_in_parallel(void);
/// A member of a tessera_parallel_team: `member` in 0..<`members`.
typedef void (*tessera_team_fn)(void *context, int64_t member, int64_t members);
/// Runs fn(context, member, members) once on each thread of an OpenMP team of `workers`
/// threads (of one thread inside a parallel region, which does not nest), for work whose
/// members wait for each other with tessera_team_barrier, which every member must reach alike.
void tessera_parallel_team(int64_t workers, tessera_team_fn fn, void *context);
/// Waits until every member of the current team has reached it.
void tessera_team_barrier(void);

/// Kernel level in use: 0 baseline, 1 AVX2+FMA+F16C, 2 AVX-512, 3 AVX-512 with BF16, 4 that
/// and AMX-BF16 tiles oneDNN runs on (the hardware's, lowered by
/// TESSERA_ISA=generic|avx2|avx512|avx512bf16).
int tessera_cpu_level(void);
/// The level the CPU supports (from CPUID: 4 even where oneDNN may not use AMX).
int tessera_cpu_hardware_level(void);
/// The highest level this process can use: the CPU's, but 3 where oneDNN does not run on
/// AMX (ONEDNN_MAX_CPU_ISA, or the kernel refused the tiles' state).
int tessera_cpu_usable_level(void);
/// The level a TESSERA_ISA value names, or -1.
int tessera_isa_level_named(const char *name);
/// The TESSERA_ISA name of a level ("?" outside 0–4).
const char *tessera_isa_level_name(int level);
/// Sets the level (capped by the hardware; negative: back to the default). Tests only.
void tessera_set_cpu_level(int level);

/// GELU (tanh approximation) forward: out[i] = 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))).
void tessera_gelu_forward(float *out, const float *x, int64_t n);
/// GELU backward: dx[i] = dy[i]·gelu'(x[i]); dx may alias dy.
void tessera_gelu_backward(float *dx, const float *x, const float *dy, int64_t n);
/// GELU for 16-bit models (bf16 when `bf16`, else fp16): pre[i] = round(x[i]),
/// out[i] = round(gelu(pre[i])), in one pass.
void tessera_gelu_forward_low(int bf16, uint16_t *pre, uint16_t *out, const float *x, int64_t n);
/// out[i] = round(gelu(pre[i])) from a pre-activation already stored in 16 bits: what
/// tessera_gelu_forward_low writes into `out` when x holds those values.
void tessera_gelu_forward_stored(int bf16, const uint16_t *pre, uint16_t *out, int64_t n);
/// dx[i] = dy[i]·gelu'(pre[i]) and dx16[i] = round(dx[i]); dx may alias dy, or be NULL (dx16 only).
void tessera_gelu_backward_low(int bf16, float *dx, uint16_t *dx16, const uint16_t *pre, const float *dy, int64_t n);
/// LayerNorm of `rows` rows of C values: mean and 1/√(var + eps) per row, and
/// (x − mean)·rstd·weight (+ bias) into out32, or rounded into out16 (bf16 when `bf16`, else
/// fp16) when out32 is NULL. bias may be NULL.
void tessera_layernorm_forward(float *out32, uint16_t *out16, int bf16, float *mean, float *rstd, const float *inp,
                               const float *weight, const float *bias, int64_t rows, int64_t C, float eps);
/// tessera_layernorm_forward of sum[i] = sum[i] + addend[i], that sum stored as each row is read.
void tessera_layernorm_forward_sum(float *out32, uint16_t *out16, int bf16, float *mean, float *rstd, float *sum,
                                   const float *addend, const float *weight, const float *bias, int64_t rows, int64_t C,
                                   float eps);
/// LayerNorm backward over `rows` rows: accumulates into dinp and into dweight (and dbias when
/// not NULL) the rows' sums in row order; with `rounded`, also stores each finished row of dinp
/// rounded (bf16 when `bf16`, else fp16).
void tessera_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                                const float *weight, const float *mean, const float *rstd, int64_t rows, int64_t C,
                                uint16_t *rounded, int bf16);
/// In place e^(x[i] − shift), returning the sum (softmax numerators).
float tessera_exp_shift_sum(float *x, int64_t n, float shift);
// max(init, x[0], …, x[n−1]) (NaN elements are skipped).
float tessera_max_value(const float *x, int64_t n, float init);

/// fp32 → bf16 (round to nearest even, NaN kept) and back, vectorised.
void tessera_f32_to_bf16(uint16_t *dst, const float *src, int64_t n);
void tessera_bf16_to_f32(float *dst, const uint16_t *src, int64_t n);

/// fp32 → IEEE binary16 (round to nearest even, overflow → ±inf, NaN kept) and back.
void tessera_f32_to_f16(uint16_t *dst, const float *src, int64_t n);
void tessera_f16_to_f32(float *dst, const uint16_t *src, int64_t n);
/// `rows` runs of `cols` bf16 (`bf16` ≠ 0) or fp16 values, `lds` apart, widened to floats
/// `ldd` apart (one call for a strided block: the attention kernel's per-head rows).
void tessera_widen_rows(int bf16, float *dst, int64_t ldd, const uint16_t *src, int64_t lds, int64_t rows,
                        int64_t cols);
/// The other way: `rows` runs of `cols` floats, `lds` apart, rounded to 16-bit values `ldd` apart.
void tessera_narrow_rows(int bf16, uint16_t *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows,
                         int64_t cols);

/// dst[i] = src[i]·scale rounded to bf16 (`bf16` nonzero) or fp16: the product in fp32, then rounded.
void tessera_narrow_scaled(int bf16, uint16_t *dst, const float *src, int64_t n, float scale);

/// One AdamW update over n elements (PyTorch's formula; see Optim.AdamW) from the gradients
/// g[i]·g_scale (clipping's factor, applied as the gradient is read); with `low`, each
/// updated parameter is also stored there rounded to bf16 (`bf16` nonzero) or fp16.
void tessera_adamw(float *p, const float *g, float g_scale, float *m, float *v, int64_t n, float b1, float b2,
                   float step_size, float inv_bc2_sqrt, float eps, float shrink, uint16_t *low, int bf16);

/// Attention backward's dS = P·(dP − delta[i])·scale on row i's first `half` (rows before
/// `half`) or `keys` columns (rows `ld` apart; dS written over dP), with P and dS also rounded
/// to bf16 into p16 and ds16 (same layout).
void tessera_softmax_gradient_bf16(const float *p, float *dp, int64_t ld, int64_t rows, int64_t half, int64_t keys,
                                   const float *delta, float scale, uint16_t *p16, uint16_t *ds16);

/// x[i] = x[i]·s for i < n.
void tessera_scale(float *x, int64_t n, float s);

/// out[i] = Σ_c g[i·ldg + c]·o[i·ldo + c] for i < rows, c < n, each sum from +0 in column order
/// (product, then add), on fp32 (`format` 0), bf16 (1) or fp16 (2) operands.
void tessera_row_dots(int format, float *out, const void *g, int64_t ldg, const void *o, int64_t ldo, int64_t rows,
                      int64_t n);

/// sums[j] += Σ_r x[r·ld + j] for j < cols: each column summed in row order (a bias gradient).
void tessera_column_sums(float *sums, const float *x, int64_t rows, int64_t cols, int64_t ld);

/// Σ x² accumulated in double. Summation order is fixed for a given n (deterministic).
double tessera_sum_of_squares(const float *x, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
