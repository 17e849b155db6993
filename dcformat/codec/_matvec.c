/* Products computed straight on the compressed form of a weight matrix (dcformat/codec/matvec.py
 * wraps them; dcformat/interop/compressed.py builds torch modules on them).
 *
 * spmm: sparse codebook matrix times a small dense matrix. The weight W [rows, in] is held
 * as CSR row pointers (int64), column indices (uint16 or uint32) and one uint8 code per
 * stored entry; its value is codebook[code], looked up in the inner loop. Activations come
 * "column-major", X [n, in, p] (p = batch for a linear layer, pixels for a 1x1 convolution),
 * so each stored entry scales one short contiguous row of X: Y[n, r, :] = sum W[r, c] X[n, c, :].
 * Y is written [n, rows, p] or, with y_transposed, [n, p, rows] (a linear layer's layout).
 * Optionally X comes row-major, [n, p, in] (a linear layer's activations): the call transposes
 * it into an aligned scratch first; and a bias (one float per row) is added to Y.
 *
 * lut: dense codes (one uint8 per weight, no index) times X [b, in]: Y [b, rows].
 *
 * Safety: every buffer size and the row pointers are checked before the hot loop (O(rows));
 * the codebook is copied into a zero-padded 256-entry table, so a uint8 code cannot read
 * past it; each row's column indices are checked before the row is computed (or, on AVX-512 at
 * p == 1, as they are loaded, before any gather), and a row with one out of range is skipped
 * (written as zeros) and reported as an error. Whatever the input, no read or write leaves the
 * caller's buffers. The GIL is released while computing; rows are split between threads
 * (a persistent pthread pool), which take blocks of rows balanced by stored entries in turn.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if !defined(_WIN32)
#include <pthread.h>
#define HAVE_PTHREADS 1
#endif

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86 1
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define AVX2 __attribute__((target("avx2,fma")))
#endif

#define TABLE 256
#define MAX_THREADS 64
#define MIN_PARALLEL_WORK (1 << 17) /* lut: multiply-adds below which one thread does the call */
/* spmm: stored entries (times n, per 16 columns of X: a block of 4 to 16 columns costs about
 * what 1 does) below which one thread does the call, about 30-55 us of work. Smaller calls gain
 * little from a second thread and lose much where torch's OpenMP threads still spin. */
#define MIN_PARALLEL_ENTRIES (1 << 16)

typedef struct {
    const int64_t *indptr;
    const uint16_t *cols16;
    const uint32_t *cols32;
    const uint8_t *codes;
    const float *table; /* TABLE entries */
    const float *x;
    float *y;
    int64_t rows, in, p, n;
    int y_transposed, k_small; /* k_small: codebook fits 32 entries (AVX-512 permute) */
    int64_t r0, r1;
    uint32_t bad;
    void *blocks; /* the Blocks a thread takes its rows from (run_split) */
} Job;

enum { ISA_GENERIC, ISA_AVX2, ISA_AVX512 };
static int isa = ISA_GENERIC; /* the widest instruction set the kernels use, chosen at import */

/* ---- sparse ------------------------------------------------------------------------------------
 * Each row's column indices are checked (a vectorizable max) before the row is computed, so the
 * product loops read x without a test per entry. */

#define DEF_ROWMAX(NAME, COLT, ATTR)                                            \
    ATTR static uint32_t NAME(const void *cols_, int64_t s, int64_t e) {        \
        const COLT *cols = cols_;                                               \
        COLT m = 0;                                                             \
        for (int64_t i = s; i < e; i++) m = cols[i] > m ? cols[i] : m;          \
        return m;                                                               \
    }

/* p == 1: a dot product of each row with x, eight independent sums. */
#define DEF_DOT(NAME, COLT, ATTR)                                                              \
    ATTR static float NAME(const void *cols_, const uint8_t *codes, const float *table,        \
                           const float *x, int64_t s, int64_t e, int k_small) {                \
        const COLT *cols = cols_;                                                              \
        float a[8] = {0};                                                                      \
        int64_t i = s;                                                                         \
        for (; i + 8 <= e; i += 8)                                                             \
            for (int u = 0; u < 8; u++) a[u] += table[codes[i + u]] * x[cols[i + u]];          \
        for (; i < e; i++) a[0] += table[codes[i]] * x[cols[i]];                               \
        return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));              \
    }

/* p > 1: each entry scales a block of PB values of one X row (GCC/clang vector types: SSE,
 * AVX or AVX-512 as compiled), four entries a step into their own accumulators. */
typedef float v2f __attribute__((vector_size(8)));
typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));

#define STEP(U, VT, NV)                                                                     \
    {                                                                                       \
        const float w = table[codes[i + U]];                                                \
        const float *xr = x + (int64_t)cols[i + U] * p;                                     \
        for (int v = 0; v < NV; v++) {                                                      \
            VT xv;                                                                          \
            memcpy(&xv, xr + v * (int)(sizeof(VT) / sizeof(float)), sizeof(VT));            \
            acc[U][v] += w * xv;                                                            \
        }                                                                                   \
    }

#define DEF_BLOCK(NAME, COLT, VT, NV, ATTR)                                                    \
    ATTR static void NAME(const void *cols_, const uint8_t *codes, const float *table,          \
                          const float *x, int64_t p, int64_t s, int64_t e, float *out) {        \
        const COLT *cols = cols_;                                                               \
        VT acc[4][NV];                                                                          \
        memset(acc, 0, sizeof(acc));                                                            \
        int64_t i = s;                                                                          \
        for (; i + 4 <= e; i += 4) {                                                            \
            STEP(0, VT, NV) STEP(1, VT, NV) STEP(2, VT, NV) STEP(3, VT, NV)                     \
        }                                                                                       \
        for (; i < e; i++) STEP(0, VT, NV)                                                      \
        for (int v = 0; v < NV; v++) acc[0][v] = (acc[0][v] + acc[1][v]) + (acc[2][v] + acc[3][v]); \
        memcpy(out, acc[0], sizeof(acc[0]));                                                    \
    }

