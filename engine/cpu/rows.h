/* The transformer's pieces between the matrix products, for one row at a time: RMSNorm, RoPE,
 * softmax, causal attention of one KV group's query heads, SwiGLU. frame.c's one-row step (B
 * streams) and prefill.c's T prompt rows both use them (prefill.c's attention over many rows has
 * tiles of its own, around this softmax), and a row's result depends only on the row itself and
 * the cache positions it reads.
 *
 * The loops are written so that the compiler vectorises them without -ffast-math: dot products
 * keep 16 independent partial sums, added as a tree at the end, and exp is computed in plain
 * arithmetic (exp_poly) instead of a libm call per element. */
#ifndef CSM_ROWS_H
#define CSM_ROWS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* y = x / rms(x) * w over n values (the mean of squares in double). */
static inline void rms_norm(const float *x, const float *w, int64_t n, float eps, float *y) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * r * w[i];
}

/* Rotate adjacent pairs (x[2i], x[2i+1]) of each of `heads` vectors of hd values by the angles
 * whose cosines and sines are cs[i], sn[i] (one position's row of the tables). */
static inline void rope(float *x, int heads, int hd, const float *cs, const float *sn) {
    for (int h = 0; h < heads; h++) {
        float *v = x + h * hd;
        for (int i = 0; i < hd / 2; i++) {
            float a = v[2 * i], b = v[2 * i + 1];
            v[2 * i] = a * cs[i] - b * sn[i];
            v[2 * i + 1] = a * sn[i] + b * cs[i];
        }
    }
}

/* e^x within 2 ulp for float32: x = n ln2 + r (|r| <= ln2/2, ln2 split in two for an exact n ln2),
 * e^r by a degree-6 polynomial, times 2^n built in the exponent bits. Computed on x clamped to
 * [-87.3, 88.3] (where 2^n is a normal float), then 0 below that range and inf above it; a NaN
 * stays a NaN. Branch-free (selects), so a loop over it vectorises. */
static inline float exp_poly(float in) {
    float x = in > 88.3f ? 88.3f : in;
    x = x < -87.3f ? -87.3f : x;
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer in the low bits */
    float t = x * 1.44269504088896341f + magic;
    float n = t - magic;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &t, 4);
    uint32_t scale_bits = (bits - 0x4B400000u + 127u) << 23; /* bits - magic's bits = n */
    float scale;
    memcpy(&scale, &scale_bits, 4);
    float e = p * scale;
    e = in > 88.3f ? INFINITY : e;
    return in < -87.3f ? 0.0f : e;
}

static inline float dot(const float *a, const float *b, int n) {
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    for (int j = 0; i < n; i++, j++) acc[j] += a[i] * b[i];
    for (int w = 8; w; w >>= 1)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0];
}

/* s[:n] = softmax(s[:n]); the max and the sum in 16 partial lanes (vectorised), then the lanes. */
static inline void softmax(float *s, int64_t n) {
    float m[16], z[16];
    int64_t t = 0;
    for (int i = 0; i < 16; i++) m[i] = -INFINITY, z[i] = 0.0f;
    for (; t + 16 <= n; t += 16)
        for (int i = 0; i < 16; i++) m[i] = s[t + i] > m[i] ? s[t + i] : m[i];
    for (int i = 0; t < n; t++, i++) m[i] = s[t] > m[i] ? s[t] : m[i];
    float mx = m[0];
    for (int i = 1; i < 16; i++) mx = m[i] > mx ? m[i] : mx;
    for (t = 0; t < n; t++) s[t] = exp_poly(s[t] - mx);
    for (t = 0; t + 16 <= n; t += 16)
        for (int i = 0; i < 16; i++) z[i] += s[t + i];
    for (int i = 0; t < n; t++, i++) z[i] += s[t];
    for (int w = 8; w; w >>= 1)
        for (int i = 0; i < w; i++) z[i] += z[i + w];
    const float inv = 1.0f / z[0];
    for (t = 0; t < n; t++) s[t] *= inv;
}

/* The r query heads q (r, hd) of one KV group, attending to positions 0..n-1 of its keys K and
 * values V (n, hd each): out (r, hd) = softmax(q K^T * scale) V. sc: scratch for r * n scores. */
static inline void attend(const float *q, int r, int hd, const float *K, const float *V, int64_t n, float scale,
                          float *sc, float *out) {
    for (int64_t t = 0; t < n; t++)
        for (int h = 0; h < r; h++) sc[h * n + t] = dot(q + h * hd, K + t * hd, hd) * scale;
    for (int h = 0; h < r; h++) {
        softmax(sc + h * n, n);
        for (int i = 0; i < hd; i++) out[h * hd + i] = 0.0f;
    }
    for (int64_t t = 0; t < n; t++) {
        const float *vt = V + t * hd;
        for (int h = 0; h < r; h++) {
            const float p = sc[h * n + t];
            float *o = out + h * hd;
            for (int i = 0; i < hd; i++) o[i] += p * vt[i];
        }
    }
}

/* gate[i] = silu(gate[i]) * up[i] = gate / (1 + e^-gate) * up, over n values. */
static inline void swiglu(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + exp_poly(-gate[i])) * up[i];
}

#endif
