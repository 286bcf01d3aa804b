/* The portable and the best variant of the quantized products of frame.c, compared bit for bit.
 * Built by tests/test_cpu_backend.py for another architecture (ARM64 under qemu-user) where a cross
 * compiler is installed. Exit status 0: every format and group size gave the same bits. */
#include "frame.c"
#include <stdio.h>
static uint64_t st = 12345;
static uint32_t rnd(void) { st = splitmix(st); return (uint32_t)(st >> 32); }
int main(void) {
    int bad = 0;
    for (int fmt = FMT_Q8; fmt <= FMT_Q4; fmt++)
        for (int G = 32; G <= 128; G *= 2) {
            const int64_t out = 40, in = 256, ng = in / G, bytes = fmt == FMT_Q8 ? in : in / 2;
            uint8_t *data = malloc(out * bytes);
            float *sc = malloc(sizeof(float) * out * ng), *bi = malloc(sizeof(float) * out * ng);
            float *x = malloc(sizeof(float) * 3 * in), *y0 = malloc(sizeof(float) * 3 * out), *y1 = malloc(sizeof(float) * 3 * out);
            for (int64_t i = 0; i < out * bytes; i++) data[i] = rnd() & 0xFF;
            for (int64_t i = 0; i < out * ng; i++) { sc[i] = (rnd() % 1000) * 1e-5f; bi[i] = ((int)(rnd() % 1000) - 500) * 1e-3f; }
            for (int64_t i = 0; i < 3 * in; i++) x[i] = ((int)(rnd() % 20001) - 10000) * 1e-4f;
            CsmWeight w = {fmt, G, out, in, data, sc, bi};
            CsmModel m; memset(&m, 0, sizeof m); m.threads = 1;
            m.variant = VARIANT_PORTABLE; csm_product(&m, &w, x, 3, y0);
            m.variant = VARIANT_BEST; csm_product(&m, &w, x, 3, y1);
            int same = memcmp(y0, y1, sizeof(float) * 3 * out) == 0;
            printf("fmt %d group %d: %s (y[0] %g %g)\n", fmt, G, same ? "same bits" : "DIFFERENT", y0[0], y1[0]);
            bad |= !same;
        }
    printf("features %d\n", csm_features());
    return bad;
}
