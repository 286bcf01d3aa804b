/* Multi-row products for prompt prefill on the CPU: Y (T, out) = X (T, in) @ W^T, W (out, in).
 *
 * W is bfloat16 or MLX-affine int8/int4 (w = scale * q + bias per group along `in`), in the packed
 * formats shared with the frame step (see engine/cpu/gemm.py). The bfloat16 variants (portable,
 * AVX512, AMX) compute the same products: X rounded to bfloat16, each weight (dequantized in float32
 * for int8/int4) rounded to bfloat16, products summed in float32; they differ in summation order
 * only. The VNNI variant (int8/int4 weights only; further down) quantizes X to int8 instead.
 *
 * How: the work is split into strips of 32 output rows (threads claim strips). A strip's weights are
 * first written, dequantized where quantized, into a per-thread buffer in "tile order"
 * (strip[kb][r][32]: for each 32-wide slice kb of `in`, the strip's 32 rows of it), zero-padded past
 * `out` and `in`. That buffer (32 x in x 2 bytes, at most 512 KB here) stays in L2 while every row
 * of X goes over it. Then one of three inner kernels:
 *   AMX      (Sapphire Rapids and later): Y^T tiles = W-strip tiles (16 x 32) x X^T tiles packed in
 *            the VNNI pair layout, `tdpbf16ps`, 2 x 2 tiles of 16 x 16 float accumulators;
 *   AVX512   (AVX512-BF16, e.g. Cooper Lake, Zen 4/5): X^T packed in bfloat16 pairs, each weight pair
 *            broadcast against 16 rows of X by `vdpbf16ps`: 8 weight rows x 32 rows of X in 16
 *            registers, `in` taken in chunks that stay in L2 (partial sums kept exactly in float32);
 *   portable any CPU: the same dot products in plain C over float32 copies (the compiler vectorises).
 * Per output element, the arithmetic depends only on its own row of X and row of W, never on T or on
 * which rows share the call (padding adds exact zeros): a row's result is the same for any block.
 *
 * The variant is picked at run time from CPUID (and, for AMX, the kernel's permission to use tile
 * data, asked once per process); the x86 kernels are compiled with per-function target attributes,
 * so one build serves every x86-64 CPU. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD_INDEX() omp_get_thread_num()
#else
#define THREAD_INDEX() 0
#endif

#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 12) || \
                            (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define CSM_X86 1
#include <cpuid.h>
#include <immintrin.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

enum { V_PORTABLE = 0, V_AVX512 = 1, V_AMX = 2, V_VNNI = 3 };
#define STRIP 32 /* output rows per strip */
#define KB 32    /* bfloat16 values per slice of `in` (one AMX tile row, one zmm) */
#define GROUP 4  /* strips a thread claims at once */
#ifndef PREFETCH_MAX
#define PREFETCH_MAX (256 * 1024) /* bytes of the next strip worth pulling into L2 ahead */
#endif

static inline float bf16_to_f32(uint16_t v) { uint32_t b = (uint32_t)v << 16; float f; memcpy(&f, &b, 4); return f; }
/* nearest bfloat16, ties to even (as vcvtne2ps2bf16 rounds; NaN stays NaN) */
static inline uint16_t f32_to_bf16(float x) {
    uint32_t b; memcpy(&b, &x, 4);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((b >> 16) | 0x40u);
    b += 0x7FFFu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}

static void *aligned(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) return NULL;
    return p;
}

/* A product's buffers: X laid out for the kernel (shared by the threads) and each thread's strip,
 * float copies and partial sums, carved from one block. The block is the caller's `scratch` when it
 * is given and large enough (engine/cpu/prefill.py keeps one, its pages touched at load, so that no
 * product pays for fresh pages), else allocated here for this call. */
static size_t up64(size_t n) { return (n + 63) / 64 * 64; }

typedef struct {
    char *base, *own; /* own: allocated for this call (freed by scratch_done) */
    size_t shared, per_thread;
} Scratch;

static int scratch_take(Scratch *s, void *given, long given_bytes, int threads) {
    size_t need = s->shared + (size_t)threads * s->per_thread;
    s->own = NULL;
    if (given && given_bytes >= 0 && (size_t)given_bytes >= need && ((uintptr_t)given & 63) == 0) {
        s->base = (char *)given;
        return 0;
    }
    s->base = s->own = (char *)aligned(need);
    return s->base ? 0 : -2;
}
static char *scratch_mine(const Scratch *s) { return s->base + s->shared + (size_t)THREAD_INDEX() * s->per_thread; }
static void scratch_done(Scratch *s) { free(s->own); }

/* ---------------------------------------------------------------- what this CPU can run */

#ifdef CSM_X86
static int os_saves(uint64_t mask) { /* XCR0 has every state bit in mask */
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0; /* OSXSAVE */
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((((uint64_t)hi << 32) | lo) & mask) == mask;
}
static int has_avx512bf16(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & (1u << 16))) return 0; /* AVX512F */
    if (!(b & (1u << 30))) return 0;                                               /* AVX512BW */
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return 0;   /* AVX512_BF16 */
    return os_saves(0xE6); /* SSE, AVX, opmask, ZMM state */
}
static int amx_permitted(void) {
#if defined(__linux__) && defined(SYS_arch_prctl)
    /* ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: once per process, idempotent */
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
    return 0;
#endif
}
static int has_amx(void) {
    unsigned a, b, c, d;
    if (!has_avx512bf16()) return 0; /* the strip and X packing use AVX512 */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    if (!(d & (1u << 24)) || !(d & (1u << 22))) return 0; /* AMX-TILE, AMX-BF16 */
    if (!os_saves(0x60000)) return 0;                     /* XTILECFG, XTILEDATA */
    return amx_permitted();
}
#endif

