/* The native CPU frame step of CSM: one call per frame for a batch of B streams.
 *
 * A frame of stream b: embed its fed-back audio row (the sum of its 32 codebook embeddings), run the
 * backbone's one-row step at position pos[b] of its own KV cache, the final norm, codebook 0's head,
 * then the depth decoder (projection, its own 32-position cache, audio_head[i-1]) for codebooks
 * 1..31, with a seeded draw after every head. Everything the Python side passes in is described by
 * the structs below (engine/cpu/frame.py mirrors them with ctypes).
 *
 * Weights (engine/cpu/pack.py): bf16 row-major (out, in); MLX affine int8/int4 (codes, float32 scales
 * and biases per group of `group` inputs, w = scale*q + bias); and bf16 stored input-major (in, out)
 * for the depth decoder's audio heads, which MLX keeps as (K-1, Dd, V).
 *
 * Matrix-vector products. bf16: the input rounded to bf16, products with vdpbf16ps (AVX512-BF16) or a
 * widening loop. int8/int4: the input quantized to int8 per weight group (dx = max|x|/127), integer
 * dot products per group (vpdpbusd with AVX512-VNNI or AVX-VNNI, maddubs/madd with AVX2, vdotq_s32
 * with NEON dot product, or plain C), then y = sum_g dx_g*(scale_g*sum(q*xq) + bias_g*sum(xq)): the
 * bias term uses the quantized input too, so the rounding error of x is weighted by w itself and
 * not by its distance from the group's bias (3x less error). The integer sums are exact, so every
 * variant gives the same bits for the quantized formats.
 *
 * Threads (OpenMP) split output rows into tiles; one parallel loop (one synchronisation) per group
 * of products that share an input. Each output row is computed by one thread, in an order that
 * depends neither on B nor on the thread count, so a stream's numbers are the same whatever shares
 * the batch. Inside a tile the batch loop runs over each weight row while it is in cache.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "rows.h"
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#if defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#define CSM_NEON_DOT 1
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define CSM_VNNI 1
#define CSM_DPBUSD(acc, a, b) _mm256_dpbusd_epi32((acc), (a), (b))
#elif defined(__AVXVNNI__)
#define CSM_VNNI 1
#define CSM_DPBUSD(acc, a, b) _mm256_dpbusd_avx_epi32((acc), (a), (b))
#endif
#if defined(__AVX2__)
#define CSM_AVX2 1
#endif
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define CSM_BF16DOT 1
#endif
#if defined(CSM_BF16DOT) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define CSM_AMX 1
#endif

enum { FMT_BF16 = 0, FMT_Q8 = 1, FMT_Q4 = 2, FMT_BF16_T = 3 };
/* VARIANT_AMX: VARIANT_BEST with bf16 row-major products on AMX tiles (chosen at load, after the
 * process has the kernel's permission to use tile data; engine/cpu/frame.py) */
enum { VARIANT_PORTABLE = 0, VARIANT_BEST = 1, VARIANT_AMX = 2 };

typedef struct {
    int32_t fmt, group;
    int64_t out, in;
    const void *data;     /* uint16 (bf16) or uint8 codes */
    const float *scales;  /* (out, in/group) for q8/q4 */
    const float *biases;
} CsmWeight;

typedef struct {
    CsmWeight q, k, v, o, gate, up, down;
    const float *norm1, *norm2;
} CsmLayer;

typedef struct {
    int32_t dim, n_layers, n_heads, n_kv, head_dim, hidden, rope_positions;
    float eps;
    const CsmLayer *layers;
    const float *norm;
    const float *rope_cos, *rope_sin; /* (rope_positions, head_dim/2) */
} CsmStack;

typedef struct {
    CsmStack backbone, decoder;
    CsmWeight projection, head0, embed;
    const CsmWeight *audio_head; /* K-1 weights (Dd -> V) */
    int32_t K, V, variant, threads;
} CsmModel;

typedef struct {
    float temperature;
    int32_t top_k, suppress, frame;
    uint64_t seed;
} CsmDraw;

/* ---------------------------------------------------------------------------------------------- */
/* small helpers */

static inline float bf16_to_f32(uint16_t v) {
    uint32_t b = (uint32_t)v << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float x) { /* round to nearest even, as vcvtneps2bf16 */
    uint32_t b;
    memcpy(&b, &x, 4);
    if ((b & 0x7F800000u) == 0x7F800000u && (b & 0x7FFFFFu)) return (uint16_t)((b >> 16) | 0x40); /* NaN */
    b += 0x7FFFu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}

static inline int n_threads(const CsmModel *m) { return m->threads > 0 ? m->threads : 1; }

int csm_features(void) {
    int f = 0;
#ifdef CSM_BF16DOT
    f |= 1;
#endif
#ifdef CSM_VNNI
    f |= 2;
#endif
#ifdef CSM_AVX2
    f |= 4;
#endif
#ifdef CSM_NEON_DOT
    f |= 8;
#endif
#ifdef _OPENMP
    f |= 16;
#endif
#if defined(__AVXVNNI__)
    f |= 32;
#endif
#ifdef CSM_AMX
    f |= 64;
#endif
    return f;
}

/* ---------------------------------------------------------------------------------------------- */
/* activations prepared for the products: B rows of `in` values */

typedef struct {
    int B;
    int64_t in;
    int group;             /* quantization group (0: no quantized weights take this input) */
    const float *x;        /* (B, in) */
    uint16_t *xb;          /* (B, in) bf16 bits */
    int8_t *xq;            /* (B, in) int8, natural order */
    int8_t *xp;            /* (B, in) int8 for int4 rows: each block (q4_block) as [even elements, odd ones] */
    float *dx;             /* (B, in/group): the quantization step per group */
    float *cb;             /* (B, in/group): dx * sum(xq) per group (the bias term's input) */
    uint16_t *xt;          /* AMX: X^T in VNNI pairs, per 16 streams and 32 inputs a 16 x 16 pair tile */
} Act;

/* int4 rows are read in blocks of 64 codes (32 bytes: low nibbles = even elements, high = odd ones)
 * when the group allows, else 32 (16 bytes); the input is permuted to match (Act.xp). */
static inline int q4_block(int group) { return group % 64 == 0 ? 64 : 32; }

static void act_free(Act *a) {
    free(a->xb); free(a->xq); free(a->xp); free(a->dx); free(a->cb); free(a->xt);
    memset(a, 0, sizeof(*a));
}

