// bf16 products on bf16 dot products (AVX512-BF16) in one 6×64 register tile: the attention
// kernel's block products (64–128 rows, columns and depth), which oneDNN's matmul ran at
// 45–60% of a thread's bf16 peak on Zen 5 because each call pays for a primitive execution, a
// stream and, for a transposed operand, oneDNN's own copy (here each call packs what it needs
// into a thread's buffers); and, in their own section below, linear layers' weight gradients;
// then attention's fp32 block products on an AVX-512 FMA tile.
//
// The bits are oneDNN's: its brgemm kernels accumulate every element of C from zero with
// vdpbf16ps over the depth's pairs in order (the odd depth padded with a zero), then add C
// once for beta = 1; this kernel does the same with the same instruction, so the results are
// identical (checked against oneDNN's matmul in the tests, on every shape and layout the
// attention kernel uses, and by the golden trajectories).
#include "ckernels.h"
#include "pairs.h"
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

#define BF16_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define TILE_ROWS 6
#define TILE_VECTORS 4   // 64 columns of C: 24 accumulators, 4 B vectors, one broadcast
#define AVX512_ATTR __attribute__((target("avx512f,avx512bw,avx512vl")))

// Packed operands of the calling thread, grown as needed (attention's threads live as long as
// the process, so they are never freed).
static _Thread_local uint32_t *packed_a, *packed_b;
static _Thread_local int64_t capacity_a, capacity_b;

// MARK: The register tile

// Where a tile's sums go: C (= or +=), or a buffer of partial sums T (= or +=), or T's
// partial sum and this one into C (C + (sums + T), or = sums + T).
enum { TO_C, ADD_C, TO_T, ADD_T, T_TO_C, T_SET_C };

// Per `mode`, C or T[rows × 16·vectors] = A·B: A's pair p of row r is the 32-bit word at
// a + r·row_step + p·pair_step (bf16 units), B's pairs p of these columns at b + p·ldb. T's
// rows are whole aligned vectors; C's last vector has its valid lanes in `last`.
BF16_ATTR static inline __attribute__((always_inline)) void
tile(int rows, int vectors, int64_t pairs, const uint16_t *a, int64_t row_step, int64_t pair_step, const uint32_t *b,
     int64_t ldb, int mode, float *t, int64_t ldt, float *c, int64_t ldc, __mmask16 last) {
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
            float *cp = c + r * ldc + 16 * v, *tp = t + r * ldt + 16 * v;
            __m512 x = acc[r][v];
            if (mode == TO_T || mode == ADD_T) {
                _mm512_store_ps(tp, mode == ADD_T ? _mm512_add_ps(x, _mm512_load_ps(tp)) : x);
                continue;
            }
            // Its own exit, not folded into the two tests below: written as
            // `mode == T_TO_C || mode == T_SET_C` there, clang's code for every weight gradient
            // ran 2.8× slower (325 against 908 GFLOP/s on `small`'s products, Zen 5).
            if (mode == T_SET_C) {
                _mm512_mask_storeu_ps(cp, m, _mm512_add_ps(x, _mm512_load_ps(tp)));
                continue;
            }
            if (mode == T_TO_C) x = _mm512_add_ps(x, _mm512_load_ps(tp));
            if (mode != TO_C) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, cp));
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
#define TILE_CASE(R, V) tile(R, V, pairs, ap + i * row_step, row_step, pair_step, bp + j, padded_n, \
                             accumulate ? ADD_C : TO_C, c, ldc, c + i * ldc + j, ldc, last)
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
    uint32_t *bp = tessera_reserve_words(&packed_b, &capacity_b, pairs * padded_n);
    if (!bp) return 1;
    if (tb) tessera_pack_column_pairs(bp, padded_n, b, ldb, k, n, padded_n);
    else tessera_pack_row_pairs(bp, padded_n, b, ldb, k, n, padded_n);
    // A's rows as they are stored when their pairs are adjacent (an odd depth would read past
    // a row's end for its last pair), otherwise pairs packed pair-major.
    const uint16_t *ap = a;
    int64_t row_step = lda, pair_step = 2;
    if (ta || (k & 1)) {
        uint32_t *q = tessera_reserve_words(&packed_a, &capacity_a, pairs * padded_m);
        if (!q) return 1;
        if (ta) tessera_pack_row_pairs(q, padded_m, a, lda, k, m, padded_m);
        else tessera_pack_column_pairs(q, padded_m, a, lda, k, m, padded_m);
        ap = (const uint16_t *)q;
        row_step = 2;
        pair_step = 2 * padded_m;
    }
    FOR_EACH_TILE(TILE_ROW)
    return 0;
}