#ifdef CSM_X86
static int has_avx512vnni(void) {
    unsigned a, b, c, d;
    if (!has_avx512bf16()) return 0; /* its bfloat16 products are the AVX512-BF16 kernel's */
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (c & (1u << 11)); /* AVX512_VNNI */
}
#endif

/* 1 if `variant` can run on this CPU (asking the kernel for AMX permission the first time). */
int csm_gemm_supported(int variant) {
    static int known[4] = {-1, -1, -1, -1};
    if (variant < 0 || variant > 3) return 0;
    if (known[variant] < 0) {
        int ok = variant == V_PORTABLE;
#ifdef CSM_X86
        if (variant == V_AVX512) ok = has_avx512bf16();
        if (variant == V_AMX) ok = has_amx();
        if (variant == V_VNNI) ok = has_avx512vnni();
#endif
        known[variant] = ok;
    }
    return known[variant];
}

/* The fastest variant this CPU runs, for bfloat16 weights and for int8/int4 ones. */
int csm_gemm_best(void) {
    if (csm_gemm_supported(V_AMX)) return V_AMX;
    if (csm_gemm_supported(V_AVX512)) return V_AVX512;
    return V_PORTABLE;
}
int csm_gemm_best_q(void) {
    if (csm_gemm_supported(V_AMX)) return V_AMX; /* (not measured against VNNI on an AMX CPU) */
    if (csm_gemm_supported(V_VNNI)) return V_VNNI;
    return csm_gemm_best();
}

/* ---------------------------------------------------------------- the weights of one strip */

typedef struct {
    const uint16_t *bf16;  /* bf16 weights (out, in), or NULL */
    const uint8_t *q;      /* int8 (out, in) or int4 (out, in/2) codes */
    const float *scales, *biases; /* (out, in/group) */
    long out, in, kp;      /* kp: in rounded up to KB */
    int group, bits;
} Weights;

/* Where a strip's bfloat16 weights lie: row r, slice kb at p + r * row + kb * slice. Either the
 * per-thread buffer in tile order (row KB, slice STRIP * KB) or, for a full strip of bfloat16
 * weights, W itself (row in, slice KB): read in place, with no copy. */
typedef struct {
    const uint16_t *p;
    long row, slice;
} StripView;

/* 32 dequantized weights of row n from column k (k % 32 == 0, k + 32 <= in) as float32. */
static inline void dequant32_f32(const Weights *w, long n, long k, float *dst) {
    if (w->bf16) {
        const uint16_t *src = w->bf16 + n * w->in + k;
        for (int i = 0; i < KB; i++) dst[i] = bf16_to_f32(src[i]);
        return;
    }
    long g = n * (w->in / w->group) + k / w->group;
    float s = w->scales[g], b = w->biases[g];
    if (w->bits == 8) {
        const uint8_t *src = w->q + n * w->in + k;
        for (int i = 0; i < KB; i++) dst[i] = s * (float)src[i] + b;
    } else {
        const uint8_t *src = w->q + n * (w->in / 2) + k / 2;
        for (int i = 0; i < KB / 2; i++) {
            dst[2 * i] = s * (float)(src[i] & 15) + b;
            dst[2 * i + 1] = s * (float)(src[i] >> 4) + b;
        }
    }
}

/* Weight (n, k) for a column k in a partial last slice (portable, any layout). */
static inline float weight_at(const Weights *w, long n, long k) {
    if (w->bf16) return bf16_to_f32(w->bf16[n * w->in + k]);
    long g = n * (w->in / w->group) + k / w->group;
    unsigned q = w->bits == 8 ? w->q[n * w->in + k] : (w->q[n * (w->in / 2) + k / 2] >> (4 * (k & 1))) & 15;
    return w->scales[g] * (float)q + w->biases[g];
}

/* Strip of rows n0..n0+31 in tile order as bfloat16: dst[kb][r][32] (zeros past out and in). */
static void strip_bf16_portable(const Weights *w, long n0, uint16_t *dst) {
    long nkb = w->kp / KB;
    float tmp[KB];
    for (long r = 0; r < STRIP; r++) {
        long n = n0 + r;
        for (long kb = 0; kb < nkb; kb++) {
            uint16_t *d = dst + (kb * STRIP + r) * KB;
            long k = kb * KB;
            if (n >= w->out) { memset(d, 0, KB * 2); continue; }
            if (k + KB <= w->in) {
                dequant32_f32(w, n, k, tmp);
                for (int i = 0; i < KB; i++) d[i] = f32_to_bf16(tmp[i]);
            } else {
                for (int i = 0; i < KB; i++) d[i] = k + i < w->in ? f32_to_bf16(weight_at(w, n, k + i)) : 0;
            }
        }
    }
}

#ifdef CSM_X86
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

