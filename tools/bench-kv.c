/*
 * bench-kv.c - the KV cache types side by side: what a token of KV costs in
 * memory, how many sequences of a given length fit in a KV budget, and
 * decode speed at given context positions, for each (K type, V type) pair,
 * measured in one run.
 *
 *   bench-kv [-r RUNS] [-n GEN_TOKENS] [-t THREADS] [-P 128,1024,2048] [-G GIB] MODEL.gguf
 *
 * For each pair (F32/F32, F16/F16, Q8_0/Q8_0 and the mixed F16 K / Q8_0 V) a
 * context holds one sequence; every run, for each position P and each pair
 * in turn (so the pairs see the same machine state), the sequence is set to
 * P positions (set_len) and GEN_TOKENS tokens are decoded one per call:
 * decode tokens/s (median of RUNS; wall time, or with -t 1 the thread's CPU
 * time, which on a shared machine leaves out the time spent descheduled). A
 * second table times the attention kernel alone for one decode token at P
 * (every layer and kv head, one thread, the kernel level in use; thread CPU
 * time, fastest of 21 sweeps): the part
 * the cache type changes, without the weight products' noise. The level is
 * ORTHOSERVE_ISA's, else the best the CPU has. Timing claims live here,
 * never in unit tests.
 */
#include "context.h"
#include "common/machine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_POS 8
static const struct {
    eng_kv_type k, v;
} PAIRS[] = {{ENG_KV_F32, ENG_KV_F32}, {ENG_KV_F16, ENG_KV_F16}, {ENG_KV_Q8_0, ENG_KV_Q8_0}, {ENG_KV_F16, ENG_KV_Q8_0}};
#define N_PAIRS ((int)(sizeof PAIRS / sizeof PAIRS[0]))

static void usage(void)
{
    fprintf(stderr, "usage: bench-kv [-r RUNS] [-n GEN_TOKENS] [-t THREADS] [-P 128,1024,2048] [-G GIB] MODEL.gguf\n");
    exit(2);
}

static void decode_or_die(eng_context *c, const int32_t *tok, int n, int pos0)
{
    int32_t pos[512], seq[512];
    int8_t want[512];
    for (int i = 0; i < n; i++) pos[i] = pos0 + i, seq[i] = 0, want[i] = i == n - 1;
    eng_batch b = {n, tok, pos, seq, want};
    eng_status st = eng_decode(c, &b);
    if (st != ENG_OK) {
        fprintf(stderr, "bench-kv: decode failed: %s\n", eng_strerror(st));
        exit(1);
    }
}

/* Sequence 0 cut back or extended to p positions. Extending writes random
 * keys and values (uniform in [-1, 1), converted to the cache's types)
 * straight into newly taken blocks: decode time does not depend on the
 * values, and this spares a prefill of thousands of tokens per pair. */
static void set_len(eng_context *c, int32_t p)
{
    eng_seq_truncate(c, 0, p);
    const int hd = c->m->head_dim;
    float k[1024], v[1024];
    uint64_t s = 99;
    for (int32_t pos = c->seq_len[0]; pos < p; pos++) {
        if (pos % KV_BLOCK == 0) { /* a block as forward.c takes one: one reference */
            const int32_t b = c->free_blocks[--c->n_free];
            c->blk_ref[b] = 1;
            c->seq_blocks[pos / KV_BLOCK] = b;
        }
        const size_t blk = (size_t)c->seq_blocks[pos / KV_BLOCK];
        for (int il = 0; il < c->m->n_layer; il++)
            for (int kh = 0; kh < c->m->n_head_kv; kh++) {
                for (int d = 0; d < hd; d++) {
                    s = s * 6364136223846793005ull + 1442695040888963407ull;
                    k[d] = (float)((s >> 40) & 0xffff) / 32768.0f - 1.0f;
                    v[d] = (float)((s >> 20) & 0xffff) / 32768.0f - 1.0f;
                }
                uint8_t *kb = c->k_cache + ((size_t)il * c->n_blocks + blk) * c->k_blk + (size_t)kh * c->k_head;
                uint8_t *vb = c->v_cache + ((size_t)il * c->n_blocks + blk) * c->v_blk + (size_t)kh * c->v_head;
                eng__kv_put_k(c->type_k, kb, hd, pos % KV_BLOCK, k);
                eng__kv_put_v(c->type_v, vb, hd, pos % KV_BLOCK, v);
            }
        c->seq_len[0] = pos + 1;
    }
}

