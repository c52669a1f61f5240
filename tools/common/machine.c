/*
 * machine.c - see machine.h. Each peak loop keeps 12 independent
 * accumulators in registers (unrolled: an accumulator array spilled to
 * memory measures store forwarding, not the ALU), enough to cover the
 * instructions' latency at one issue per cycle.
 */
#include "machine.h"

#include "internal.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PEAK_ITERS 20000000L
#define BW_BYTES (1ull << 30)

bool mach_supported(void)
{
    const eng__cpu *c = eng__cpu_get();
    return c->avx512f && c->avx512vnni && c->avx512bf16;
}

__attribute__((target("avx512f,fma"))) static double loop_fma(void)
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

__attribute__((target("avx512f,avx512bf16"))) static double loop_bf16(void)
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

__attribute__((target("avx512f,avx512vnni"))) static double loop_vnni(void)
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

static double run_peak(double (*fn)(void), int nth)
{
    pthread_t th[64];
    peak_arg args[64];
    if (nth < 1) nth = 1;
    if (nth > 64) nth = 64;
    for (int i = 0; i < nth; i++) {
        args[i].fn = fn;
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

double mach_peak_fma(int nth) { return run_peak(loop_fma, nth); }
double mach_peak_bf16(int nth) { return run_peak(loop_bf16, nth); }
double mach_peak_vnni(int nth) { return run_peak(loop_vnni, nth); }

static uint8_t *bw_buf;

typedef struct {
    const uint8_t *p;
    size_t n;
} bw_arg;

__attribute__((target("avx512f"))) static void *bw_thread(void *a)
{
    bw_arg *b = a;
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