typedef uint32_t (*rowmax_fn)(const void *, int64_t, int64_t);
typedef float (*checked_dot_fn)(const void *, const uint8_t *, const float *, const float *, int64_t, int64_t,
                                int, int64_t, uint32_t *);
typedef float (*dot_fn)(const void *, const uint8_t *, const float *, const float *, int64_t, int64_t, int);
typedef void (*block_fn)(const void *, const uint8_t *, const float *, const float *, int64_t, int64_t,
                         int64_t, float *);
typedef struct {
    rowmax_fn rowmax;
    dot_fn dot;
    block_fn blocks[6]; /* widths 32, 16, 8, 4, 2, 1 */
} Kernels;
static const int BLOCK_WIDTHS[6] = {32, 16, 8, 4, 2, 1};

/* V16 x N16 hold 16 floats, V8 x N8 hold 8, in the registers of the instruction set (a vector
 * type wider than them would be split through memory). */
#define DEF_KERNELS(COLT, SUF, ATTR, V16, N16, V8, N8)                                          \
    DEF_ROWMAX(rowmax_##SUF, COLT, ATTR)                                                        \
    DEF_DOT(dot_##SUF, COLT, ATTR)                                                              \
    DEF_BLOCK(block32_##SUF, COLT, V16, 2 * N16, ATTR)                                          \
    DEF_BLOCK(block16_##SUF, COLT, V16, N16, ATTR)                                              \
    DEF_BLOCK(block8_##SUF, COLT, V8, N8, ATTR)                                                 \
    DEF_BLOCK(block4_##SUF, COLT, v4f, 1, ATTR)                                                 \
    DEF_BLOCK(block2_##SUF, COLT, v2f, 1, ATTR)                                                 \
    DEF_BLOCK(block1_##SUF, COLT, float, 1, ATTR)                                               \
    static const Kernels kernels_##SUF = {rowmax_##SUF, dot_##SUF,                              \
                                          {block32_##SUF, block16_##SUF, block8_##SUF,          \
                                           block4_##SUF, block2_##SUF, block1_##SUF}};

DEF_KERNELS(uint16_t, c16, , v4f, 4, v4f, 2)
DEF_KERNELS(uint32_t, c32, , v4f, 4, v4f, 2)

#ifdef HAVE_X86
DEF_KERNELS(uint16_t, c16_avx2, AVX2, v8f, 2, v8f, 1)
DEF_KERNELS(uint32_t, c32_avx2, AVX2, v8f, 2, v8f, 1)
DEF_KERNELS(uint16_t, c16_avx512, AVX512, v16f, 1, v8f, 1)
DEF_KERNELS(uint32_t, c32_avx512, AVX512, v16f, 1, v8f, 1)

/* The values of 16 codes from a codebook of at most 32 held in two registers; a code past 31
 * reads 0, as from the zero-padded table. */
AVX512 static inline __m512 book32(__m512 t0, __m512i k, __m512 t1) {
    return _mm512_maskz_permutex2var_ps(_mm512_cmplt_epu32_mask(k, _mm512_set1_epi32(32)), t0, k, t1);
}

/* p == 1 on AVX-512: 32 entries a step, codes and columns widened, x gathered, the codebook
 * permuted from two registers when it has at most 32 values, else gathered. Each column is
 * checked against `in` as it is loaded: an entry out of range is not gathered, and the row sets
 * *bad (the caller then writes it as 0), so no separate pass over the row's columns is needed. */
#define DEF_DOT_AVX512(NAME, COLT, LOADCOLS, LOADCOLS_MASKED)                                   \
    AVX512 static float NAME(const void *cols_, const uint8_t *codes, const float *table,        \
                             const float *x, int64_t s, int64_t e, int k_small, int64_t in,      \
                             uint32_t *bad) {                                                    \
        const COLT *cols = cols_;                                                                \
        const __m512i lim = _mm512_set1_epi32((int)in);                                          \
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();                           \
        const __m512 t0 = _mm512_loadu_ps(table), t1 = _mm512_loadu_ps(table + 16);             \
        __mmask16 out = 0;                                                                       \
        int64_t i = s;                                                                           \
        for (; i + 32 <= e; i += 32) {                                                           \
            __m512i c0 = LOADCOLS(cols + i), c1 = LOADCOLS(cols + i + 16);                       \
            const __mmask16 ok0 = _mm512_cmplt_epu32_mask(c0, lim);                              \
            const __mmask16 ok1 = _mm512_cmplt_epu32_mask(c1, lim);                              \
            out |= (__mmask16)~(ok0 & ok1);                                                      \
            __m512i k0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + i)));    \
            __m512i k1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + i + 16))); \
            __m512 x0 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), ok0, c0, x, 4);           \
            __m512 x1 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), ok1, c1, x, 4);           \
            __m512 w0, w1;                                                                       \
            if (k_small) {                                                                       \
                w0 = book32(t0, k0, t1);                                                         \
                w1 = book32(t0, k1, t1);                                                         \
            } else {                                                                             \
                w0 = _mm512_i32gather_ps(k0, table, 4);                                          \
                w1 = _mm512_i32gather_ps(k1, table, 4);                                          \
            }                                                                                    \
            acc0 = _mm512_fmadd_ps(w0, x0, acc0);                                                \
            acc1 = _mm512_fmadd_ps(w1, x1, acc1);                                                \
        }                                                                                        \
        /* the last 1 to 31 entries: 16, then a masked step (masked-off lanes load nothing) */   \
        for (; i < e; i += 16) {                                                                 \
            const __mmask16 m = e - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (e - i)) - 1); \
            __m512i c = LOADCOLS_MASKED(m, cols + i);                                            \
            const __mmask16 ok = _mm512_mask_cmplt_epu32_mask(m, c, lim);                        \
            out |= (__mmask16)(m & ~ok);                                                         \
            __m512i k = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, codes + i));                \
            __m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), ok, c, x, 4);             \
            __m512 w = k_small ? book32(t0, k, t1) : _mm512_i32gather_ps(k, table, 4);           \
            acc1 = _mm512_mask3_fmadd_ps(w, xv, acc1, m); /* off lanes: no inf * 0 */            \
        }                                                                                        \
        if (out) {                                                                               \
            *bad = 1;                                                                            \
            return 0.0f;                                                                         \
        }                                                                                        \
        return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));                                  \
    }