/* amx: also lay the input out for AMX tiles (bf16 weights, variant VARIANT_AMX) */
static void act_prepare(Act *a, const float *x, int B, int64_t in, int group, int amx) {
    a->B = B; a->in = in; a->group = group; a->x = x;
    a->xb = (uint16_t *)malloc(sizeof(uint16_t) * B * in);
    for (int64_t i = 0; i < B * in; i++) a->xb[i] = f32_to_bf16(x[i]);
    a->xq = NULL; a->xp = NULL; a->dx = NULL; a->cb = NULL; a->xt = NULL;
    if (amx && group <= 0 && in % 32 == 0) { /* tile (chunk c, slice kb): row k2, column n = x[16c+n][32kb+2k2 .. +1] */
        const int64_t nkb = in / 32, chunks = (B + 15) / 16;
        a->xt = (uint16_t *)calloc((size_t)(chunks * nkb * 512), sizeof(uint16_t));
        for (int b = 0; b < B; b++) {
            const uint16_t *xr = a->xb + (int64_t)b * in;
            uint16_t *base = a->xt + (int64_t)(b / 16) * nkb * 512 + (b % 16) * 2;
            for (int64_t kb = 0; kb < nkb; kb++)
                for (int k2 = 0; k2 < 16; k2++) {
                    base[kb * 512 + k2 * 32] = xr[kb * 32 + 2 * k2];
                    base[kb * 512 + k2 * 32 + 1] = xr[kb * 32 + 2 * k2 + 1];
                }
        }
    }
    if (group <= 0) return;
    int64_t ng = in / group;
    a->xq = (int8_t *)malloc(B * in);
    a->xp = (int8_t *)malloc(B * in);
    a->dx = (float *)malloc(sizeof(float) * B * ng);
    a->cb = (float *)malloc(sizeof(float) * B * ng);
    for (int b = 0; b < B; b++) {
        const float *xr = x + b * in;
        int8_t *q = a->xq + b * in, *p = a->xp + b * in;
        for (int64_t g = 0; g < ng; g++) {
            const float *xg = xr + g * group;
            float amax = 0.0f;
            for (int i = 0; i < group; i++) {
                float v = fabsf(xg[i]);
                amax = v > amax ? v : amax;
            }
            float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            int32_t qs = 0;
            for (int i = 0; i < group; i++) {
                long r = lrintf(xg[i] * inv);
                r = r > 127 ? 127 : (r < -127 ? -127 : r);
                q[g * group + i] = (int8_t)r;
                qs += (int32_t)r;
            }
            a->dx[b * ng + g] = d;
            a->cb[b * ng + g] = d * (float)qs;
        }
        const int S = q4_block(group), half = S / 2;
        for (int64_t c = 0; c < in; c += S)
            for (int i = 0; i < half; i++) {
                p[c + i] = q[c + 2 * i];
                p[c + half + i] = q[c + 2 * i + 1];
            }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* one output row dotted with one prepared input row */

/* Rows of a weight are contiguous: the one-row products and the int8/int4 tiles ask for the bytes
 * this far ahead (the coming rows') while they work, which measured 10-30% faster on one core than
 * the hardware prefetcher alone (Xeon). The bf16 tiles, memory-bound, read their rows as long
 * streams (rows_tiled) and ask for them 2 KB on into L2 only: on an AMD EPYC (Zen 4) that measured
 * 5-40% faster than no prefetch (most for several streams at once), where asking 1 KB on into L1
 * was slower than none. */
#define PREFETCH_AHEAD 1024
#define BF16_PREFETCH_AHEAD 2048

static float dot_bf16(const uint16_t *w, const uint16_t *xb, int64_t in, int variant) {
    (void)variant;
    int64_t i = 0;
    float s = 0.0f;
#ifdef CSM_BF16DOT
    if (variant != VARIANT_PORTABLE) {
        __m512 acc = _mm512_setzero_ps();
        for (; i + 32 <= in; i += 32) {
            _mm_prefetch((const char *)(w + i) + PREFETCH_AHEAD, _MM_HINT_T0);
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(w + i), (__m512bh)_mm512_loadu_si512(xb + i));
        }
        s = _mm512_reduce_add_ps(acc);
    }
#endif
    if (i == 0) {
        float acc[16] = {0};
        for (; i + 16 <= in; i += 16)
            for (int j = 0; j < 16; j++) acc[j] = fmaf(bf16_to_f32(w[i + j]), bf16_to_f32(xb[i + j]), acc[j]);
        for (int j = 0; j < 16; j++) s += acc[j];
    }
    for (; i < in; i++) s = fmaf(bf16_to_f32(w[i]), bf16_to_f32(xb[i]), s);
    return s;
}

/* Quantized rows. Every variant keeps the same 8 int32 lanes per 32 inputs (lane j sums inputs
 * 4j..4j+3 of each 32-block, as vpdpbusd on 256 bits does) and the same float accumulation per lane:
 *   acc[j] += (float)isum_j(group g) * (scale_g * dx_g)       (fused multiply-add)
 *   bacc[j] += bias_g * cb_g   for g = 8k + j                  (cb_g = dx_g * sum(xq over g))
 *   y = reduce8(acc) + (reduce8(bacc) + the groups left over)
 * so the portable C loop gives the same bits as the SIMD ones (the integer sums are exact). */

static inline float reduce8(const float *a) { /* the order of the 256-bit reduction below */
    float t0 = a[0] + a[4], t1 = a[1] + a[5], t2 = a[2] + a[6], t3 = a[3] + a[7];
    return (t0 + t2) + (t1 + t3);
}

#if defined(CSM_AVX2)
static inline float reduce8_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* t0..t3 */
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                        /* t0+t2, t1+t3 */
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 8 lanes of sum(q*x) over 32 inputs: w (32 codes, uint8 0..255 or 0..15), x (32 int8) */
static inline __m256i lanes_dot(__m256i acc, __m256i w, __m256i x, int wide) {
#if defined(CSM_VNNI)
    (void)wide;
    return CSM_DPBUSD(acc, w, x);
#else
    const __m256i ones = _mm256_set1_epi16(1);
    if (!wide) /* codes <= 15: pair sums fit in int16 */
        return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones));
    /* codes up to 255: (q - 128) * x with the sign trick, plus 128 * x */
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    __m256i ws = _mm256_xor_si256(w, flip);
    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(ws, ws), _mm256_sign_epi8(x, ws)), ones);
    __m256i c = _mm256_madd_epi16(_mm256_maddubs_epi16(flip, x), ones);
    return _mm256_add_epi32(acc, _mm256_add_epi32(p, c));
#endif
}

static inline __m256i q4_codes(const uint8_t *w) { /* 16 bytes -> [low nibbles | high nibbles] */
    const __m128i low = _mm_set1_epi8(0x0F);
    __m128i b = _mm_loadu_si128((const __m128i *)w);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), low), _mm_and_si128(b, low));
}
#endif

/* inlined: a call per (row, stream) was 15% of a 4-bit frame; inlined in a tile, the R x NB
 * chains run side by side */
