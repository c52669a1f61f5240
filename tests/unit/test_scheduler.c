/*
 * test_scheduler.c - continuous batching on stories260K:
 *   - 16 concurrent greedy requests each produce exactly their golden
 *     (single-request) continuation;
 *   - sampling with a seed gives the same tokens alone and in a crowd;
 *   - a full queue says ENG_EBUSY, a prompt longer than the context ENG_ECTXFULL;
 *   - cancelling frees the KV at once and ends with a DONE event;
 *   - prompt log-probabilities (echo) equal a direct forward pass's;
 *   - drain refuses new work; free cancels the live requests.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "orthoserve/engine.h"
#include "testutil.h"

#define MAXTOK 256

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t tokens[MAXTOK];
    float prompt_lp[MAXTOK];
    int n_tokens, n_prompt_ev;
    bool done;
    eng_finish_reason finish;
    eng_status status;
    int n_done_events;
    int32_t n_cached;
} collector;

static void on_event(const eng_event *ev, void *user)
{
    collector *c = user;
    pthread_mutex_lock(&c->mu);
    if (ev->type == ENG_EVENT_TOKEN) {
        cr_assert_eq(ev->index, c->n_tokens, "token events arrive in order");
        if (c->n_tokens < MAXTOK) c->tokens[c->n_tokens] = ev->token;
        c->n_tokens++;
    } else if (ev->type == ENG_EVENT_PROMPT) {
        if (ev->index < MAXTOK) c->prompt_lp[ev->index] = ev->logprob;
        c->n_prompt_ev++;
    } else {
        c->done = true;
        c->finish = ev->finish;
        c->status = ev->status;
        c->n_cached = ev->n_cached;
        c->n_done_events++;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
}

static void coll_init(collector *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
}

static void coll_wait(collector *c)
{
    pthread_mutex_lock(&c->mu);
    while (!c->done) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

static eng_model *load(void)
{
    char err[256] = "";
    eng_model *m = NULL;
    cr_assert_eq(eng_model_load(td_path("models/stories260K.gguf"), NULL, &m, err, sizeof err), ENG_OK, "%s", err);
    return m;
}

static eng_request_params greedy_params(const int32_t *prompt, size_t n, int32_t max_tokens, collector *c)
{
    eng_request_params p = {0};
    p.prompt = prompt;
    p.n_prompt = n;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    p.sampling = eng_sampler_default_params();
    p.sampling.temperature = 0;
    p.n_logprobs = -1;
    p.on_event = on_event;
    p.user = c;
    return p;
}

static int32_t *json_ids(json_t *a, size_t *n)
{
    *n = json_array_size(a);
    int32_t *ids = malloc((*n + 1) * sizeof *ids);
    for (size_t i = 0; i < *n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return ids;
}

Test(scheduler, sixteen_concurrent_greedy_match_golden, .timeout = 120)
{
    eng_model *m = load();
    eng_sched_params sp = eng_sched_default_params();
    sp.n_seq_max = 16;
    sp.n_batch_max = 64; /* small budget: prompts are chunked next to decoding sequences */
    sp.n_ctx = 128;
    eng_sched *s;
    cr_assert_eq(eng_sched_new(m, &sp, &s), ENG_OK);
    json_t *g = td_json("golden/stories260K.json");
    json_t *greedy = json_object_get(g, "greedy");
    enum { N = 16 };
    collector col[N];
    eng_request *req[N];
    int32_t *prompts[N], *expect[N];
    size_t np[N], ne[N];
    for (int i = 0; i < N; i++) {
        json_t *G = json_array_get(greedy, (size_t)(i % json_array_size(greedy)));
        prompts[i] = json_ids(json_object_get(G, "prompt_tokens"), &np[i]);
        expect[i] = json_ids(json_object_get(G, "tokens"), &ne[i]);
        coll_init(&col[i]);
        eng_request_params p = greedy_params(prompts[i], np[i], (int32_t)ne[i], &col[i]);
        cr_assert_eq(eng_sched_submit(s, &p, &req[i]), ENG_OK);
    }
    for (int i = 0; i < N; i++) {
        coll_wait(&col[i]);
        cr_assert_eq(col[i].finish, ENG_FINISH_LENGTH);
        cr_assert_eq((size_t)col[i].n_tokens, ne[i]);
        for (size_t k = 0; k < ne[i]; k++)
            cr_assert_eq(col[i].tokens[k], expect[i][k], "request %d token %zu", i, k);
        cr_assert_eq(col[i].n_done_events, 1);
        eng_request_release(req[i]);
        free(prompts[i]);
        free(expect[i]);
    }
    eng_sched_stats st;
    for (int tries = 0; tries < 100; tries++) { /* stats are published after the step */
        eng_sched_get_stats(s, &st);
        if (st.kv_used == 0 && st.running == 0) break;
        usleep(10000);
    }
    cr_assert_eq(st.kv_used, 0, "all KV returned");
    cr_assert_eq(st.running, 0);
    json_decref(g);
    eng_sched_free(s);
    eng_model_free(m);
}

