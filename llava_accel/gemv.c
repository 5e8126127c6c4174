/* Matmuls y = x W^T over bf16, int8 or int4 weights, for x86 CPUs with AVX2 + FMA + F16C (see gemv.py for why).

   x: m rows of k floats; W: n rows of k weights; y: m rows of n floats. The n output columns are split over
   `threads` OpenMP threads. Every y[i][j] is computed by the same sequence of operations whatever m, the thread
   count or the row's place in a block of rows, so the result of one row does not depend on what it is batched with.

   bf16: W is n x k uint16 (the top half of an IEEE float), k a multiple of 32.
   int4: llama.cpp's Q4_0 layout, k a multiple of 32: per weight row, k/2 bytes (group g of 32 weights in bytes
   16g..16g+15: weight 32g+t in the low nibble of byte t, weight 32g+16+t in its high nibble) and k/32 fp16 scales;
   weight = (nibble - 8) * scale, which q4_dequantize writes out in fp32. As in llama.cpp, the int4 matmul first
   rounds x to int8 per group of 32 (Q8_0), so that a group's dot product is exact integer arithmetic (maddubs).
   int8: W is n x k int8 with one float scale per row (w = q * scale) and its row sums; k a multiple of 32. x is
   rounded per row to 7-bit unsigned integers with a zero point (as fbgemm's dynamic quantisation with reduce_range
   does, so that maddubs cannot saturate: 127 * 128 * 2 < 2^15), and a row's dot product is exact integer arithmetic
   from end to end, so any tiling gives the same bits; this one kernel serves a decode step and a prefill alike.

   Built with AVX-512 BF16 (where the CPU has it: gemv.py), gemv_bf16_native also takes bf16 inputs and multiplies
   them by the bf16 weights as they are stored (vdpbf16ps: 32 products a step, no conversion). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define ROWS 2 /* int4: rows of x per pass over a weight row (q4_dot2) */
#define Q4_BLOCK 16 /* int4, blocked layout: weight rows a block (q4b_dot) */

/* Weights are read once a call, so each load is preceded by a software prefetch AHEAD bytes further on the same
   stream, with the hint set at load (set_prefetch; gemv.py picks it per CPU vendor). Non-temporal (0): the line goes
   to L1 and not into L2 and L3 on its way out, so the caches still hold what the torch ops between two matmuls touch
   (their code and data): on a 2-core AVX2 EPYC (Zen 2), an rms_norm after a 134 MB int8 GEMV took 165 us without it
   and 50 us with it (23 us warm), and the GEMV itself ran no slower (36 -> 39 GB/s); 128-384 bytes ahead measured
   alike, 1024 and more slower. On a 2-core Xeon with AVX-512 the same hint slowed the int8 GEMV from 25.1 GB/s (no
   prefetch) to 16.9, where a prefetch to every level (1) ran at 26.0; 2: no prefetch. */
#define AHEAD 256
static int hint = 0;
void set_prefetch(int h) { hint = h; }
int get_prefetch(void) { return hint; }
static inline void fetch(const char *p) {
    if (hint == 0)
        _mm_prefetch(p, _MM_HINT_NTA);
    else if (hint == 1)
        _mm_prefetch(p, _MM_HINT_T0);
}
static inline void ahead(const void *p) { fetch((const char *)p + AHEAD); }
/* The cached keys and values that attention reads (rows of a few hundred bytes, a head's a short stream), with the
   same hint, `rows_ahead` rows on: where the hint is 1, 16 rows on and to L2 only (T1): 0.81 ms a layer for the
   7B's bf16 cache at 780 keys on the 2-core Xeon, against 0.95 with T0 at 16 rows and 1.12 with T0 at 1 row (8 keys
   on); elsewhere 1 row on, as measured on Zen 2 (non-temporal: 31-34 ms for 32 layers of fp32 keys, 37-41 without). */
