/*
 * bench-embed.c - what embeddings and n > 1 cost on the engine's scheduler:
 *
 *   bench-embed [-r RUNS] [-t THREADS] [-i INPUTS] [-l LEN] [-g GENS] MODEL.gguf
 *
 * 1. embeddings per second: INPUTS (64) pooling requests of LEN (128)
 *    tokens submitted at once (eng_sched_submit_many), timed from submit to
 *    the last DONE; alone, then while GENS (4) greedy generation streams
 *    decode (their decode tokens/s over the same window is printed too);
 * 2. KV memory of n = 4: the peak of the blocks actually held (kv_held)
 *    while a family of 4 choices of one LEN-token prompt generates 64
 *    tokens each, against 4 separate requests of that prompt (prefix cache
 *    off), in tokens and bytes (K and V in the default cache types, every layer).
 * Medians of RUNS. Timing claims live here, never in unit tests.
 */
#include "model.h"
#include "common/machine.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    atomic_int done;     /* DONE events seen */
    atomic_long tokens;  /* TOKEN events seen */
} counter;

static void on_event(const eng_event *ev, void *user)
{
    counter *c = user;
    if (ev->type == ENG_EVENT_DONE) atomic_fetch_add(&c->done, 1);
    else if (ev->type == ENG_EVENT_TOKEN) atomic_fetch_add(&c->tokens, 1);
}

static void wait_done(counter *c, int n)
{
    while (atomic_load(&c->done) < n) usleep(200);
}

static eng_request_params base(const int32_t *prompt, int32_t len, counter *c)
{
    eng_request_params p = {0};
    p.prompt = prompt;
    p.n_prompt = (size_t)len;
    p.n_logprobs = -1;
    p.sampling = eng_sampler_default_params();
    p.sampling.temperature = 0;
    p.ignore_eos = true;
    p.on_event = on_event;
    p.user = c;
    return p;
}

/* Seconds for n pooling requests (prompts: n rows of len). */
static double embed_once(eng_sched *s, int32_t *prompts, int n, int32_t len)
{
    counter c = {0};
    eng_request_params *ps = calloc((size_t)n, sizeof *ps);
    eng_request **rs = calloc((size_t)n, sizeof *rs);
    for (int i = 0; i < n; i++) {
        ps[i] = base(prompts + (size_t)i * len, len, &c);
        ps[i].pooling = ENG_POOLING_MEAN;
    }
    double t0 = eng__now();
    if (eng_sched_submit_many(s, ps, (size_t)n, rs) != ENG_OK) {
        fprintf(stderr, "bench-embed: submit refused (raise the queue?)\n");
        exit(1);
    }
    wait_done(&c, n);
    double t = eng__now() - t0;
    for (int i = 0; i < n; i++) eng_request_release(rs[i]);
    free(ps);
    free(rs);
    return t;
}

/* The peak kv_held (tokens) while k requests of prompt generate 64 tokens
 * each: one family (fork) or k separate requests. */