static void run_sampled(eng_model *m, int crowd, int32_t *out, int *n_out)
{
    eng_sched_params sp = eng_sched_default_params();
    sp.n_seq_max = 8;
    sp.n_ctx = 128;
    eng_sched *s;
    cr_assert_eq(eng_sched_new(m, &sp, &s), ENG_OK);
    int32_t prompt[] = {1, 403, 407, 261, 378};
    collector c[8];
    eng_request *r[8];
    for (int i = 0; i <= crowd; i++) {
        coll_init(&c[i]);
        eng_request_params p = greedy_params(prompt, 5, 40, &c[i]);
        p.sampling.temperature = 0.9f;
        p.sampling.top_k = 0;
        p.sampling.top_p = 1;
        p.sampling.min_p = 0;
        p.sampling.seed = i == 0 ? 1234 : (uint64_t)(99 + i);
        cr_assert_eq(eng_sched_submit(s, &p, &r[i]), ENG_OK);
    }
    for (int i = 0; i <= crowd; i++) coll_wait(&c[i]);
    memcpy(out, c[0].tokens, sizeof(int32_t) * (size_t)c[0].n_tokens);
    *n_out = c[0].n_tokens;
    for (int i = 0; i <= crowd; i++) eng_request_release(r[i]);
    eng_sched_free(s);
}

Test(scheduler, seeded_sampling_same_alone_and_in_a_crowd, .timeout = 120)
{
    eng_model *m = load();
    int32_t a[MAXTOK], b[MAXTOK];
    int na, nb;
    run_sampled(m, 0, a, &na);
    run_sampled(m, 6, b, &nb);
    cr_assert_eq(na, nb);
    for (int i = 0; i < na; i++) cr_assert_eq(a[i], b[i], "token %d", i);
    eng_model_free(m);
}

Test(scheduler, queue_bound_and_context_limits, .timeout = 60)
{
    eng_model *m = load();
    eng_sched_params sp = eng_sched_default_params();
    sp.n_seq_max = 1;
    sp.max_queue = 2;
    sp.n_ctx = 64;
    eng_sched *s;
    cr_assert_eq(eng_sched_new(m, &sp, &s), ENG_OK);
    int32_t prompt[70];
    for (int i = 0; i < 70; i++) prompt[i] = i == 0 ? 1 : 300 + i;
    collector c[6];
    eng_request *r[6] = {0};
    coll_init(&c[0]);
    eng_request_params p = greedy_params(prompt, 64, 1, &c[0]);
    cr_assert_eq(eng_sched_submit(s, &p, &r[0]), ENG_ECTXFULL, "64 prompt tokens + 1 > n_ctx 64");
    p = greedy_params(prompt, 70, 0, &c[0]);
    cr_assert_eq(eng_sched_submit(s, &p, &r[0]), ENG_ECTXFULL);
    p = greedy_params(prompt, 2, 5, &c[0]);
    p.prompt = (int32_t[]){1, 99999};
    cr_assert_eq(eng_sched_submit(s, &p, &r[0]), ENG_EINVAL, "token id out of range");
    /* one running (long), two queued, the fourth is refused */
    int accepted = 0, busy = 0;
    for (int i = 0; i < 6; i++) {
        coll_init(&c[i]);
        p = greedy_params(prompt, 5, 50, &c[i]);
        eng_status st = eng_sched_submit(s, &p, &r[i]);
        if (st == ENG_OK) accepted++;
        else if (st == ENG_EBUSY) busy++;
        else cr_assert_fail("unexpected %d", st);
    }
    cr_assert(busy >= 1, "a full queue refuses at once (accepted %d)", accepted);
    for (int i = 0; i < 6; i++)
        if (r[i]) {
            coll_wait(&c[i]);
            cr_assert_eq(c[i].n_tokens, 50);
            eng_request_release(r[i]);
        }
    eng_sched_free(s);
    eng_model_free(m);
}