static inline int rows_ahead(void) { return hint == 1 ? 16 : 1; }
static inline void ahead_rows(const void *p, int64_t bytes, int64_t rows) {
    for (int64_t b = 0; b < bytes; b += 64) {
        const char *at = (const char *)p + rows * bytes + b;
        if (hint == 1)
            _mm_prefetch(at, _MM_HINT_T1);
        else
            fetch(at);
    }
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 bf16x8(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* R rows of x against J bf16 weight rows, STEP weights a step (WV: a vector of them, converted by LOAD_W, and of x
   by LOAD_X), one accumulator (ACC) per output updated by MAC(acc, w, x) and summed by SUM. Each output's operations
   are the same in every tile shape, so a row's result does not depend on the tile it falls in. */
#define TILE(KIND, R, J, WT, XT, ACC, WV, STEP, ZERO, LOAD_W, LOAD_X, MAC, SUM)                      \
    static inline void KIND##_tile##R##x##J(const WT *w, const XT *x, float *y, int64_t n,          \
                                            int64_t k) {                                             \
        ACC a[R][J];                                                                                 \
        for (int r = 0; r < R; r++)                                                                  \
            for (int j = 0; j < J; j++) a[r][j] = ZERO();                                            \
        for (int64_t c = 0; c < k; c += STEP) {                                                      \
            WV v[J];                                                                                 \
            for (int j = 0; j < J; j++) v[j] = LOAD_W(w + j * k + c);                                \
            for (int j = 0; j < J; j++) ahead(w + j * k + c);                                        \
            for (int r = 0; r < R; r++) {                                                            \
                WV xv = LOAD_X(x + r * k + c);                                                       \
                for (int j = 0; j < J; j++) a[r][j] = MAC(a[r][j], v[j], xv);                        \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < R; r++)                                                                  \
            for (int j = 0; j < J; j++) y[r * n + j] = SUM(a[r][j]);                                 \
    }

/* weight rows j0..j1 against R rows of x, J weight rows a tile, then one */
#define TILE_ROWS(KIND, R, J, WT, XT)                                                                \
    static void KIND##_rows##R(const WT *w, const XT *x, float *y, int64_t n, int64_t k,            \
                               int64_t j0, int64_t j1) {                                             \
        int64_t j = j0;                                                                              \
        for (; j + J <= j1; j += J) KIND##_tile##R##x##J(w + j * k, x, y + j, n, k);                \
        for (; j < j1; j++) KIND##_tile##R##x1(w + j * k, x, y + j, n, k);                           \
    }

/* weight rows in chunks of CHUNK (256 KB of bf16 at k = 4096: they stay in L2 while every row of x passes), the rows
   of x in blocks of 4, then 2, then 1, each with its tile shape */
#define CHUNK 32
#define ROWS_JOB(KIND, WT, XT)                                                                       \
    static void *KIND##_job(void *arg) {                                                             \
        const Job *t = arg;                                                                          \
        const WT *w = t->w;                                                                          \
        const XT *x = (const XT *)t->x;                                                              \
        int64_t n = t->n, k = t->k;                                                                  \
        for (int64_t j0 = t->j0; j0 < t->j1; j0 += CHUNK) {                                          \
            int64_t j1 = j0 + CHUNK < t->j1 ? j0 + CHUNK : t->j1, i = 0;                             \
            for (; i + 4 <= t->m; i += 4) KIND##_rows4(w, x + i * k, t->y + i * n, n, k, j0, j1);    \
            for (; i + 2 <= t->m; i += 2) KIND##_rows2(w, x + i * k, t->y + i * n, n, k, j0, j1);    \
            for (; i < t->m; i++) KIND##_rows1(w, x + i * k, t->y + i * n, n, k, j0, j1);            \
        }                                                                                            \
        return 0;                                                                                    \
    }

/* a kernel: its tiles (J4, J2, J1 weight rows a tile for 4, 2 and 1 rows of x, and single weight rows), row loops and
   job */
#define KERNEL(KIND, TILE_OF, WT, XT, J4, J2, J1)                                                    \
    TILE_OF(4, J4) TILE_OF(2, J2) TILE_OF(1, J1) TILE_OF(4, 1) TILE_OF(2, 1) TILE_OF(1, 1)           \
    TILE_ROWS(KIND, 4, J4, WT, XT) TILE_ROWS(KIND, 2, J2, WT, XT) TILE_ROWS(KIND, 1, J1, WT, XT)     \
    ROWS_JOB(KIND, WT, XT)

/* AVX2: bf16 weights widened to fp32 in registers, fp32 x, 8 a step; the tile shapes keep 8 independent FMA chains
   (enough to hide the FMA latency) at 1, 2 or 4 rows */
static inline __m256 fma8(__m256 a, __m256 w, __m256 x) { return _mm256_fmadd_ps(w, x, a); }
#define BF16_TILE(R, J) \
    TILE(bf16, R, J, uint16_t, float, __m256, __m256, 8, _mm256_setzero_ps, bf16x8, _mm256_loadu_ps, fma8, hsum)

/* 32 int4 weights of one group (its 16 Q4_0 bytes) as four vectors of 8 floats (nibble - 8, not yet scaled): for
   q4_dequantize */