/* p > 1 on AVX-512 with at most 32 codebook values: 16 codes a step are turned into weights by
 * one permute from two registers, and each entry's weight is broadcast from there by a register
 * permute instead of a table load; each entry then costs a column load and a row load of X. */
#define DEF_BLOCK_AVX512(NAME, COLT, VT, NV, ZERO, FMA, LOADX, CAST)                             \
    AVX512 static void NAME(const void *cols_, const uint8_t *codes, const float *table,        \
                            const float *x, int64_t p, int64_t s, int64_t e, float *out) {      \
        const COLT *cols = cols_;                                                               \
        const __m512 t0 = _mm512_loadu_ps(table), t1 = _mm512_loadu_ps(table + 16);            \
        const int lanes = (int)(sizeof(VT) / sizeof(float));                                    \
        VT acc[4][NV];                                                                          \
        for (int a = 0; a < 4; a++)                                                             \
            for (int v = 0; v < NV; v++) acc[a][v] = ZERO();                                    \
        int64_t i = s;                                                                          \
        for (; i + 16 <= e; i += 16) {                                                          \
            __m512i k = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + i)));   \
            const __m512 w = book32(t0, k, t1);                                 \
            _Pragma("GCC unroll 16") for (int u = 0; u < 16; u++) {                             \
                const VT wu = CAST(_mm512_permutexvar_ps(_mm512_set1_epi32(u), w));             \
                const float *xr = x + (int64_t)cols[i + u] * p;                                 \
                for (int v = 0; v < NV; v++) acc[u & 3][v] = FMA(wu, LOADX(xr + v * lanes), acc[u & 3][v]); \
            }                                                                                   \
        }                                                                                       \
        for (; i < e; i++) {                                                                    \
            const VT wu = CAST(_mm512_set1_ps(table[codes[i]]));                                \
            const float *xr = x + (int64_t)cols[i] * p;                                         \
            for (int v = 0; v < NV; v++) acc[0][v] = FMA(wu, LOADX(xr + v * lanes), acc[0][v]); \
        }                                                                                       \
        for (int v = 0; v < NV; v++) {                                                          \
            VT sum = acc[0][v] + acc[1][v] + (acc[2][v] + acc[3][v]);                           \
            memcpy(out + v * lanes, &sum, sizeof(VT));                                          \
        }                                                                                       \
    }

/* p == 4 or 2 on AVX-512: G = 16 / P entries fill one register. Each entry's row of X is
 * broadcast to all G lanes of P values by its load and added, times its weight, into lane
 * (entry mod G) alone (a masked FMA), 2 G accumulators deep; the lanes are folded at the end. */
static inline __m512 AVX512 broadcast_row4(const float *r) { return _mm512_broadcast_f32x4(_mm_loadu_ps(r)); }
static inline __m512 AVX512 broadcast_row2(const float *r) {
    double d;
    memcpy(&d, r, sizeof(d));
    return _mm512_castpd_ps(_mm512_set1_pd(d));
}

#define DEF_NARROW_AVX512(NAME, COLT, P)                                                           \
    AVX512 static void NAME(const void *cols_, const uint8_t *codes, const float *table,         \
                            const float *x, int64_t p, int64_t s, int64_t e, float *out) {       \
        enum { G = 16 / P };                                                                     \
        const COLT *cols = cols_;                                                                \
        const __m512 t0 = _mm512_loadu_ps(table), t1 = _mm512_loadu_ps(table + 16);             \
        const __m512i spread = _mm512_srli_epi32(                                                \
            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), P == 4 ? 2 : 1); \
        __m512 acc[2][G];                                                                        \
        for (int a = 0; a < 2; a++)                                                              \
            for (int g = 0; g < G; g++) acc[a][g] = _mm512_setzero_ps();                         \
        int64_t i = s;                                                                           \
        for (; i + 16 <= e; i += 16) {                                                           \
            __m512i k = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + i)));    \
            const __m512 w = book32(t0, k, t1);                                  \
            _Pragma("GCC unroll 4") for (int q = 0; q < P; q++) {                                \
                const __m512 wq = _mm512_permutexvar_ps(                                         \
                    _mm512_add_epi32(spread, _mm512_set1_epi32(G * q)), w);                      \
                _Pragma("GCC unroll 8") for (int g = 0; g < G; g++) {                            \
                    const __m512 xb = broadcast_row##P(x + (int64_t)cols[i + G * q + g] * p);    \
                    acc[q & 1][g] = _mm512_mask3_fmadd_ps(wq, xb, acc[q & 1][g],                \
                                                          (__mmask16)(((1 << P) - 1) << (P * g))); \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        __m512 sum = _mm512_setzero_ps();                                                        \
        for (int g = 0; g < G; g++) sum = _mm512_add_ps(sum, _mm512_add_ps(acc[0][g], acc[1][g])); \
        for (; i < e; i++) /* into lane 0 */                                                     \
            sum = _mm512_mask3_fmadd_ps(_mm512_set1_ps(table[codes[i]]),                         \
                                        broadcast_row##P(x + (int64_t)cols[i] * p), sum,         \
                                        (__mmask16)((1 << P) - 1));                              \
        __m256 half = _mm256_add_ps(_mm512_castps512_ps256(sum),                                 \
                                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sum), 1))); \
        __m128 r = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));     \
        if (P == 2) r = _mm_add_ps(r, _mm_movehl_ps(r, r));                                      \
        float folded[4];                                                                         \
        _mm_storeu_ps(folded, r);                                                                \
        memcpy(out, folded, P * sizeof(float));                                                  \
    }