static int32_t kv_peak(eng_sched *s, const int32_t *prompt, int32_t len, int k, bool fork)
{
    counter c = {0};
    eng_request_params ps[8];
    eng_request *rs[8];
    for (int i = 0; i < k; i++) {
        ps[i] = base(prompt, len, &c);
        ps[i].max_tokens = 64;
        ps[i].sampling.temperature = 0.8f;
        ps[i].sampling.seed = (uint64_t)i + 1;
        ps[i].fork_of = fork && i ? 1 : 0;
    }
    if (eng_sched_submit_many(s, ps, (size_t)k, rs) != ENG_OK) exit(1);
    int32_t peak = 0;
    eng_sched_stats st;
    while (atomic_load(&c.done) < k) {
        eng_sched_get_stats(s, &st);
        if (st.kv_held > peak) peak = st.kv_held;
        usleep(100);
    }
    for (int i = 0; i < k; i++) eng_request_release(rs[i]);
    return peak;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int runs = 3, threads = 2, n_in = 64, len = 128, gens = 4, opt;
    while ((opt = getopt(argc, argv, "r:t:i:l:g:")) != -1) {
        if (opt == 'r') runs = atoi(optarg);
        else if (opt == 't') threads = atoi(optarg);
        else if (opt == 'i') n_in = atoi(optarg);
        else if (opt == 'l') len = atoi(optarg);
        else if (opt == 'g') gens = atoi(optarg);
        else return 2;
    }
    if (optind >= argc || runs < 1 || n_in < 1 || len < 2 || gens < 0 || gens > 8) {
        fprintf(stderr, "usage: bench-embed [-r RUNS] [-t THREADS] [-i INPUTS] [-l LEN] [-g GENS] MODEL.gguf\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* each line as it is measured */
    eng_model_params mp = eng_model_default_params();
    mp.n_threads = threads;
    eng_model *m;
    char err[512];
    if (eng_model_load(argv[optind], &mp, &m, err, sizeof err) != ENG_OK) {
        fprintf(stderr, "bench-embed: %s\n", err);
        return 1;
    }
    char cpu[128];
    mach_cpu_name(cpu, sizeof cpu);
    printf("cpu: %s; kernels: %s; threads %d\n", cpu, eng_kernel_name(), threads);
    eng_sched_params sp = eng_sched_default_params();
    sp.n_seq_max = 8 + gens;
    sp.n_ctx = len + 512;
    sp.max_queue = n_in + 16;
    sp.prefix_cache = false;
    eng_sched *s;
    if (eng_sched_new(m, &sp, &s) != ENG_OK) return 1;
    int32_t *prompts = malloc((size_t)n_in * len * sizeof *prompts);
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < n_in * len; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        prompts[i] = i % len == 0 ? 1 : 3 + (int32_t)(x % (uint64_t)(m->n_vocab - 3));
    }
    double *alone = calloc((size_t)runs, sizeof *alone), *busy = calloc((size_t)runs, sizeof *busy);
    double *gen_tps = calloc((size_t)runs, sizeof *gen_tps);
    embed_once(s, prompts, 4, len); /* warm-up */
    for (int r = 0; r < runs; r++) {
        alone[r] = n_in / embed_once(s, prompts, n_in, len);
        counter gc = {0};
        eng_request *gr[8];
        for (int g = 0; g < gens; g++) {
            eng_request_params p = base(prompts + (size_t)g * len, 16, &gc);
            p.max_tokens = 100000;
            if (eng_sched_submit(s, &p, &gr[g]) != ENG_OK) return 1;
        }
        while (atomic_load(&gc.tokens) < gens) usleep(200); /* all decoding */
        long t0 = atomic_load(&gc.tokens);
        double w0 = eng__now();
        double t = embed_once(s, prompts, n_in, len);
        gen_tps[r] = (double)(atomic_load(&gc.tokens) - t0) / (eng__now() - w0);
        busy[r] = n_in / t;
        for (int g = 0; g < gens; g++) eng_request_cancel(gr[g]);
        wait_done(&gc, gens);
        for (int g = 0; g < gens; g++) eng_request_release(gr[g]);
        printf("run %d: alone %.2f embeddings/s, beside %d streams %.2f (their decode %.1f tokens/s)\n", r + 1,
               alone[r], gens, busy[r], gen_tps[r]);
    }
    qsort(alone, (size_t)runs, sizeof *alone, cmp_d);
    qsort(busy, (size_t)runs, sizeof *busy, cmp_d);
    qsort(gen_tps, (size_t)runs, sizeof *gen_tps, cmp_d);
    printf("embeddings/s (%d inputs x %d tokens, mean pooling): alone %.2f; beside %d generation streams %.2f "
           "(their decode: %.1f tokens/s)\n", n_in, len, alone[runs / 2], gens, busy[runs / 2], gen_tps[runs / 2]);
    const double per_tok = (double)eng_kv_bytes_per_token(m, sp.type_k, sp.type_v);
    int32_t fam = kv_peak(s, prompts, len, 4, true), sep = kv_peak(s, prompts, len, 4, false);
    printf("KV held, 4 choices of a %d-token prompt + 64 tokens each: n=4 family %d tokens (%.1f MiB), "
           "4 separate requests %d tokens (%.1f MiB): %.2fx\n", len, fam, fam * per_tok / 1048576.0, sep,
           sep * per_tok / 1048576.0, (double)sep / fam);
    eng_sched_free(s);
    eng_model_free(m);
    free(prompts);
    free(alone);
    free(busy);
    free(gen_tps);
    return 0;
}