/* 32 float32 -> 32 bfloat16 (RNE), stored */
AVX512_TARGET static inline void store_bf16x32(uint16_t *d, __m512 lo, __m512 hi) {
    _mm512_storeu_si512((void *)d, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

AVX512_TARGET static void strip_bf16_avx512(const Weights *w, long n0, uint16_t *dst) {
    long nkb = w->kp / KB, full = w->in / KB;
    for (long r = 0; r < STRIP; r++) {
        long n = n0 + r;
        if (n >= w->out) {
            for (long kb = 0; kb < nkb; kb++) memset(dst + (kb * STRIP + r) * KB, 0, KB * 2);
            continue;
        }
        if (w->bf16) {
            const uint16_t *src = w->bf16 + n * w->in;
            for (long kb = 0; kb < full; kb++)
                _mm512_storeu_si512((void *)(dst + (kb * STRIP + r) * KB), _mm512_loadu_si512(src + kb * KB));
        } else if (w->bits == 8) {
            const uint8_t *src = w->q + n * w->in;
            const float *sc = w->scales + n * (w->in / w->group), *bi = w->biases + n * (w->in / w->group);
            for (long kb = 0; kb < full; kb++) {
                long g = kb * KB / w->group;
                __m512 s = _mm512_set1_ps(sc[g]), b = _mm512_set1_ps(bi[g]);
                __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(src + kb * KB)));
                __m512i q2 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(src + kb * KB + 16)));
                store_bf16x32(dst + (kb * STRIP + r) * KB, _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(q), b),
                              _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(q2), b));
            }
        } else {
            const uint8_t *src = w->q + n * (w->in / 2);
            const float *sc = w->scales + n * (w->in / w->group), *bi = w->biases + n * (w->in / w->group);
            const __m512i low4 = _mm512_set1_epi32(15);
            for (long kb = 0; kb < full; kb++) {
                long g = kb * KB / w->group;
                __m512 s = _mm512_set1_ps(sc[g]), b = _mm512_set1_ps(bi[g]);
                __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(src + kb * KB / 2)));
                /* each 32-bit lane: element 2j (low nibble) in its low half, 2j+1 in its high half */
                __m512i pairs = _mm512_or_si512(_mm512_and_si512(v, low4), _mm512_slli_epi32(_mm512_srli_epi32(v, 4), 16));
                __m512i e0 = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(pairs));
                __m512i e1 = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(pairs, 1));
                store_bf16x32(dst + (kb * STRIP + r) * KB, _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(e0), b),
                              _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(e1), b));
            }
        }
        for (long kb = full; kb < nkb; kb++) { /* a partial last slice */
            uint16_t *d = dst + (kb * STRIP + r) * KB;
            for (int i = 0; i < KB; i++) d[i] = kb * KB + i < w->in ? f32_to_bf16(weight_at(w, n, kb * KB + i)) : 0;
        }
    }
}
#endif

/* ---------------------------------------------------------------- X, rounded and laid out */

#ifdef CSM_X86
/* X^T in bfloat16 pairs (the AVX512 kernel's layout): word xp[p * tp + t] holds (x[t][2p], x[t][2p+1])
 * for p < kp/2 and t < tp (T rounded up to 16), zeros past T and past `in`. This: the pairs from
 * input k0 on, one at a time (a last slice shorter than 32 inputs). */
static void pack_x_pairs_tail(const float *X, long T, long in, long kp, long tp, uint32_t *xp, long k0) {
    for (long p = k0 / 2; p < kp / 2; p++) {
        uint32_t *d = xp + p * tp;
        long k = 2 * p;
        for (long t = 0; t < T; t++) {
            uint32_t lo = k < in ? f32_to_bf16(X[t * in + k]) : 0, hi = k + 1 < in ? f32_to_bf16(X[t * in + k + 1]) : 0;
            d[t] = lo | hi << 16;
        }
    }
}

/* all of X^T: 32 values of a row at a time, rounded in one instruction, their 16 pairs scattered
 * down the columns of xp */
__attribute__((target("avx512f,avx512bw,avx512bf16")))
static void pack_x_pairs(const float *X, long T, long in, long kp, long tp, uint32_t *xp) {
    if (T < tp || in < kp) memset(xp, 0, (size_t)tp * kp * 2);
    long full = in / KB * KB;
    const __m512i down = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32((int)tp));
    for (long t = 0; t < T; t++)
        for (long k = 0; k < full; k += KB) {
            __m512 lo = _mm512_loadu_ps(X + t * in + k), hi = _mm512_loadu_ps(X + t * in + k + 16);
            _mm512_i32scatter_epi32(xp + k / 2 * tp + t, down, (__m512i)_mm512_cvtne2ps_pbh(hi, lo), 4);
        }
    if (full < in) pack_x_pairs_tail(X, T, in, kp, tp, xp, full);
}
#endif

/* X^T in AMX's VNNI layout: for 16 rows of X (j) and a slice kb, a 16 x 32 tile whose row k2 holds
 * (x[t][32kb + 2k2], x[t][32kb + 2k2 + 1]) for t = 0..15. Tiles ordered [j][kb]; rows past T zero. */
static void pack_x_tiles(const float *X, long T, long in, long kp, uint16_t *xt) {
    long nkb = kp / KB, nj = (T + 15) / 16;
    for (long j = 0; j < nj; j++)
        for (long kb = 0; kb < nkb; kb++) {
            uint16_t *tile = xt + (j * nkb + kb) * 512;
            for (long k2 = 0; k2 < 16; k2++)
                for (long t = 0; t < 16; t++)
                    for (int e = 0; e < 2; e++) {
                        long row = j * 16 + t, k = kb * KB + 2 * k2 + e;
                        tile[k2 * 32 + t * 2 + e] = row < T && k < in ? f32_to_bf16(X[row * in + k]) : 0;
                    }
        }
}

/* ---------------------------------------------------------------- inner kernels over one strip */

static inline void write_strip(float *Y, long out, long n0, long t, long r, float v) {
    if (n0 + r < out) Y[t * out + n0 + r] = v;
}

/* portable: float32 copies of the strip (fs[r][kp]) and of X rounded (xf[t][kp]) */
static void strip_portable(const float *fs, const float *xf, long T, long kp, float *Y, long out, long n0) {
    for (long t = 0; t < T; t++) {
        const float *x = xf + t * kp;
        for (long r = 0; r < STRIP && n0 + r < out; r++) {
            const float *w = fs + r * kp;
            float acc[16] = {0};
            for (long k = 0; k < kp; k += 16)
                for (int i = 0; i < 16; i++) acc[i] += w[k + i] * x[k + i];
            float s = 0.0f;
            for (int i = 0; i < 16; i++) s += acc[i];
            write_strip(Y, out, n0, t, r, s);
        }
    }
}

