/*
 * bench-blas - our kernels against OpenBLAS where OpenBLAS could win: the
 * wide products of prefill (F32, F16, BF16 weights) and prefill attention
 * over a long prompt done as two sgemm per query head.
 *
 *   bench-blas [-t threads] [-r reps] [-l avx2|avx512] [-c] [-W|-A] [-P 512,1024,2048]
 *
 * -c: time by the process's CPU time, not wall time (steadier when other
 * jobs share the machine; use with -t 1, where pool threads cannot spin).
 *
 * Weight products, TinyLlama shapes (out x in: 2048x2048, 256x2048,
 * 5632x2048, 2048x5632) times 64 and 512 activation rows, GFLOP/s
 * (2 per multiply-add), each the median of `reps` runs taken in turn
 * (ours at every level, then OpenBLAS, then again):
 *   ours-LEVEL   the engine's gemm (packed rows where the engine packs them),
 *                activations already converted to the kernel's type;
 *   blas-f32     cblas_sgemm on weights converted to F32 once (for F16/BF16
 *                twice the engine's weight memory: an upper bound);
 *   blas-eng     the engine's opt-in path (eng__gemm_blas, gemm_blas.c): on
 *                the rows as the engine holds them (packed F16 unpacked
 *                first), F16/BF16 converted per call into F32 strips, then
 *                cblas_sgemm per strip; BF16 activations widened per call.
 * Attention: nq = P prompt rows from position 0 (causal), TinyLlama heads
 * (32 query heads of 64, 4 kv heads), one (kv head) unit per thread as
 * forward.c does; GFLOP/s of the useful (causal) work, per kernel level;
 * blas-sgemm is bench_attn_sgemm (common/attn_sgemm.c: keys and values
 * gathered out of the block cache, then per head and tile of 128 queries
 * S = Q K^T, masked softmax, O = S V), which the engine does not use. Its largest difference from
 * the first level's kernel is printed.
 *
 * Threads: the engine's compute pool; each thread calls OpenBLAS on its share
 * with OpenBLAS set to one thread (as the engine sets it), so OpenBLAS never
 * starts threads of its own. Prints the CPU, OPENBLAS_CORETYPE and the core
 * OpenBLAS picked (it chooses its kernels from that, not from our level).
 */
#define _POSIX_C_SOURCE 200809L
#include "common/attn_sgemm.h"
#include "common/machine.h"
#include "internal.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_MODES 4

static int g_reps = 5;
static bool g_cpu_time; /* -c: process CPU time instead of wall time */

/* Seconds: wall clock, or with -c this process's CPU time (steadier on a
 * machine other jobs share; with -t 1 it is the one thread's). */
static double now(void)
{
    if (!g_cpu_time) return eng__now();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}


static uint64_t rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static float frand(uint64_t *s) { return (float)((double)(rng(s) >> 11) / 9007199254740992.0) * 2.0f - 1.0f; }

static void print_machine(int nth)
{
    char line[4096], model[256] = "?", flags[1024] = "";
    FILE *f = fopen("/proc/cpuinfo", "r");
    static const char *want[] = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                                 "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"};
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(model, sizeof model, "%s", strchr(line, ':') + 2);
            model[strcspn(model, "\n")] = 0;
        } else if (!strncmp(line, "flags", 5) && !flags[0]) {
            for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
                char pat[64];
                snprintf(pat, sizeof pat, " %s ", want[i]);
                line[strcspn(line, "\n")] = ' ';
                if (strstr(line, pat)) {
                    strcat(flags, " ");
                    strcat(flags, want[i]);
                }
            }
        }
    }
    if (f) fclose(f);
    const char *ct = getenv("OPENBLAS_CORETYPE");
    printf("# cpu: %s; flags:%s; %ld cpus\n", model, flags, sysconf(_SC_NPROCESSORS_ONLN));
    printf("# OPENBLAS_CORETYPE=%s; OpenBLAS core: %s; config: %s\n", ct ? ct : "(unset)",
           openblas_get_corename(), openblas_get_config());
    printf("# threads: %d (OpenBLAS at 1 thread per pool thread); median of %d; GFLOP/s of %s time\n", nth, g_reps,
           g_cpu_time ? "process CPU" : "wall");
}