static inline void q4x32(__m128i b, __m256 q[4]) {
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    __m128i lo = _mm_sub_epi8(_mm_and_si128(b, mask), eight);
    __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), mask), eight);
    q[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    q[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
    q[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    q[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}

/* 32 int4 weights of one group as 32 unsigned bytes (the nibbles, 0..15), in element order */
static inline __m256i q4x32_u8(const uint8_t *p) {
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0F));
}

/* (q - 8) . x for the 32 nibbles q of a group and 32 int8 inputs x, as eight int32 partial sums (as floats, exact:
   |sum| < 2^24): q . x by maddubs (unsigned q times signed x, pairs below 2^15), less xc = 8 sum(x), precomputed per
   group, from the first lane. Two instructions fewer a group than making q signed first. */
static inline __m256 dot_q4(__m256i q, __m256i x, int32_t xc) {
    __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1));
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(sums, _mm256_zextsi128_si256(_mm_cvtsi32_si128(xc))));
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* fp32 to bf16, rounded to nearest even as torch's .to(torch.bfloat16) does (denormals kept, NaN as 0x7FC0) */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (isnan(f)) return 0x7FC0;
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

/* the input rows (m x k, fp32 or, where x16, bf16) in Q8_0 (llama.cpp's scheme): per group of 32, d = max|x| / 127,
   x ~ round(x / d) * d */
static void quantize_q8(const void *x, int x16, int8_t *q, float *d, int32_t *xc, int64_t m, int64_t k) {
    float v[32];
    for (int64_t g = 0; g < m * k / 32; g++) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) {
            v[i] = x16 ? bf16_to_f32(((const uint16_t *)x)[32 * g + i]) : ((const float *)x)[32 * g + i];
            amax = fmaxf(amax, fabsf(v[i]));
        }
        d[g] = amax / 127.0f;
        float inverse = d[g] ? 1.0f / d[g] : 0.0f;
        int32_t sum = 0;
        for (int i = 0; i < 32; i++) sum += q[32 * g + i] = (int8_t)roundf(v[i] * inverse);
        xc[g] = 8 * sum;
    }
}

/* one weight row against R quantised rows of x: per group, an integer dot product scaled by both scales. The
   scale products d * dx of 8 groups are made in one vector and taken lane by lane; even and odd groups go to two
   accumulators, so that an FMA does not wait on the one before (one chain: 7 % slower at 1 thread). */
#define Q4_DOT(R)                                                                                    \
    static inline void q4_dot##R(const uint8_t *w, const uint16_t *s, const int8_t *x, const float *dx, \
                                 const int32_t *xc, int64_t k, float *out) {                         \
        int64_t groups = k / 32, g = 0;                                                              \
        __m256 a[R][2];                                                                              \
        for (int r = 0; r < R; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();                         \
        for (; g + 8 <= groups; g += 8) {                                                            \
            ahead(w + 16 * g), ahead(w + 16 * g + 64), ahead(s + g);                                 \
            __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + g))), dd[R];            \
            for (int r = 0; r < R; r++) dd[r] = _mm256_mul_ps(d, _mm256_loadu_ps(dx + r * groups + g)); \
            for (int u = 0; u < 8; u++) {                                                            \
                __m256i q = q4x32_u8(w + 16 * (g + u)), lane = _mm256_set1_epi32(u);                 \
                for (int r = 0; r < R; r++) {                                                        \
                    __m256i xq = _mm256_loadu_si256((const __m256i *)(x + r * k + 32 * (g + u)));    \
                    a[r][u & 1] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(dd[r], lane),            \
                                                  dot_q4(q, xq, xc[r * groups + g + u]), a[r][u & 1]); \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        for (; g < groups; g++) { /* the groups left, one at a time */                               \
            __m256i q = q4x32_u8(w + 16 * g);                                                        \
            float d = _cvtsh_ss(s[g]);                                                               \
            for (int r = 0; r < R; r++) {                                                            \
                __m256i xq = _mm256_loadu_si256((const __m256i *)(x + r * k + 32 * g));              \
                a[r][0] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx[r * groups + g]),                    \
                                          dot_q4(q, xq, xc[r * groups + g]), a[r][0]);               \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < R; r++) out[r] = hsum(_mm256_add_ps(a[r][0], a[r][1]));                  \
    }
Q4_DOT(1)
Q4_DOT(2)

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define AHEAD_Q4 1024 /* 2-core Xeon, 7B-shaped layers: 14 GB/s at AHEAD (256) bytes ahead, 18-20 at 512-2048 */
int q4_vnni(void) { return 1; }