static double thread_cpu(void);

/* Seconds of n single-token decode steps from position p: wall time, or with
 * one thread (the whole step runs on this thread) its CPU time. */
static double decode_from(eng_context *c, const int32_t *tok, int p, int n)
{
    set_len(c, p);
    const bool cpu = c->n_threads == 1;
    double t0 = cpu ? thread_cpu() : eng__now();
    for (int g = 0; g < n; g++) decode_or_die(c, tok + p + g, 1, p + g);
    return (cpu ? thread_cpu() : eng__now()) - t0;
}

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Microseconds of the attention of one decode token at position p over every
 * layer and kv head (one thread; its CPU time, so time spent descheduled on a
 * shared machine does not count; the fastest of reps sweeps). */
static double attn_us(const eng_context *c, int p, int reps)
{
    const eng_model *m = c->m;
    const int hd = m->head_dim, n_rep = m->n_head / m->n_head_kv;
    float *q = malloc(sizeof(float) * (size_t)n_rep * hd), *out = malloc(sizeof(float) * (size_t)n_rep * hd);
    float *scr = eng__aligned_alloc(64, sizeof(float) * ENG_ATTN_SCRATCH(hd));
    uint64_t s = 7;
    for (int i = 0; i < n_rep * hd; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        q[i] = (float)((s >> 40) & 0xffff) / 65536.0f - 0.5f;
    }
    const int32_t last = p;
    double t[64];
    for (int r = 0; r < reps; r++) {
        double t0 = thread_cpu();
        for (int il = 0; il < m->n_layer; il++)
            for (int kh = 0; kh < m->n_head_kv; kh++) {
                eng__attn_args a = {.hd = hd, .n_rep = n_rep, .nq = 1, .q = q, .out = out, .q_stride = (size_t)n_rep * hd,
                                    .last = &last,
                                    .k = c->k_cache + (size_t)il * c->n_blocks * c->k_blk + (size_t)kh * c->k_head,
                                    .v = c->v_cache + (size_t)il * c->n_blocks * c->v_blk + (size_t)kh * c->v_head,
                                    .type_k = c->type_k, .type_v = c->type_v, .blk = c->seq_blocks,
                                    .k_stride = c->k_blk, .v_stride = c->v_blk, .scale = 1.0f / sqrtf((float)hd),
                                    .scratch = scr};
                c->kern->attn(&a);
            }
        t[r] = (thread_cpu() - t0) * 1e6;
    }
    free(q);
    free(out);
    eng__aligned_free(scr);
    double best = t[0];
    for (int r = 1; r < reps; r++) best = t[r] < best ? t[r] : best;
    return best;
}

/* Bytes per token, MiB per sequence of seq_len, and sequences of seq_len in gib GiB, per pair. */
static void memory_table(const eng_model *m, int seq_len, double gib)
{
    printf("| K | V | bytes / token | MiB / %d-token sequence | %d-token sequences in %.0f GiB |\n|---|---|---|---|---|\n",
           seq_len, seq_len, gib);
    for (int i = 0; i < N_PAIRS; i++) {
        const size_t bpt = eng_kv_bytes_per_token(m, PAIRS[i].k, PAIRS[i].v);
        const double per_seq = (double)bpt * seq_len;
        printf("| %s | %s | %zu | %.1f | %.0f |\n", eng_kv_type_name(PAIRS[i].k), eng_kv_type_name(PAIRS[i].v), bpt,
               per_seq / 1048576.0, floor(gib * 1073741824.0 / per_seq));
    }
    printf("\n");
}

/* One table: a row per pair, a column per position, value[pair][pos] with the ratio to the first pair. */
static void speed_table(const char *what, const int *P, int n_pos, double v[][MAX_POS], const char *unit)
{
    printf("| K | V |");
    for (int j = 0; j < n_pos; j++) printf(" %s at %d (%s) | vs f32 |", what, P[j], unit);
    printf("\n|---|---|");
    for (int j = 0; j < n_pos; j++) printf("---|---|");
    printf("\n");
    for (int i = 0; i < N_PAIRS; i++) {
        printf("| %s | %s |", eng_kv_type_name(PAIRS[i].k), eng_kv_type_name(PAIRS[i].v));
        for (int j = 0; j < n_pos; j++) printf(" %.2f | %.3fx |", v[i][j], v[i][j] / v[0][j]);
        printf("\n");
    }
    printf("\n");
}