int tessera_bf16_block_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                            const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    // With AMX (level 4) the tiles' kernel: even oneDNN's matmul, with its cost per call, ran
    // attention's blocks 3–6× as fast as this register tile there (64×64×64: 1.8 µs against
    // 6.7 on a Xeon family 6 model 207).
    if (tessera_cpu_level() == 4) return tessera_amx_block_gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
    if (tessera_cpu_level() != 3 || (beta != 0.0f && beta != 1.0f)) return 2;
    if (m <= 0 || n <= 0) return 0;
    return block_gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta != 0.0f, c, ldc);
}

// MARK: - Weight gradients

// A linear map's weight gradient dW += doutᵀ·inp (depth = the batch's rows: 16,384 for the
// benchmark's `small`), which oneDNN's matmul ran at 760–800 GFLOP/s on 2 Zen 5 threads
// against 920–980 for the step's other products: it copies doutᵀ into its own layout and
// waits on memory while it does. Here both operands are packed in pairs along the depth, one
// depth block at a time: the team packs the block of inp together (each member its share of
// the rows, then a barrier), each member packs its rows of doutᵀ 192 at a time, and every tile
// prefetches a share of the rows the next packing will read, so the reads overlap the dot
// products. 1.1–1.15× oneDNN's rate on `small`'s shapes, 1.02–1.05× on `gpt2`'s (harness,
// Zen 5, 2 threads), with the same bits. Packing 192 rows at a time rather than 96 ran `small`'s
// fc product (1536 × 384, depth 16,384) at 832–859 GFLOP/s against 725–759 and its four products
// together 2–5% faster (harness, Zen 5, 2 threads, best of three alternated runs), `gpt2`'s alike.
//
// The bits are oneDNN's for dense operands (lda = m, ldb = ldc = n, as linear layers store
// them; its brgemm matmul with A transposed does not extend its depth block past 512 for
// weight gradients): each block of 512 along the depth is summed from zero with vdpbf16ps
// over its pairs in order, the block sums are added in order into an fp32 buffer, and C is
// added last, as C + (last block + buffer). Checked against oneDNN's matmul in the tests
// (several blocks, tails of every tile, an odd depth, products split by rows or columns). On
// strided operands oneDNN runs another implementation with other bits; this one keeps its order.

#define WEIGHT_BLOCK 512                    // depth of a block: oneDNN's, which fixes the bits
#define WEIGHT_PAIRS (WEIGHT_BLOCK / 2)
#define WEIGHT_CHUNK 192                    // rows of doutᵀ packed at a time
#define WEIGHT_TOTALS_BYTES (4 << 20)       // a member's partial sums, at most (larger products are split)

// Prefetches `per` lines at a time of `rows` rows of `bytes` each, `stride` bytes apart.
typedef struct {
    const char *base;
    int64_t stride, lines_per_row, total, per, next;
} row_prefetch;

static row_prefetch row_prefetcher(const void *base, int64_t stride, int64_t rows, int64_t bytes, int64_t calls) {
    row_prefetch f = {.base = base, .stride = stride, .lines_per_row = (bytes + 63) / 64};
    f.total = rows > 0 ? rows * f.lines_per_row : 0;
    f.per = calls > 0 ? (f.total + calls - 1) / calls : f.total;
    return f;
}

static inline void prefetch_some(row_prefetch *f) {
    for (int64_t q = 0; q < f->per && f->next < f->total; q++, f->next++)
        _mm_prefetch(f->base + (f->next / f->lines_per_row) * f->stride + (f->next % f->lines_per_row) * 64, _MM_HINT_T1);
}

typedef struct {
    int64_t m, n, k, lda, ldb, ldc, padded_n;
    const uint16_t *a, *b;
    float *c;
    uint32_t *packed_b;                     // two blocks of B, the caller's, shared by the team
    int overwrite;                          // C's old values are not read: C = the sums
    _Atomic int failed;
} weight_job;

static _Thread_local float *partial_sums;
static _Thread_local int64_t capacity_sums;
static _Thread_local uint32_t *shared_b;
static _Thread_local int64_t capacity_shared_b;

static int64_t member_rows(int64_t m, int64_t members) {
    return ((m + members - 1) / members + TILE_ROWS - 1) / TILE_ROWS * TILE_ROWS;
}

