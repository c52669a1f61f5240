/*
 * machine.c - see machine.h. Each peak loop is compiled for its own ISA
 * (target attributes; the file itself needs none, so the tools start on any
 * CPU) and keeps independent accumulators in registers (unrolled: an
 * accumulator array spilled to memory measures store forwarding, not the
 * ALU), enough to cover the instructions' latency at their issue rate.
 */
#include "machine.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define PEAK_ITERS 20000000L
#define BW_BYTES (1ull << 30)

/* ------------------------------------------------------------------------ */
/* The CPU                                                                  */
/* ------------------------------------------------------------------------ */

void mach_cpu_name(char *buf, size_t len)
{
    snprintf(buf, len, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        const char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) || !colon) continue;
        colon++;
        while (*colon == ' ' || *colon == '\t') colon++;
        size_t n = strcspn(colon, "\n");
        if (n) snprintf(buf, len, "%.*s", (int)n, colon);
        break;
    }
    fclose(f);
}

void mach_cpu_flags(char *buf, size_t len)
{
    const eng__cpu *c = eng__cpu_get();
    const struct { const char *name; bool have; } f[] = {
        {"avx2", c->avx2},         {"fma", c->fma},           {"f16c", c->f16c},
        {"avxvnni", c->avxvnni},   {"avx512f", c->avx512f},   {"avx512bw", c->avx512bw},
        {"avx512vl", c->avx512vl}, {"avx512vnni", c->avx512vnni}, {"avx512bf16", c->avx512bf16},
    };
    size_t k = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].have && k < len) k += (size_t)snprintf(buf + k, len - k, "%s%s", k ? " " : "", f[i].name);
    if (!k) snprintf(buf, len, "none");
}

bool mach_level(eng__kernel_level *lvl, char *err, size_t len)
{
    return eng__isa_choose(getenv("ORTHOSERVE_ISA"), eng__cpu_get(), lvl, err, len) == 0;
}

void mach_print_cpu(FILE *f, eng__kernel_level lvl)
{
    char name[256], flags[256], levels[64] = "";
    mach_cpu_name(name, sizeof name);
    mach_cpu_flags(flags, sizeof flags);
    size_t k = 0;
    for (int l = 0; l < ENG_KL_COUNT; l++)
        if (eng__isa_has(eng__cpu_get(), (eng__kernel_level)l, NULL, 0) && k < sizeof levels)
            k += (size_t)snprintf(levels + k, sizeof levels - k, "%s%s", k ? ", " : "",
                                  eng__kernel_level_name((eng__kernel_level)l));
    const char *env = getenv("ORTHOSERVE_ISA");
    fprintf(f, "cpu: %s\nsimd: %s\nkernels: %s (%s; levels this CPU has: %s)\n", name, flags,
            eng__kernel_level_name(lvl), env && env[0] ? "ORTHOSERVE_ISA" : "the best this CPU has", levels);
}

/* ------------------------------------------------------------------------ */
/* Peak loops                                                               */
/* ------------------------------------------------------------------------ */

#if defined(__x86_64__)
/* Hides a register's value from the compiler (no instruction): keeps loop-
 * invariant operands from being hoisted out of the timed loop. */
#define OPAQUE(v) __asm__ volatile("" : "+x"(v))

__attribute__((target("avx2,fma"))) static double loop_fma_ymm(void)
{
    __m256 a[12];
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < PEAK_ITERS; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
    }
    float sink[8];
    for (int i = 1; i < 12; i++) a[0] = _mm256_add_ps(a[0], a[i]);
    _mm256_storeu_ps(sink, a[0]);
    volatile float v = sink[0];
    (void)v;
    return (double)PEAK_ITERS * 12 * 8 * 2;
}

__attribute__((target("avx512f,fma"))) static double loop_fma_zmm(void)
{
    __m512 a[12];
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < PEAK_ITERS; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);
    }
    volatile float sink = 0;
    for (int i = 0; i < 12; i++) sink += _mm512_reduce_add_ps(a[i]);
    (void)sink;
    return (double)PEAK_ITERS * 12 * 16 * 2;
}

/* The AVX2 int8 dot product the kernels use: u8 x s8 pairs summed to int16
 * (vpmaddubsw), int16 pairs to int32 (vpmaddwd by 1), accumulated (vpaddd):
 * 32 multiply-adds per three instructions. Four streams (4 inputs, 4
 * accumulators, 2 constants and the temporaries fit the 16 ymm registers;
 * more spill): the only chains are the 1-cycle adds. */
__attribute__((target("avx2"))) static double loop_int8_ymm(void)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    __m256i u0 = _mm256_set1_epi8(3), u1 = _mm256_set1_epi8(4), u2 = _mm256_set1_epi8(5),
            u3 = _mm256_set1_epi8(6);
    const __m256i s = _mm256_set1_epi8(-2), one = _mm256_set1_epi16(1);
    for (long it = 0; it < 2 * PEAK_ITERS; it++) {
        OPAQUE(u0); OPAQUE(u1); OPAQUE(u2); OPAQUE(u3);
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_maddubs_epi16(u0, s), one));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_maddubs_epi16(u1, s), one));
        a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_maddubs_epi16(u2, s), one));
        a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_maddubs_epi16(u3, s), one));
    }
    a0 = _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3));
    volatile int sink = _mm256_extract_epi32(a0, 0);
    (void)sink;
    return (double)PEAK_ITERS * 2 * 4 * 32 * 2;
}

