/*
 * bench-kernels - throughput of the weight kernels per type and ISA level.
 *
 *   bench-kernels [-t threads] [-n row_len] [type ...]
 *
 * nx=1 (decode): GB/s of weight bytes streamed (matrix well beyond the caches).
 * nx=64 / nx=512 (prefill): GOP/s, 2 ops per multiply-add, activation rows
 * already converted to the kernel's activation type. Rows are split across
 * the threads. Each figure is the median of 5 runs. Also prints measured
 * peaks: int8 VNNI (vpdpbusd), BF16 dot (vdpbf16ps) and FP32 FMA, all threads.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    eng__gemm_fn fn;
    int64_t n, nr, nx;
    const uint8_t *w;
    size_t ws;
    const uint8_t *x;
    size_t xs;
    float *y;
    int ith, nth;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    int64_t per = (j->nr / j->nth + 3) & ~(int64_t)3;
    int64_t r0 = per * j->ith, r1 = r0 + per < j->nr ? r0 + per : j->nr;
    if (r0 < r1)
        j->fn(j->n, j->w + (size_t)r0 * j->ws, j->ws, r1 - r0, j->x, j->xs, j->nx, j->y + r0,
              (size_t)j->nr);
    return NULL;
}

static double time_gemm(int nth, eng__gemm_fn fn, int64_t n, const uint8_t *w, size_t ws,
                        int64_t nr, const uint8_t *x, size_t xs, int64_t nx, float *y)
{
    double t[5];
    for (int rep = 0; rep < 5; rep++) {
        job jobs[16];
        pthread_t th[16];
        double t0 = now();
        for (int i = 0; i < nth; i++) {
            jobs[i] = (job){fn, n, nr, nx, w, ws, x, xs, y, i, nth};
            if (i) pthread_create(&th[i], NULL, run_job, &jobs[i]);
        }
        run_job(&jobs[0]);
        for (int i = 1; i < nth; i++) pthread_join(th[i], NULL);
        t[rep] = now() - t0;
    }
    qsort(t, 5, sizeof t[0], cmp_d);
    return t[2];
}

/* ---- peaks ---- */

typedef struct { int kind; double ops; double secs; } peak_job;

#define PEAK_ITERS 20000000L

__attribute__((target("avx512f,avx512vnni"))) static void peak_vnni(double *ops)
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
    *ops = (double)PEAK_ITERS * 12 * 64 * 2;
}

__attribute__((target("avx512f,avx512bf16"))) static void peak_bf16(double *ops)
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
    *ops = (double)PEAK_ITERS * 12 * 32 * 2;
}

__attribute__((target("avx512f,fma"))) static void peak_fma(double *ops)
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
    *ops = (double)PEAK_ITERS * 12 * 16 * 2;
}

static void *peak_run(void *arg)
{
    peak_job *p = arg;
    double t0 = now();
    if (p->kind == 0) peak_vnni(&p->ops);
    else if (p->kind == 1) peak_bf16(&p->ops);
    else peak_fma(&p->ops);
    p->secs = now() - t0;
    return NULL;
}

static double peak(int kind, int nth)
{
    peak_job pj[16];
    pthread_t th[16];
    for (int i = 0; i < nth; i++) {
        pj[i].kind = kind;
        if (i) pthread_create(&th[i], NULL, peak_run, &pj[i]);
    }
    peak_run(&pj[0]);
    double ops = 0, secs = 0;
    for (int i = 1; i < nth; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < nth; i++) {
        ops += pj[i].ops;
        if (pj[i].secs > secs) secs = pj[i].secs;
    }
    return ops / secs * 1e-9;
}