#ifdef CSM_X86
/* AVX512-BF16. Lanes run over rows of X: an accumulator holds one output for 16 rows of X. A tile is
 * rw weight rows x nv * 16 rows of X (rw * nv <= 16 accumulators); per pair p of `in`, the weight pair
 * of each row is broadcast to all lanes and `vdpbf16ps` adds its products with X's pairs for those
 * rows. Every lane sums its own output in order of p, so a result depends only on its row of X and
 * of W (not on T, the tile or the thread), and no horizontal sums are needed.
 *
 * The strip goes over `in` in chunks whose share of X^T takes KC_BYTES (64 rows of X: 2048 values),
 * so it stays in L2 while all the strip's rows go over it; the partial sums wait, exactly, in the
 * thread's float32 buffer acc[r][t] between chunks, and go to Y a whole row of Y at a time.
 * (Written so that GCC keeps every accumulator and X's vectors in registers: a variant with named
 * accumulators spilled X to the stack and ran at 40% of this speed. Check the loop's assembly after
 * a change.) */
#define KC_BYTES (256 * 1024)
/* Tiles, chosen by measurement on Zen 5: 8 weight rows x 32 or 48 rows of X (16 or 24 accumulators;
 * 4 x 64 ran within noise of 8 x 32; 16 x 16 and 4 x 96 30-60% slower, 8 x 16 half the speed). */
_Static_assert(STRIP % 8 == 0, "a strip holds whole tiles of rows (a short last tile's spare rows land in its buffer)");

AVX512_TARGET static inline __attribute__((always_inline)) void tile_avx512(
        const uint16_t *const *wr, long slice, const uint32_t *xp, long tp, long kb0, long kb1,
        const int nv, float *acc_buf, long t0, int first) {
    __m512 acc[8][3]; /* 8 x nv of them */
    #pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        #pragma GCC unroll 3
        for (int v = 0; v < nv; v++)
            acc[i][v] = first ? _mm512_setzero_ps() : _mm512_load_ps(acc_buf + i * tp + t0 + 16 * v);
    for (long kb = kb0; kb < kb1; kb++) {
        const uint32_t *x = xp + kb * (KB / 2) * tp + t0;
        const uint16_t *w[8];
        #pragma GCC unroll 8
        for (int i = 0; i < 8; i++) w[i] = wr[i] + kb * slice;
        for (int j = 0; j < KB / 2; j++) {
            __m512bh xv[3];
            #pragma GCC unroll 3
            for (int v = 0; v < nv; v++) xv[v] = (__m512bh)_mm512_load_si512(x + j * tp + 16 * v);
            #pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                __m512bh b = (__m512bh)_mm512_set1_epi32(*(const int32_t *)(w[i] + 2 * j));
                #pragma GCC unroll 3
                for (int v = 0; v < nv; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], b, xv[v]);
            }
        }
    }
    #pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        #pragma GCC unroll 3
        for (int v = 0; v < nv; v++) _mm512_store_ps(acc_buf + i * tp + t0 + 16 * v, acc[i][v]);
}

/* Slices kb0..kb1 of the strip's rows r0..r0+8 (`rows` of them real) against every row of X: tiles of
 * 32 rows of X, and one of 48 where the 16-row groups are odd (of 16 where there is one group). */
AVX512_TARGET static void rows_avx512(StripView sv, long r0, int rows, const uint32_t *xp, long tp,
                                      long kb0, long kb1, float *acc_buf) {
    const uint16_t *wr[8];
    for (int i = 0; i < 8; i++) wr[i] = sv.p + (r0 + (i < rows ? i : rows - 1)) * sv.row; /* spare rows repeat one */
    float *acc = acc_buf + r0 * tp;
    int first = kb0 == 0;
    long groups = tp / 16, t = 0;
    if (groups == 1) tile_avx512(wr, sv.slice, xp, tp, kb0, kb1, 1, acc, 0, first);
    if (groups > 1 && groups % 2) { tile_avx512(wr, sv.slice, xp, tp, kb0, kb1, 3, acc, 0, first); t = 48; }
    for (; groups > 1 && t < tp; t += 32) tile_avx512(wr, sv.slice, xp, tp, kb0, kb1, 2, acc, t, first);
}

AVX512_TARGET static void strip_avx512(StripView sv, const uint32_t *xp, long T, long tp, long kp,
                                       float *Y, long out, long n0, float *acc_buf) {
    long nkb = kp / KB, live = out - n0 < STRIP ? out - n0 : STRIP;
    long kc = KC_BYTES / (tp * KB * 2); /* slices whose X^T fits the budget, at least 2 */
    if (kc < 2) kc = 2;
    for (long kb0 = 0; kb0 < nkb; kb0 += kc) {
        long kb1 = kb0 + kc < nkb ? kb0 + kc : nkb;
        for (long r0 = 0; r0 < live; r0 += 8)
            rows_avx512(sv, r0, live - r0 < 8 ? (int)(live - r0) : 8, xp, tp, kb0, kb1, acc_buf);
    }
    for (long t = 0; t < T; t++) /* along rows of Y: whole lines written */
        for (long r = 0; r < live; r++) Y[t * out + n0 + r] = acc_buf[r * tp + t];
}
#endif

#ifdef CSM_X86
#include "amx.h" /* AMX_TARGET, amx_configure, amx_release */

/* tiles 0-3: float accumulators 16 x 16; 4, 5: weight rows 0-15 / 16-31 (16 x 32 bf16);
 * 6, 7: X^T (16 pairs x 16 rows of X) */