DEF_NARROW_AVX512(kblock4_c16, uint16_t, 4)
DEF_NARROW_AVX512(kblock4_c32, uint32_t, 4)
DEF_NARROW_AVX512(kblock2_c16, uint16_t, 2)
DEF_NARROW_AVX512(kblock2_c32, uint32_t, 2)

#define ID512(v) (v)
#define DEF_BLOCKS_AVX512(COLT, SUF)                                                                        \
    DEF_BLOCK_AVX512(kblock32_##SUF, COLT, __m512, 2, _mm512_setzero_ps, _mm512_fmadd_ps, _mm512_loadu_ps, ID512) \
    DEF_BLOCK_AVX512(kblock16_##SUF, COLT, __m512, 1, _mm512_setzero_ps, _mm512_fmadd_ps, _mm512_loadu_ps, ID512) \
    DEF_BLOCK_AVX512(kblock8_##SUF, COLT, __m256, 1, _mm256_setzero_ps, _mm256_fmadd_ps, _mm256_loadu_ps,    \
                     _mm512_castps512_ps256)
DEF_BLOCKS_AVX512(uint16_t, c16)
DEF_BLOCKS_AVX512(uint32_t, c32)

#define LOAD16(ptr) _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(ptr)))
#define LOAD32(ptr) _mm512_loadu_si512((const void *)(ptr))
#define LOAD16_MASKED(m, ptr) _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const void *)(ptr)))
#define LOAD32_MASKED(m, ptr) _mm512_maskz_loadu_epi32(m, (const void *)(ptr))
DEF_DOT_AVX512(dot16_avx512, uint16_t, LOAD16, LOAD16_MASKED)
DEF_DOT_AVX512(dot32_avx512, uint32_t, LOAD32, LOAD32_MASKED)
#endif

static void spmm_rows(Job *j) {
    const int wide = j->cols32 != NULL;
    const void *cols = wide ? (const void *)j->cols32 : (const void *)j->cols16;
    Kernels k = wide ? kernels_c32 : kernels_c16;
    checked_dot_fn checked_dot = NULL; /* p == 1 with the column check built in */
#ifdef HAVE_X86
    if (isa == ISA_AVX2) k = wide ? kernels_c32_avx2 : kernels_c16_avx2;
    if (isa == ISA_AVX512) {
        k = wide ? kernels_c32_avx512 : kernels_c16_avx512;
        /* signed 32-bit gather indices: columns must stay below 2^31 */
        if (j->in <= INT32_MAX) checked_dot = wide ? dot32_avx512 : dot16_avx512;
        if (j->k_small) {
            k.blocks[0] = wide ? kblock32_c32 : kblock32_c16;
            k.blocks[1] = wide ? kblock16_c32 : kblock16_c16;
            k.blocks[2] = wide ? kblock8_c32 : kblock8_c16;
            k.blocks[3] = wide ? kblock4_c32 : kblock4_c16;
            k.blocks[4] = wide ? kblock2_c32 : kblock2_c16;
        }
    }
#endif
    float out[32];
    for (int64_t n = 0; n < j->n; n++) {
        const float *x = j->x + n * j->in * j->p;
        float *y = j->y + n * j->rows * j->p;
        for (int64_t r = j->r0; r < j->r1; r++) {
            const int64_t s = j->indptr[r], e = j->indptr[r + 1];
            if (j->p == 1 && checked_dot) {
                y[r] = checked_dot(cols, j->codes, j->table, x, s, e, j->k_small, j->in, &j->bad);
                continue;
            }
            const int ok = e == s || k.rowmax(cols, s, e) < (uint64_t)j->in;
            if (!ok) j->bad = 1;
            if (j->p == 1) {
                y[r] = ok ? k.dot(cols, j->codes, j->table, x, s, e, j->k_small) : 0.0f;
                continue;
            }
            for (int64_t p0 = 0; p0 < j->p;) {
                int w = 0;
                while (BLOCK_WIDTHS[w] > j->p - p0) w++;
                const int pb = BLOCK_WIDTHS[w];
                if (ok) k.blocks[w](cols, j->codes, j->table, x + p0, j->p, s, e, out);
                else memset(out, 0, sizeof(out));
                if (j->y_transposed)
                    for (int b = 0; b < pb; b++) y[(p0 + b) * j->rows + r] = out[b];
                else
                    memcpy(y + r * j->p + p0, out, (size_t)pb * sizeof(float));
                p0 += pb;
            }
        }
    }
}

/* ---- dense codes: y[b, r] = sum_c table[codes[r, c]] x[b, c] ------------------------------- */

#define DEF_LUT_ROW(NAME, ATTR)                                                                  \
    ATTR static void NAME(const uint8_t *codes, const float *table, const float *x, int64_t in,  \
                          int64_t nb, float *wrow, float *out) {                                 \
        for (int64_t c = 0; c < in; c++) wrow[c] = table[codes[c]];                              \
        for (int64_t b = 0; b < nb; b++) {                                                       \
            const float *xb = x + b * in;                                                        \
            float a[8] = {0};                                                                    \
            int64_t c = 0;                                                                       \
            for (; c + 8 <= in; c += 8)                                                          \
                for (int u = 0; u < 8; u++) a[u] += wrow[c + u] * xb[c + u];                    \
            for (; c < in; c++) a[0] += wrow[c] * xb[c];                                         \
            out[b] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));          \
        }                                                                                        \
    }