/* ------------------------------------------------------------------------ */
/* Weight products                                                          */
/* ------------------------------------------------------------------------ */

typedef enum { M_OURS, M_BLAS_F32, M_BLAS_ENG } mode;

typedef struct {
    mode md;
    int type;
    const eng__kernels *k;
    int64_t n, nr, nx;
    const uint8_t *w, *wp; /* file layout, packed copy (or NULL) */
    size_t ws;
    const float *wf;       /* weights as F32 */
    const uint8_t *xa;     /* activations in the kernel's vec type */
    size_t xas;
    const float *xf;       /* activations as F32 */
    float *y;
} wjob;

static void wjob_run(int ith, int nth, void *arg)
{
    const wjob *j = arg;
    int64_t r0, r1;
    eng__split(j->nr, ith, nth, 16, &r0, &r1);
    if (r1 <= r0) return;
    const int64_t n = j->n;
    if (j->md == M_OURS) {
        if (j->wp)
            j->k->gemm_packed[j->type](n, j->wp + (size_t)r0 * j->ws, j->ws, r1 - r0, j->xa, j->xas, j->nx,
                                       j->y + r0, (size_t)j->nr);
        else
            j->k->gemm[j->type](n, j->w + (size_t)r0 * j->ws, j->ws, r1 - r0, j->xa, j->xas, j->nx,
                                j->y + r0, (size_t)j->nr);
    } else if (j->md == M_BLAS_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->nx, (int)(r1 - r0), (int)n, 1.0f, j->xf,
                    (int)n, j->wf + (size_t)r0 * n, (int)n, 0.0f, j->y + r0, (int)j->nr);
    } else {
        const uint8_t *w = j->wp ? j->wp : j->w;
        if (!eng__gemm_blas(j->type, j->wp != NULL, n, w + (size_t)r0 * j->ws, j->ws, r1 - r0, j->xa, j->xas,
                            j->nx, j->y + r0, (size_t)j->nr))
            abort();
    }
}

/* Weights of one shape and type in every form the modes read. */
typedef struct {
    int type;
    int64_t n, nr, nx;
    uint8_t *w, *wp;
    size_t ws;
    float *wf, *xf, *y;
    uint8_t *xa[3]; /* per level (index = eng__kernel_level) */
    size_t xas;
} wset;

static bool wset_new(wset *s, int type, int64_t nr, int64_t n, int64_t nx, uint64_t *seed)
{
    memset(s, 0, sizeof *s);
    s->type = type, s->n = n, s->nr = nr, s->nx = nx;
    s->ws = eng__row_size(type, n);
    s->w = eng__aligned_alloc(64, s->ws * (size_t)nr);
    s->wp = eng__aligned_alloc(64, s->ws * (size_t)nr);
    s->wf = eng__aligned_alloc(64, sizeof(float) * (size_t)(nr * n));
    s->xf = eng__aligned_alloc(64, sizeof(float) * (size_t)(nx * n));
    s->y = eng__aligned_alloc(64, sizeof(float) * (size_t)(nx * nr));
    const int vt = eng__type(type)->vec_type;
    s->xas = (eng__row_size(vt, n) + 63) & ~(size_t)63;
    for (int l = 0; l < 3; l++) s->xa[l] = eng__aligned_alloc(64, s->xas * (size_t)nx);
    if (!s->w || !s->wp || !s->wf || !s->xf || !s->y || !s->xa[0] || !s->xa[1] || !s->xa[2]) return false;
    float *row = s->wf;
    for (int64_t r = 0; r < nr; r++, row += n) {
        for (int64_t i = 0; i < n; i++) row[i] = frand(seed) * 0.1f;
        eng__type(type)->from_float(row, s->w + (size_t)r * s->ws, n);
        eng__type(type)->to_float(s->w + (size_t)r * s->ws, row, n); /* what the weights hold */
    }
    if (eng__packable(type, n))
        for (int64_t g = 0; g + ENG_PACK_ROWS <= nr; g += ENG_PACK_ROWS)
            eng__pack16(type, s->w + (size_t)g * s->ws, s->ws, s->wp + (size_t)g * s->ws);
    for (int64_t i = 0; i < nx * n; i++) s->xf[i] = frand(seed);
    for (int l = 0; l < 3; l++) {
        const eng__kernels *k = eng__kernels_get((eng__kernel_level)l);
        if (!k) continue;
        for (int64_t j = 0; j < nx; j++) {
            const float *src = s->xf + (size_t)j * n;
            uint8_t *dst = s->xa[l] + (size_t)j * s->xas;
            if (vt == ENG_TYPE_F32) memcpy(dst, src, (size_t)n * sizeof(float));
            else k->quantize_act[type](src, dst, n);
        }
    }
    return true;
}