/* The blocked int4 layout (gemv.py's q4_blocks), for this loop alone: the Q4_0 bytes of 16 weight rows with their
   4-byte words transposed, so that word c of every group g holds, for each of the 16 rows in one 64-byte line,
   weights 32g + 4c .. 32g + 4c + 3 (low nibbles) and 32g + 16 + 4c .. + 3 (high); the 16 rows' scales of group g
   side by side. One vpdpbusd then multiplies 4 weights of 16 outputs by the same 4 inputs (broadcast), so the
   lanes are outputs: no widening shuffle, no lane permute and no horizontal sum, one scale FMA per group for 16
   outputs (llama.cpp's repacked AVX-512 layout does the same). In the 7B's decode on a 2-core Xeon with AMX, the
   row-wise VNNI loop this replaced (two groups an instruction, then a lane permute per group) read the weights at
   12-16 GB/s (228 ms a token in int4 matmuls), this one at 18-21 (171). Layers whose rows do not fill blocks keep
   Q4_0's layout and the AVX2 loop above. */
#define Q4_BLOCK_DOT(R)                                                                              \
    static inline void q4b_dot##R(const uint8_t *w, const uint16_t *s, const int8_t *x, const float *dx, \
                                  const int32_t *xc, int64_t k, float *y, int64_t n) {               \
        int64_t groups = k / 32;                                                                     \
        const __m512i mask = _mm512_set1_epi8(0x0F);                                                 \
        __m512 a[R];                                                                                 \
        for (int r = 0; r < R; r++) a[r] = _mm512_setzero_ps();                                      \
        for (int64_t g = 0; g < groups; g++, w += 256) {                                             \
            for (int b = 0; b < 256; b += 64) fetch((const char *)w + b + AHEAD_Q4);                 \
            fetch((const char *)(s + Q4_BLOCK * g) + AHEAD_Q4 / 8);                                  \
            __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + Q4_BLOCK * g)));     \
            __m512i lo[4], hi[4];                                                                    \
            for (int c = 0; c < 4; c++) {                                                            \
                __m512i v = _mm512_loadu_si512(w + 64 * c);                                          \
                lo[c] = _mm512_and_si512(v, mask), hi[c] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask); \
            }                                                                                        \
            for (int r = 0; r < R; r++) {                                                            \
                const int8_t *xg = x + r * k + 32 * g;                                               \
                __m512i s0 = _mm512_set1_epi32(-xc[r * groups + g]), s1 = _mm512_setzero_si512();    \
                for (int c = 0; c < 4; c++) {                                                        \
                    int32_t x0, x1;                                                                  \
                    memcpy(&x0, xg + 4 * c, 4), memcpy(&x1, xg + 16 + 4 * c, 4);                     \
                    s0 = _mm512_dpbusd_epi32(s0, lo[c], _mm512_set1_epi32(x0));                      \
                    s1 = _mm512_dpbusd_epi32(s1, hi[c], _mm512_set1_epi32(x1));                      \
                }                                                                                    \
                a[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)),                 \
                                       _mm512_mul_ps(d, _mm512_set1_ps(dx[r * groups + g])), a[r]);  \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < R; r++) _mm512_storeu_ps(y + r * n, a[r]);                               \
    }
Q4_BLOCK_DOT(1)
Q4_BLOCK_DOT(2)
Q4_BLOCK_DOT(4)

#else
int q4_vnni(void) { return 0; }
#endif

typedef struct {
    const void *w;          /* bf16: uint16 n x k; int8: int8 n x k; int4: uint8 n x k/2 */
    const uint16_t *scales; /* int4: fp16 n x k/32 */
    const float *ws;        /* int8: the weight rows' scales and sums */
    const int32_t *wsum;
    const void *x;    /* bf16: fp32 or bf16 rows; int8: x rounded to uint8 */
    const int8_t *xq; /* int4: x in Q8_0 */
    const float *dx;  /* int4: the scales of x's groups, int8: of its rows */
    const int32_t *xc; /* int4: 8 x the sums of x's groups, int8: the zero points of its rows */
    float *y;
    uint16_t *y16; /* int4: where set, y's columns of the job also rounded to bf16 here, while they are warm */
    int64_t m, n, k, j0, j1;
    int blocked; /* int4: in the blocked layout (Q4_BLOCK rows a block) */
} Job;