static inline __attribute__((always_inline)) float bias_term(const float *bi, const float *cb, int64_t ng, int variant) {
    (void)variant;
    float bacc[8] = {0};
    int64_t g = 0;
#if defined(CSM_AVX2)
    if (variant != VARIANT_PORTABLE && ng >= 8) {
        __m256 v = _mm256_setzero_ps();
        for (; g + 8 <= ng; g += 8) v = _mm256_fmadd_ps(_mm256_loadu_ps(bi + g), _mm256_loadu_ps(cb + g), v);
        _mm256_storeu_ps(bacc, v);
    }
#endif
    for (; g + 8 <= ng; g += 8)
        for (int j = 0; j < 8; j++) bacc[j] = fmaf(bi[g + j], cb[g + j], bacc[j]);
    float s = reduce8(bacc);
    for (; g < ng; g++) s = fmaf(bi[g], cb[g], s);
    return s;
}

static float dot_quant(const CsmWeight *w, int64_t r, const Act *a, int b, int variant) {
    const int G = w->group, q4 = w->fmt == FMT_Q4;
    const int64_t ng = w->in / G, row_bytes = q4 ? w->in / 2 : w->in;
    const float *sc = w->scales + r * ng, *bi = w->biases + r * ng;
    const float *dx = a->dx + b * ng, *cb = a->cb + b * ng;
    const uint8_t *wr = (const uint8_t *)w->data + r * row_bytes;
    const int8_t *x = (q4 ? a->xp : a->xq) + b * a->in;
    float acc[8] = {0};
#if defined(CSM_AVX2)
    if (variant != VARIANT_PORTABLE) {
        __m256 facc = _mm256_setzero_ps();
        for (int64_t g = 0; g < ng; g++) {
            __m256i is = _mm256_setzero_si256();
            const int8_t *xg = x + g * G;
            /* rows are contiguous: ask for the bytes PREFETCH_AHEAD further on (the next rows') */
            _mm_prefetch((const char *)(wr + (q4 ? g * G / 2 : g * G) + PREFETCH_AHEAD), _MM_HINT_T0);
            if (q4 && q4_block(G) == 64) {
                const __m256i low = _mm256_set1_epi8(0x0F);
                for (int c = 0; c < G; c += 64) {
                    __m256i bytes = _mm256_loadu_si256((const __m256i *)(wr + (g * G + c) / 2));
                    is = lanes_dot(is, _mm256_and_si256(bytes, low), _mm256_loadu_si256((const __m256i *)(xg + c)), 0);
                    is = lanes_dot(is, _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low),
                                   _mm256_loadu_si256((const __m256i *)(xg + c + 32)), 0);
                }
            } else {
                for (int c = 0; c < G; c += 32) {
                    __m256i wv = q4 ? q4_codes(wr + (g * G + c) / 2) : _mm256_loadu_si256((const __m256i *)(wr + g * G + c));
                    is = lanes_dot(is, wv, _mm256_loadu_si256((const __m256i *)(xg + c)), !q4);
                }
            }
            facc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_set1_ps(sc[g] * dx[g]), facc);
        }
        return reduce8_ps(facc) + bias_term(bi, cb, ng, variant);
    }
#elif defined(CSM_NEON_DOT)
    if (variant != VARIANT_PORTABLE) { /* two 4-lane halves = the same 8 lanes */
        float32x4_t f0 = vdupq_n_f32(0.0f), f1 = vdupq_n_f32(0.0f);
        const uint8x16_t low = vdupq_n_u8(0x0F), flip = vdupq_n_u8(0x80);
        for (int64_t g = 0; g < ng; g++) {
            int32x4_t i0 = vdupq_n_s32(0), i1 = vdupq_n_s32(0), c0 = vdupq_n_s32(0), c1 = vdupq_n_s32(0);
            for (int c = 0; c < G; c += (q4 && q4_block(G) == 64) ? 64 : 32) {
                const int8_t *xv = x + g * G + c;
                int8x16_t x0 = vld1q_s8(xv), x1 = vld1q_s8(xv + 16);
                if (q4 && q4_block(G) == 64) { /* positions 0..31: low nibbles; 32..63: high ones */
                    uint8x16_t b0 = vld1q_u8(wr + (g * G + c) / 2), b1 = vld1q_u8(wr + (g * G + c) / 2 + 16);
                    i0 = vdotq_s32(i0, vreinterpretq_s8_u8(vandq_u8(b0, low)), x0);
                    i1 = vdotq_s32(i1, vreinterpretq_s8_u8(vandq_u8(b1, low)), x1);
                    i0 = vdotq_s32(i0, vreinterpretq_s8_u8(vshrq_n_u8(b0, 4)), vld1q_s8(xv + 32));
                    i1 = vdotq_s32(i1, vreinterpretq_s8_u8(vshrq_n_u8(b1, 4)), vld1q_s8(xv + 48));
                } else if (q4) {
                    uint8x16_t bb = vld1q_u8(wr + (g * G + c) / 2);
                    i0 = vdotq_s32(i0, vreinterpretq_s8_u8(vandq_u8(bb, low)), x0);
                    i1 = vdotq_s32(i1, vreinterpretq_s8_u8(vshrq_n_u8(bb, 4)), x1);
                } else { /* (q - 128) * x + 128 * x */
                    const uint8_t *wv = wr + g * G + c;
                    i0 = vdotq_s32(i0, vreinterpretq_s8_u8(veorq_u8(vld1q_u8(wv), flip)), x0);
                    i1 = vdotq_s32(i1, vreinterpretq_s8_u8(veorq_u8(vld1q_u8(wv + 16), flip)), x1);
                    c0 = vdotq_s32(c0, vdupq_n_s8(1), x0);
                    c1 = vdotq_s32(c1, vdupq_n_s8(1), x1);
                }
            }
            if (!q4) { i0 = vaddq_s32(i0, vshlq_n_s32(c0, 7)); i1 = vaddq_s32(i1, vshlq_n_s32(c1, 7)); }
            float32x4_t s = vdupq_n_f32(sc[g] * dx[g]);
            f0 = vfmaq_f32(f0, vcvtq_f32_s32(i0), s);
            f1 = vfmaq_f32(f1, vcvtq_f32_s32(i1), s);
        }
        vst1q_f32(acc, f0);
        vst1q_f32(acc + 4, f1);
        return reduce8(acc) + bias_term(bi, cb, ng, variant);
    }