static void wset_free(wset *s)
{
    eng__aligned_free(s->w);
    eng__aligned_free(s->wp);
    eng__aligned_free(s->wf);
    eng__aligned_free(s->xf);
    eng__aligned_free(s->y);
    for (int l = 0; l < 3; l++) eng__aligned_free(s->xa[l]);
}

/* The modes of one type: ours at each level asked for, then OpenBLAS. */
typedef struct {
    int n;
    wjob job[MAX_MODES];
    const char *name[MAX_MODES];
} modes;

static void modes_for(const wset *s, const eng__kernels *const *lv, int nlv, modes *ms)
{
    ms->n = 0;
    wjob base = {.type = s->type, .n = s->n, .nr = s->nr, .nx = s->nx, .w = s->w, .ws = s->ws,
                 .wf = s->wf, .xf = s->xf, .y = s->y};
    for (int i = 0; i < nlv; i++) {
        wjob j = base;
        j.md = M_OURS;
        j.k = lv[i];
        j.wp = lv[i]->gemm_packed[s->type] && eng__packable(s->type, s->n) ? s->wp : NULL;
        j.xa = s->xa[!strcmp(lv[i]->name, "avx512") ? 2 : 1];
        j.xas = s->xas;
        ms->job[ms->n] = j;
        ms->name[ms->n++] = lv[i]->name;
    }
    ms->job[ms->n] = base;
    ms->job[ms->n].md = M_BLAS_F32;
    ms->name[ms->n++] = "blas-f32";
    ms->job[ms->n] = ms->job[nlv - 1]; /* the engine's rows and activations at the last level */
    ms->job[ms->n].md = M_BLAS_ENG;
    ms->name[ms->n++] = "blas-eng";
}

static const char *type_name(int t) { return eng__type(t)->name; }

static void bench_weights(eng__pool *pool, const eng__kernels *const *lv, int nlv)
{
    static const int types[] = {ENG_TYPE_F32, ENG_TYPE_F16, ENG_TYPE_BF16};
    static const int64_t shapes[][2] = {{2048, 2048}, {256, 2048}, {5632, 2048}, {2048, 5632}};
    static const int64_t nxs[] = {64, 512};
    printf("\n%-5s %-10s %4s", "type", "out x in", "nx");
    for (int i = 0; i < nlv; i++) printf(" %11s", lv[i]->name);
    printf(" %11s %11s %9s\n", "blas-f32", "blas-eng", "eng/ours");
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (size_t xi = 0; xi < sizeof nxs / sizeof nxs[0]; xi++) {
                wset s;
                if (!wset_new(&s, types[ti], shapes[si][0], shapes[si][1], nxs[xi], &seed)) {
                    fprintf(stderr, "out of memory\n");
                    exit(1);
                }
                modes ms;
                modes_for(&s, lv, nlv, &ms);
                double t[MAX_MODES][64], g[MAX_MODES];
                for (int m = 0; m < ms.n; m++) eng__pool_run(pool, wjob_run, &ms.job[m]); /* warm */
                for (int r = 0; r < g_reps; r++)
                    for (int m = 0; m < ms.n; m++) {
                        double t0 = now();
                        eng__pool_run(pool, wjob_run, &ms.job[m]);
                        t[m][r] = now() - t0;
                    }
                const double flop = 2.0 * (double)s.nr * (double)s.n * (double)s.nx;
                double best_ours = 0;
                printf("%-5s %4lldx%-5lld %4lld", type_name(s.type), (long long)s.nr, (long long)s.n,
                       (long long)s.nx);
                for (int m = 0; m < ms.n; m++) {
                    g[m] = flop / mach_median(t[m], g_reps) / 1e9;
                    printf(" %11.1f", g[m]);
                    if (ms.job[m].md == M_OURS) best_ours = g[m] > best_ours ? g[m] : best_ours;
                }
                printf(" %8.2fx\n", g[ms.n - 1] / best_ours);
                fflush(stdout);
                wset_free(&s);
            }
}