KERNEL(bf16, BF16_TILE, uint16_t, float, 2, 4, 8)

/* int8: unsigned 7-bit x times signed 8-bit w, 32 products a step summed in pairs (maddubs, which cannot saturate
   here) and then in fours into int32 lanes (madd); exact, so the tile shapes only decide how often a weight vector
   loaded from memory is reused */
static inline __m256i u8x32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline __m256i mac_i8(__m256i a, __m256i w, __m256i x) {
    return _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), _mm256_set1_epi16(1)));
}
static inline float hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return (float)_mm_cvtsi128_si32(s);
}
#define I8_TILE(R, J) \
    TILE(i8, R, J, int8_t, uint8_t, __m256i, __m256i, 32, _mm256_setzero_si256, u8x32, u8x32, mac_i8, hsum_i32)
KERNEL(i8, I8_TILE, int8_t, uint8_t, 4, 4, 4)

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* AVX-512 VNNI: 64 products a step in one instruction (vpdpbusd: x's unsigned 7-bit bytes times w's signed ones, four
   a lane into int32), for k a multiple of 64: the same exact integer sums as the AVX2 loop, so the same bits */
static inline __m512i u8x64(const void *p) { return _mm512_loadu_si512(p); }
static inline __m512i mac_i8v(__m512i a, __m512i w, __m512i x) { return _mm512_dpbusd_epi32(a, x, w); }
static inline float hsum_i32v(__m512i v) { return (float)_mm512_reduce_add_epi32(v); }
#define I8V_TILE(R, J) TILE(i8v, R, J, int8_t, uint8_t, __m512i, __m512i, 64, _mm512_setzero_si512, u8x64, u8x64, \
                            mac_i8v, hsum_i32v)
KERNEL(i8v, I8V_TILE, int8_t, uint8_t, 4, 4, 4)
#define I8_JOB(t) ((t)->k % 64 ? i8_job : i8v_job)
#else
#define I8_JOB(t) i8_job
#endif

/* x's rows as unsigned 7-bit integers: per row, scale = (max - min) / 127 over the row's values and 0, zero point
   z = round(-min / scale), q = clamp(round(x / scale) + z, 0, 127), so x ~ (q - z) * scale (fbgemm's dynamic
   quantisation with reduce_range, per row rather than per call: a row's result does not depend on the others) */
static void quantize_u7(const float *x, uint8_t *q, float *scale, int32_t *zero, int64_t m, int64_t k) {
    for (int64_t i = 0; i < m; i++) {
        const float *row = x + i * k;
        float lo = 0.0f, hi = 0.0f;
        for (int64_t c = 0; c < k; c++) lo = fminf(lo, row[c]), hi = fmaxf(hi, row[c]);
        float s = (hi - lo) / 127.0f;
        int32_t z = s > 0.0f ? (int32_t)nearbyintf(-lo / s) : 0;
        scale[i] = s, zero[i] = z;
        for (int64_t c = 0; c < k; c++) {
            float v = s > 0.0f ? nearbyintf(row[c] / s) + (float)z : 0.0f;
            q[i * k + c] = (uint8_t)fminf(fmaxf(v, 0.0f), 127.0f);
        }
    }
}

/* y = scale_x * scale_w * (q_x . q_w - z_x * sum(q_w)) over a column range, the dot products given as floats */
static void i8_scale(const Job *t, const float *dots) {
    for (int64_t i = 0; i < t->m; i++)
        for (int64_t j = t->j0; j < t->j1; j++) {
            float *y = t->y + i * t->n + j;
            *y = (float)((double)t->dx[i] * t->ws[j] * ((double)dots[i * t->n + j] - (double)t->xc[i] * t->wsum[j]));
        }
}

/* the integer dot products of a column range, then their scaling */
static void *i8_scaled_job(void *arg) {
    const Job *t = arg;
    I8_JOB(t)(arg);
    i8_scale(t, t->y);
    return 0;
}

/* the scaling alone, of int32 dot products made elsewhere (t->x) */
static void *i8_scale_job(void *arg) {
    const Job *t = arg;
    for (int64_t i = 0; i < t->m; i++)
        for (int64_t j = t->j0; j < t->j1; j++) t->y[i * t->n + j] = (float)((const int32_t *)t->x)[i * t->n + j];
    i8_scale(t, t->y);
    return 0;
}