typedef struct {
    const char *what;
    eng_status want;
    eng_request_params p;
} vcase;

/* eng_sched_validate answers what eng_sched_submit would, without queueing. */
Test(scheduler, validate_agrees_with_submit, .timeout = 60)
{
    eng_model *m = load();
    eng_sched_params sp = eng_sched_default_params();
    sp.n_seq_max = 2;
    sp.n_ctx = 64;
    sp.n_kv_tokens = 48; /* less than one full context: a long request cannot ever fit */
    eng_sched *s;
    cr_assert_eq(eng_sched_new(m, &sp, &s), ENG_OK);
    int32_t prompt[8] = {1, 300, 301, 302, 303, 304, 305, 306};
    int32_t bad_ids[2] = {1, 99999};
    eng_orthorank_params orp = eng_orthorank_default_params();
    collector c;
    coll_init(&c);
    vcase cases[12];
    size_t n = 0;
    eng_request_params ok = greedy_params(prompt, 8, 4, &c), p;
    cases[n++] = (vcase){"plain", ENG_OK, ok};
    p = ok, p.prompt = bad_ids, p.n_prompt = 2;
    cases[n++] = (vcase){"token id out of range", ENG_EINVAL, p};
    p = ok, p.on_event = NULL;
    cases[n++] = (vcase){"no callback", ENG_EINVAL, p};
    p = ok, p.n_logprobs = 21;
    cases[n++] = (vcase){"n_logprobs 21", ENG_EINVAL, p};
    p = ok, p.sampling.top_p = 0;
    cases[n++] = (vcase){"top_p 0", ENG_EINVAL, p};
    p = ok, p.sampling.repeat_penalty = 0;
    cases[n++] = (vcase){"repeat_penalty 0", ENG_EINVAL, p};
    p = ok, p.orthorank = &orp;
    cases[n++] = (vcase){"dense orthorank", ENG_OK, p};
    static eng_orthorank_params bad_ratio, dup_layers;
    bad_ratio = eng_orthorank_default_params();
    bad_ratio.token_ratio = 0;
    dup_layers = eng_orthorank_default_params();
    dup_layers.layers[0] = dup_layers.layers[1] = 1;
    dup_layers.n_layers = 2;
    p = ok, p.orthorank = &bad_ratio;
    cases[n++] = (vcase){"token_ratio 0", ENG_EINVAL, p};
    p = ok, p.orthorank = &dup_layers;
    cases[n++] = (vcase){"layer listed twice", ENG_EINVAL, p};
    p = ok, p.max_tokens = 57;
    cases[n++] = (vcase){"prompt + 57 > KV budget 48", ENG_ECTXFULL, p};
    p = ok, p.n_prompt = 8, p.max_tokens = 40;
    cases[n++] = (vcase){"prompt + 40 fits the budget", ENG_OK, p};
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(eng_sched_validate(s, &cases[i].p), cases[i].want, "validate: %s", cases[i].what);
        eng_request *r = NULL;
        coll_init(&c);
        cr_assert_eq(eng_sched_submit(s, &cases[i].p, &r), cases[i].want, "submit: %s", cases[i].what);
        if (r) {
            coll_wait(&c);
            eng_request_release(r);
        }
    }
    cr_assert_eq(eng_sched_validate(NULL, &ok), ENG_EINVAL);
    cr_assert_eq(eng_sched_validate(s, NULL), ENG_EINVAL);
    eng_sched_free(s);
    eng_model_free(m);
}