static int parse_list(const char *s, int *out, int max)
{
    int n = 0;
    for (char *e; *s && n < max; s = *e ? e + 1 : e) {
        out[n++] = (int)strtol(s, &e, 10);
        if (e == s) return 0;
    }
    return n;
}

int main(int argc, char **argv)
{
    int runs = 5, n_gen = 16, threads = 2, P[MAX_POS] = {128, 1024, 2048}, n_pos = 3, i0 = 1;
    double gib = 4;
    for (; i0 + 1 < argc && argv[i0][0] == '-'; i0 += 2) {
        const char *o = argv[i0], *v = argv[i0 + 1];
        if (!strcmp(o, "-r")) runs = atoi(v);
        else if (!strcmp(o, "-n")) n_gen = atoi(v);
        else if (!strcmp(o, "-t")) threads = atoi(v);
        else if (!strcmp(o, "-G")) gib = atof(v);
        else if (!strcmp(o, "-P")) n_pos = parse_list(v, P, MAX_POS);
        else usage();
    }
    if (i0 != argc - 1 || runs < 1 || runs > 64 || n_gen < 1 || threads < 1 || n_pos < 1 || gib <= 0) usage();
    int p_max = 0;
    for (int j = 0; j < n_pos; j++) p_max = P[j] > p_max ? P[j] : p_max;
    eng__kernel_level lvl;
    char err[512] = "";
    if (!mach_level(&lvl, err, sizeof err)) {
        fprintf(stderr, "bench-kv: %s\n", err);
        return 1;
    }
    mach_print_cpu(stdout, lvl);
    eng_model_params mp = eng_model_default_params();
    mp.n_threads = threads;
    eng_model *m = NULL;
    if (eng_model_load(argv[i0], &mp, &m, err, sizeof err) != ENG_OK) {
        fprintf(stderr, "bench-kv: %s: %s\n", argv[i0], err);
        return 1;
    }
    printf("model %s: %d layers, %d kv heads of %d; %d threads, %d decode tokens per measurement, median of %d runs\n\n",
           argv[i0], m->n_layer, m->n_head_kv, m->head_dim, threads, n_gen, runs);
    memory_table(m, p_max, gib);
    fflush(stdout);
    eng_context *c[N_PAIRS];
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)(p_max + n_gen));
    for (int i = 0; i < p_max + n_gen; i++) tok[i] = 1 + (int32_t)(((int64_t)i * 7919) % (m->n_vocab - 1));
    for (int i = 0; i < N_PAIRS; i++) {
        eng_context_params cp = eng_context_default_params();
        cp.n_ctx = p_max + n_gen;
        cp.n_batch_max = 256;
        cp.n_threads = threads;
        cp.type_k = PAIRS[i].k;
        cp.type_v = PAIRS[i].v;
        if (eng_context_new(m, &cp, &c[i]) != ENG_OK) {
            fprintf(stderr, "bench-kv: cannot create a context\n");
            return 1;
        }
        decode_or_die(c[i], tok, 16, 0); /* warm up: pages in the weights */
    }
    static double tps[MAX_POS][N_PAIRS][64], tok_s[N_PAIRS][MAX_POS], att[N_PAIRS][MAX_POS];
    for (int r = 0; r < runs; r++)
        for (int j = 0; j < n_pos; j++)
            for (int k = 0; k < N_PAIRS; k++) {
                const int i = (k + r) % N_PAIRS; /* the order rotates between runs */
                tps[j][i][r] = n_gen / decode_from(c[i], tok, P[j], n_gen);
            }
    for (int j = 0; j < n_pos; j++)
        for (int i = 0; i < N_PAIRS; i++) {
            tok_s[i][j] = mach_median(tps[j][i], runs);
            set_len(c[i], P[j] + 1);
            att[i][j] = attn_us(c[i], P[j], 21);
        }
    printf("kernels %s; decode timed in %s\n\n", eng_kernel_name(),
           threads == 1 ? "thread CPU time" : "wall time");
    fflush(stdout);
    speed_table("decode", P, n_pos, tok_s, "tok/s");
    speed_table("attention", P, n_pos, att, "us/token");
    for (int i = 0; i < N_PAIRS; i++) eng_context_free(c[i]);
    free(tok);
    eng_model_free(m);
    return 0;
}