__attribute__((target("avx2,avxvnni"))) static double loop_vnni_ymm(void)
{
    __m256i a[12];
    const __m256i u = _mm256_set1_epi8(3), s = _mm256_set1_epi8(-2);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_epi32(i);
    for (long it = 0; it < PEAK_ITERS; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm256_dpbusd_avx_epi32(a[i], u, s);
    }
    for (int i = 1; i < 12; i++) a[0] = _mm256_add_epi32(a[0], a[i]);
    volatile int sink = _mm256_extract_epi32(a[0], 0);
    (void)sink;
    return (double)PEAK_ITERS * 12 * 32 * 2;
}

__attribute__((target("avx512f,avx512vnni"))) static double loop_vnni_zmm(void)
{
    __m512i a[12];
    const __m512i u = _mm512_set1_epi8(3), s = _mm512_set1_epi8(-2);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_epi32(i);
    for (long it = 0; it < PEAK_ITERS; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbusd_epi32(a[i], u, s);
    }
    volatile int sink = 0;
    for (int i = 0; i < 12; i++) sink += _mm512_reduce_add_epi32(a[i]);
    (void)sink;
    return (double)PEAK_ITERS * 12 * 64 * 2;
}

__attribute__((target("avx512f,avx512bf16"))) static double loop_bf16_zmm(void)
{
    __m512 a[12];
    const __m512i u = _mm512_set1_epi16(0x3f80);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < PEAK_ITERS; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbf16_ps(a[i], (__m512bh)u, (__m512bh)u);
    }
    volatile float sink = 0;
    for (int i = 0; i < 12; i++) sink += _mm512_reduce_add_ps(a[i]);
    (void)sink;
    return (double)PEAK_ITERS * 12 * 32 * 2;
}
#endif

static const struct {
    const char *name;
    double (*fn)(void);
} peaks[MACH_N_PEAKS] = {
#if defined(__x86_64__)
    [MACH_FMA_YMM] = {"FP32 FMA ymm (vfmadd)", loop_fma_ymm},
    [MACH_FMA_ZMM] = {"FP32 FMA zmm (vfmadd)", loop_fma_zmm},
    [MACH_INT8_YMM] = {"int8 ymm (vpmaddubsw+vpmaddwd)", loop_int8_ymm},
    [MACH_VNNI_YMM] = {"int8 VNNI ymm (vpdpbusd)", loop_vnni_ymm},
    [MACH_VNNI_ZMM] = {"int8 VNNI zmm (vpdpbusd)", loop_vnni_zmm},
    [MACH_BF16_ZMM] = {"BF16 dot zmm (vdpbf16ps)", loop_bf16_zmm},
#else
    [MACH_FMA_YMM] = {"FP32 FMA ymm (vfmadd)", NULL},
    [MACH_FMA_ZMM] = {"FP32 FMA zmm (vfmadd)", NULL},
    [MACH_INT8_YMM] = {"int8 ymm (vpmaddubsw+vpmaddwd)", NULL},
    [MACH_VNNI_YMM] = {"int8 VNNI ymm (vpdpbusd)", NULL},
    [MACH_VNNI_ZMM] = {"int8 VNNI zmm (vpdpbusd)", NULL},
    [MACH_BF16_ZMM] = {"BF16 dot zmm (vdpbf16ps)", NULL},
#endif
};

bool mach_peak_available(mach_peak p)
{
    if ((unsigned)p >= MACH_N_PEAKS || !peaks[p].fn) return false;
    const eng__cpu *c = eng__cpu_get();
    switch (p) {
    case MACH_FMA_YMM: return c->avx2 && c->fma;
    case MACH_FMA_ZMM: return c->avx512f && c->fma;
    case MACH_INT8_YMM: return c->avx2;
    case MACH_VNNI_YMM: return c->avx2 && c->avxvnni;
    case MACH_VNNI_ZMM: return c->avx512f && c->avx512vnni;
    case MACH_BF16_ZMM: return c->avx512f && c->avx512bf16;
    default: return false;
    }
}

const char *mach_peak_name(mach_peak p)
{
    return (unsigned)p < MACH_N_PEAKS ? peaks[p].name : "none (scalar)";
}