Test(scheduler, cancel_frees_kv_within_a_step, .timeout = 60)
{
    eng_model *m = load();
    eng_sched_params sp = eng_sched_default_params();
    sp.n_ctx = 128;
    eng_sched *s;
    cr_assert_eq(eng_sched_new(m, &sp, &s), ENG_OK);
    int32_t prompt[] = {1, 403, 407, 261, 378};
    collector c;
    coll_init(&c);
    eng_request_params p = greedy_params(prompt, 5, 120, &c);
    eng_request *r;
    cr_assert_eq(eng_sched_submit(s, &p, &r), ENG_OK);
    for (int i = 0; i < 1000; i++) { /* wait for some output */
        pthread_mutex_lock(&c.mu);
        int n = c.n_tokens;
        pthread_mutex_unlock(&c.mu);
        if (n >= 3) break;
        usleep(1000);
    }
    eng_request_cancel(r);
    coll_wait(&c);
    cr_assert_eq(c.finish, ENG_FINISH_CANCELLED);
    cr_assert_eq(c.status, ENG_ECANCELED);
    cr_assert(c.n_tokens < 120);
    eng_sched_stats st;
    for (int tries = 0; tries < 100; tries++) {
        eng_sched_get_stats(s, &st);
        if (st.kv_used == 0) break;
        usleep(10000);
    }
    cr_assert_eq(st.kv_used, 0);
    eng_request_cancel(r); /* idempotent after DONE */
    eng_request_release(r);
    /* the next request is served */
    collector c2;
    coll_init(&c2);
    p = greedy_params(prompt, 5, 4, &c2);
    cr_assert_eq(eng_sched_submit(s, &p, &r), ENG_OK);
    coll_wait(&c2);
    cr_assert_eq(c2.n_tokens, 4);
    eng_request_release(r);
    eng_sched_free(s);
    eng_model_free(m);
}

Test(scheduler, prompt_logprobs_match_forward, .timeout = 60)
{
    eng_model *m = load();
    int32_t prompt[] = {1, 403, 407, 261, 378, 29892, 727};
    size_t n = 5; /* "Once upon a time" */
    /* direct */
    eng_context *ctx;
    eng_context_params cp = eng_context_default_params();
    cr_assert_eq(eng_context_new(m, &cp, &ctx), ENG_OK);
    int32_t pos[5] = {0, 1, 2, 3, 4}, sq[5] = {0};
    int8_t w[5] = {1, 1, 1, 1, 1};
    eng_batch b = {(int32_t)n, prompt, pos, sq, w};
    cr_assert_eq(eng_decode(ctx, &b), ENG_OK);
    float expect[5];
    for (size_t i = 1; i < n; i++)
        cr_assert_eq(eng_logprobs(eng_get_logits(ctx, (int32_t)i - 1), 512, prompt[i], &expect[i], 0, NULL, NULL), ENG_OK);
    eng_context_free(ctx);

    eng_sched *s;
    cr_assert_eq(eng_sched_new(m, NULL, &s), ENG_OK);
    collector c;
    coll_init(&c);
    eng_request_params p = greedy_params(prompt, n, 0, &c);
    p.prompt_logprobs = true;
    eng_request *r;
    cr_assert_eq(eng_sched_submit(s, &p, &r), ENG_OK);
    coll_wait(&c);
    cr_assert_eq(c.finish, ENG_FINISH_LENGTH);
    cr_assert_eq(c.n_tokens, 0, "max_tokens 0 generates nothing");
    cr_assert_eq(c.n_prompt_ev, (int)n - 1);
    for (size_t i = 1; i < n; i++) cr_assert_eq(c.prompt_lp[i], expect[i], "position %zu", i);
    eng_request_release(r);
    eng_sched_free(s);
    eng_model_free(m);
}