// Rows of depth block `block` of a depth-k product (the last may be short; none past the end).
static int64_t block_depth(int64_t k, int64_t block) {
    int64_t left = k - block * WEIGHT_BLOCK;
    return left < 0 ? 0 : left < WEIGHT_BLOCK ? left : WEIGHT_BLOCK;
}

// Whether a depth-k product runs both its blocks in each tile (weight_member_short): no
// partial sums, so no splitting, and both blocks of a chunk of A packed at once.
static int short_depth(int64_t k) { return k <= 2 * WEIGHT_BLOCK; }

// Tiles of C in `rows` rows of n columns.
static int64_t tiles_of(int64_t rows, int64_t n) {
    return (rows + TILE_ROWS - 1) / TILE_ROWS * ((n + 16 * TILE_VECTORS - 1) / (16 * TILE_VECTORS));
}

// This member's rows of C: the first in *first, how many returned (none for a member past m).
static int64_t member_span(const weight_job *g, int64_t member, int64_t members, int64_t *first) {
    int64_t per = member_rows(g->m, members);
    *first = member * per;
    int64_t rows = g->m - *first < per ? g->m - *first : per;
    return rows > 0 ? rows : 0;
}

// This member's share of the pairs of depth block `block` of B, packed into `buffer`.
BF16_ATTR static void pack_b_share(const weight_job *g, int64_t block, uint32_t *buffer, int64_t member, int64_t members) {
    int64_t k0 = block * WEIGHT_BLOCK, depth = block_depth(g->k, block);
    int64_t pairs = (depth + 1) / 2, p0 = pairs * member / members, p1 = pairs * (member + 1) / members;
    if (p1 <= p0) return;
    int64_t share = depth - 2 * p0 < 2 * (p1 - p0) ? depth - 2 * p0 : 2 * (p1 - p0);
    tessera_pack_row_pairs(buffer + p0 * g->padded_n, g->padded_n, g->b + (k0 + 2 * p0) * g->ldb, g->ldb, share, g->n,
                           g->padded_n);
}

#define WEIGHT_TILE(R, V)                                                                          \
    {                                                                                              \
        prefetch_some(&next_a);                                                                    \
        prefetch_some(&next_b);                                                                    \
        tile(R, V, pairs, (const uint16_t *)(ap + i), 2, 2 * padded_c, bp + j, g->padded_n, mode,     \
             sums0 + i * g->padded_n + j, g->padded_n, c0 + i * ldc + j, ldc, last);               \
    }
#define WEIGHT_ROW(R) BY_VECTORS(WEIGHT_TILE, R)

BF16_ATTR static void weight_member(void *context, int64_t member, int64_t members) {
    weight_job *g = context;
    int64_t m0, rows = member_span(g, member, members, &m0), n = g->n, K = g->k, ldc = g->ldc;
    uint32_t *ap = tessera_reserve_words(&packed_a, &capacity_a, WEIGHT_PAIRS * WEIGHT_CHUNK);
    float *sums = (float *)tessera_reserve_words((uint32_t **)&partial_sums, &capacity_sums, rows * g->padded_n);
    if (!ap || (rows && !sums)) g->failed = 1;
    tessera_team_barrier();
    if (g->failed) return;   // every member sees it after the barrier, before any of C changes
    float *c = g->c + m0 * ldc;
    int64_t blocks = (K + WEIGHT_BLOCK - 1) / WEIGHT_BLOCK;
    // Every chunk's last tile row may be short: up to one more tile row per chunk.
    int64_t tiles_per_block = tiles_of(rows + (rows + WEIGHT_CHUNK - 1) / WEIGHT_CHUNK * TILE_ROWS, n);
    for (int64_t block = 0; block < blocks; block++) {
        int64_t k0 = block * WEIGHT_BLOCK, depth = block_depth(K, block);
        int64_t pairs = (depth + 1) / 2;
        // This member's share of the block's pairs of B, into the buffer the block before last
        // used (everyone has passed the barrier after this block's packing since).
        uint32_t *bp = g->packed_b + (block & 1) * WEIGHT_PAIRS * g->padded_n;
        pack_b_share(g, block, bp, member, members);
        tessera_team_barrier();
        if (rows == 0) continue;
        // Three blocks or more here (fewer run in weight_member_short).
        int mode = block == 0 ? TO_T : block < blocks - 1 ? ADD_T : g->overwrite ? T_SET_C : T_TO_C;
        // The rows of B this member will pack for the next block.
        int64_t next_depth = block_depth(K, block + 1), next_pairs = (next_depth + 1) / 2;
        int64_t q0 = next_pairs * member / members, q1 = next_pairs * (member + 1) / members;
        row_prefetch next_b = row_prefetcher(g->b + (k0 + WEIGHT_BLOCK + 2 * q0) * g->ldb, 2 * g->ldb, 2 * (q1 - q0),
                                             2 * n, tiles_per_block);
        for (int64_t i0 = 0; i0 < rows; i0 += WEIGHT_CHUNK) {
            int64_t chunk = rows - i0 < WEIGHT_CHUNK ? rows - i0 : WEIGHT_CHUNK, padded_c = (chunk + 15) / 16 * 16;
            tessera_pack_row_pairs(ap, padded_c, g->a + k0 * g->lda + m0 + i0, g->lda, depth, chunk, padded_c);
            // The rows of doutᵀ the next chunk (or the next block's first) will pack.
            row_prefetch next_a = i0 + WEIGHT_CHUNK < rows
                ? row_prefetcher(g->a + k0 * g->lda + m0 + i0 + WEIGHT_CHUNK, 2 * g->lda, depth, 2 * WEIGHT_CHUNK,
                                 tiles_of(chunk, n))
                : row_prefetcher(g->a + (k0 + WEIGHT_BLOCK) * g->lda + m0, 2 * g->lda, next_depth,
                                 2 * (rows < WEIGHT_CHUNK ? rows : WEIGHT_CHUNK), tiles_of(chunk, n));
            float *sums0 = sums + i0 * g->padded_n, *c0 = c + i0 * ldc;
            int64_t m = chunk;
            FOR_EACH_TILE(WEIGHT_ROW)
        }
    }
}

