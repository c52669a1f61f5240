/*
 * bench-kernels - throughput of the weight kernels per type and ISA level.
 *
 *   bench-kernels [-t threads] [-n row_len] [-l scalar|avx2|avx2vnni|avx512] [-m] [-b] [type ...]
 *
 * -l: only that kernel level (default: the one ORTHOSERVE_ISA names, else
 *   every level the CPU has). -b: also measure memory read bandwidth.
 * -d MB: decode matrix size (default 96; e.g. 0.5 for a cache-resident matrix,
 *   called repeatedly: the kernel's compute bound). -D: decode column only.
 * -m: model-shaped decode instead: a TinyLlama-shaped stack (22 layers of
 *   2048x2048 (q, o), 2048x256 (k, v), 5632x2048 (gate, up), 2048x5632 (down),
 *   plus a 32000x2048 output matrix), every product split over the engine's
 *   compute pool in chunks of 16 rows with a barrier after each, as forward.c
 *   does; reports weight GB/s per decode step (median of 7 steps).
 *
 * nx=1 (decode): GB/s of weight bytes streamed (matrix well beyond the caches).
 * nx=64 / nx=512 (prefill): GOP/s, 2 ops per multiply-add, activation rows
 * already converted to the kernel's activation type. Rows are split across
 * the threads. Each figure is the median of 5 runs; "of peak": nx=512 against
 * the level's own peak (tools/common/machine.h, mach_level_peak). Also
 * prints the CPU, its SIMD features and the peaks it has, all threads.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include "common/machine.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


typedef struct {
    eng__gemm_fn fn;
    int64_t n, nr, nx;
    const uint8_t *w;
    size_t ws;
    const uint8_t *x;
    size_t xs;
    float *y;
    int ith, nth, reps;
} job;

/* ---- model-shaped decode ---- */

typedef struct {
    int64_t n_in, n_out;
    size_t rb;
    uint8_t *w;
} bmat;

typedef struct {
    const eng__kernels *k;
    int t;
    bmat *m;
    int nm;
    const uint8_t *x; /* activation row, as long as the widest n_in */
    float *y;
    eng__pool *pool;
} model_job;

static void model_step(int ith, int nth, void *arg)
{
    model_job *mj = arg;
    for (int i = 0; i < mj->nm; i++) {
        const bmat *m = &mj->m[i];
        int64_t r0, r1;
        eng__split(m->n_out, ith, nth, 16, &r0, &r1);
        if (r1 > r0)
            mj->k->gemm[mj->t](m->n_in, m->w + (size_t)r0 * m->rb, m->rb, r1 - r0, mj->x, 0, 1,
                               mj->y + r0, (size_t)m->n_out);
        eng__pool_barrier(mj->pool);
    }
}

static void fill_weights(int t, uint8_t *w, size_t ws, int64_t nr, int64_t n, uint64_t *seed);