Test(scheduler, drain_and_free_with_live_requests, .timeout = 60)
{
    eng_model *m = load();
    eng_sched_params sp = eng_sched_default_params();
    sp.n_seq_max = 2;
    sp.n_ctx = 128;
    eng_sched *s;
    cr_assert_eq(eng_sched_new(m, &sp, &s), ENG_OK);
    int32_t prompt[] = {1, 403, 407};
    collector c[4];
    eng_request *r[4];
    for (int i = 0; i < 4; i++) {
        coll_init(&c[i]);
        eng_request_params p = greedy_params(prompt, 3, 120, &c[i]);
        cr_assert_eq(eng_sched_submit(s, &p, &r[i]), ENG_OK);
    }
    eng_sched_drain(s);
    collector cx;
    coll_init(&cx);
    eng_request_params p = greedy_params(prompt, 3, 5, &cx);
    eng_request *rx;
    cr_assert_eq(eng_sched_submit(s, &p, &rx), ENG_ESTOPPED);
    eng_sched_stats st;
    eng_sched_get_stats(s, &st);
    cr_assert(st.draining);
    eng_sched_free(s); /* cancels whatever is still live */
    for (int i = 0; i < 4; i++) {
        cr_assert(c[i].done, "every request got its DONE event");
        cr_assert_eq(c[i].n_done_events, 1);
        cr_assert(c[i].finish == ENG_FINISH_CANCELLED || c[i].finish == ENG_FINISH_LENGTH);
        eng_request_release(r[i]);
    }
    eng_model_free(m);
}

/* Run prompt b (cache_scope scope_b) after prompt a (scope_a) in one
 * scheduler; returns b's collector. */
static void run_pair_scoped(eng_model *m, bool cache, const int32_t *a, size_t na, uint64_t scope_a,
                            const int32_t *b, size_t nb, uint64_t scope_b, collector *cb)
{
    eng_sched_params sp = eng_sched_default_params();
    sp.n_ctx = 128;
    sp.n_seq_max = 2;
    sp.prefix_cache = cache;
    eng_sched *s;
    cr_assert_eq(eng_sched_new(m, &sp, &s), ENG_OK);
    collector ca;
    coll_init(&ca);
    coll_init(cb);
    eng_request *r;
    eng_request_params p = greedy_params(a, na, 10, &ca);
    p.cache_scope = scope_a;
    cr_assert_eq(eng_sched_submit(s, &p, &r), ENG_OK);
    coll_wait(&ca);
    eng_request_release(r);
    eng_sched_stats st;
    for (int tries = 0; tries < 200; tries++) { /* stats are published after the step */
        eng_sched_get_stats(s, &st);
        if (!cache || st.kv_cached > 0) break;
        usleep(5000);
    }
    if (cache) cr_assert(st.kv_cached > 0, "the finished request left its prefix");
    p = greedy_params(b, nb, 30, cb);
    p.cache_scope = scope_b;
    cr_assert_eq(eng_sched_submit(s, &p, &r), ENG_OK);
    coll_wait(cb);
    eng_request_release(r);
    eng_sched_free(s);
}

static void run_pair(eng_model *m, bool cache, const int32_t *a, size_t na, const int32_t *b, size_t nb,
                     collector *cb)
{
    run_pair_scoped(m, cache, a, na, 0, b, nb, 0, cb);
}

Test(scheduler, prefix_reuse_is_exact, .timeout = 60)
{
    eng_model *m = load();
    /* a multi-turn chat: b = a + a's answer + more */
    int32_t a[] = {1, 403, 407, 261, 378, 29892, 727, 471, 263, 2217};
    int32_t b[] = {1, 403, 407, 261, 378, 29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++) b[i] %= 512;
    for (size_t i = 0; i < sizeof a / sizeof *a; i++) a[i] %= 512;
    collector with, without;
    run_pair(m, true, a, 10, b, 15, &with);
    run_pair(m, false, a, 10, b, 15, &without);
    cr_assert_eq(with.n_cached, 10, "the whole of a is reused");
    cr_assert_eq(without.n_cached, 0);
    cr_assert_eq(with.n_tokens, without.n_tokens);
    for (int i = 0; i < with.n_tokens; i++) cr_assert_eq(with.tokens[i], without.tokens[i], "token %d", i);
    /* the same prompt again: all but the last token come from the cache */
    collector again;
    run_pair(m, true, b, 15, b, 15, &again);
    cr_assert_eq(again.n_cached, 14);
    for (int i = 0; i < again.n_tokens; i++) cr_assert_eq(again.tokens[i], without.tokens[i], "token %d", i);
    eng_model_free(m);
}

/* The same on the qwen3 / gemma3 / phi3 models, with a prompt past gemma3's
 * 32-position window: reused K/V of a sliding-window layer serve exactly as
 * recomputed ones. */