#endif
    for (int64_t g = 0; g < ng; g++) {
        int32_t is[8] = {0};
        const int S = q4 ? q4_block(G) : 32, half = S / 2;
        for (int c = 0; c < G; c += S)
            for (int i = 0; i < S; i++) {
                const int64_t at = g * G + c + i;
                int32_t q;
                if (q4) { /* position i of the block: low nibbles first, then high ones */
                    uint8_t byte = wr[(g * G + c) / 2 + i % half];
                    q = i < half ? (byte & 0x0F) : (byte >> 4);
                } else {
                    q = wr[at];
                }
                is[(i % 32) / 4] += q * (int32_t)x[at];
            }
        const float s = sc[g] * dx[g];
        for (int j = 0; j < 8; j++) acc[j] = fmaf((float)is[j], s, acc[j]);
    }
    return reduce8(acc) + bias_term(bi, cb, ng, variant);
}

/* ---------------------------------------------------------------------------------------------- */
/* products: several weights sharing one input, one parallel loop */

/* Output rows per job (one thread's unit of work): 16 for bf16; 128 for int8/int4, whose rows are
 * 2-4x shorter, so that a job's rows still make long streams (rows_tiled; 64-128 measured 10-30%
 * faster frames than 16 on an AMD EPYC, bf16 no different). */
static inline int64_t job_rows(const CsmWeight *w) { return w->fmt == FMT_Q8 || w->fmt == FMT_Q4 ? 128 : 16; }
#define PARALLEL_WORK (1 << 20) /* multiply-adds below which a product stays on one thread */
#define COL_TILE 256

typedef struct {
    const CsmWeight *w;
    float *y; /* (B, w->out) */
} Job;

#define AMX_ROWS 32 /* output rows of one AMX job: two 16-row weight tiles */

static int on_amx(const CsmWeight *w, int variant) { return variant == VARIANT_AMX && w->fmt == FMT_BF16 && w->in % 32 == 0; }

static int64_t job_tiles(const CsmWeight *w, int variant) {
    if (on_amx(w, variant)) return (w->out + AMX_ROWS - 1) / AMX_ROWS;
    return w->fmt == FMT_BF16_T ? (w->out + COL_TILE - 1) / COL_TILE : (w->out + job_rows(w) - 1) / job_rows(w);
}

/* Register tiles: R weight rows times NB streams at once. Each weight vector is loaded (and, for
 * int4, unpacked) once for all NB streams, and the R rows give R independent accumulation chains, so
 * the products run near the memory's speed instead of the instructions' latency. Every (row, stream)
 * accumulator sees exactly the operations, in exactly the order, of the one-row functions above
 * (dot_bf16, dot_quant): integer lanes folded from 512 to 256 bits are exact sums of the same inputs,
 * so the bits do not depend on R, NB, B or the SIMD width. */
#define TILE_ACCS 8 /* accumulators (R * NB) per tile: 2 vector registers each, of 32 */

/* The tile bodies take plain pointers and constant shapes; each shape is its own function (below),
 * so the compiler keeps every accumulator, pointer and counter in registers. */
#if defined(CSM_BF16DOT)
static inline __attribute__((always_inline)) void tile_bf16_body(const uint16_t *W, int64_t in, int64_t rs,
                                                                 const uint16_t *X, int64_t xstride, float *y,
                                                                 int64_t ystride, const int R, const int NB) {
    __m512 acc[4][4];
    const uint16_t *wp[4], *xp[4];
    for (int r = 0; r < R; r++) wp[r] = W + r * rs * in;
    for (int b = 0; b < NB; b++) xp[b] = X + b * xstride;
    for (int r = 0; r < R; r++)
        for (int b = 0; b < NB; b++) acc[r][b] = _mm512_setzero_ps();
    const int64_t n = in & ~(int64_t)31;
    for (int64_t i = 0; i < n; i += 32) {
        __m512bh wv[4];
        for (int r = 0; r < R; r++) {
            _mm_prefetch((const char *)(wp[r] + i) + BF16_PREFETCH_AHEAD, _MM_HINT_T1);
            wv[r] = (__m512bh)_mm512_loadu_si512(wp[r] + i);
            /* keep it in a register: GCC otherwise reloads the row for every stream (4 loads per
             * vector at NB = 4, and B=4 ticks took 1.4x B=1's instead of about 1x) */
            __asm__("" : "+v"(wv[r]));
        }
        for (int b = 0; b < NB; b++) {
            const __m512bh xv = (__m512bh)_mm512_loadu_si512(xp[b] + i);
            for (int r = 0; r < R; r++) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], wv[r], xv);
        }
    }
    for (int r = 0; r < R; r++)
        for (int b = 0; b < NB; b++) {
            float s = _mm512_reduce_add_ps(acc[r][b]);
            for (int64_t t = n; t < in; t++) s = fmaf(bf16_to_f32(wp[r][t]), bf16_to_f32(xp[b][t]), s);
            y[b * ystride + r * rs] = s;
        }
}
#define CSM_BF16_TILE(R, NB)                                                                               \
    static void tile_bf16_##R##x##NB(const uint16_t *W, int64_t in, int64_t rs, const uint16_t *X, int64_t xs, \
                                     float *y, int64_t ys) { tile_bf16_body(W, in, rs, X, xs, y, ys, R, NB); }
CSM_BF16_TILE(4, 1) CSM_BF16_TILE(4, 2) CSM_BF16_TILE(4, 3) CSM_BF16_TILE(4, 4)
#undef CSM_BF16_TILE
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(CSM_AVX2)
#define CSM_VNNI512 1
/* int8/int4 rows whose group is a multiple of 64: one 512-bit vpdpbusd per 64 inputs; BPG 64-input
 * blocks per group. W: the tile's first row of codes; S, Bi: its scales and biases (ng per row);
 * X (NB rows of xstride int8, natural order for int8, block-permuted for int4), DX, CB: the
 * streams' steps and bias inputs (ng per stream). */