static void write_tile(const float *c, float *Y, long T, long out, long n0, long t0) {
    /* c[m][t] = Y[t0 + t][n0 + m] */
    for (long t = 0; t < 16 && t0 + t < T; t++)
        for (long m = 0; m < 16 && n0 + m < out; m++) Y[(t0 + t) * out + n0 + m] = c[m * 16 + t];
}

/* The next strip's weights, pulled into L2 a few lines at a time while this strip computes: the
 * tile loads then find them there instead of waiting on DRAM (32 row streams are more than the
 * hardware prefetcher follows). Lines go row after row within each 64-byte column, the order the
 * kernel reads them. */
typedef struct {
    const char *p;
    long stride, rows, total, done;
} Prefetch;

static inline void prefetch_some(Prefetch *pf, long n) {
    for (; n > 0 && pf->done < pf->total; n--, pf->done++)
        __builtin_prefetch(pf->p + (pf->done % pf->rows) * pf->stride + (pf->done / pf->rows) * 64, 0, 2);
}

AMX_TARGET static void strip_amx(StripView sv, const uint16_t *xt, long T, long kp,
                                 float *Y, long out, long n0, Prefetch *pf) {
    long nkb = kp / KB, nj = (T + 15) / 16;
    float c[4][256] __attribute__((aligned(64)));
    long stride = sv.row * 2, j = 0;
    long steps = (nj + 1) / 2 * nkb, per_step = pf ? (pf->total + steps - 1) / steps : 0;
    for (; j + 2 <= nj; j += 2) {
        const uint16_t *x0 = xt + j * nkb * 512, *x1 = xt + (j + 1) * nkb * 512;
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (long kb = 0; kb < nkb; kb++) {
            const uint16_t *w = sv.p + kb * sv.slice;
            if (pf) prefetch_some(pf, per_step);
            _tile_loadd(4, w, stride);
            _tile_loadd(5, w + 16 * sv.row, stride);
            _tile_loadd(6, x0 + kb * 512, 64);
            _tile_loadd(7, x1 + kb * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 5, 6);
            _tile_dpbf16ps(2, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, c[0], 64); _tile_stored(1, c[1], 64);
        _tile_stored(2, c[2], 64); _tile_stored(3, c[3], 64);
        write_tile(c[0], Y, T, out, n0, j * 16);
        write_tile(c[1], Y, T, out, n0 + 16, j * 16);
        write_tile(c[2], Y, T, out, n0, (j + 1) * 16);
        write_tile(c[3], Y, T, out, n0 + 16, (j + 1) * 16);
    }
    if (j < nj) {
        const uint16_t *x0 = xt + j * nkb * 512;
        _tile_zero(0); _tile_zero(1);
        for (long kb = 0; kb < nkb; kb++) {
            const uint16_t *w = sv.p + kb * sv.slice;
            if (pf) prefetch_some(pf, per_step);
            _tile_loadd(4, w, stride);
            _tile_loadd(5, w + 16 * sv.row, stride);
            _tile_loadd(6, x0 + kb * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 5, 6);
        }
        _tile_stored(0, c[0], 64); _tile_stored(1, c[1], 64);
        write_tile(c[0], Y, T, out, n0, j * 16);
        write_tile(c[1], Y, T, out, n0 + 16, j * 16);
    }
}
#endif

/* ---------------------------------------------------------------- int8 x int8 for int8/int4 weights */

/* The avx512-vnni variant (AVX512-VNNI, e.g. Ice Lake, Zen 4/5), for int8/int4 weights only: the
 * weights' codes are not dequantized at all. X is quantized per row and group instead, as the frame
 * step's products quantize their input: x ~ dx * xq with xq = round(x / dx) in -127..127 and
 * dx = max |x| / 127 over the group; then
 *     y[t][n] = sum over groups g of  scale[n][g] * dx[g][t] * (sum over k of q[n][k] * xq[t][k])
 *                                    + bias[n][g] * (sum over k of x[t][k], exact in float32)
 * with the integer sums exact (`vpdpbusd`: 4 products of unsigned codes and signed inputs per lane)
 * and the float terms added group after group. Lanes run over rows of X as in the bfloat16 kernel:
 * 4 codes of a weight row broadcast to all lanes against 4 inputs of 16 rows of X. So a result
 * depends only on its rows of X and W; it differs from the bfloat16 variants by X's quantization
 * (half a step per input at most) where they round X and W to bfloat16.
 *
 * Layouts: xq[(k / 4) * tp + t] holds inputs k..k+3 of row t as 4 int8 (int4 weights: in each 8
 * inputs the order 0 2 4 6 | 1 3 5 7, the order in which their nibbles unpack); dx and the sums
 * cs[g * tp + t]; int8 codes are read in place, int4 codes are first unpacked, strip by strip,
 * into bytes (low nibbles, then high ones, of each 4 bytes). */
#ifdef CSM_X86
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")))

VNNI_TARGET static void quantize_x(const float *X, long T, long in, int group, int q4, long tp,
                                   int32_t *xq, float *dx, float *cs) {
    const __m128i order = q4 ? _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15)
                             : _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 sign = _mm512_set1_ps(-0.0f);
    long ng = in / group;
    for (long t = 0; t < T; t++)
        for (long g = 0; g < ng; g++) {
            const float *x = X + t * in + g * group;
            __m512 amax = _mm512_setzero_ps(), sum = _mm512_setzero_ps();
            for (int k = 0; k < group; k += 16) {
                __m512 v = _mm512_loadu_ps(x + k);
                amax = _mm512_max_ps(amax, _mm512_andnot_ps(sign, v));
                sum = _mm512_add_ps(sum, v);
            }
            float m = _mm512_reduce_max_ps(amax), d = m / 127.0f;
            __m512 inv = _mm512_set1_ps(m > 0.0f ? 127.0f / m : 0.0f);
            dx[g * tp + t] = d;
            cs[g * tp + t] = _mm512_reduce_add_ps(sum);
            for (int k = 0; k < group; k += 16) {
                __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), inv)); /* nearest, ties to even */
                __m128i b = _mm_shuffle_epi8(_mm512_cvtsepi32_epi8(q), order);
                long w = (g * group + k) / 4;
                xq[w * tp + t] = _mm_extract_epi32(b, 0);
                xq[(w + 1) * tp + t] = _mm_extract_epi32(b, 1);
                xq[(w + 2) * tp + t] = _mm_extract_epi32(b, 2);
                xq[(w + 3) * tp + t] = _mm_extract_epi32(b, 3);
            }
        }
}