Test(scheduler, prefix_reuse_is_exact_qwen3_gemma3_phi3, .timeout = 120)
{
    const char *models[] = {"models/qwen3tiny-Q8_0.gguf", "models/gemma3tiny-F32.gguf", "models/gemma3tiny-Q8_0.gguf",
                            "models/phi3tiny-Q8_0.gguf"};
    int32_t b[60];
    for (int i = 0; i < 60; i++) b[i] = i == 0 ? 1 : 3 + (i * 53) % 500;
    for (size_t mi = 0; mi < sizeof models / sizeof *models; mi++) {
        char err[256] = "";
        eng_model *m = NULL;
        cr_assert_eq(eng_model_load(td_path(models[mi]), NULL, &m, err, sizeof err), ENG_OK, "%s", err);
        collector with, without;
        run_pair(m, true, b, 40, b, 60, &with);
        run_pair(m, false, b, 40, b, 60, &without);
        cr_assert_eq(with.n_cached, 40, "%s: the whole first prompt is reused", models[mi]);
        cr_assert_eq(with.n_tokens, without.n_tokens);
        for (int i = 0; i < with.n_tokens; i++)
            cr_assert_eq(with.tokens[i], without.tokens[i], "%s: token %d", models[mi], i);
        eng_model_free(m);
    }
}

Test(scheduler, cached_prefixes_are_evicted_for_new_work, .timeout = 60)
{
    eng_model *m = load();
    eng_sched_params sp = eng_sched_default_params();
    sp.n_ctx = 64;
    sp.n_seq_max = 2;
    sp.n_kv_tokens = 128; /* room for two full sequences only */
    eng_sched *s;
    cr_assert_eq(eng_sched_new(m, &sp, &s), ENG_OK);
    int32_t prompt[40];
    for (int round = 0; round < 6; round++) {
        for (int i = 0; i < 40; i++) prompt[i] = i == 0 ? 1 : 300 + (i * 7 + round * 13) % 200;
        collector c;
        coll_init(&c);
        eng_request *r;
        eng_request_params p = greedy_params(prompt, 40, 20, &c);
        cr_assert_eq(eng_sched_submit(s, &p, &r), ENG_OK);
        coll_wait(&c);
        cr_assert_eq(c.n_tokens, 20, "round %d", round);
        eng_request_release(r);
    }
    eng_sched_free(s);
    eng_model_free(m);
}

/* The prefix cache is partitioned by cache_scope (issue 15, D4: one API
 * key must not learn another's prompt from n_cached): two scopes never
 * share a prefix, one scope still does, and the output is the same. */
Test(scheduler, prefix_reuse_only_within_a_cache_scope, .timeout = 60)
{
    eng_model *m = load();
    int32_t a[] = {1, 403, 407, 261, 378, 29892, 727, 471, 263, 2217};
    int32_t b[] = {1, 403, 407, 261, 378, 29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++) b[i] %= 512;
    for (size_t i = 0; i < sizeof a / sizeof *a; i++) a[i] %= 512;
    const uint64_t alice = 0x9e3779b97f4a7c15u, mallory = 0x9e3779b97f4a7c16u;
    collector other, same, shared, cold;
    run_pair_scoped(m, true, a, 10, alice, b, 15, mallory, &other);
    run_pair_scoped(m, true, a, 10, mallory, b, 15, 0, &shared); /* 0 is a scope like any other */
    run_pair_scoped(m, true, a, 10, alice, b, 15, alice, &same);
    run_pair(m, false, a, 10, b, 15, &cold);
    cr_assert_eq(other.n_cached, 0, "another scope's prefix is never reused");
    cr_assert_eq(shared.n_cached, 0);
    cr_assert_eq(same.n_cached, 10, "the same scope reuses its own prefix");
    cr_assert_eq(same.n_tokens, cold.n_tokens);
    cr_assert_eq(other.n_tokens, cold.n_tokens);
    for (int i = 0; i < cold.n_tokens; i++) {
        cr_assert_eq(same.tokens[i], cold.tokens[i], "token %d", i);
        cr_assert_eq(other.tokens[i], cold.tokens[i], "token %d", i);
    }
    eng_model_free(m);
}

/* Two requests one after the other in one scheduler, prompts a (na tokens)
 * and b (nb), each with its own OrthoRank settings (NULL: dense); cb
 * collects the second. */