/* ------------------------------------------------------------------------ */
/* Prefill attention                                                        */
/* ------------------------------------------------------------------------ */

enum { A_HD = 64, A_NHEAD = 32, A_NKV = 4, A_REP = A_NHEAD / A_NKV };

typedef struct {
    const eng__kernels *k; /* ours; NULL: blas */
    int32_t P;
    const float *q, *kc, *vc; /* queries [P][32*64], cache blocks [blk][kv][...] */
    float *out;
    const int32_t *blk, *last;
    float **scratch;          /* per thread */
} ajob;

static void ajob_run(int ith, int nth, void *arg)
{
    const ajob *a = arg;
    for (int kh = ith; kh < A_NKV; kh += nth) {
        const size_t kvd = (size_t)A_NKV * A_HD;
        eng__attn_args x = {.hd = A_HD, .n_rep = A_REP, .nq = a->P, .q = a->q + (size_t)kh * A_REP * A_HD,
                            .out = a->out + (size_t)kh * A_REP * A_HD, .q_stride = (size_t)A_NHEAD * A_HD,
                            .last = a->last, .k = a->kc + (size_t)kh * ENG_KV_BLOCK * A_HD,
                            .v = a->vc + (size_t)kh * ENG_KV_BLOCK * A_HD, .blk = a->blk,
                            .type_k = ENG_TYPE_F32, .type_v = ENG_TYPE_F32,
                            .k_stride = ENG_KV_BLOCK * kvd * sizeof(float),
                            .v_stride = ENG_KV_BLOCK * kvd * sizeof(float), .scale = 1.0f / sqrtf((float)A_HD),
                            .scratch = a->scratch[ith]};
        if (a->k) a->k->attn(&x);
        else if (!bench_attn_sgemm(&x)) abort();
    }
}