DEF_LUT_ROW(lut_row_generic, )
#ifdef HAVE_X86
DEF_LUT_ROW(lut_row_avx2, AVX2)
#endif

#ifdef HAVE_X86
/* M batch rows per pass (8, 4, 2 or 1): 16 codes decoded (permuted from two registers, or
 * gathered), then one FMA per row; a single row keeps two sums to hide the FMA latency. */
#define DEF_LUT_PASS(M)                                                                            \
    AVX512 static void lut_pass##M(const uint8_t *codes, const float *table, __m512 t0, __m512 t1, \
                                   const float *x, int64_t in, int k_small, float *out) {          \
        __m512 acc[M], alt = _mm512_setzero_ps();                                                 \
        for (int b = 0; b < M; b++) acc[b] = _mm512_setzero_ps();                                 \
        int64_t c = 0;                                                                            \
        for (; c + 16 <= in; c += 16) {                                                           \
            __m512i k = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + c)));      \
            __m512 w = k_small ? book32(t0, k, t1) : _mm512_i32gather_ps(k, table, 4); \
            if (M == 1 && ((c >> 4) & 1)) {                                                       \
                alt = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + c), alt);                            \
                continue;                                                                         \
            }                                                                                     \
            for (int b = 0; b < M; b++) acc[b] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + b * in + c), acc[b]); \
        }                                                                                         \
        acc[0] = _mm512_add_ps(acc[0], alt);                                                      \
        for (int b = 0; b < M; b++) {                                                             \
            float sum = _mm512_reduce_add_ps(acc[b]);                                             \
            for (int64_t cc = c; cc < in; cc++) sum += table[codes[cc]] * x[b * in + cc];         \
            out[b] = sum;                                                                         \
        }                                                                                         \
    }

DEF_LUT_PASS(8)
DEF_LUT_PASS(4)
DEF_LUT_PASS(2)
DEF_LUT_PASS(1)

AVX512 static void lut_row_avx512(const uint8_t *codes, const float *table, const float *x, int64_t in,
                                  int64_t nb, int k_small, float *out) {
    const __m512 t0 = _mm512_loadu_ps(table), t1 = _mm512_loadu_ps(table + 16);
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) lut_pass8(codes, table, t0, t1, x + b * in, in, k_small, out + b);
    if (b + 4 <= nb) {
        lut_pass4(codes, table, t0, t1, x + b * in, in, k_small, out + b);
        b += 4;
    }
    if (b + 2 <= nb) {
        lut_pass2(codes, table, t0, t1, x + b * in, in, k_small, out + b);
        b += 2;
    }
    if (b < nb) lut_pass1(codes, table, t0, t1, x + b * in, in, k_small, out + b);
}
#endif

static void lut_rows(Job *j) {
    float *wrow = NULL, *out = malloc((size_t)j->p * sizeof(float));
    if (isa != ISA_AVX512) wrow = malloc((size_t)(j->in ? j->in : 1) * sizeof(float));
    if (!out || (isa != ISA_AVX512 && !wrow)) {
        j->bad = 2;
        free(out);
        free(wrow);
        return;
    }
    for (int64_t r = j->r0; r < j->r1; r++) {
        const uint8_t *codes = j->codes + r * j->in;
#ifdef HAVE_X86
        if (isa == ISA_AVX512)
            lut_row_avx512(codes, j->table, j->x, j->in, j->p, j->k_small, out);
        else if (isa == ISA_AVX2)
            lut_row_avx2(codes, j->table, j->x, j->in, j->p, wrow, out);
        else
#endif
            lut_row_generic(codes, j->table, j->x, j->in, j->p, wrow, out);
        for (int64_t b = 0; b < j->p; b++) j->y[b * j->rows + r] = out[b];
    }
    free(out);
    free(wrow);
}

/* ---- threads --------------------------------------------------------------------------------- */

typedef void (*rows_fn)(Job *);
typedef struct {
    Job *job;
    rows_fn fn;
} Task;

#ifdef HAVE_PTHREADS
static void *run_task(void *arg) {
    Task *t = arg;
    t->fn(t->job);
    return NULL;
}

/* A persistent pool: workers wait on a condition variable for the next call's tasks instead of
 * a thread being created and joined per call. One call uses it at a time (others, from other
 * Python threads, create threads as before); a forked child starts with an empty pool. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    int workers;         /* started: worker i (1-based) runs tasks[i] of each call that uses it */
    int active;          /* tasks in the current call, the caller's task 0 included */
    uint64_t pending;    /* workers inside the current call's task */
    int closed;          /* the caller has run out of blocks: workers that wake now stay out */
    uint64_t generation; /* bumped by every call */
    Task tasks[MAX_THREADS];
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, {{0}}};
static pthread_mutex_t pool_busy = PTHREAD_MUTEX_INITIALIZER;

typedef struct {
    int index;
    uint64_t generation; /* the generation when it was started: it waits for the next one */
} WorkerArg;