int main(int argc, char **argv)
{
    int nth = 2;
    int64_t n = 4096;
    int types[32], ntypes = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) nth = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-n") && i + 1 < argc) n = atoll(argv[++i]);
        else {
            for (int t = 0; t < ENG_TYPE_COUNT; t++)
                if (eng__type(t) && !strcmp(eng__type(t)->name, argv[i]) && ntypes < 32)
                    types[ntypes++] = t;
        }
    }
    if (nth < 1 || nth > 16) nth = 2;
    if (!ntypes) {
        static const int def[] = {ENG_TYPE_Q8_0, ENG_TYPE_Q4_0, ENG_TYPE_Q4_K, ENG_TYPE_Q5_K,
                                  ENG_TYPE_Q6_K, ENG_TYPE_F16,  ENG_TYPE_BF16, ENG_TYPE_F32,
                                  ENG_TYPE_Q4_1, ENG_TYPE_Q5_0, ENG_TYPE_Q5_1};
        for (size_t i = 0; i < sizeof def / sizeof def[0]; i++) types[ntypes++] = def[i];
    }
    const eng__cpu *c = eng__cpu_get();
    printf("threads %d, row length %ld, best kernels: %s\n", nth, (long)n, eng_kernel_name());
    if (c->avx512vnni) printf("peak int8 VNNI (vpdpbusd zmm):  %8.1f GOP/s\n", peak(0, nth));
    if (c->avx512bf16) printf("peak BF16 dot  (vdpbf16ps zmm): %8.1f GFLOP/s\n", peak(1, nth));
    if (c->avx512f && c->fma) printf("peak FP32 FMA  (vfmadd zmm):    %8.1f GFLOP/s\n", peak(2, nth));
    printf("%-7s %-6s %12s %14s %14s\n", "level", "type", "nx=1 GB/s", "nx=64 GOP/s", "nx=512 GOP/s");

    uint64_t seed = 1;
    for (int lv = 0; lv < 3; lv++) {
        const eng__kernels *k = eng__kernels_get((eng__kernel_level)lv);
        if (!k) continue;
        for (int ti = 0; ti < ntypes; ti++) {
            int t = types[ti];
            const eng__type_info *info = eng__type(t);
            int vt = info->vec_type;
            size_t ws = eng__row_size(t, n), xs = eng__row_size(vt, n);
            /* decode: ~96 MB of weights */
            int64_t nr_dec = ((int64_t)(96u << 20) / (int64_t)ws + 3) & ~(int64_t)3;
            int64_t nr_pre = lv == 0 ? 64 : 1024;
            int64_t nr_max = nr_dec > nr_pre ? nr_dec : nr_pre;
            uint8_t *w = eng__aligned_alloc(64, ws * (size_t)nr_max);
            for (size_t i = 0; i < ws * (size_t)nr_max; i++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                w[i] = (uint8_t)(seed >> 56);
            }
            /* keep fp16 / bf16 / f32 values finite and sane */
            float *tmp = malloc(sizeof(float) * (size_t)n);
            for (int64_t i = 0; i < n; i++) tmp[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
            if (info->blck == 1) {
                for (int64_t r = 0; r < nr_max; r++) info->from_float(tmp, w + (size_t)r * ws, n);
            } else {
                for (int64_t r = 0; r < nr_max; r++)
                    for (int64_t b = 0; b < n / info->blck; b++) {
                        uint8_t *p = w + (size_t)r * ws + (size_t)b * info->type_size;
                        uint16_t h = eng__fp32_to_fp16(0.01f);
                        if (t == ENG_TYPE_Q6_K) memcpy(p + 208, &h, 2);
                        else memcpy(p, &h, 2);
                        if (t == ENG_TYPE_Q4_1 || t == ENG_TYPE_Q5_1 || t == ENG_TYPE_Q4_K ||
                            t == ENG_TYPE_Q5_K)
                            memcpy(p + 2, &h, 2);
                    }
            }
            int64_t nx_max = 512;
            uint8_t *x = eng__aligned_alloc(64, xs * (size_t)nx_max);
            for (int64_t j = 0; j < nx_max; j++) k->quantize_act[t](tmp, x + (size_t)j * xs, n);
            float *y = eng__aligned_alloc(64, sizeof(float) * (size_t)nr_max * (size_t)nx_max);

            double td = time_gemm(nth, k->gemm[t], n, w, ws, nr_dec, x, xs, 1, y);
            double gbs = (double)ws * (double)nr_dec / td * 1e-9;
            double r64 = -1, r512 = -1;
            double t64 = time_gemm(nth, k->gemm[t], n, w, ws, nr_pre, x, xs, 64, y);
            r64 = 2.0 * (double)n * (double)nr_pre * 64 / t64 * 1e-9;
            if (lv > 0) {
                double t512 = time_gemm(nth, k->gemm[t], n, w, ws, nr_pre, x, xs, 512, y);
                r512 = 2.0 * (double)n * (double)nr_pre * 512 / t512 * 1e-9;
            }
            printf("%-7s %-6s %12.2f %14.1f ", k->name, info->name, gbs, r64);
            if (r512 >= 0) printf("%14.1f\n", r512);
            else printf("%14s\n", "-");
            fflush(stdout);
            free(tmp);
            eng__aligned_free(w);
            eng__aligned_free(x);
            eng__aligned_free(y);
        }
    }
    return 0;
}