/* Rows n0..n0+STRIP of int4 codes (in/2 bytes each) as bytes, in xq's order (above). */
VNNI_TARGET static void unpack_q4(const uint8_t *q, long in, long rows, uint8_t *dst) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (long r = 0; r < rows; r++)
        for (long k = 0; k < in; k += 128) { /* 64 bytes of codes: 128 codes */
            __m512i v = _mm512_loadu_si512(q + r * (in / 2) + k / 2);
            __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            _mm512_storeu_si512(dst + r * in + k, _mm512_permutex2var_epi32(lo, first, hi));
            _mm512_storeu_si512(dst + r * in + k + 64, _mm512_permutex2var_epi32(lo, second, hi));
        }
}

typedef struct {
    const uint8_t *codes; /* the strip's first row of codes, as bytes */
    long row;             /* bytes from one row to the next */
    const float *scales, *biases; /* the strip's first row's (ng per row) */
    long ng;
} CodeView;

VNNI_TARGET static inline __attribute__((always_inline)) void tile_vnni(
        const uint8_t *const *wr, const float *const *sr, const float *const *br,
        const int32_t *xq, const float *dx, const float *cs, long tp, const int group, long g0, long g1,
        const int nv, float *acc_buf, long t0) {
    __m512i is[8][3];
    for (long g = g0; g < g1; g++) {
        #pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            #pragma GCC unroll 3
            for (int v = 0; v < nv; v++) is[i][v] = _mm512_setzero_si512();
        #pragma GCC unroll 32
        for (long j = g * group / 4; j < (g + 1) * group / 4; j++) { /* group: a constant where inlined */
            __m512i xv[3];
            #pragma GCC unroll 3
            for (int v = 0; v < nv; v++) xv[v] = _mm512_load_si512(xq + j * tp + t0 + 16 * v);
            #pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                __m512i b = _mm512_set1_epi32(*(const int32_t *)(wr[i] + 4 * j));
                #pragma GCC unroll 3
                for (int v = 0; v < nv; v++) is[i][v] = _mm512_dpbusd_epi32(is[i][v], b, xv[v]);
            }
        }
        #pragma GCC unroll 3
        for (int v = 0; v < nv; v++) {
            const __m512 d = _mm512_load_ps(dx + g * tp + t0 + 16 * v), c = _mm512_load_ps(cs + g * tp + t0 + 16 * v);
            #pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                float *y = acc_buf + i * tp + t0 + 16 * v;
                __m512 a = g == 0 ? _mm512_setzero_ps() : _mm512_load_ps(y);
                a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[i][v]), _mm512_mul_ps(d, _mm512_set1_ps(sr[i][g])), a);
                _mm512_store_ps(y, _mm512_fmadd_ps(_mm512_set1_ps(br[i][g]), c, a));
            }
        }
    }
}

/* Groups g0..g1 of the strip's rows r0..r0+8 (`rows` of them real) against every row of X. */
VNNI_TARGET static inline __attribute__((always_inline)) void rows_vnni_body(
        const CodeView *cv, long r0, int rows, const int32_t *xq, const float *dx, const float *cs, long tp,
        const int group, long g0, long g1, float *acc_buf) {
    const uint8_t *wr[8];
    const float *sr[8], *br[8];
    for (int i = 0; i < 8; i++) {
        long r = r0 + (i < rows ? i : rows - 1); /* spare rows repeat one */
        wr[i] = cv->codes + r * cv->row;
        sr[i] = cv->scales + r * cv->ng;
        br[i] = cv->biases + r * cv->ng;
    }
    float *acc = acc_buf + r0 * tp;
    long groups = tp / 16, t = 0;
    if (groups == 1) tile_vnni(wr, sr, br, xq, dx, cs, tp, group, g0, g1, 1, acc, 0);
    if (groups > 1 && groups % 2) { tile_vnni(wr, sr, br, xq, dx, cs, tp, group, g0, g1, 3, acc, 0); t = 48; }
    for (; groups > 1 && t < tp; t += 32) tile_vnni(wr, sr, br, xq, dx, cs, tp, group, g0, g1, 2, acc, t);
}

/* with the group size a constant for MLX's 32, 64 and 128 (the group's loop then unrolls whole:
 * GCC kept copies of every accumulator in a loop of unknown length, at 2/3 of the speed) */
VNNI_TARGET static void rows_vnni(const CodeView *cv, long r0, int rows, const int32_t *xq, const float *dx,
                                  const float *cs, long tp, int group, long g0, long g1, float *acc_buf) {
    if (group == 64) rows_vnni_body(cv, r0, rows, xq, dx, cs, tp, 64, g0, g1, acc_buf);
    else if (group == 32) rows_vnni_body(cv, r0, rows, xq, dx, cs, tp, 32, g0, g1, acc_buf);
    else if (group == 128) rows_vnni_body(cv, r0, rows, xq, dx, cs, tp, 128, g0, g1, acc_buf);
    else rows_vnni_body(cv, r0, rows, xq, dx, cs, tp, group, g0, g1, acc_buf);
}