/* Threads that finish a call wait a little for the next one awake (checking a counter, with
 * the CPU's pause hint) before they sleep: layers run back to back, a few microseconds apart,
 * and a sleeping thread takes tens of microseconds to wake (more on a loaded machine), a good
 * part of a batch-1 layer's time. torch's OpenMP threads spin the same way, and far longer. */
#define SPIN_NS 100000

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void relax(void) {
#ifdef HAVE_X86
    _mm_pause();
#endif
}

/* Spin while the counter holds `old`, for up to SPIN_NS. */
static void spin_while(const uint64_t *counter, uint64_t old) {
    const uint64_t end = now_ns() + SPIN_NS;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (__atomic_load_n(counter, __ATOMIC_ACQUIRE) != old) return;
            relax();
        }
        if (now_ns() >= end) return;
    }
}

static void *pool_worker(void *arg_) {
    WorkerArg arg = *(WorkerArg *)arg_;
    free(arg_);
    uint64_t seen = arg.generation;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        if (pool.generation == seen) {
            pthread_mutex_unlock(&pool.lock);
            spin_while(&pool.generation, seen);
            pthread_mutex_lock(&pool.lock);
            while (pool.generation == seen) pthread_cond_wait(&pool.wake, &pool.lock);
        }
        seen = pool.generation;
        if (arg.index >= pool.active || pool.closed) continue;
        __atomic_add_fetch(&pool.pending, 1, __ATOMIC_RELEASE);
        Task task = pool.tasks[arg.index];
        pthread_mutex_unlock(&pool.lock);
        task.fn(task.job);
        pthread_mutex_lock(&pool.lock);
        if (__atomic_sub_fetch(&pool.pending, 1, __ATOMIC_RELEASE) == 0 && pool.closed)
            pthread_cond_signal(&pool.done);
    }
    return NULL;
}

static void pool_after_fork(void) {
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pthread_mutex_init(&pool_busy, NULL);
    pool.workers = pool.active = pool.closed = 0;
    pool.pending = 0;
}

/* Start workers up to `want` (holding pool.lock); returns how many there are. */
static int pool_grow(int want) {
    while (pool.workers < want) {
        WorkerArg *arg = malloc(sizeof(WorkerArg));
        pthread_t id;
        pthread_attr_t attr;
        if (!arg) break;
        arg->index = pool.workers + 1;
        arg->generation = pool.generation;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&id, &attr, pool_worker, arg);
        pthread_attr_destroy(&attr);
        if (failed) {
            free(arg);
            break;
        }
        pool.workers++;
    }
    return pool.workers;
}

/* Run tasks 0..n-1 (task 0 on the calling thread); 0, or -1 when the pool is not available. */
static int pool_run(Job *jobs, rows_fn fn, int n) {
    if (pthread_mutex_trylock(&pool_busy) != 0) return -1;
    pthread_mutex_lock(&pool.lock);
    int have = pool_grow(n - 1) + 1, use = have < n ? have : n;
    for (int t = 1; t < use; t++) {
        pool.tasks[t].job = &jobs[t];
        pool.tasks[t].fn = fn;
    }
    pool.active = use;
    pool.pending = 0;
    pool.closed = 0;
    __atomic_store_n(&pool.generation, pool.generation + 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    fn(&jobs[0]);
    for (int t = use; t < n; t++) fn(&jobs[t]); /* workers that could not be started */
    /* The blocks are all taken: wait for the workers running one, not for those the OS has not
     * woken yet (on a busy machine that can take milliseconds; they find the call closed). */
    pthread_mutex_lock(&pool.lock);
    pool.closed = 1;
    if (pool.pending) { /* a worker is in its last block: most often done within microseconds */
        const uint64_t end = now_ns() + SPIN_NS;
        pthread_mutex_unlock(&pool.lock);
        while (__atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE) && now_ns() < end)
            for (int i = 0; i < 64; i++) relax();
        pthread_mutex_lock(&pool.lock);
    }
    while (pool.pending) pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool_busy);
    return 0;
}
#endif

/* Rows cut into blocks of about equal weight that threads take in turn (an atomic counter):
 * a thread the OS delays leaves its blocks to the others instead of holding up the call. */
#define BLOCKS_PER_THREAD 8
typedef struct {
    int64_t cuts[MAX_THREADS * BLOCKS_PER_THREAD + 1];
    int64_t n, next;
    rows_fn fn;
} Blocks;

static void run_blocks(Job *j) {
    Blocks *b = j->blocks;
    for (;;) {
        int64_t i = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
        if (i >= b->n) break;
        j->r0 = b->cuts[i];
        j->r1 = b->cuts[i + 1];
        b->fn(j);
    }
}

/* Compute rows [0, rows) on `threads` threads, in blocks of about equal weight (weight[r]
 * cumulative, or one per row); base->bad is the union of every block's. */