// Depths of at most two blocks (`gpt2`'s 1,024 rows): the team packs both blocks of B at
// once, each member packs both blocks of its rows of doutᵀ 192 at a time, and each tile runs
// the two blocks back to back, the first one's sums kept in a buffer of the tile's own instead
// of the partial-sum buffer: nothing the size of C is held, so large products (gpt2's LM head)
// need no splitting and B is packed once. The same order, so the same bits.

#define SHORT_TILE(R, V)                                                                             \
    {                                                                                                \
        prefetch_some(&next_a);                                                                      \
        const uint16_t *a0 = (const uint16_t *)(ap + i);                                             \
        if (blocks == 1)                                                                             \
            tile(R, V, pairs0, a0, 2, 2 * padded_c, bp + j, g->padded_n, ADD_C, first, 64, c0 + i * ldc + j, ldc, \
                 last);                                                                              \
        else {                                                                                       \
            tile(R, V, pairs0, a0, 2, 2 * padded_c, bp + j, g->padded_n, TO_T, first, 64, c0 + i * ldc + j, ldc, last); \
            tile(R, V, pairs1, a0 + 2 * WEIGHT_PAIRS * padded_c, 2, 2 * padded_c,                    \
                 bp + WEIGHT_PAIRS * g->padded_n + j, g->padded_n, T_TO_C, first, 64, c0 + i * ldc + j, ldc, last); \
        }                                                                                            \
    }
#define SHORT_ROW(R) BY_VECTORS(SHORT_TILE, R)

BF16_ATTR static void weight_member_short(void *context, int64_t member, int64_t members) {
    weight_job *g = context;
    int64_t m0, rows = member_span(g, member, members, &m0), n = g->n, K = g->k, ldc = g->ldc;
    int64_t blocks = (K + WEIGHT_BLOCK - 1) / WEIGHT_BLOCK;
    uint32_t *ap = tessera_reserve_words(&packed_a, &capacity_a, 2 * WEIGHT_PAIRS * WEIGHT_CHUNK);
    if (!ap) g->failed = 1;
    const uint32_t *bp = g->packed_b;
    for (int64_t block = 0; block < blocks; block++)
        pack_b_share(g, block, g->packed_b + block * WEIGHT_PAIRS * g->padded_n, member, members);
    tessera_team_barrier();
    if (g->failed) return;
    float first[TILE_ROWS * 64] __attribute__((aligned(64)));
    int64_t pairs0 = (block_depth(K, 0) + 1) / 2, pairs1 = (block_depth(K, 1) + 1) / 2;
    float *c = g->c + m0 * ldc;
    for (int64_t i0 = 0; i0 < rows; i0 += WEIGHT_CHUNK) {
        int64_t chunk = rows - i0 < WEIGHT_CHUNK ? rows - i0 : WEIGHT_CHUNK, padded_c = (chunk + 15) / 16 * 16;
        for (int64_t block = 0; block < blocks; block++)
            tessera_pack_row_pairs(ap + block * WEIGHT_PAIRS * padded_c, padded_c, g->a + block * WEIGHT_BLOCK * g->lda + m0 + i0,
                                   g->lda, block_depth(K, block), chunk, padded_c);
        // The rows of doutᵀ the next chunk will pack (both blocks).
        int64_t next = rows - i0 - WEIGHT_CHUNK < WEIGHT_CHUNK ? rows - i0 - WEIGHT_CHUNK : WEIGHT_CHUNK;
        row_prefetch next_a = row_prefetcher(g->a + m0 + i0 + WEIGHT_CHUNK, 2 * g->lda, next > 0 ? K : 0, 2 * next,
                                             tiles_of(chunk, n));
        float *c0 = c + i0 * ldc;
        int64_t m = chunk;
        FOR_EACH_TILE(SHORT_ROW)
    }
}