static void plan_vnni(long T, long in, int group, int bits, Scratch *s) {
    long tp = (T + 15) / 16 * 16, ng = in / group;
    s->shared = up64((size_t)tp * in) + 2 * up64((size_t)tp * ng * 4);
    s->per_thread = (bits == 4 ? up64((size_t)STRIP * in) : 0) + up64((size_t)STRIP * tp * 4);
}

static int gemm_vnni(const float *X, long T, const Weights *w, float *Y, int threads, void *scratch, long scratch_bytes) {
    long in = w->in, ng = in / w->group, tp = (T + 15) / 16 * 16, nstrips = (w->out + STRIP - 1) / STRIP;
    int q4 = w->bits == 4;
    if (threads < 1) threads = 1;
    if (threads > nstrips) threads = (int)nstrips;
    Scratch sc;
    plan_vnni(T, in, w->group, w->bits, &sc);
    if (scratch_take(&sc, scratch, scratch_bytes, threads)) return -2;
    int32_t *xq = (int32_t *)sc.base;
    float *dx = (float *)(sc.base + up64((size_t)tp * in)), *cs = dx + up64((size_t)tp * ng * 4) / 4;
    if (T < tp) { memset(xq, 0, (size_t)tp * in); memset(dx, 0, (size_t)tp * ng * 4); memset(cs, 0, (size_t)tp * ng * 4); }
    quantize_x(X, T, in, w->group, q4, tp, xq, dx, cs);
    long gc = KC_BYTES / (tp * w->group); /* groups whose share of xq fits the budget, at least 1 */
    if (gc < 1) gc = 1;
    #pragma omp parallel num_threads(threads)
    {
        char *mine = scratch_mine(&sc);
        uint8_t *bytes = q4 ? (uint8_t *)mine : NULL;
        float *acc = (float *)(mine + (q4 ? up64((size_t)STRIP * in) : 0));
        #pragma omp for schedule(dynamic, 1)
        for (long s = 0; s < nstrips; s++) {
            long n0 = s * STRIP, live = w->out - n0 < STRIP ? w->out - n0 : STRIP;
            CodeView cv = {w->q + n0 * in, in, w->scales + n0 * ng, w->biases + n0 * ng, ng};
            if (q4) {
                unpack_q4(w->q + n0 * (in / 2), in, live, bytes);
                cv.codes = bytes;
            }
            for (long g0 = 0; g0 < ng; g0 += gc) {
                long g1 = g0 + gc < ng ? g0 + gc : ng;
                for (long r0 = 0; r0 < live; r0 += 8)
                    rows_vnni(&cv, r0, live - r0 < 8 ? (int)(live - r0) : 8, xq, dx, cs, tp, w->group, g0, g1, acc);
            }
            for (long t = 0; t < T; t++)
                for (long r = 0; r < live; r++) Y[t * w->out + n0 + r] = acc[r * tp + t];
        }
    }
    scratch_done(&sc);
    return 0;
}
#endif

/* ---------------------------------------------------------------- the product */

static void plan_bf16(int variant, long T, long in, Scratch *s) {
    long kp = (in + KB - 1) / KB * KB, tp = (T + 15) / 16 * 16;
    s->shared = up64(variant == V_PORTABLE ? (size_t)T * kp * 4 : (size_t)tp * kp * 2);
    s->per_thread = up64((size_t)STRIP * kp * 2) + (variant == V_PORTABLE ? up64((size_t)STRIP * kp * 4) : 0)
                  + (variant == V_AVX512 ? up64((size_t)STRIP * tp * 4) : 0);
}