static inline __attribute__((always_inline)) void tile_quant_body(
    const uint8_t *W, int64_t row_bytes, int64_t rs, const float *S, const float *Bi, int64_t ng, const int8_t *X,
    int64_t xstride, const float *DX, const float *CB, float *y, int64_t ystride, const int R, const int NB,
    const int Q4, const int BPG) {
    const int64_t block_bytes = Q4 ? 32 : 64;
    const uint8_t *wp[4];
    const float *sp[4];
    const int8_t *xp[4];
    const float *dp[4];
    for (int r = 0; r < R; r++) { wp[r] = W + r * rs * row_bytes; sp[r] = S + r * rs * ng; }
    for (int b = 0; b < NB; b++) { xp[b] = X + b * xstride; dp[b] = DX + b * ng; }
    const __m512i low = _mm512_set1_epi8(0x0F);
    const __m512i shifts = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    __m256 facc[4][4];
    for (int r = 0; r < R; r++)
        for (int b = 0; b < NB; b++) facc[r][b] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        __m512i is[4][4];
        for (int k = 0; k < BPG; k++) {
            const int64_t at = (g * BPG + k) * block_bytes, xat = (g * BPG + k) * 64;
            __m512i wv[4];
            for (int r = 0; r < R; r++) {
                if (k == 0) _mm_prefetch((const char *)(wp[r] + at) + PREFETCH_AHEAD, _MM_HINT_T0);
                if (Q4) { /* 32 bytes: low nibbles = block positions 0..31, high ones = 32..63 */
                    const __m512i both = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(wp[r] + at)));
                    wv[r] = _mm512_and_si512(_mm512_srlv_epi16(both, shifts), low);
                } else {
                    wv[r] = _mm512_loadu_si512(wp[r] + at);
                }
            }
            for (int b = 0; b < NB; b++) {
                const __m512i xv = _mm512_loadu_si512(xp[b] + xat);
                for (int r = 0; r < R; r++)
                    is[r][b] = _mm512_dpbusd_epi32(k == 0 ? _mm512_setzero_si512() : is[r][b], wv[r], xv);
            }
        }
        for (int b = 0; b < NB; b++) {
            const float dxg = dp[b][g];
            for (int r = 0; r < R; r++) {
                const __m256i folded = _mm256_add_epi32(_mm512_castsi512_si256(is[r][b]), _mm512_extracti64x4_epi64(is[r][b], 1));
                facc[r][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(folded), _mm256_set1_ps(sp[r][g] * dxg), facc[r][b]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int b = 0; b < NB; b++)
            y[b * ystride + r * rs] = reduce8_ps(facc[r][b]) + bias_term(Bi + r * rs * ng, CB + b * ng, ng, VARIANT_BEST);
}
#define CSM_QUANT_TILE(R, NB, Q4, BPG)                                                                          \
    static void tile_quant_##R##x##NB##_##Q4##_##BPG(const uint8_t *W, int64_t rb, int64_t rs, const float *S,   \
                                                     const float *Bi, int64_t ng, const int8_t *X, int64_t xs,   \
                                                     const float *DX, const float *CB, float *y, int64_t ys) {  \
        tile_quant_body(W, rb, rs, S, Bi, ng, X, xs, DX, CB, y, ys, R, NB, Q4, BPG);                              \
    }
#define CSM_QUANT_TILES(Q4, BPG) CSM_QUANT_TILE(4, 1, Q4, BPG) CSM_QUANT_TILE(4, 2, Q4, BPG) \
    CSM_QUANT_TILE(2, 3, Q4, BPG) CSM_QUANT_TILE(2, 4, Q4, BPG)
CSM_QUANT_TILES(0, 1) CSM_QUANT_TILES(1, 1) CSM_QUANT_TILES(0, 2) CSM_QUANT_TILES(1, 2)
#undef CSM_QUANT_TILES
#undef CSM_QUANT_TILE

typedef void (*QuantTile)(const uint8_t *, int64_t, int64_t, const float *, const float *, int64_t, const int8_t *,
                          int64_t, const float *, const float *, float *, int64_t);
/* [q4][bpg - 1][shape: 4x1, 4x2, 2x3, 2x4] */
static const QuantTile QUANT_TILES[2][2][4] = {
    {{tile_quant_4x1_0_1, tile_quant_4x2_0_1, tile_quant_2x3_0_1, tile_quant_2x4_0_1},
     {tile_quant_4x1_0_2, tile_quant_4x2_0_2, tile_quant_2x3_0_2, tile_quant_2x4_0_2}},
    {{tile_quant_4x1_1_1, tile_quant_4x2_1_1, tile_quant_2x3_1_1, tile_quant_2x4_1_1},
     {tile_quant_4x1_1_2, tile_quant_4x2_1_2, tile_quant_2x3_1_2, tile_quant_2x4_1_2}}};
#endif

/* the tile shape for nb streams: bf16 4 rows (32 zmm registers hold 16 accumulators); int8/int4
 * 4 rows x 1-2 streams, or 2 rows x 3-4 streams (each also keeps a 256-bit float accumulator) */
static inline int tile_rows(int fmt, int nb) { return fmt == FMT_BF16 || nb <= 2 ? 4 : 2; }

/* Rows [r0, r1) of a row-major weight for all B streams, in tiles of R rows x NB streams. A whole
 * job (job_rows) goes as P = job_rows / R passes over rows {j, j + P, j + 2P, ...} (j = 0..P-1):
 * each of the R rows read side by side continues, in the next pass, where it ended, so
 * the memory sees R long sequential streams. Adjacent rows side by side instead interleave short
 * streams within a page (1-2 KB rows), which the hardware prefetcher follows badly: measured
 * 35-65% slower for 1024-input rows on an AMD EPYC (Zen 4). The bits do not change: each output is
 * the same dot product whatever tile computes it. */
static void rows_tiled(const CsmWeight *w, int64_t r0, int64_t r1, const Act *a, float *y) {
    const int B = a->B;
    for (int b0 = 0; b0 < B; b0 += 4) {
        const int nb = B - b0 < 4 ? B - b0 : 4, R = tile_rows(w->fmt, nb);
        const int64_t rs = r1 - r0 == job_rows(w) ? job_rows(w) / R : 1; /* row step within a job */
        const int64_t step = rs > 1 ? 1 : R, end = rs > 1 ? r0 + rs : r1 - R + 1;
        float *yb = y + (int64_t)b0 * w->out;
        int64_t r = r0;
        (void)rs, (void)step, (void)end, (void)yb; /* a build with neither tile kind only runs the loop at the end */
#if defined(CSM_BF16DOT)
        if (w->fmt == FMT_BF16) {
            const uint16_t *W = (const uint16_t *)w->data, *X = a->xb + (int64_t)b0 * a->in;
            for (; r < end; r += step) {
                const uint16_t *Wr = W + r * w->in;
                switch (nb) {
                case 1: tile_bf16_4x1(Wr, w->in, rs, X, a->in, yb + r, w->out); break;
                case 2: tile_bf16_4x2(Wr, w->in, rs, X, a->in, yb + r, w->out); break;
                case 3: tile_bf16_4x3(Wr, w->in, rs, X, a->in, yb + r, w->out); break;
                default: tile_bf16_4x4(Wr, w->in, rs, X, a->in, yb + r, w->out); break;
                }
            }
            if (rs > 1) r = r1;
        }
#endif
#if defined(CSM_VNNI512)
        if (w->fmt == FMT_Q8 || w->fmt == FMT_Q4) {
            const int q4 = w->fmt == FMT_Q4;
            const int64_t ng = w->in / w->group, rb = q4 ? w->in / 2 : w->in;
            const QuantTile fn = QUANT_TILES[q4][w->group / 64 - 1][nb - 1];
            const int8_t *X = (q4 ? a->xp : a->xq) + (int64_t)b0 * a->in;
            for (; r < end; r += step)
                fn((const uint8_t *)w->data + r * rb, rb, rs, w->scales + r * ng, w->biases + r * ng, ng, X, a->in,
                   a->dx + (int64_t)b0 * ng, a->cb + (int64_t)b0 * ng, yb + r, w->out);
            if (rs > 1) r = r1;
        }
#endif
        for (; r < r1; r++) /* rows left over: one at a time (the same bits) */
            for (int b = b0; b < b0 + nb; b++)
                y[(int64_t)b * w->out + r] = w->fmt == FMT_BF16
                    ? dot_bf16((const uint16_t *)w->data + r * w->in, a->xb + (int64_t)b * a->in, w->in, VARIANT_BEST)
                    : dot_quant(w, r, a, b, VARIANT_BEST);
    }
}