// The split into products whose partial sums fit WEIGHT_TOTALS_BYTES a member (none for short
// depths, which hold no partial sums): along the rows when there are at least as many as
// columns, else along the columns.
typedef struct {
    int64_t rows, cols;
} weight_split;

static weight_split split_of(int64_t m, int64_t n, int64_t k, int64_t members) {
    int64_t padded_n = (n + 15) / 16 * 16;
    weight_split s = {m, n};
    if (short_depth(k) || member_rows(m, members) * padded_n * 4 <= WEIGHT_TOTALS_BYTES) return s;
    if (m >= n) {
        int64_t per = WEIGHT_TOTALS_BYTES / (padded_n * 4) / TILE_ROWS * TILE_ROWS;
        s.rows = (per > TILE_ROWS ? per : TILE_ROWS) * members;
    } else {
        int64_t cols = WEIGHT_TOTALS_BYTES / (member_rows(m, members) * 4) / 64 * 64;
        s.cols = cols > 64 ? cols : 64;
    }
    return s;
}

// Wide products of three blocks or more (at least twice as many columns as rows: `small`'s MLP
// output projection, 384 × 1,536 at depth 16,384) run transposed, Cᵀ = inpᵀ·dout, into a buffer
// that is then added into C. The operand the team packs and shares each block is B, and its
// packing (before a barrier, not overlapped) and reads grow with its width; transposed, that is
// the narrow side. That product ran at 928–943 GFLOP/s against 879–915 as it was (harness, 2
// Zen 5 threads, three alternated rounds). At two blocks (`gpt2`'s 768 × 3,072 at depth 1,024),
// where B is packed once for the whole product, it ran level and the step no faster, so those
// stay as they are.
//
// The same bits: vdpbf16ps forms each pair's two products alike whichever operand is
// broadcast; the buffer takes the sums without adding a C (a sum that starts from +0 is never
// −0, so that equals adding a zero); and each element of C then gets C + sums, as directly.
static int runs_transposed(int64_t m, int64_t n, int64_t k) { return n >= 2 * m && !short_depth(k); }

static _Thread_local float *transposed_c;
static _Thread_local int64_t capacity_tc;

// C[i·ldc + j] += T[j·ldt + i] for i < m, j < n, on a team member's share of C's rows (16 × 16
// blocks through registers).
typedef struct {
    float *c;
    const float *t;
    int64_t ldc, ldt, m, n;
} transposed_add;

AVX512_ATTR static void add_transposed_member(void *context, int64_t member, int64_t members) {
    const transposed_add *x = context;
    int64_t strips = (x->m + 15) / 16, first = strips * member / members, last = strips * (member + 1) / members;
    for (int64_t i0 = 16 * first; i0 < 16 * last && i0 < x->m; i0 += 16) {
        int64_t cols = x->m - i0 < 16 ? x->m - i0 : 16;
        __mmask16 cm = tessera_lanes(cols);
        for (int64_t j0 = 0; j0 < x->n; j0 += 16) {
            int64_t rows = x->n - j0 < 16 ? x->n - j0 : 16;
            __mmask16 rm = tessera_lanes(rows);
            __m512i r[16];
            for (int q = 0; q < 16; q++)
                r[q] = q < rows ? _mm512_maskz_loadu_epi32(cm, x->t + (j0 + q) * x->ldt + i0) : _mm512_setzero_si512();
            tessera_transpose16(r);
            for (int q = 0; q < cols; q++) {
                float *cp = x->c + (i0 + q) * x->ldc + j0;
                _mm512_mask_storeu_ps(cp, rm, _mm512_add_ps(_mm512_maskz_loadu_ps(rm, cp), _mm512_castsi512_ps(r[q])));
            }
        }
    }
}