static void run_two_orthorank(eng_model *m, bool cache, const int32_t *a, size_t na, const int32_t *b, size_t nb,
                              const eng_orthorank_params *pa, const eng_orthorank_params *pb, collector *cb)
{
    eng_sched_params sp = eng_sched_default_params();
    sp.n_ctx = 128;
    sp.n_seq_max = 2;
    sp.prefix_cache = cache;
    eng_sched *s;
    cr_assert_eq(eng_sched_new(m, &sp, &s), ENG_OK);
    collector ca;
    coll_init(&ca);
    coll_init(cb);
    const eng_orthorank_params *ps[2] = {pa, pb};
    const int32_t *prompts[2] = {a, b};
    const size_t lens[2] = {na, nb};
    collector *cs[2] = {&ca, cb};
    for (int i = 0; i < 2; i++) {
        eng_request *r;
        eng_request_params p = greedy_params(prompts[i], lens[i], 40, cs[i]);
        p.orthorank = ps[i];
        cr_assert_eq(eng_sched_submit(s, &p, &r), ENG_OK);
        coll_wait(cs[i]);
        eng_request_release(r);
    }
    eng_sched_free(s);
}

static void run_pair_orthorank(eng_model *m, bool cache, const int32_t *prompt, size_t n,
                               const eng_orthorank_params *pa, const eng_orthorank_params *pb, collector *cb)
{
    run_two_orthorank(m, cache, prompt, n, prompt, n, pa, pb, cb);
}

/* Issue #16: a sparsified prompt's K/V are reused by the same prompt with
 * the same settings (all but its last token), and the output is exactly
 * the output without reuse; other settings, or dense, reuse nothing. Both
 * a prompt selected as a whole (40 tokens) and one selected row by row
 * (8 tokens, below min_tokens), and the random method (seeded). A longer
 * prompt that starts with a cached sparsified one reuses nothing either:
 * the cached K/V came from a selection over the shorter prompt. */
Test(scheduler, sparsified_prefix_reuse_needs_the_same_settings, .timeout = 120)
{
    eng_model *m = load();
    int32_t prompt[40];
    for (int i = 0; i < 40; i++) prompt[i] = i == 0 ? 1 : 300 + (i * 7) % 200;
    eng_orthorank_params a = eng_orthorank_default_params(), b, rnd;
    a.sparsity = 0.2;
    b = a;
    b.token_ratio = 0.5;
    rnd = a;
    rnd.method = ENG_ORTHORANK_METHOD_RANDOM;
    rnd.seed = 7;
    const size_t lens[] = {40, 8};
    for (int li = 0; li < 2; li++) {
        size_t n = lens[li];
        const eng_orthorank_params *sets[] = {&a, &rnd};
        for (int si = 0; si < 2; si++) {
            collector again, cold;
            run_pair_orthorank(m, true, prompt, n, sets[si], sets[si], &again);
            run_pair_orthorank(m, false, prompt, n, sets[si], sets[si], &cold);
            cr_assert_eq(again.n_cached, (int32_t)n - 1, "prompt %zu, settings %d: reused", n, si);
            cr_assert_eq(cold.n_cached, 0);
            cr_assert_eq(again.n_tokens, cold.n_tokens);
            for (int i = 0; i < cold.n_tokens; i++)
                cr_assert_eq(again.tokens[i], cold.tokens[i], "prompt %zu, settings %d: token %d", n, si, i);
        }
        collector other, dense_after, sparse_after;
        run_pair_orthorank(m, true, prompt, n, &a, &b, &other);
        run_pair_orthorank(m, true, prompt, n, &a, NULL, &dense_after);
        run_pair_orthorank(m, true, prompt, n, NULL, &a, &sparse_after);
        cr_assert_eq(other.n_cached, 0, "other settings reuse nothing");
        cr_assert_eq(dense_after.n_cached, 0, "a dense request does not reuse a sparsified prefix");
        cr_assert_eq(sparse_after.n_cached, 0, "nor the reverse");
    }
    collector longer;
    run_two_orthorank(m, true, prompt, 20, prompt, 40, &a, &a, &longer);
    cr_assert_eq(longer.n_cached, 0, "a longer prompt does not reuse a sparsified prefix");
    eng_model_free(m);
}