static void *q4_job(void *arg) {
    const Job *t = arg;
    float out[ROWS];
    for (int64_t j = t->j0; j < t->j1; j++) {
        const uint8_t *w = (const uint8_t *)t->w + j * (t->k / 2);
        const uint16_t *s = t->scales + j * (t->k / 32);
        int64_t i = 0;
        for (; i + ROWS <= t->m; i += ROWS) {
            q4_dot2(w, s, t->xq + i * t->k, t->dx + i * (t->k / 32), t->xc + i * (t->k / 32), t->k, out);
            for (int r = 0; r < ROWS; r++) t->y[(i + r) * t->n + j] = out[r];
        }
        for (; i < t->m; i++)
            q4_dot1(w, s, t->xq + i * t->k, t->dx + i * (t->k / 32), t->xc + i * (t->k / 32), t->k,
                    t->y + i * t->n + j);
    }
    return 0;
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* blocks of 16 weight rows, the rows of x 4, then 2, then 1 at a time */
static void *q4b_job(void *arg) {
    const Job *t = arg;
    int64_t k = t->k, groups = k / 32;
    for (int64_t j = t->j0; j < t->j1; j += Q4_BLOCK) {
        const uint8_t *w = (const uint8_t *)t->w + j * (k / 2);
        const uint16_t *s = t->scales + j * groups;
        int64_t i = 0;
        for (; i + 4 <= t->m; i += 4)
            q4b_dot4(w, s, t->xq + i * k, t->dx + i * groups, t->xc + i * groups, k, t->y + i * t->n + j, t->n);
        for (; i + 2 <= t->m; i += 2)
            q4b_dot2(w, s, t->xq + i * k, t->dx + i * groups, t->xc + i * groups, k, t->y + i * t->n + j, t->n);
        for (; i < t->m; i++)
            q4b_dot1(w, s, t->xq + i * k, t->dx + i * groups, t->xc + i * groups, k, t->y + i * t->n + j, t->n);
    }
    return 0;
}
#endif

/* int4 weights to fp32 (y: n x k), for the many-row inputs that a GEMM serves better than these loops */
static void *q4_dequant_job(void *arg) {
    const Job *t = arg;
    int64_t groups = t->k / 32;
    __m256 q[4];
    for (int64_t j = t->j0; j < t->j1; j++) {
        const uint8_t *w = (const uint8_t *)t->w + j * (t->k / 2);
        const uint16_t *s = t->scales + j * groups;
        if (t->blocked) /* the block's start, and this row's place in each line of it */
            w = (const uint8_t *)t->w + (j - j % Q4_BLOCK) * (t->k / 2) + 4 * (j % Q4_BLOCK),
            s = t->scales + (j - j % Q4_BLOCK) * groups + j % Q4_BLOCK;
        float *out = t->y + j * t->k;
        for (int64_t g = 0; g < groups; g++) {
            __m128i b;
            if (t->blocked) {
                int32_t word[4];
                for (int c = 0; c < 4; c++) memcpy(word + c, w + 64 * (4 * g + c), 4);
                b = _mm_loadu_si128((const __m128i *)word);
            } else {
                b = _mm_loadu_si128((const __m128i *)(w + 16 * g));
            }
            q4x32(b, q);
            __m256 d = _mm256_set1_ps(_cvtsh_ss(s[t->blocked ? Q4_BLOCK * g : g]));
            for (int u = 0; u < 4; u++) _mm256_storeu_ps(out + 32 * g + 8 * u, _mm256_mul_ps(q[u], d));
        }
    }
    return 0;
}

/* the output columns in `threads` contiguous ranges, one per OpenMP thread: torch's own pool (the process has
   loaded torch's libgomp.so.1 before this library, so the name resolves to it), whose threads would otherwise
   spin beside ours after each torch op and halve our speed */
static void run(void *(*job)(void *), Job all, int threads) {
    int64_t unit = all.blocked ? Q4_BLOCK : 1, units = all.n / unit; /* blocked: whole blocks a thread */
    if (threads < 1) threads = 1;
    if (threads > units) threads = (int)units;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) {
        Job part = all;
        part.j0 = units * t / threads * unit, part.j1 = units * (t + 1) / threads * unit;
        job(&part);
        if (part.y16)
            for (int64_t i = 0; i < part.m; i++)
                for (int64_t j = part.j0; j < part.j1; j++)
                    part.y16[i * part.n + j] = f32_to_bf16(part.y[i * part.n + j]);
    }
}

static inline __m256 f32x8(const float *p) { return _mm256_loadu_ps(p); }

/* 8 rows of d numbers (keys, p[0..7]) dotted with q: one FMA chain a key, then the 8 accumulators summed lane-wise
   in one order the same for every key, so that a key's score depends on it and q alone, not on its place among the 8 */