/* whether rows_tiled has SIMD tiles for this weight here */
static int tiled(const CsmWeight *w, int variant) {
    if (variant == VARIANT_PORTABLE) return 0;
#if defined(CSM_BF16DOT)
    if (w->fmt == FMT_BF16 && w->in >= 32) return 1;
#endif
#if defined(CSM_VNNI512)
    if ((w->fmt == FMT_Q8 || w->fmt == FMT_Q4) && (w->group == 64 || w->group == 128)) return 1;
#endif
    return 0;
}

#if defined(CSM_AMX)
/* bf16 rows on AMX: Y^T (16 rows x 16 streams) += W tile (16 rows x 32 inputs, read in place with the
 * row stride) x X^T pair tile (Act.xt), tdpbf16ps, one or two row tiles per job. Each output depends
 * only on its own weight row and stream (other streams' columns are other columns; missing streams
 * are zeros), so a stream's bits do not depend on B. Tiles 0, 1: accumulators; 4, 5: weights; 6: X^T. */
#include "amx.h" /* amx_configure, amx_release */

static void amx_rows(const uint16_t *W, int64_t in, int64_t r0, int tiles, const Act *a, float *y, int64_t ystride) {
    const int64_t nkb = in / 32, stride = in * 2;
    float c[2][256] __attribute__((aligned(64)));
    const uint16_t *W0 = W + r0 * in, *W1 = W0 + 16 * in;
    for (int chunk = 0; chunk * 16 < a->B; chunk++) {
        const uint16_t *xt = a->xt + (int64_t)chunk * nkb * 512;
        _tile_zero(0);
        if (tiles == 2) _tile_zero(1);
        for (int64_t kb = 0; kb < nkb; kb++) {
            _tile_loadd(4, W0 + kb * 32, stride);
            _tile_loadd(6, xt + kb * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            if (tiles == 2) {
                _tile_loadd(5, W1 + kb * 32, stride);
                _tile_dpbf16ps(1, 5, 6);
            }
        }
        _tile_stored(0, c[0], 64);
        if (tiles == 2) _tile_stored(1, c[1], 64);
        const int nb = a->B - chunk * 16 < 16 ? a->B - chunk * 16 : 16;
        for (int t = 0; t < tiles; t++)
            for (int b = 0; b < nb; b++)
                for (int m = 0; m < 16; m++) y[(int64_t)(chunk * 16 + b) * ystride + r0 + 16 * t + m] = c[t][m * 16 + b];
    }
}
#endif

static void run_tile(const Job *j, int64_t tile, const Act *a, int variant) {
    const CsmWeight *w = j->w;
    const int B = a->B;
#if defined(CSM_AMX)
    if (on_amx(w, variant)) { /* rows past the last full 16 go one at a time through dot_bf16 */
        const int64_t r0 = tile * AMX_ROWS, left = w->out - r0;
        const int tiles = left >= 32 ? 2 : (int)(left / 16);
        if (tiles) amx_rows((const uint16_t *)w->data, w->in, r0, tiles, a, j->y, w->out);
        for (int64_t r = r0 + 16 * tiles; r < r0 + AMX_ROWS && r < w->out; r++)
            for (int b = 0; b < B; b++)
                j->y[(int64_t)b * w->out + r] = dot_bf16((const uint16_t *)w->data + r * w->in, a->xb + (int64_t)b * a->in, w->in, VARIANT_BEST);
        return;
    }
#endif
    if (w->fmt == FMT_BF16_T) { /* y[o] = sum_i x[i] * W[i, o], W (in, out): each input row widened once for all streams */
        int64_t o0 = tile * COL_TILE, o1 = o0 + COL_TILE < w->out ? o0 + COL_TILE : w->out, n = o1 - o0;
        const uint16_t *W = (const uint16_t *)w->data;
        float wf[COL_TILE];
        for (int b0 = 0; b0 < B; b0 += TILE_ACCS) {
            const int nb = B - b0 < TILE_ACCS ? B - b0 : TILE_ACCS;
            float acc[TILE_ACCS][COL_TILE];
            for (int b = 0; b < nb; b++)
                for (int64_t o = 0; o < n; o++) acc[b][o] = 0.0f;
            for (int64_t i = 0; i < w->in; i++) {
                const uint16_t *row = W + i * w->out + o0;
                for (int64_t o = 0; o < n; o++) wf[o] = bf16_to_f32(row[o]);
                for (int b = 0; b < nb; b++) {
                    const float xi = bf16_to_f32(a->xb[(int64_t)(b0 + b) * a->in + i]);
                    for (int64_t o = 0; o < n; o++) acc[b][o] = fmaf(xi, wf[o], acc[b][o]);
                }
            }
            for (int b = 0; b < nb; b++) memcpy(j->y + (int64_t)(b0 + b) * w->out + o0, acc[b], sizeof(float) * n);
        }
        return;
    }
    const int64_t rows = job_rows(w), r0 = tile * rows, r1 = r0 + rows < w->out ? r0 + rows : w->out;
    if (tiled(w, variant)) {
        rows_tiled(w, r0, r1, a, j->y);
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        if (w->fmt == FMT_BF16) {
            const uint16_t *wr = (const uint16_t *)w->data + r * w->in;
            for (int b = 0; b < B; b++) j->y[b * w->out + r] = dot_bf16(wr, a->xb + b * a->in, w->in, variant);
        } else {
            for (int b = 0; b < B; b++) j->y[b * w->out + r] = dot_quant(w, r, a, b, variant);
        }
    }
}

static void products(const CsmModel *m, const Job *jobs, int n, const Act *a) {
    int64_t starts[8], total = 0, work = 0;
    for (int i = 0; i < n; i++) {
        starts[i] = total;
        total += job_tiles(jobs[i].w, m->variant);
        work += jobs[i].w->out * jobs[i].w->in * a->B;
    }
    const int variant = m->variant;
    /* Small products run on one thread: waking the others costs more than they save (and far more
     * when the machine is busy and a woken thread must wait for a core). */
    int amx = 0;
#if defined(CSM_AMX)
    for (int i = 0; i < n; i++) amx |= on_amx(jobs[i].w, variant);
#endif
    #pragma omp parallel num_threads(n_threads(m)) if(work >= PARALLEL_WORK)
    {
#if defined(CSM_AMX)
        if (amx) amx_configure(); /* tile state is per thread; released after the loop */
#endif
        #pragma omp for schedule(dynamic, 2)
        for (int64_t t = 0; t < total; t++) {
            int i = n - 1;
            while (starts[i] > t) i--;
            run_tile(&jobs[i], t - starts[i], a, variant);
        }
#if defined(CSM_AMX)
        if (amx) amx_release();
#endif
    }
    (void)amx;
}

static int input_group(const CsmWeight *w) { return (w->fmt == FMT_Q8 || w->fmt == FMT_Q4) ? w->group : 0; }

/* y = x @ W^T for B rows */
static void product1(const CsmModel *m, const CsmWeight *w, const float *x, int B, float *y) {
    Act a;
    act_prepare(&a, x, B, w->in, input_group(w), m->variant == VARIANT_AMX);
    Job j = {w, y};
    products(m, &j, 1, &a);
    act_free(&a);
}

/* ---------------------------------------------------------------------------------------------- */
/* the transformer pieces */

/* rms_norm, rope, attend, swiglu: rows.h */

/* The stack's cache of one stream: (layers, 2, n_kv, cap, head_dim) float32. */
static float *kv_at(const CsmStack *s, float *cache, int64_t cap, int layer, int which, int g) {
    return cache + ((((int64_t)layer * 2 + which) * s->n_kv + g) * cap) * s->head_dim;
}

/* One row per stream through all layers of `s`: x (B, dim) updated in place to the final hidden
 * state (after the final norm, written to out). caches[b] has capacity cap[b]; the row goes to
 * position pos[b]. */
static void stack_step(const CsmModel *m, const CsmStack *s, int B, float *x, float *const *caches,
                       const int64_t *cap, const int32_t *pos, float *out) {
    const int D = s->dim, H = s->n_heads, G = s->n_kv, hd = s->head_dim, F = s->hidden;
    const int qd = H * hd, kd = G * hd;
    int32_t maxpos = 0;
    for (int b = 0; b < B; b++) maxpos = pos[b] > maxpos ? pos[b] : maxpos;
    float *h = (float *)malloc(sizeof(float) * B * D);
    float *q = (float *)malloc(sizeof(float) * B * qd), *k = (float *)malloc(sizeof(float) * B * kd);
    float *v = (float *)malloc(sizeof(float) * B * kd), *att = (float *)malloc(sizeof(float) * B * qd);
    float *o = (float *)malloc(sizeof(float) * B * D);
    float *gt = (float *)malloc(sizeof(float) * B * F), *up = (float *)malloc(sizeof(float) * B * F);
    float *scores = (float *)malloc(sizeof(float) * B * H * (maxpos + 1));
    const float scale = 1.0f / sqrtf((float)hd);
    for (int l = 0; l < s->n_layers; l++) {
        const CsmLayer *L = &s->layers[l];
        for (int b = 0; b < B; b++) rms_norm(x + b * D, L->norm1, D, s->eps, h + b * D);
        Act a;
        act_prepare(&a, h, B, D, input_group(&L->q), m->variant == VARIANT_AMX);
        Job qkv[3] = {{&L->q, q}, {&L->k, k}, {&L->v, v}};
        products(m, qkv, 3, &a);
        act_free(&a);
        for (int b = 0; b < B; b++) {
            const float *cs = s->rope_cos + (int64_t)pos[b] * (hd / 2), *sn = s->rope_sin + (int64_t)pos[b] * (hd / 2);
            rope(q + b * qd, H, hd, cs, sn);
            rope(k + b * kd, G, hd, cs, sn);
            for (int g = 0; g < G; g++) {
                memcpy(kv_at(s, caches[b], cap[b], l, 0, g) + (int64_t)pos[b] * hd, k + b * kd + g * hd, sizeof(float) * hd);
                memcpy(kv_at(s, caches[b], cap[b], l, 1, g) + (int64_t)pos[b] * hd, v + b * kd + g * hd, sizeof(float) * hd);
            }
        }
        #pragma omp parallel for schedule(static) num_threads(n_threads(m)) \
            if ((int64_t)B * H * (maxpos + 1) * hd >= PARALLEL_WORK)
        for (int bg = 0; bg < B * G; bg++) {
            const int b = bg / G, g = bg % G, r = H / G;
            attend(q + b * qd + g * r * hd, r, hd, kv_at(s, caches[b], cap[b], l, 0, g),
                   kv_at(s, caches[b], cap[b], l, 1, g), pos[b] + 1, scale,
                   scores + (int64_t)bg * r * (maxpos + 1), att + b * qd + g * r * hd);
        }
        product1(m, &L->o, att, B, o);
        for (int64_t i = 0; i < (int64_t)B * D; i++) x[i] += o[i];
        for (int b = 0; b < B; b++) rms_norm(x + b * D, L->norm2, D, s->eps, h + b * D);
        act_prepare(&a, h, B, D, input_group(&L->gate), m->variant == VARIANT_AMX);
        Job gu[2] = {{&L->gate, gt}, {&L->up, up}};
        products(m, gu, 2, &a);
        act_free(&a);
        swiglu(gt, up, (int64_t)B * F);
        product1(m, &L->down, gt, B, o);
        for (int64_t i = 0; i < (int64_t)B * D; i++) x[i] += o[i];
    }
    for (int b = 0; b < B; b++) rms_norm(x + b * D, s->norm, D, s->eps, out + b * D);
    free(h); free(q); free(k); free(v); free(att); free(o); free(gt); free(up); free(scores);
}

/* Row `index` of an embedding table (bf16 or affine-quantized rows), added to acc (float32). */
static void add_embedding(const CsmWeight *w, int64_t index, float *acc) {
    const int64_t in = w->in;
    if (w->fmt == FMT_BF16) {
        const uint16_t *r = (const uint16_t *)w->data + index * in;
        for (int64_t i = 0; i < in; i++) acc[i] += bf16_to_f32(r[i]);
        return;
    }
    const int G = w->group;
    const float *sc = w->scales + index * (in / G), *bi = w->biases + index * (in / G);
    if (w->fmt == FMT_Q8) {
        const uint8_t *r = (const uint8_t *)w->data + index * in;
        for (int64_t i = 0; i < in; i++) acc[i] += fmaf(sc[i / G], (float)r[i], bi[i / G]);
    } else {
        const uint8_t *r = (const uint8_t *)w->data + index * (in / 2);
        for (int64_t i = 0; i < in; i++) {
            uint8_t byte = r[i / 2];
            float qv = (float)((i & 1) ? (byte >> 4) : (byte & 0x0F));
            acc[i] += fmaf(sc[i / G], qv, bi[i / G]);
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* draws: counter-based uniform keyed by (seed, frame, codebook), then top-k + temperature */

static inline uint64_t splitmix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double csm_uniform(uint64_t seed, int64_t frame, int64_t codebook) {
    uint64_t h = splitmix(seed);
    h = splitmix(h ^ (uint64_t)frame);
    h = splitmix(h ^ ((uint64_t)codebook + 0x632BE59BD9B4E019ull));
    return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

#define DECODABLE 2048

int32_t csm_draw(const float *logits, int32_t V, const CsmDraw *d, int32_t codebook) {
    const int32_t n = (d->suppress && V > DECODABLE) ? DECODABLE : V;
    if (!(d->temperature > 0.0f)) {
        int32_t best = 0;
        for (int32_t j = 1; j < n; j++)
            if (logits[j] > logits[best]) best = j;
        return best;
    }
    float kth = -INFINITY;
    if (d->top_k > 0 && d->top_k < n) { /* the k-th largest value (duplicates counted) */
        const int32_t k = d->top_k;
        float *top = (float *)calloc((size_t)k, sizeof(float));
        int32_t held = 0;
        for (int32_t j = 0; j < n; j++) {
            float v = logits[j];
            if (held == k && !(v > top[k - 1])) continue;
            int32_t at = held < k ? held++ : k - 1;
            while (at > 0 && top[at - 1] < v) { top[at] = top[at - 1]; at--; }
            top[at] = v;
        }
        kth = top[k - 1];
        free(top);
    }
    float mx = -INFINITY;
    for (int32_t j = 0; j < n; j++)
        if (logits[j] >= kth && logits[j] > mx) mx = logits[j];
    const double inv_t = 1.0 / (double)d->temperature;
    double total = 0.0;
    for (int32_t j = 0; j < n; j++)
        if (logits[j] >= kth) total += exp(((double)logits[j] - mx) * inv_t);
    const double target = csm_uniform(d->seed, d->frame, codebook) * total;
    double cum = 0.0;
    int32_t last = 0;
    for (int32_t j = 0; j < n; j++) {
        if (!(logits[j] >= kth)) continue;
        cum += exp(((double)logits[j] - mx) * inv_t);
        last = j;
        if (cum > target) return j;
    }
    return last;
}

/* ---------------------------------------------------------------------------------------------- */
/* entry points */

/* The backbone's one-row step for B streams: each stream's fed-back frame codes (B, K) are embedded
 * and run at position pos[b] of caches[b] (capacity cap[b]); hidden (B, Db) gets the final-norm state. */
void csm_backbone_step(const CsmModel *m, int B, const int32_t *codes, float *const *caches,
                       const int64_t *cap, const int32_t *pos, float *hidden) {
    const int D = m->backbone.dim;
    float *x = (float *)calloc((size_t)B * D, sizeof(float));
    for (int b = 0; b < B; b++)
        for (int k = 0; k < m->K; k++) add_embedding(&m->embed, (int64_t)k * m->V + codes[b * m->K + k], x + b * D);
    stack_step(m, &m->backbone, B, x, caches, cap, pos, hidden);
    free(x);
}

/* One frame from backbone states hidden (B, Db): codes (B, K). With `forced` (B, K) the frame's codes
 * are taken from it instead of drawn (teacher forcing); `logits` (B, K, V), when given, receives
 * every head's logits. */
void csm_depth(const CsmModel *m, int B, const float *hidden, const CsmDraw *draws, const int32_t *forced,
               int32_t *codes, float *logits) {
    const int K = m->K, V = m->V, Db = m->backbone.dim, Dd = m->decoder.dim;
    const CsmStack *s = &m->decoder;
    const int64_t per = (int64_t)s->n_layers * 2 * s->n_kv * K * s->head_dim;
    float *cache = (float *)malloc(sizeof(float) * B * per);
    float **caches = (float **)malloc(sizeof(float *) * B);
    int64_t *cap = (int64_t *)malloc(sizeof(int64_t) * B);
    int32_t *pos = (int32_t *)calloc((size_t)B, sizeof(int32_t));
    float *lg = (float *)malloc(sizeof(float) * B * V);
    float *in = (float *)malloc(sizeof(float) * B * Db);
    float *x = (float *)malloc(sizeof(float) * B * Dd), *h = (float *)malloc(sizeof(float) * B * Dd);
    for (int b = 0; b < B; b++) { caches[b] = cache + b * per; cap[b] = K; }

    product1(m, &m->head0, hidden, B, lg);
    for (int b = 0; b < B; b++) {
        codes[b * K] = forced ? forced[b * K] : csm_draw(lg + b * V, V, &draws[b], 0);
        if (logits) memcpy(logits + (int64_t)b * K * V, lg + b * V, sizeof(float) * V);
    }
    memcpy(in, hidden, sizeof(float) * B * Db);
    for (int p = 0; p < K; p++) { /* decoder position p: input 0 = hidden, input p = embedding of code p-1 */
        if (p > 0) {
            memset(in, 0, sizeof(float) * B * Db);
            for (int b = 0; b < B; b++) add_embedding(&m->embed, (int64_t)(p - 1) * V + codes[b * K + p - 1], in + b * Db);
        }
        product1(m, &m->projection, in, B, x);
        for (int b = 0; b < B; b++) pos[b] = p;
        stack_step(m, s, B, x, caches, cap, pos, h);
        if (p == 0) continue;
        product1(m, &m->audio_head[p - 1], h, B, lg);
        for (int b = 0; b < B; b++) {
            codes[b * K + p] = forced ? forced[b * K + p] : csm_draw(lg + b * V, V, &draws[b], p);
            if (logits) memcpy(logits + ((int64_t)b * K + p) * V, lg + b * V, sizeof(float) * V);
        }
    }
    free(cache); free(caches); free(cap); free(pos); free(lg); free(in); free(x); free(h);
}

/* The hot loop: feed each stream's previous frame, then draw its next frame, in one call. */
void csm_step(const CsmModel *m, int B, const int32_t *prev, float *const *caches, const int64_t *cap,
              const int32_t *pos, const CsmDraw *draws, int32_t *codes, float *hidden) {
    csm_backbone_step(m, B, prev, caches, cap, pos, hidden);
    csm_depth(m, B, hidden, draws, NULL, codes, NULL);
}

/* y (B, out) = x (B, in) @ W^T through the frame step's kernels (tests and prefill's fallback). */
void csm_product(const CsmModel *m, const CsmWeight *w, const float *x, int B, float *y) {
    product1(m, w, x, B, y);
}