/* `variant`: as resolve() returned it (one that runs here) */
static int gemm(int variant, const float *X, long T, const Weights *w, float *Y, int threads, void *scratch, long scratch_bytes) {
    if (T <= 0 || w->out <= 0) return 0;
    long kp = (w->in + KB - 1) / KB * KB, nstrips = (w->out + STRIP - 1) / STRIP, tp = (T + 15) / 16 * 16;
    Weights wk = *w;
    wk.kp = kp;
    if (threads < 1) threads = 1;
    if (threads > nstrips) threads = (int)nstrips;
    Scratch sc;
    plan_bf16(variant, T, w->in, &sc);
    if (scratch_take(&sc, scratch, scratch_bytes, threads)) return -2;
    void *xpacked = sc.base;
    if (variant == V_AMX) pack_x_tiles(X, T, w->in, kp, (uint16_t *)xpacked);
#ifdef CSM_X86
    else if (variant == V_AVX512) pack_x_pairs(X, T, w->in, kp, tp, (uint32_t *)xpacked);
#endif
    else {
        float *xf = (float *)xpacked;
        for (long t = 0; t < T; t++)
            for (long k = 0; k < kp; k++) xf[t * kp + k] = k < w->in ? bf16_to_f32(f32_to_bf16(X[t * w->in + k])) : 0.0f;
    }
    #pragma omp parallel num_threads(threads)
    {
        char *mine = scratch_mine(&sc);
        uint16_t *strip = (uint16_t *)mine;
        float *fs = variant == V_PORTABLE ? (float *)(mine + up64((size_t)STRIP * kp * 2)) : NULL;
        float *accs = variant == V_AVX512 ? (float *)(mine + up64((size_t)STRIP * kp * 2)) : NULL;
#ifdef CSM_X86
        if (variant == V_AMX) amx_configure();
#endif
        /* threads claim GROUP strips at a time, so each knows its next strip and can prefetch it */
        #pragma omp for schedule(dynamic, 1)
        for (long g = 0; g < (nstrips + GROUP - 1) / GROUP; g++)
        for (long s = g * GROUP; s < nstrips && s < (g + 1) * GROUP; s++) {
            long n0 = s * STRIP;
#ifdef CSM_X86
            if (variant != V_PORTABLE) {
                StripView sv = {strip, KB, STRIP * KB};
                int direct = w->bf16 && w->in % KB == 0;
                if (direct && n0 + STRIP <= w->out) {
                    sv.p = w->bf16 + n0 * w->in;
                    sv.row = w->in;
                    sv.slice = KB;
                } else {
                    strip_bf16_avx512(&wk, n0, strip);
                }
                if (variant == V_AMX) {
                    /* the next strip of this group: its bf16 rows or its codes, if they fit L2 with room */
                    long next = n0 + STRIP, row_bytes = w->bf16 ? w->in * 2 : w->in * w->bits / 8;
                    long rows = next + STRIP <= w->out ? STRIP : w->out - next;
                    Prefetch pf = {(const char *)(w->bf16 ? (const void *)(w->bf16 + next * w->in)
                                                          : (const void *)(w->q + next * row_bytes)),
                                   row_bytes, rows, rows * (row_bytes / 64), 0};
                    int want = s + 1 < (g + 1) * GROUP && rows > 0 && rows * row_bytes <= PREFETCH_MAX
                               && w->bits != 4; /* int4: dequantizing is the cost, the codes stream fine */
                    strip_amx(sv, (const uint16_t *)xpacked, T, kp, Y, w->out, n0, want ? &pf : NULL);
                } else {
                    strip_avx512(sv, (const uint32_t *)xpacked, T, tp, kp, Y, w->out, n0, accs);
                }
                continue;
            }
#endif
            strip_bf16_portable(&wk, n0, strip);
            /* the portable kernel sums float32 copies, laid out row by row */
            for (long r = 0; r < STRIP; r++)
                for (long kb = 0; kb < kp / KB; kb++)
                    for (int i = 0; i < KB; i++) fs[r * kp + kb * KB + i] = bf16_to_f32(strip[(kb * STRIP + r) * KB + i]);
            strip_portable(fs, (const float *)xpacked, T, kp, Y, w->out, n0);
        }
#ifdef CSM_X86
        if (variant == V_AMX) amx_release();
#endif
    }
    scratch_done(&sc);
    return 0;
}

/* The variant a product of these weights runs (bits 16: bfloat16), or -1 when `variant` cannot run
 * here, -3 for a layout the kernels do not take. */
static int resolve(int variant, long in, int group, int bits) {
    if (variant < 0 || variant > 3) return -1;
    if (bits == 16) {
        if (variant == V_VNNI) { /* no integer path for bfloat16 weights: its AVX512-BF16 products */
            if (!csm_gemm_supported(V_VNNI)) return -1;
            return V_AVX512;
        }
        return csm_gemm_supported(variant) ? variant : -1;
    }
    if ((bits != 8 && bits != 4) || group < KB || group % KB || in % group) return -3;
    if (!csm_gemm_supported(variant)) return -1;
    if (variant == V_VNNI && bits == 4 && in % 128) return V_AVX512; /* unpack_q4 takes 128 codes at a time */
    return variant;
}

/* Bytes of scratch a product of T rows over `in` inputs needs on `threads` threads (bits 16 for
 * bfloat16 weights; group and bits as csm_gemm_q_variant takes them), or a negative error as the
 * products return it. */
long csm_gemm_scratch_bytes(int variant, long T, long in, int group, int bits, int threads) {
    int v = resolve(variant, in, group, bits);
    if (v < 0) return v;
    Scratch s;
    if (v == V_VNNI) plan_vnni(T, in, group, bits, &s);
    else plan_bf16(v, T, in, &s);
    return (long)(s.shared + (size_t)(threads < 1 ? 1 : threads) * s.per_thread);
}

/* Entry points. Return 0, -1 when the variant cannot run here, -2 when out of memory,
 * -3 for a layout the kernels do not take. `scratch` (64-byte aligned, or NULL) serves as the
 * product's buffers when it holds csm_gemm_scratch_bytes; else they are allocated per call. */
int csm_gemm_bf16_variant(int variant, const float *X, long T, long in, const uint16_t *W, long out, float *Y,
                          int threads, void *scratch, long scratch_bytes) {
    Weights w = {W, NULL, NULL, NULL, out, in, 0, 1, 16};
    int v = resolve(variant, in, 1, 16);
    if (v < 0) return v;
    return gemm(v, X, T, &w, Y, threads, scratch, scratch_bytes);
}

int csm_gemm_q_variant(int variant, const float *X, long T, long in, const uint8_t *Wq, const float *scales,
                       const float *biases, long out, int group, int bits, float *Y, int threads,
                       void *scratch, long scratch_bytes) {
    int v = resolve(variant, in, group, bits);
    if (v < 0) return v;
    Weights w = {NULL, Wq, scales, biases, out, in, 0, group, bits};
#ifdef CSM_X86
    if (v == V_VNNI) {
        if (T <= 0 || out <= 0) return 0;
        return gemm_vnni(X, T, &w, Y, threads, scratch, scratch_bytes);
    }
#endif
    return gemm(v, X, T, &w, Y, threads, scratch, scratch_bytes);
}

void csm_gemm_bf16(const float *X, long T, long in, const uint16_t *W, long out, float *Y, int threads) {
    csm_gemm_bf16_variant(csm_gemm_best(), X, T, in, W, out, Y, threads, NULL, 0);
}

void csm_gemm_q(const float *X, long T, long in, const uint8_t *Wq, const float *scales,
                const float *biases, long out, int group, int bits, float *Y, int threads) {
    csm_gemm_q_variant(csm_gemm_best_q(), X, T, in, Wq, scales, biases, out, group, bits, Y, threads, NULL, 0);
}
