/* The backbone's work between the matrix products over T prompt rows of one stream, for
 * engine/cpu/prefill.py (which runs gemm.c's products around these): RMSNorm, RoPE with the keys
 * and values stored into the stream's cache, causal GQA attention and SwiGLU. Each is one call per
 * layer whose rows OpenMP threads share. RMSNorm, RoPE, softmax and SwiGLU are rows.h's one-row
 * pieces, as the frame step uses them; attention over many rows has tiles of its own (below). Each
 * row depends only on the row and on the cache positions up to its own, never on how many rows
 * share the call or how they are split. Compiled into frame.c's library (engine/cpu/frame.py).
 *
 * The cache of one layer: kv (2, G, cap, hd) float32, keys then values; row t of the call goes to
 * position offset + t. RoPE tables: cos, sin (positions, hd/2), row p for position p.
 */
#include <stdint.h>
#include <stdlib.h>
#include "rows.h"

#define ROWS_PER_TASK 4 /* rows a thread takes at a time where work per row is even */

/* y (T, D) = RMSNorm(x (T, D)) * w */
void csm_prefill_norm(const float *x, int64_t T, int64_t D, const float *w, float eps, float *y, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads) if (T >= 2 * ROWS_PER_TASK)
    for (int64_t t = 0; t < T; t++) rms_norm(x + t * D, w, D, eps, y + t * D);
}

/* Rotates q (T, H, hd) in place and k (T, G, hd) into the cache's keys at positions offset..
 * offset+T-1, and copies v (T, G, hd) into its values. */
void csm_prefill_rope_store(float *q, const float *k, const float *v, int64_t T, int H, int G, int hd,
                            const float *cos, const float *sin, int64_t offset, float *kv, int64_t cap, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads) if (T >= 2 * ROWS_PER_TASK)
    for (int64_t t = 0; t < T; t++) {
        const int64_t p = offset + t;
        const float *cs = cos + p * (hd / 2), *sn = sin + p * (hd / 2);
        rope(q + t * H * hd, H, hd, cs, sn);
        for (int g = 0; g < G; g++) {
            float *key = kv + ((int64_t)g * cap + p) * hd, *value = kv + ((int64_t)(G + g) * cap + p) * hd;
            memcpy(key, k + (t * G + g) * hd, sizeof(float) * hd);
            rope(key, 1, hd, cs, sn);
            memcpy(value, v + (t * G + g) * hd, sizeof(float) * hd);
        }
    }
}

/* Attention over many rows reads each key for many queries, so the scores run as small matrix
 * products instead of one dot product per (query, key): the group's keys are transposed once per
 * call into Kt (hd, ld), ld a multiple of KEYS with zeros past the last position, and HEADS query
 * heads take KEYS keys at a time in HEADS x KEYS sums, a broadcast query value times a row of Kt
 * per step (no horizontal sums). The weighted values likewise: HEADS heads x 32 columns of V.
 * Each row still sees its own positions only and its numbers do not depend on the other rows.
 * (A head_dim that is not a multiple of 16 takes rows.h's attend() instead.) */
#define KEYS 32
#define HEADS 4

static void transpose_keys(const float *K, int64_t n, int hd, int64_t ld, float *Kt) {
    for (int d = 0; d < hd; d++) {
        float *row = Kt + (int64_t)d * ld;
        for (int64_t t = 0; t < n; t++) row[t] = K[t * hd + d];
        for (int64_t t = n; t < ld; t++) row[t] = 0.0f;
    }
}

/* 16 floats as one value (GCC/Clang vector extensions: one AVX512 register, two AVX2 or four NEON
 * registers); loads and stores through memcpy, which need no alignment. */
typedef float vf16 __attribute__((vector_size(64)));
static inline vf16 load16(const float *p) { vf16 v; memcpy(&v, p, sizeof(v)); return v; }
static inline void store16(float *p, vf16 v) { memcpy(p, &v, sizeof(v)); }

/* sc (HEADS, ldsc) = q (HEADS, hd) Kt[:, :n] * scale (columns up to n rounded up to KEYS). Eight
 * accumulators (4 heads x 2 x 16 keys): enough independent sums to cover the FMA units' latency. */
static void tile_scores(const float *q, int hd, const float *Kt, int64_t ld, int64_t n, float scale,
                        float *sc, int64_t ldsc) {
    _Static_assert(HEADS == 4 && KEYS == 32, "tile_scores is written for 4 heads x 32 keys");
    for (int64_t j = 0; j < n; j += KEYS) {
        vf16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
        for (int d = 0; d < hd; d++) {
            const vf16 k = load16(Kt + (int64_t)d * ld + j), l = load16(Kt + (int64_t)d * ld + j + 16);
            const float q0 = q[d], q1 = q[hd + d], q2 = q[2 * hd + d], q3 = q[3 * hd + d];
            a0 += q0 * k, b0 += q0 * l;
            a1 += q1 * k, b1 += q1 * l;
            a2 += q2 * k, b2 += q2 * l;
            a3 += q3 * k, b3 += q3 * l;
        }
        store16(sc + j, a0 * scale), store16(sc + j + 16, b0 * scale);
        store16(sc + ldsc + j, a1 * scale), store16(sc + ldsc + j + 16, b1 * scale);
        store16(sc + 2 * ldsc + j, a2 * scale), store16(sc + 2 * ldsc + j + 16, b2 * scale);
        store16(sc + 3 * ldsc + j, a3 * scale), store16(sc + 3 * ldsc + j + 16, b3 * scale);
    }
}