int64_t tessera_bf16_weight_gemm_scratch(const int64_t *shapes, int64_t count, int64_t threads) {
    // Each buffer grows to the largest any product asks of it, and stays.
    int64_t members = threads > 1 ? threads : 1, shared = 0, sums = 0, chunk = 0, transposed = 0;
    for (int64_t i = 0; i < count; i++) {
        int64_t m = shapes[3 * i], n = shapes[3 * i + 1], k = shapes[3 * i + 2];
        if (runs_transposed(m, n, k)) {
            if (m * n > transposed) transposed = m * n;
            int64_t t = m; m = n; n = t;
        }
        weight_split s = split_of(m, n, k, members);
        int64_t padded_n = (s.cols + 15) / 16 * 16, rows = short_depth(k) ? 0 : member_rows(s.rows, members) * padded_n;
        int64_t a_words = (short_depth(k) ? 2 : 1) * WEIGHT_PAIRS * WEIGHT_CHUNK;
        if (2 * WEIGHT_PAIRS * padded_n > shared) shared = 2 * WEIGHT_PAIRS * padded_n;
        if (rows > sums) sums = rows;
        if (a_words > chunk) chunk = a_words;
    }
    return count ? 4 * (shared + members * (chunk + sums) + transposed) : 0;
}

// C (+)= Aᵀ·B as described above, or with `overwrite` C = Aᵀ·B (C's old values not read).
static int weight_gemm(int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda, const uint16_t *b,
                       int64_t ldb, float *c, int64_t ldc, int64_t members, int overwrite) {
    weight_split s = split_of(m, n, k, members);
    for (int64_t i = 0; i < m; i += s.rows)
        for (int64_t j = 0; j < n; j += s.cols) {
            weight_job g = {.m = m - i < s.rows ? m - i : s.rows, .n = n - j < s.cols ? n - j : s.cols, .k = k,
                            .lda = lda, .ldb = ldb, .ldc = ldc, .a = a + i, .b = b + j, .c = c + i * ldc + j,
                            .overwrite = overwrite};
            g.padded_n = (g.n + 15) / 16 * 16;
            g.packed_b = tessera_reserve_words(&shared_b, &capacity_shared_b, 2 * WEIGHT_PAIRS * g.padded_n);
            if (!g.packed_b) return 1;
            tessera_parallel_team(members, short_depth(k) ? weight_member_short : weight_member, &g);
            if (g.failed) return 1;
        }
    return 0;
}

int tessera_bf16_weight_gemm(int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda, const uint16_t *b,
                             int64_t ldb, float *c, int64_t ldc, int64_t threads) {
    // Level 3 only: oneDNN's AMX matmul ran these shapes at 460–1,040 GFLOP/s on 2 threads of a
    // Xeon family 6 model 207, where this kernel's AVX512-BF16 dot products reached 95–145.
    if (tessera_cpu_level() != 3) return 2;
    if (m <= 0 || n <= 0 || k <= 0) return 0;
    int64_t members = tessera_in_parallel() || threads < 1 ? 1 : threads;
    if (!runs_transposed(m, n, k)) return weight_gemm(m, n, k, a, lda, b, ldb, c, ldc, members, 0);
    float *t = (float *)tessera_reserve_words((uint32_t **)&transposed_c, &capacity_tc, n * m);
    if (!t) return 1;
    int rc = weight_gemm(n, m, k, b, ldb, a, lda, t, m, members, 1);
    if (rc) return rc;
    transposed_add x = {.c = c, .t = t, .ldc = ldc, .ldt = m, .m = m, .n = n};
    tessera_parallel_team(members, add_transposed_member, &x);
    return 0;
}

// MARK: - fp32

// The fp32 attention products (fp32 models, and 16-bit ones on widened blocks where there are
// no bf16 dot products) of 16–128 on a side, where oneDNN's sgemm spends much of each call
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
    tessera_transpose_words((uint32_t *)dst, ldd, (const char *)x, 4 * ld, k, n, padded, 0);
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
        float *t = (float *)tessera_reserve_words((uint32_t **)&transposed_b, &capacity_t, k * padded);
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
