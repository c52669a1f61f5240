/*
 * stress_engine.c - the engine's threaded parts under load, as a plain
 * program (Criterion's sandbox cannot run under ThreadSanitizer). Built and
 * run by ctest in every build; it is the TSan CI job's engine test:
 *   - the compute pool: many short jobs with barriers, 1..3 threads;
 *   - the scheduler: 4 client threads submitting, cancelling and releasing
 *     requests concurrently (with OrthoRank settings and prefix reuse mixed
 *     in), stats read concurrently, then drain and free with work in flight.
 * Every request must end with exactly one DONE event. Exit status 0 = pass.
 *   stress_engine MODEL.gguf [seconds]
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define CHECK(c)                                                                 \
    do {                                                                         \
        if (!(c)) {                                                              \
            fprintf(stderr, "stress_engine: check failed: %s (line %d)\n", #c, __LINE__); \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

/* ---- pool ---- */

typedef struct {
    eng__pool *p;
    atomic_long sum;
    long slots[4];
} pool_job;

static void pool_fn(int ith, int nth, void *arg)
{
    pool_job *j = arg;
    for (int r = 0; r < 10; r++) {
        j->slots[ith] = r; /* plain writes, ordered by the barrier */
        eng__pool_barrier(j->p);
        long s = 0;
        for (int t = 0; t < nth; t++) s += j->slots[t];
        atomic_fetch_add(&j->sum, s);
        eng__pool_barrier(j->p);
    }
}

static void stress_pool(void)
{
    for (int n = 1; n <= 3; n++) {
        pool_job j = {0};
        CHECK(eng__pool_new(n, &j.p) == ENG_OK);
        for (int k = 0; k < 300; k++) eng__pool_run(j.p, pool_fn, &j);
        long per_round = 0;
        for (int r = 0; r < 10; r++) per_round += (long)r * n * n;
        CHECK(atomic_load(&j.sum) == 300 * per_round);
        eng__pool_free(j.p);
    }
}

/* ---- scheduler ---- */

typedef struct {
    atomic_int tokens, done;
} req_state;

static atomic_long total_done, total_submitted;

static void on_event(const eng_event *ev, void *user)
{
    req_state *st = user;
    if (ev->type == ENG_EVENT_TOKEN) atomic_fetch_add(&st->tokens, 1);
    if (ev->type == ENG_EVENT_DONE) {
        CHECK(atomic_fetch_add(&st->done, 1) == 0);
        atomic_fetch_add(&total_done, 1);
    }
}

typedef struct {
    eng_sched *s;
    int id;
    double until;
} client_arg;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *client(void *a)
{
    client_arg *ca = a;
    uint64_t rng = 0x1234u + (uint64_t)ca->id;
    int32_t prompt[40];
    for (int iter = 0; iter < 200 && now_s() < ca->until; iter++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        int n = 3 + (int)((rng >> 33) % 30);
        prompt[0] = 1;
        for (int i = 1; i < n; i++) prompt[i] = 300 + (int)(((rng >> 20) + (uint64_t)i * 7) % 200);
        req_state *st = calloc(1, sizeof *st);
        eng_request_params p = {0};
        p.prompt = prompt;
        p.n_prompt = (size_t)n;
        p.max_tokens = 5 + (int)((rng >> 40) % 20);
        p.sampling = eng_sampler_default_params();
        p.sampling.seed = rng;
        p.n_logprobs = (int)((rng >> 45) % 3) - 1;
        p.ignore_eos = true;
        p.on_event = on_event;
        p.user = st;
        eng_orthorank_params orp = eng_orthorank_default_params();
        if ((rng >> 50) % 3 == 0) {
            orp.sparsity = 0.3f;
            orp.min_tokens = 4;
            p.orthorank = &orp;
        }
        eng_request *r = NULL;
        eng_status rc = eng_sched_submit(ca->s, &p, &r);
        if (rc == ENG_EBUSY || rc == ENG_ESTOPPED) {
            free(st);
            usleep(1000);
            continue;
        }
        CHECK(rc == ENG_OK);
        atomic_fetch_add(&total_submitted, 1);
        if ((rng >> 55) % 4 == 0) {
            usleep((useconds_t)((rng >> 30) % 3000));
            eng_request_cancel(r);
        }
        /* Its DONE event within a deadline in seconds (a count of quick
         * sleeps would depend on the machine's and the sanitizer's speed). */
        for (double give_up = now_s() + 300; !atomic_load(&st->done) && now_s() < give_up;) usleep(500);
        CHECK(atomic_load(&st->done) == 1);
        eng_request_release(r);
        free(st);
        eng_sched_stats ss;
        eng_sched_get_stats(ca->s, &ss);
        CHECK(ss.kv_used <= ss.kv_total);
    }
    return NULL;
}

static void stress_sched(const char *model, double seconds)
{
    char err[256] = "";
    eng_model *m = NULL;
    CHECK(eng_model_load(model, NULL, &m, err, sizeof err) == ENG_OK);
    eng_sched_params sp = eng_sched_default_params();
    sp.n_ctx = 128;
    sp.n_seq_max = 4;
    sp.n_batch_max = 32;
    sp.max_queue = 4;
    sp.n_threads = 2;
    eng_sched *s = NULL;
    CHECK(eng_sched_new(m, &sp, &s) == ENG_OK);
    pthread_t th[4];
    client_arg ca[4];
    double until = now_s() + seconds;
    for (int i = 0; i < 4; i++) {
        ca[i] = (client_arg){s, i, until};
        CHECK(pthread_create(&th[i], NULL, client, &ca[i]) == 0);
    }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    CHECK(atomic_load(&total_done) == atomic_load(&total_submitted));

    /* free with requests in flight: every one still gets its DONE */
    req_state st[3] = {{0}};
    eng_request *r[3];
    int32_t prompt[] = {1, 403, 407, 261};
    for (int i = 0; i < 3; i++) {
        eng_request_params p = {0};
        p.prompt = prompt;
        p.n_prompt = 4;
        p.max_tokens = 100;
        p.sampling = eng_sampler_default_params();
        p.n_logprobs = -1;
        p.ignore_eos = true;
        p.on_event = on_event;
        p.user = &st[i];
        CHECK(eng_sched_submit(s, &p, &r[i]) == ENG_OK);
    }
    eng_sched_drain(s);
    eng_sched_free(s);
    for (int i = 0; i < 3; i++) {
        CHECK(atomic_load(&st[i].done) == 1);
        eng_request_release(r[i]);
    }
    eng_model_free(m);
    printf("stress_engine: %ld requests, all accounted for\n", atomic_load(&total_submitted));
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: stress_engine MODEL.gguf [seconds]\n");
        return 2;
    }
    double secs = argc > 2 ? atof(argv[2]) : 10;
    stress_pool();
    stress_sched(argv[1], secs);
    printf("1 passed, 0 failed\n");
    return 0;
}