mach_peak mach_level_peak(eng__kernel_level lvl, int t)
{
    const bool fp = t == ENG_TYPE_F32 || t == ENG_TYPE_F16 || t == ENG_TYPE_BF16;
    switch (lvl) {
    case ENG_KL_AVX2: return fp ? MACH_FMA_YMM : MACH_INT8_YMM;
    case ENG_KL_AVX2VNNI: return fp ? MACH_FMA_YMM : MACH_VNNI_YMM;
    case ENG_KL_AVX512: return !fp ? MACH_VNNI_ZMM : t == ENG_TYPE_BF16 ? MACH_BF16_ZMM : MACH_FMA_ZMM;
    default: return MACH_NO_PEAK;
    }
}

typedef struct {
    double (*fn)(void);
    double ops, secs;
} peak_arg;

static void *peak_thread(void *a)
{
    peak_arg *p = a;
    double t0 = eng__now();
    p->ops = p->fn();
    p->secs = eng__now() - t0;
    return NULL;
}

double mach_peak_ops(mach_peak p, int nth)
{
    if (!mach_peak_available(p)) return 0;
    pthread_t th[64];
    peak_arg args[64];
    if (nth < 1) nth = 1;
    if (nth > 64) nth = 64;
    for (int i = 0; i < nth; i++) {
        args[i].fn = peaks[p].fn;
        if (i) pthread_create(&th[i], NULL, peak_thread, &args[i]);
    }
    peak_thread(&args[0]);
    for (int i = 1; i < nth; i++) pthread_join(th[i], NULL);
    double ops = 0, secs = 0;
    for (int i = 0; i < nth; i++) {
        ops += args[i].ops;
        if (args[i].secs > secs) secs = args[i].secs;
    }
    return ops / secs;
}

/* ------------------------------------------------------------------------ */
/* Memory read bandwidth                                                    */
/* ------------------------------------------------------------------------ */

static uint8_t *bw_buf;

typedef struct {
    const uint8_t *p;
    size_t n;
} bw_arg;

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void bw_avx512(const bw_arg *b)
{
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 256 <= b->n; i += 256) {
        s0 = _mm512_xor_si512(s0, _mm512_load_si512((const void *)(b->p + i)));
        s1 = _mm512_xor_si512(s1, _mm512_load_si512((const void *)(b->p + i + 64)));
        s2 = _mm512_xor_si512(s2, _mm512_load_si512((const void *)(b->p + i + 128)));
        s3 = _mm512_xor_si512(s3, _mm512_load_si512((const void *)(b->p + i + 192)));
    }
    s0 = _mm512_xor_si512(_mm512_xor_si512(s0, s1), _mm512_xor_si512(s2, s3));
    volatile long long r = _mm512_reduce_add_epi64(s0);
    (void)r;
}

__attribute__((target("avx2"))) static void bw_avx2(const bw_arg *b)
{
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 128 <= b->n; i += 128) {
        s0 = _mm256_xor_si256(s0, _mm256_load_si256((const __m256i *)(b->p + i)));
        s1 = _mm256_xor_si256(s1, _mm256_load_si256((const __m256i *)(b->p + i + 32)));
        s2 = _mm256_xor_si256(s2, _mm256_load_si256((const __m256i *)(b->p + i + 64)));
        s3 = _mm256_xor_si256(s3, _mm256_load_si256((const __m256i *)(b->p + i + 96)));
    }
    s0 = _mm256_xor_si256(_mm256_xor_si256(s0, s1), _mm256_xor_si256(s2, s3));
    volatile long long r = _mm256_extract_epi64(s0, 0);
    (void)r;
}
#endif

static void bw_portable(const bw_arg *b)
{
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    const uint64_t *q = (const uint64_t *)(const void *)b->p;
    for (size_t i = 0; i + 4 <= b->n / 8; i += 4) {
        s0 ^= q[i];
        s1 ^= q[i + 1];
        s2 ^= q[i + 2];
        s3 ^= q[i + 3];
    }
    volatile uint64_t r = s0 ^ s1 ^ s2 ^ s3;
    (void)r;
}

static void *bw_thread(void *a)
{
#if defined(__x86_64__)
    const eng__cpu *c = eng__cpu_get();
    if (c->avx512f) bw_avx512(a);
    else if (c->avx2) bw_avx2(a);
    else bw_portable(a);
#else
    bw_portable(a);
#endif
    return NULL;
}

double mach_read_bw(int nth)
{
    if (!bw_buf) {
        bw_buf = eng__huge_alloc(BW_BYTES); /* huge pages: the best the machine can read */
        if (!bw_buf) return 0;
        memset(bw_buf, 1, BW_BYTES);
    }
    if (nth < 1) nth = 1;
    if (nth > 64) nth = 64;
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        pthread_t th[64];
        bw_arg args[64];
        size_t per = BW_BYTES / (size_t)nth / 256 * 256;
        double t0 = eng__now();
        for (int i = 0; i < nth; i++) {
            args[i].p = bw_buf + (size_t)i * per;
            args[i].n = per;
            pthread_create(&th[i], NULL, bw_thread, &args[i]);
        }
        for (int i = 0; i < nth; i++) pthread_join(th[i], NULL);
        double bw = (double)per * nth / (eng__now() - t0);
        if (bw > best) best = bw;
    }
    return best;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double mach_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