static void model_decode(int nth, const eng__kernels *k, int t)
{
    static const int64_t shp[7][2] = {{2048, 2048}, {2048, 256}, {2048, 256}, {2048, 2048},
                                      {2048, 5632}, {2048, 5632}, {5632, 2048}};
    enum { NL = 22 };
    bmat m[NL * 7 + 1];
    int nm = 0;
    size_t total = 0;
    uint64_t seed = 7;
    for (int l = 0; l <= NL; l++)
        for (int i = 0; i < (l < NL ? 7 : 1); i++) {
            bmat *b = &m[nm++];
            b->n_in = l < NL ? shp[i][0] : 2048;
            b->n_out = l < NL ? shp[i][1] : 32000;
            b->rb = eng__row_size(t, b->n_in);
            b->w = eng__aligned_alloc(64, b->rb * (size_t)b->n_out);
            fill_weights(t, b->w, b->rb, b->n_out, b->n_in, &seed);
            total += b->rb * (size_t)b->n_out;
        }
    const eng__type_info *info = eng__type(t);
    float *tmp = malloc(sizeof(float) * 5632);
    for (int64_t i = 0; i < 5632; i++) tmp[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    uint8_t *x = eng__aligned_alloc(64, eng__row_size(info->vec_type, 5632) + 64);
    k->quantize_act[t](tmp, x, 5632);
    float *y = eng__aligned_alloc(64, sizeof(float) * 32000);
    eng__pool *pool;
    if (eng__pool_new(nth, &pool) != ENG_OK) exit(1);
    model_job mj = {k, t, m, nm, x, y, pool};
    double ts[7];
    eng__pool_run(pool, model_step, &mj); /* warm-up */
    for (int rep = 0; rep < 7; rep++) {
        double t0 = eng__now();
        eng__pool_run(pool, model_step, &mj);
        ts[rep] = eng__now() - t0;
    }
    const double med = mach_median(ts, 7); /* sorts ts */
    printf("%-7s %-6s model decode: %7.2f ms/token  %6.2f GB/s  (%.0f MB, best %.2f GB/s)\n",
           k->name, info->name, med * 1e3, (double)total / med * 1e-9, (double)total * 1e-6,
           (double)total / ts[0] * 1e-9);
    fflush(stdout);
    eng__pool_free(pool);
    for (int i = 0; i < nm; i++) eng__aligned_free(m[i].w);
    eng__aligned_free(x);
    eng__aligned_free(y);
    free(tmp);
}

static void *run_job(void *arg)
{
    job *j = arg;
    int64_t per = (j->nr / j->nth + 15) & ~(int64_t)15; /* whole packed groups */
    int64_t r0 = per * j->ith, r1 = r0 + per < j->nr ? r0 + per : j->nr;
    for (int rep = 0; rep < j->reps && r0 < r1; rep++)
        j->fn(j->n, j->w + (size_t)r0 * j->ws, j->ws, r1 - r0, j->x, j->xs, j->nx, j->y + r0,
              (size_t)j->nr);
    return NULL;
}

static double time_gemm(int nth, eng__gemm_fn fn, int64_t n, const uint8_t *w, size_t ws,
                        int64_t nr, const uint8_t *x, size_t xs, int64_t nx, float *y, int reps)
{
    double t[5];
    for (int rep = 0; rep < 5; rep++) {
        job jobs[16];
        pthread_t th[16];
        double t0 = eng__now();
        for (int i = 0; i < nth; i++) {
            jobs[i] = (job){fn, n, nr, nx, w, ws, x, xs, y, i, nth, reps};
            if (i) pthread_create(&th[i], NULL, run_job, &jobs[i]);
        }
        run_job(&jobs[0]);
        for (int i = 1; i < nth; i++) pthread_join(th[i], NULL);
        t[rep] = eng__now() - t0;
    }
    return mach_median(t, 5) / reps;
}

/* Random quants, sane scales (fp16/bf16/f32 weights from a fixed pattern). */
static void fill_weights(int t, uint8_t *w, size_t ws, int64_t nr_max, int64_t n, uint64_t *sd)
{
    const eng__type_info *info = eng__type(t);
    uint64_t seed = *sd;
    for (size_t i = 0; i < ws * (size_t)nr_max; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        w[i] = (uint8_t)(seed >> 56);
    }
    *sd = seed;
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
    free(tmp);
}

/* -l's level, or -1 (saying why) for a name that is none. */
static int level_arg(const char *name)
{
    for (int l = 0; l < ENG_KL_COUNT; l++)
        if (!strcmp(name, eng__kernel_level_name((eng__kernel_level)l))) return l;
    fprintf(stderr, "bench-kernels: -l %s: not a kernel level (scalar, avx2, avx2vnni or avx512)\n", name);
    return -1;
}

/* Prints the CPU and the level in use; returns the level to measure (-l,
 * else ORTHOSERVE_ISA's when set) or -1 for every level the CPU has, or -2
 * after saying why when ORTHOSERVE_ISA or -l names a level it lacks. */
static int levels_to_run(int only)
{
    eng__kernel_level in_use;
    char err[512];
    if (!mach_level(&in_use, err, sizeof err)) {
        fprintf(stderr, "bench-kernels: %s\n", err);
        return -2;
    }
    const char *env = getenv("ORTHOSERVE_ISA");
    if (only < 0 && env && env[0]) only = (int)in_use;
    if (only >= 0 && !eng__kernels_get((eng__kernel_level)only)) {
        eng__isa_choose(eng__kernel_level_name((eng__kernel_level)only), eng__cpu_get(), &in_use, err, sizeof err);
        fprintf(stderr, "bench-kernels: -l: %s\n", err);
        return -2;
    }
    mach_print_cpu(stdout, in_use);
    return only;
}

/* The end of a prefill row: GOP/s at nx=512 against the level's own peak
 * for this weight type (mach_level_peak). */
static void print_of_peak(eng__kernel_level lv, int t, double gops, const double *pk)
{
    const mach_peak p = mach_level_peak(lv, t);
    if (gops >= 0 && p != MACH_NO_PEAK && pk[p] > 0)
        printf("  %5.1f%% of %s\n", 100.0 * gops / (pk[p] * 1e-9), mach_peak_name(p));
    else
        printf("  -\n");
}

int main(int argc, char **argv)
{
    int nth = 2;
    int64_t n = 4096;
    int types[32], ntypes = 0, only = -1, model = 0, bw = 0, dec_only = 0;
    double dec_mb = 96;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) nth = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-m")) model = 1;
        else if (!strcmp(argv[i], "-b")) bw = 1;
        else if (!strcmp(argv[i], "-d") && i + 1 < argc) dec_mb = atof(argv[++i]);
        else if (!strcmp(argv[i], "-D")) dec_only = 1;
        else if (!strcmp(argv[i], "-l") && i + 1 < argc) {
            if ((only = level_arg(argv[++i])) < 0) return 2;
        }
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
    if ((only = levels_to_run(only)) < -1) return 1;
    printf("threads %d, row length %ld\n", nth, (long)n);
    if (bw || model) printf("memory read bandwidth:          %8.1f GB/s\n", mach_read_bw(nth) / 1e9);
    if (model) {
        for (int lv = 0; lv < ENG_KL_COUNT; lv++) {
            const eng__kernels *k = eng__kernels_get((eng__kernel_level)lv);
            if (!k || (only >= 0 && lv != only) || (only < 0 && lv == 0)) continue;
            for (int ti = 0; ti < ntypes; ti++) model_decode(nth, k, types[ti]);
        }
        printf("memory read bandwidth:          %8.1f GB/s\n", mach_read_bw(nth) / 1e9);
        return 0;
    }
    double pk[MACH_N_PEAKS] = {0};
    if (!dec_only)
        for (int p = 0; p < MACH_N_PEAKS; p++) {
            pk[p] = mach_peak_ops((mach_peak)p, nth);
            if (pk[p] > 0) printf("peak %-31s %8.1f G/s\n", mach_peak_name((mach_peak)p), pk[p] * 1e-9);
            else printf("peak %-31s %8s\n", mach_peak_name((mach_peak)p), "n/a");
        }
    printf("%-8s %-6s %12s %14s %14s  %s\n", "level", "type", "nx=1 GB/s", "nx=64 GOP/s", "nx=512 GOP/s",
           "of peak");

    uint64_t seed = 1;
    for (int lv = 0; lv < ENG_KL_COUNT; lv++) {
        const eng__kernels *k = eng__kernels_get((eng__kernel_level)lv);
        if (!k || (only >= 0 && lv != only)) continue;
        for (int ti = 0; ti < ntypes; ti++) {
            int t = types[ti];
            const eng__type_info *info = eng__type(t);
            int vt = info->vec_type;
            size_t ws = eng__row_size(t, n), xs = eng__row_size(vt, n);
            /* decode: ~96 MB of weights */
            int64_t nr_dec = ((int64_t)(dec_mb * (1 << 20)) / (int64_t)ws + 15) & ~(int64_t)15;
            int dec_reps = dec_mb < 96 ? (int)(96 / dec_mb) : 1;
            int64_t nr_pre = lv == 0 ? 64 : 1024;
            int64_t nr_max = nr_dec > nr_pre ? nr_dec : nr_pre;
            uint8_t *w = eng__aligned_alloc(64, ws * (size_t)nr_max);
            fill_weights(t, w, ws, nr_max, n, &seed);
            float *tmp = malloc(sizeof(float) * (size_t)n);
            for (int64_t i = 0; i < n; i++) tmp[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
            int64_t nx_max = 512;
            uint8_t *x = eng__aligned_alloc(64, xs * (size_t)nx_max);
            for (int64_t j = 0; j < nx_max; j++) k->quantize_act[t](tmp, x + (size_t)j * xs, n);
            float *y = eng__aligned_alloc(64, sizeof(float) * (size_t)nr_max * (size_t)nx_max);

            double td = time_gemm(nth, k->gemm[t], n, w, ws, nr_dec, x, xs, 1, y, dec_reps);
            double gbs = (double)ws * (double)nr_dec / td * 1e-9;
            double r64 = -1, r512 = -1;
            if (dec_only) {
                printf("%-8s %-6s %12.2f\n", k->name, info->name, gbs);
                goto next;
            }
            double t64 = time_gemm(nth, k->gemm[t], n, w, ws, nr_pre, x, xs, 64, y, 1);
            r64 = 2.0 * (double)n * (double)nr_pre * 64 / t64 * 1e-9;
            if (lv > 0) {
                double t512 = time_gemm(nth, k->gemm[t], n, w, ws, nr_pre, x, xs, 512, y, 1);
                r512 = 2.0 * (double)n * (double)nr_pre * 512 / t512 * 1e-9;
            }
            printf("%-8s %-6s %12.2f %14.1f ", k->name, info->name, gbs, r64);
            if (r512 >= 0) printf("%14.1f", r512);
            else printf("%14s", "-");
            print_of_peak((eng__kernel_level)lv, t, r512, pk);
        next:
            if (k->gemm_packed[t]) { /* the same matrix repacked (internal.h), as the model loads it */
                uint8_t *wp = eng__aligned_alloc(64, ws * (size_t)nr_max);
                for (int64_t g = 0; g + 16 <= nr_max; g += 16)
                    eng__pack16(t, w + (size_t)g * ws, ws, wp + (size_t)g * ws);
                td = time_gemm(nth, k->gemm_packed[t], n, wp, ws, nr_dec, x, xs, 1, y, dec_reps);
                gbs = (double)ws * (double)nr_dec / td * 1e-9;
                printf("%-8s %-6s %12.2f", k->name, "packed", gbs);
                if (!dec_only) {
                    double p64 = time_gemm(nth, k->gemm_packed[t], n, wp, ws, nr_pre, x, xs, 64, y, 1);
                    double p512 = time_gemm(nth, k->gemm_packed[t], n, wp, ws, nr_pre, x, xs, 512, y, 1);
                    double g512 = 2.0 * (double)n * (double)nr_pre * 512 / p512 * 1e-9;
                    printf(" %14.1f %14.1f", 2.0 * (double)n * (double)nr_pre * 64 / p64 * 1e-9, g512);
                    print_of_peak((eng__kernel_level)lv, t, g512, pk);
                } else {
                    printf("\n");
                }
                eng__aligned_free(wp);
            }
            fflush(stdout);
            free(tmp);
            eng__aligned_free(w);
            eng__aligned_free(x);
            eng__aligned_free(y);
        }
    }
    return 0;
}