static void run_split(Job *base, rows_fn fn, int threads, const int64_t *cumulative) {
    base->bad = 0;
    if (threads == 1) {
        fn(base);
        return;
    }
    Blocks blocks;
    int64_t n = (int64_t)threads * BLOCKS_PER_THREAD, total = cumulative ? cumulative[base->rows] : base->rows;
    if (n > base->rows) n = base->rows;
    blocks.cuts[0] = 0;
    for (int64_t i = 1; i < n; i++) {
        const int64_t goal = (int64_t)((double)total * (double)i / (double)n);
        int64_t r = blocks.cuts[i - 1];
        if (cumulative) {
            int64_t lo = r, hi = base->rows; /* first row whose start reaches the goal */
            while (lo < hi) {
                int64_t mid = lo + (hi - lo) / 2;
                if (cumulative[mid] < goal) lo = mid + 1;
                else hi = mid;
            }
            r = lo;
        } else if (goal > r) {
            r = goal;
        }
        blocks.cuts[i] = r;
    }
    blocks.cuts[n] = base->rows;
    blocks.n = n;
    blocks.next = 0;
    blocks.fn = fn;
    Job jobs[MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        jobs[t] = *base;
        jobs[t].blocks = &blocks;
    }
#ifdef HAVE_PTHREADS
    if (pool_run(jobs, run_blocks, threads) != 0) { /* the pool is in use by another call */
        pthread_t ids[MAX_THREADS];
        Task tasks[MAX_THREADS];
        int started[MAX_THREADS] = {0};
        for (int t = 1; t < threads; t++) {
            tasks[t].job = &jobs[t];
            tasks[t].fn = run_blocks;
            started[t] = pthread_create(&ids[t], NULL, run_task, &tasks[t]) == 0;
        }
        run_blocks(&jobs[0]);
        for (int t = 1; t < threads; t++)
            if (started[t]) pthread_join(ids[t], NULL);
        run_blocks(&jobs[0]); /* blocks left by threads that could not be started */
    }
#else
    run_blocks(&jobs[0]);
#endif
    for (int t = 0; t < threads; t++) base->bad |= jobs[t].bad;
}

/* ---- Python entry points ------------------------------------------------------------------- */

static int get(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        return -1;
    }
    if (view->itemsize != itemsize && itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: items of %zd bytes expected, not %zd", what, itemsize,
                     view->itemsize);
        PyBuffer_Release(view);
        view->obj = NULL;
        return -1;
    }
    return 0;
}

static int fill_table(Py_buffer *codebook, float *table, int *k_small) {
    Py_ssize_t k = codebook->len / (Py_ssize_t)sizeof(float);
    if (k < 1 || k > TABLE) {
        PyErr_Format(PyExc_ValueError, "the codebook has %zd values; 1 to %d allowed", k, TABLE);
        return -1;
    }
    memset(table, 0, TABLE * sizeof(float));
    memcpy(table, codebook->buf, (size_t)k * sizeof(float));
    *k_small = k <= 32;
    return 0;
}

static int check_threads(int threads) {
    if (threads < 1 || threads > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "threads must be 1..%d", MAX_THREADS);
        return -1;
    }
    return 0;
}

/* x [n, p, in] -> scratch [n, in, p] */
static void transpose_rows(const float *x, float *scratch, int64_t n, int64_t p, int64_t in) {
    for (int64_t i = 0; i < n; i++, x += p * in, scratch += p * in)
        for (int64_t c = 0; c < in; c++)
            for (int64_t b = 0; b < p; b++) scratch[c * p + b] = x[b * in + c];
}

static void add_bias(float *y, const float *bias, int64_t rows, int64_t p, int64_t n, int y_transposed) {
    if (y_transposed) { /* [n * p, rows] */
        for (int64_t i = 0; i < n * p; i++, y += rows)
            for (int64_t r = 0; r < rows; r++) y[r] += bias[r];
        return;
    }
    for (int64_t i = 0; i < n * rows; i++, y += p) /* [n, rows, p] */
        for (int64_t b = 0; b < p; b++) y[b] += bias[i % rows];
}

