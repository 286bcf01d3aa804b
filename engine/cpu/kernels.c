/* bfloat16 matrix-vector products for the frame loop (see kernels.py). Built by build.py. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512BF16__) && !defined(CSM_PORTABLE)
#include <immintrin.h>
#define CSM_VDPBF16PS 1
#endif

static inline float bf16_to_f32(uint16_t v) { uint32_t b = (uint32_t)v << 16; float f; memcpy(&f, &b, 4); return f; }
/* x rounded to the nearest bfloat16 (ties to even), as vcvtne2ps2bf16 rounds */
static inline float round_bf16(float x) {
    uint32_t b; memcpy(&b, &x, 4); b += 0x7FFFu + ((b >> 16) & 1u); b &= 0xFFFF0000u; memcpy(&x, &b, 4); return x;
}

int csm_bf16_variant(void) {
#ifdef CSM_VDPBF16PS
    return 1;
#else
    return 0;
#endif
}

/* y[r] = W[r, :] . x for W (rows, k) bfloat16, row-major; x float32 (k), rounded to bfloat16. */
void csm_bf16_matvec(const uint16_t *W, const float *x, float *y, long rows, long k, int threads) {
    float *xr = (float *)malloc((k > 0 ? k : 1) * sizeof(float));
    for (long i = 0; i < k; i++) xr[i] = round_bf16(x[i]);
#ifdef CSM_VDPBF16PS
    long nb = k / 32;
    __m512bh *xb = (__m512bh *)_mm_malloc((nb > 0 ? nb : 1) * sizeof(__m512bh), 64);
    for (long b = 0; b < nb; b++)
        xb[b] = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(xr + 32 * b + 16), _mm512_loadu_ps(xr + 32 * b));
    #pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
    for (long r = 0; r < rows; r++) {
        const uint16_t *w = W + r * k;
        __m512 acc = _mm512_setzero_ps();
        for (long b = 0; b < nb; b++)
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(w + 32 * b), xb[b]);
        float s = _mm512_reduce_add_ps(acc);
        for (long i = 32 * nb; i < k; i++) s += bf16_to_f32(w[i]) * xr[i];
        y[r] = s;
    }
    _mm_free(xb);
#else
    #pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
    for (long r = 0; r < rows; r++) {
        const uint16_t *w = W + r * k;
        float acc[16] = {0};
        long i = 0;
        for (; i + 16 <= k; i += 16)
            for (int j = 0; j < 16; j++) acc[j] += bf16_to_f32(w[i + j]) * xr[i + j];
        float s = 0.0f;
        for (int j = 0; j < 16; j++) s += acc[j];
        for (; i < k; i++) s += bf16_to_f32(w[i]) * xr[i];
        y[r] = s;
    }
#endif
    free(xr);
}

/* y[o] = sum_i h[i] * W[i, o] for W (k, cols) bfloat16, row-major (a weight stored input-major). */
void csm_bf16_matvec_t(const uint16_t *W, const float *h, float *y, long k, long cols, int threads) {
    long chunks = (cols + 255) / 256;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (long c = 0; c < chunks; c++) {
        long o0 = c * 256, o1 = o0 + 256 < cols ? o0 + 256 : cols;
        float acc[256];
        for (long o = 0; o < o1 - o0; o++) acc[o] = 0.0f;
        for (long i = 0; i < k; i++) {
            const uint16_t *w = W + i * cols;
            float hi = round_bf16(h[i]);
            for (long o = o0; o < o1; o++) acc[o - o0] += hi * bf16_to_f32(w[o]);
        }
        for (long o = o0; o < o1; o++) y[o] = acc[o - o0];
    }
}