/* out (HEADS, hd) = p (HEADS, ldsc)[:, :n] V (n, hd): 32 columns at a time (8 accumulators), then
 * a last 16 where hd is an odd multiple of 16. */
static void tile_values(const float *p, int64_t ldsc, const float *V, int64_t n, int hd, float *out) {
    int i0 = 0;
    for (; i0 + 32 <= hd; i0 += 32) {
        vf16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
        for (int64_t t = 0; t < n; t++) {
            const vf16 v = load16(V + t * hd + i0), w = load16(V + t * hd + i0 + 16);
            const float p0 = p[t], p1 = p[ldsc + t], p2 = p[2 * ldsc + t], p3 = p[3 * ldsc + t];
            a0 += p0 * v, b0 += p0 * w;
            a1 += p1 * v, b1 += p1 * w;
            a2 += p2 * v, b2 += p2 * w;
            a3 += p3 * v, b3 += p3 * w;
        }
        store16(out + i0, a0), store16(out + i0 + 16, b0);
        store16(out + hd + i0, a1), store16(out + hd + i0 + 16, b1);
        store16(out + 2 * hd + i0, a2), store16(out + 2 * hd + i0 + 16, b2);
        store16(out + 3 * hd + i0, a3), store16(out + 3 * hd + i0 + 16, b3);
    }
    for (; i0 < hd; i0 += 16) {
        vf16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int64_t t = 0; t < n; t++) {
            const vf16 v = load16(V + t * hd + i0);
            a0 += p[t] * v;
            a1 += p[ldsc + t] * v;
            a2 += p[2 * ldsc + t] * v;
            a3 += p[3 * ldsc + t] * v;
        }
        store16(out + i0, a0);
        store16(out + hd + i0, a1);
        store16(out + 2 * hd + i0, a2);
        store16(out + 3 * hd + i0, a3);
    }
}

/* Row t's r heads of one group over positions 0..n-1: HEADS at a time (a short last pass padded
 * with zero queries whose results are dropped). qs, os: HEADS x hd scratch; sc: HEADS x ldsc. */
static void attend_tiled(const float *q, int r, int hd, const float *Kt, int64_t ld, const float *V, int64_t n,
                         float scale, float *qs, float *sc, int64_t ldsc, float *os, float *out) {
    for (int h0 = 0; h0 < r; h0 += HEADS) {
        const int nh = r - h0 < HEADS ? r - h0 : HEADS;
        memset(qs, 0, sizeof(float) * HEADS * hd);
        memcpy(qs, q + (int64_t)h0 * hd, sizeof(float) * nh * hd);
        tile_scores(qs, hd, Kt, ld, n, scale, sc, ldsc);
        for (int h = 0; h < nh; h++) softmax(sc + h * ldsc, n);
        tile_values(sc, ldsc, V, n, hd, os);
        memcpy(out + (int64_t)h0 * hd, os, sizeof(float) * nh * hd);
    }
}

/* out (T, H*hd): row t's heads attend to the cache's positions 0..offset+t (its own included),
 * the r = H/G heads of group g to that group's keys and values. Returns -2 when out of memory. */
int csm_prefill_attention(const float *q, int64_t T, int H, int G, int hd, const float *kv, int64_t cap,
                          int64_t offset, float scale, float *out, int threads) {
    const int r = H / G, tiled = hd % 16 == 0;
    const int64_t n_max = offset + T, ld = (n_max + KEYS - 1) / KEYS * KEYS;
    float *Kt = tiled ? (float *)malloc(sizeof(float) * G * hd * ld) : NULL;
    if (tiled && !Kt) return -2;
    int failed = 0;
    #pragma omp parallel num_threads(threads) if (T * H * n_max * hd >= (1 << 18)) reduction(| : failed)
    {
        if (tiled) {
            #pragma omp for schedule(static)
            for (int g = 0; g < G; g++) transpose_keys(kv + (int64_t)g * cap * hd, n_max, hd, ld, Kt + (int64_t)g * hd * ld);
        }
        float *sc = (float *)malloc(sizeof(float) * (HEADS > r ? HEADS : r) * ld);
        float *qs = (float *)malloc(sizeof(float) * HEADS * hd * 2);
        if (!sc || !qs) failed = 1;
        /* later rows see more positions: dynamic, a (row, group) at a time, the long ones first */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < T * G; i++) {
            if (!sc || !qs) continue;
            const int64_t t = T - 1 - i / G, n = offset + t + 1;
            const int g = (int)(i % G);
            const float *qt = q + (t * H + (int64_t)g * r) * hd, *V = kv + (int64_t)(G + g) * cap * hd;
            float *o = out + (t * H + (int64_t)g * r) * hd;
            if (tiled)
                attend_tiled(qt, r, hd, Kt + (int64_t)g * hd * ld, ld, V, n, scale, qs, sc, ld, qs + HEADS * hd, o);
            else
                attend(qt, r, hd, kv + (int64_t)g * cap * hd, V, n, scale, sc, o);
        }
        free(sc);
        free(qs);
    }
    free(Kt);
    return failed ? -2 : 0;
}

/* gate (n) = silu(gate) * up, in place */
void csm_prefill_swiglu(float *gate, const float *up, int64_t n, int threads) {
    const int64_t chunk = 4096;
    #pragma omp parallel for schedule(static) num_threads(threads) if (n >= 4 * chunk)
    for (int64_t c = 0; c < n; c += chunk) swiglu(gate + c, up + c, n - c < chunk ? n - c : chunk);
}