#define SCORES8(NAME, T, LOAD)                                                                       \
    static inline __m256 NAME(const float *q, const T *const p[8], int64_t d) {                      \
        __m256 a[8];                                                                                 \
        for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();                                      \
        for (int64_t c = 0; c < d; c += 8) {                                                         \
            __m256 qv = _mm256_loadu_ps(q + c);                                                      \
            for (int i = 0; i < 8; i++) a[i] = _mm256_fmadd_ps(LOAD(p[i] + c), qv, a[i]);            \
        }                                                                                            \
        __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));          \
        __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));          \
        return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31)); \
    }

/* Attention of one query against n cached keys and values (per head contiguous, d a multiple
   of 8, at most 256), those where mask[j] is set; s: n floats of scratch. LOAD reads 8 cached values as floats.
   Scores 8 keys at a time (SCORES8; the last block repeats the last key), then the softmax weights and the values,
   key by key in order (a masked key adds nothing), so a query's bits do not depend on the keys it does not see; rows
   prefetched as ahead_rows says. The 7B's bf16 cache at 780 keys on a 2-core Xeon: 1.23 ms a layer with one key a
   step and 1 row ahead, 1.12 with 8 keys a step, 0.81 with the prefetch of ahead_rows. */
#define ATTEND_ONE(NAME, T, LOAD)                                                                    \
    SCORES8(NAME##_scores8, T, LOAD)                                                                 \
    static void NAME(const float *q, const T *k, const T *v, const uint8_t *mask, float *out, float *s, \
                     int64_t n, int64_t d, float scale) {                                            \
        float top = -INFINITY, total = 0.0f, block[8];                                               \
        int64_t far = rows_ahead(), keys_ahead = far > 8 ? far : 8; /* keys: the next block at least */ \
        for (int64_t j = 0; j < n; j += 8) {                                                         \
            const T *p[8];                                                                           \
            for (int i = 0; i < 8; i++) {                                                            \
                p[i] = k + (j + i < n ? j + i : n - 1) * d;                                          \
                if (j + i + keys_ahead < n) ahead_rows(p[i], d * sizeof(T), keys_ahead);                          \
            }                                                                                        \
            _mm256_storeu_ps(block, _mm256_mul_ps(NAME##_scores8(q, p, d), _mm256_set1_ps(scale)));  \
            for (int i = 0; i < 8 && j + i < n; i++)                                                 \
                if (mask[j + i]) s[j + i] = block[i], top = fmaxf(top, block[i]);                    \
        }                                                                                            \
        __m256 o[32];                                                                                \
        for (int64_t c = 0; c < d / 8; c++) o[c] = _mm256_setzero_ps();                              \
        for (int64_t j = 0; j < n; j++) {                                                            \
            if (!mask[j]) continue;                                                                  \
            ahead_rows(v + j * d, d * sizeof(T), far);                                                   \
            float p = expf(s[j] - top);                                                              \
            total += p;                                                                              \
            __m256 pv = _mm256_set1_ps(p);                                                           \
            for (int64_t c = 0; c < d / 8; c++) o[c] = _mm256_fmadd_ps(pv, LOAD(v + j * d + 8 * c), o[c]); \
        }                                                                                            \
        __m256 inverse = _mm256_set1_ps(total > 0.0f ? 1.0f / total : 0.0f);                         \
        for (int64_t c = 0; c < d / 8; c++) _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(o[c], inverse)); \
    }
ATTEND_ONE(attend_one_bf16, uint16_t, bf16x8)
ATTEND_ONE(attend_one_f32, float, f32x8)

/* q, out: b x h x m x d floats (m queries); k, v: element (row, head, j, c) at row * stride_b + head * stride_h +
   j * d + c, bf16 (bf16 != 0) or fp32; mask: b x m x n bytes (query i of a row sees key j where mask[i][j]);
   scores: b x h x m x n floats. Each query is computed alone, the same whatever m. */
void attend(const float *q, const void *k, const void *v, int bf16, int64_t stride_b, int64_t stride_h,
            const uint8_t *mask, float *out, float *scores, int64_t b, int64_t h, int64_t m, int64_t n, int64_t d,
            float scale, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < b * h * m; i++) {
        int64_t row = i / (h * m), head = i / m % h, query = i % m, at = row * stride_b + head * stride_h;
        const uint8_t *sees = mask + (row * m + query) * n;
        if (bf16)
            attend_one_bf16(q + i * d, (const uint16_t *)k + at, (const uint16_t *)v + at, sees, out + i * d,
                            scores + i * n, n, d, scale);
        else
            attend_one_f32(q + i * d, (const float *)k + at, (const float *)v + at, sees, out + i * d,
                           scores + i * n, n, d, scale);
    }
}

void gemv_bf16(const uint16_t *w, const float *x, float *y, int64_t m, int64_t n, int64_t k, int threads) {
    run(bf16_job, (Job){.w = w, .x = x, .y = y, .m = m, .n = n, .k = k}, threads);
}

/* x: fp32, or bf16 where x16; xq (m x k bytes), dx (m x k/32 floats) and xc (m x k/32 int32): the caller's scratch
   for x in Q8_0; y: fp32, and where y16 is given, rounded to bf16 there too (y then the scratch); blocked: the weights
   in the blocked layout (n a multiple of Q4_BLOCK; only where q4_vnni()) */
void gemv_q4(const uint8_t *w, const uint16_t *scales, int blocked, const void *x, int x16, int8_t *xq, float *dx,
             int32_t *xc, float *y, uint16_t *y16, int64_t m, int64_t n, int64_t k, int threads) {
    quantize_q8(x, x16, xq, dx, xc, m, k);
    Job job = {.w = w, .scales = scales, .xq = xq, .dx = dx, .xc = xc, .y = y, .y16 = y16, .m = m, .n = n, .k = k,
               .blocked = blocked};
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    if (blocked) {
        run(q4b_job, job, threads);
        return;
    }
#endif
    run(q4_job, job, threads);
}

void q4_dequantize(const uint8_t *w, const uint16_t *scales, int blocked, float *y, int64_t n, int64_t k,
                   int threads) {
    run(q4_dequant_job, (Job){.w = w, .scales = scales, .y = y, .n = n, .k = k, .blocked = blocked}, threads);
}

/* w: n x k int8, ws and wsum: its rows' scales and sums; xq (m x k bytes), dx (m floats) and xz (m int32): the
   caller's scratch for x as 7-bit integers, their scales and zero points */
void gemm_i8(const int8_t *w, const float *ws, const int32_t *wsum, const float *x, uint8_t *xq, float *dx,
             int32_t *xz, float *y, int64_t m, int64_t n, int64_t k, int threads) {
    quantize_u7(x, xq, dx, xz, m, k);
    run(i8_scaled_job, (Job){.w = w, .ws = ws, .wsum = wsum, .x = xq, .dx = dx, .xc = xz, .y = y, .m = m, .n = n,
                             .k = k}, threads);
}

/* gemm_i8 in two halves, for many rows whose integer GEMM runs elsewhere (oneDNN's, on AMX or VNNI) between them:
   x rounded as gemm_i8 rounds it; then y from the int32 products q_x . q_w (m x n), the same bits as gemm_i8's */
void quantize_i8_rows(const float *x, uint8_t *xq, float *dx, int32_t *xz, int64_t m, int64_t k) {
    quantize_u7(x, xq, dx, xz, m, k);
}

void scale_i8(const int32_t *dots, const float *ws, const int32_t *wsum, const float *dx, const int32_t *xz, float *y,
              int64_t m, int64_t n, int threads) {
    run(i8_scale_job, (Job){.ws = ws, .wsum = wsum, .x = dots, .dx = dx, .xc = xz, .y = y, .m = m, .n = n}, threads);
}

#ifdef __AVX512BF16__
/* AVX-512 BF16: bf16 x against the bf16 weights as stored, pairs of exact products summed into fp32, 32 a step; a
   weight vector loaded once serves 4 rows of x (16 rows of 11008 x 4096: 9.3 ms with one row a pass, 6.4 so) */
static inline __m512bh bf16x32(const uint16_t *p) { return (__m512bh)_mm512_loadu_si512(p); }
#define DP_TILE(R, J) TILE(dp, R, J, uint16_t, uint16_t, __m512, __m512bh, 32, _mm512_setzero_ps, bf16x32, \
                           bf16x32, _mm512_dpbf16_ps, _mm512_reduce_add_ps)
KERNEL(dp, DP_TILE, uint16_t, uint16_t, 4, 4, 8)

/* x: m rows of k bf16 numbers */
void gemv_bf16_native(const uint16_t *w, const uint16_t *x, float *y, int64_t m, int64_t n, int64_t k, int threads) {
    run(dp_job, (Job){.w = w, .x = x, .y = y, .m = m, .n = n, .k = k}, threads);
}
#endif