static PyObject *py_spmm(PyObject *self, PyObject *args) {
    PyObject *o_indptr, *o_cols, *o_codes, *o_book, *o_x, *o_y, *o_bias = Py_None;
    long long in, p, n;
    int y_transposed, threads, x_rows = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOLLLpi|Op", &o_indptr, &o_cols, &o_codes, &o_book, &o_x, &o_y, &in, &p,
                          &n, &y_transposed, &threads, &o_bias, &x_rows))
        return NULL;
    Py_buffer indptr = {0}, cols = {0}, codes = {0}, book = {0}, x = {0}, y = {0}, bias = {0};
    PyObject *result = NULL;
    void *scratch = NULL;
    if (get(o_indptr, &indptr, 0, 8, "indptr") || get(o_cols, &cols, 0, 0, "cols") ||
        get(o_codes, &codes, 0, 1, "codes") || get(o_book, &book, 0, 4, "codebook") ||
        get(o_x, &x, 0, 4, "x") || get(o_y, &y, 1, 4, "y") ||
        (o_bias != Py_None && get(o_bias, &bias, 0, 4, "bias")))
        goto done;
    if (check_threads(threads)) goto done;
    float table[TABLE];
    int k_small;
    if (fill_table(&book, table, &k_small)) goto done;
    const int64_t rows = indptr.len / 8 - 1, nnz = codes.len;
    if (rows < 0 || in < 0 || in > UINT32_MAX || p < 1 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "bad dimensions");
        goto done;
    }
    if (cols.itemsize != 2 && cols.itemsize != 4) {
        PyErr_SetString(PyExc_ValueError, "cols: items of 2 or 4 bytes expected");
        goto done;
    }
    if (cols.len / cols.itemsize != nnz) {
        PyErr_SetString(PyExc_ValueError, "cols and codes differ in length");
        goto done;
    }
    /* sizes in floats; the products cannot overflow once each factor is a buffer length */
    if ((in && (x.len / 4) / in / p != n) || (x.len / 4) != (Py_ssize_t)(n * in * p) ||
        (rows && (y.len / 4) / rows / p != n) || (y.len / 4) != (Py_ssize_t)(n * rows * p)) {
        PyErr_SetString(PyExc_ValueError, "x or y does not have the shape the dimensions give");
        goto done;
    }
    const int64_t *ptr = indptr.buf;
    if (ptr[0] != 0 || ptr[rows] != nnz) {
        PyErr_SetString(PyExc_ValueError, "indptr must run from 0 to the number of entries");
        goto done;
    }
    for (int64_t r = 0; r < rows; r++)
        if (ptr[r + 1] < ptr[r]) {
            PyErr_SetString(PyExc_ValueError, "indptr must not decrease");
            goto done;
        }
    if (in == 0 && nnz > 0) {
        PyErr_SetString(PyExc_ValueError, "column index out of range");
        goto done;
    }
    if (bias.obj && bias.len / 4 != rows) {
        PyErr_SetString(PyExc_ValueError, "bias must hold one value per row");
        goto done;
    }
    const float *xs = x.buf;
    if (x_rows && p > 1 && n > 0 && in > 0) { /* 64-byte aligned: a row of p values never straddles two lines */
        scratch = malloc((size_t)(n * in * p) * sizeof(float) + 64);
        if (!scratch) {
            PyErr_NoMemory();
            goto done;
        }
        xs = (const float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    }
    Job job = {ptr,  cols.itemsize == 2 ? cols.buf : NULL,
               cols.itemsize == 4 ? cols.buf : NULL,
               codes.buf, table, xs, y.buf, rows, in, p, n, y_transposed, k_small, 0, rows, 0};
    const double work = (double)nnz * (double)n * (double)((p + 15) / 16);
    if (work < MIN_PARALLEL_ENTRIES || rows < threads) threads = 1;
    Py_BEGIN_ALLOW_THREADS
    if (xs != x.buf) transpose_rows(x.buf, (float *)xs, n, p, in);
    if (rows && n) run_split(&job, spmm_rows, threads, ptr);
    if (bias.obj && !job.bad) add_bias(y.buf, bias.buf, rows, p, n, y_transposed);
    Py_END_ALLOW_THREADS
    if (job.bad) {
        PyErr_SetString(PyExc_ValueError, "column index out of range");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:;
    free(scratch);
    Py_buffer *views[7] = {&indptr, &cols, &codes, &book, &x, &y, &bias};
    for (int i = 0; i < 7; i++)
        if (views[i]->obj) PyBuffer_Release(views[i]);
    return result;
}

static PyObject *py_lut(PyObject *self, PyObject *args) {
    PyObject *o_codes, *o_book, *o_x, *o_y;
    long long rows, in, b;
    int threads;
    if (!PyArg_ParseTuple(args, "OOOOLLLi", &o_codes, &o_book, &o_x, &o_y, &rows, &in, &b, &threads))
        return NULL;
    Py_buffer codes = {0}, book = {0}, x = {0}, y = {0};
    PyObject *result = NULL;
    if (get(o_codes, &codes, 0, 1, "codes") || get(o_book, &book, 0, 4, "codebook") ||
        get(o_x, &x, 0, 4, "x") || get(o_y, &y, 1, 4, "y"))
        goto done;
    if (check_threads(threads)) goto done;
    float table[TABLE];
    int k_small;
    if (fill_table(&book, table, &k_small)) goto done;
    if (rows < 0 || in < 0 || b < 0 || (in && (codes.len / in != rows)) || codes.len != (Py_ssize_t)(rows * in) ||
        (in && (x.len / 4) / in != b) || (x.len / 4) != (Py_ssize_t)(b * in) ||
        (rows && (y.len / 4) / rows != b) || (y.len / 4) != (Py_ssize_t)(b * rows)) {
        PyErr_SetString(PyExc_ValueError, "codes, x or y does not have the shape the dimensions give");
        goto done;
    }
    Job job = {NULL, NULL, NULL, codes.buf, table, x.buf, y.buf, rows, in, b, 1, 1, k_small, 0, rows, 0};
    if ((double)rows * (double)in * (double)b < MIN_PARALLEL_WORK || rows < threads) threads = 1;
    Py_BEGIN_ALLOW_THREADS
    if (rows && b) run_split(&job, lut_rows, threads, NULL);
    Py_END_ALLOW_THREADS
    if (job.bad) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:;
    Py_buffer *views[4] = {&codes, &book, &x, &y};
    for (int i = 0; i < 4; i++)
        if (views[i]->obj) PyBuffer_Release(views[i]);
    return result;
}

static PyObject *py_features(PyObject *self, PyObject *noargs) {
    static const char *names[] = {"generic", "avx2", "avx512"};
    return Py_BuildValue("{s:s}", "isa", names[isa]);
}

static PyMethodDef methods[] = {
    {"spmm", py_spmm, METH_VARARGS,
     "spmm(indptr, cols, codes, codebook, x, y, in, p, n, y_transposed, threads, bias=None, x_rows=False): "
     "sparse codebook product"},
    {"lut", py_lut, METH_VARARGS, "lut(codes, codebook, x, y, rows, in, b, threads): dense-codes product"},
    {"features", py_features, METH_NOARGS, "The instruction set the kernels use."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "dcformat._matvec", "Products on codebook-compressed weights.", -1, methods,
};

/* DCNN_MATVEC_ISA=generic|avx2 caps the instruction set (to test every path on one machine). */
PyMODINIT_FUNC PyInit__matvec(void) {
#ifdef HAVE_X86
    __builtin_cpu_init();
    const char *cap = getenv("DCNN_MATVEC_ISA");
    int most = ISA_AVX512;
    if (cap && strcmp(cap, "generic") == 0) most = ISA_GENERIC;
    if (cap && strcmp(cap, "avx2") == 0) most = ISA_AVX2;
    if (most >= ISA_AVX2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = ISA_AVX2;
    if (most >= ISA_AVX512 && isa == ISA_AVX2 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        isa = ISA_AVX512;
#endif
#ifdef HAVE_PTHREADS
    pthread_atfork(NULL, NULL, pool_after_fork);
#endif
    return PyModule_Create(&module);
}