static void bench_attn_one(eng__pool *pool, const eng__kernels *const *lv, int nlv, int32_t P, uint64_t *seed)
{
    const int nth = eng__pool_size(pool);
    const int32_t nb = (P + ENG_KV_BLOCK - 1) / ENG_KV_BLOCK;
    const size_t qn = (size_t)P * A_NHEAD * A_HD, cn = (size_t)nb * ENG_KV_BLOCK * A_NKV * A_HD;
    float *q = eng__aligned_alloc(64, qn * 4), *kc = eng__aligned_alloc(64, cn * 4);
    float *vc = eng__aligned_alloc(64, cn * 4), *out[MAX_MODES];
    int32_t *blk = malloc(sizeof(int32_t) * (size_t)nb), *last = malloc(sizeof(int32_t) * (size_t)P);
    float *scr[64];
    const size_t sn = ENG_ATTN_SCRATCH(A_HD);
    for (int i = 0; i < nth; i++) scr[i] = eng__aligned_alloc(64, sn * 4);
    for (size_t i = 0; i < qn; i++) q[i] = frand(seed);
    for (size_t i = 0; i < cn; i++) kc[i] = frand(seed), vc[i] = frand(seed);
    for (int32_t b = 0; b < nb; b++) blk[b] = nb - 1 - b; /* not in order, as after reuse */
    for (int32_t i = 0; i < P; i++) last[i] = i;
    ajob job[MAX_MODES];
    int nm = 0;
    for (int i = 0; i <= nlv; i++, nm++) {
        out[nm] = eng__aligned_alloc(64, qn * 4);
        job[nm] = (ajob){.k = i < nlv ? lv[i] : NULL, .P = P, .q = q, .kc = kc, .vc = vc, .out = out[nm],
                         .blk = blk, .last = last, .scratch = scr};
    }
    double t[MAX_MODES][64];
    for (int m = 0; m < nm; m++) eng__pool_run(pool, ajob_run, &job[m]);
    for (int r = 0; r < g_reps; r++)
        for (int m = 0; m < nm; m++) {
            double t0 = now();
            eng__pool_run(pool, ajob_run, &job[m]);
            t[m][r] = now() - t0;
        }
    const double flop = 4.0 * A_HD * A_NHEAD * ((double)P * (P + 1) / 2);
    double best_ours = 0, dmax = 0;
    printf("attn  P=%-6d", P);
    for (int m = 0; m < nm; m++) {
        double g = flop / mach_median(t[m], g_reps) / 1e9;
        printf(" %11.1f", g);
        if (m < nlv) best_ours = g > best_ours ? g : best_ours;
        else printf(" %8.2fx", g / best_ours);
    }
    for (size_t i = 0; i < qn; i++) {
        double d = fabs((double)out[nm - 1][i] - out[0][i]);
        dmax = d > dmax ? d : dmax;
    }
    printf("   max |blas - %s| %.2e\n", lv[0]->name, dmax);
    fflush(stdout);
    for (int m = 0; m < nm; m++) eng__aligned_free(out[m]);
    for (int i = 0; i < nth; i++) eng__aligned_free(scr[i]);
    eng__aligned_free(q), eng__aligned_free(kc), eng__aligned_free(vc);
    free(blk), free(last);
}

static void bench_attn(eng__pool *pool, const eng__kernels *const *lv, int nlv, const char *plist)
{
    printf("\n%-12s", "attention");
    for (int i = 0; i < nlv; i++)
        printf(" %11s", lv[i]->name);
    printf(" %11s %9s\n", "blas-sgemm", "blas/ours");
    uint64_t seed = 12345;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", plist);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int32_t P = atoi(tok);
        if (P > 0) bench_attn_one(pool, lv, nlv, P, &seed);
    }
}

int main(int argc, char **argv)
{
    int nth = 1, opt;
    const char *level = NULL, *plist = "512,1024,2048";
    bool weights = true, attn = true;
    while ((opt = getopt(argc, argv, "t:r:l:cWAP:")) != -1) {
        switch (opt) {
        case 't': nth = atoi(optarg); break;
        case 'r': g_reps = atoi(optarg); break;
        case 'l': level = optarg; break;
        case 'c': g_cpu_time = true; break;
        case 'W': attn = false; break;
        case 'A': weights = false; break;
        case 'P': plist = optarg; break;
        default:
            fprintf(stderr, "usage: bench-blas [-t threads] [-r reps] [-l avx2|avx512] [-c] "
                            "[-W weights only | -A attention only] [-P 512,1024,2048]\n");
            return 2;
        }
    }
    if (nth < 1 || nth > 64 || g_reps < 1 || g_reps > 64) {
        fprintf(stderr, "bench-blas: bad -t or -r\n");
        return 2;
    }
    openblas_set_num_threads(1);
    const eng__kernels *lv[2];
    int nlv = 0;
    for (int l = ENG_KL_AVX2; l <= ENG_KL_AVX512; l++) {
        const eng__kernels *k = eng__kernels_get((eng__kernel_level)l);
        if (k && (!level || !strcmp(level, k->name))) lv[nlv++] = k;
    }
    if (!nlv) {
        fprintf(stderr, "bench-blas: no kernel level %s on this CPU\n", level ? level : "avx2/avx512");
        return 1;
    }
    eng__pool *pool;
    if (eng__pool_new(nth, &pool) != ENG_OK) return 1;
    print_machine(nth);
    if (weights) bench_weights(pool, lv, nlv);
    if (attn) bench_attn(pool, lv, nlv, plist);
    eng__pool_free(pool);
    return 0;
}
