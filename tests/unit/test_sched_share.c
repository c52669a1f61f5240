/*
 * test_sched_share.c - the scheduler's shared work on stories260K:
 *   - pooling (embedding) requests: mean / cls / last pooling equals a
 *     reference computed here from a token-by-token forward pass; a text's
 *     embedding is the same alone and among 64 submitted at once, next to
 *     generations; nothing is left in the KV cache;
 *   - forks (eng_sched_submit_many families): n members of one prompt
 *     compute the prompt once (prompt_tokens counts it once, members report
 *     it cached), and member i equals the same request submitted alone with
 *     its seed; a family cancelled while queued ends every member; family
 *     checks (a member's prompt must be its leader's);
 *   - eng_model_pooling reads <arch>.pooling_type (a copy of the model
 *     written with the key), names and parses pooling names.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "context.h"
#include "gguf_write.h"
#include "orthoserve/engine.h"
#include "testutil.h"

#define MAXTOK 128
#define MAXE 1024

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t tokens[MAXTOK];
    int n_tokens;
    bool done;
    eng_finish_reason finish;
    int32_t n_cached, n_embd;
    float embd[MAXE];
} coll;

static void on_event(const eng_event *ev, void *user)
{
    coll *c = user;
    pthread_mutex_lock(&c->mu);
    if (ev->type == ENG_EVENT_TOKEN) {
        if (c->n_tokens < MAXTOK) c->tokens[c->n_tokens] = ev->token;
        c->n_tokens++;
    } else if (ev->type == ENG_EVENT_DONE) {
        c->done = true;
        c->finish = ev->finish;
        c->n_cached = ev->n_cached;
        if (ev->embedding) {
            c->n_embd = ev->n_embd;
            memcpy(c->embd, ev->embedding, (size_t)ev->n_embd * sizeof(float));
        }
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
}

static void coll_init(coll *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
}

static void coll_wait(coll *c)
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

static eng_sched *sched(eng_model *m, int32_t n_seq, int32_t queue)
{
    eng_sched_params sp = eng_sched_default_params();
    sp.n_seq_max = n_seq;
    sp.n_ctx = 256;
    sp.max_queue = queue;
    eng_sched *s;
    cr_assert_eq(eng_sched_new(m, &sp, &s), ENG_OK);
    return s;
}

static eng_request_params params(const int32_t *prompt, size_t n, coll *c)
{
    eng_request_params p = {0};
    p.prompt = prompt;
    p.n_prompt = n;
    p.max_tokens = 24;
    p.ignore_eos = true;
    p.sampling = eng_sampler_default_params();
    p.sampling.temperature = 0.9f;
    p.sampling.top_k = 0;
    p.sampling.min_p = 0;
    p.n_logprobs = -1;
    p.on_event = on_event;
    p.user = c;
    return p;
}

/* A text of n tokens (BOS first), varied by k. */
static void text(int32_t *t, int n, int k)
{
    t[0] = 1;
    for (int i = 1; i < n; i++) t[i] = 260 + (i * 7 + k * 13) % 200;
}

/* The reference: feed the tokens one at a time into a fresh context; after
 * each, the final hidden state of the row, RMS-normalised with the output
 * norm by this test's own loop; pooled as asked. */
static void reference(eng_model *m, const int32_t *tok, int n, eng_pooling pool, float *out)
{
    eng_context_params cp = eng_context_default_params();
    cp.n_ctx = 256;
    cp.n_seq_max = 1;
    cp.n_batch_max = 1;
    eng_context *c;
    cr_assert_eq(eng_context_new(m, &cp, &c), ENG_OK);
    const int E = m->n_embd;
    double acc[MAXE] = {0};
    for (int i = 0; i < n; i++) {
        int32_t seq = 0, pos = i;
        int8_t lg = 0;
        eng_batch b = {1, &tok[i], &pos, &seq, &lg};
        cr_assert_eq(eng_decode(c, &b), ENG_OK);
        double ss = 0;
        for (int k = 0; k < E; k++) ss += (double)c->x[k] * c->x[k];
        double scale = 1.0 / sqrt(ss / E + m->rms_eps);
        bool take = pool == ENG_POOLING_MEAN || (pool == ENG_POOLING_CLS && i == 0) ||
                    (pool == ENG_POOLING_LAST && i == n - 1);
        for (int k = 0; take && k < E; k++) acc[k] += c->x[k] * scale * m->output_norm[k];
    }
    for (int k = 0; k < E; k++) out[k] = (float)(acc[k] / (pool == ENG_POOLING_MEAN ? n : 1));
    eng_context_free(c);
}

static void normalise(float *v, int n)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)v[i] * v[i];
    for (int i = 0; i < n; i++) v[i] = (float)(v[i] / sqrt(ss));
}

Test(sched_share, pooling_matches_a_reference_forward, .timeout = 120)
{
    eng_model *m = load();
    eng_sched *s = sched(m, 4, 16);
    int32_t tok[40];
    text(tok, 40, 3);
    const eng_pooling pools[] = {ENG_POOLING_MEAN, ENG_POOLING_CLS, ENG_POOLING_LAST};
    for (int q = 0; q < 3; q++) {
        coll c;
        coll_init(&c);
        eng_request_params p = params(tok, 40, &c);
        p.pooling = pools[q];
        eng_request *r;
        cr_assert_eq(eng_sched_submit(s, &p, &r), ENG_OK);
        coll_wait(&c);
        cr_assert_eq(c.n_tokens, 0, "a pooling request samples nothing");
        cr_assert_eq(c.n_embd, m->n_embd);
        float ref[MAXE];
        reference(m, tok, 40, pools[q], ref);
        for (int k = 0; k < m->n_embd; k++)
            cr_assert_float_eq(c.embd[k], ref[k], 1e-4f * (1 + fabsf(ref[k])), "%s [%d]: %g vs %g",
                               eng_pooling_name(pools[q]), k, c.embd[k], ref[k]);
        eng_request_release(r);
    }
    eng_sched_free(s);
    eng_model_free(m);
}

Test(sched_share, embedding_same_alone_and_in_a_batch_of_64, .timeout = 120)
{
    eng_model *m = load();
    eng_sched *s = sched(m, 8, 128);
    enum { N = 64, L = 48, PICK = 37 };
    static int32_t toks[N][L];
    static coll c[N];
    for (int i = 0; i < N; i++) text(toks[i], 8 + (i * 5) % (L - 8), i);
    const int len_pick = 8 + (PICK * 5) % (L - 8);
    coll alone;
    coll_init(&alone);
    eng_request_params p = params(toks[PICK], (size_t)len_pick, &alone);
    p.pooling = ENG_POOLING_MEAN;
    eng_request *ra;
    cr_assert_eq(eng_sched_submit(s, &p, &ra), ENG_OK);
    coll_wait(&alone);
    /* 64 at once, with two generations running beside them */
    coll gen[2];
    eng_request *rg[2];
    for (int g = 0; g < 2; g++) {
        coll_init(&gen[g]);
        eng_request_params gp = params(toks[g], 10, &gen[g]);
        gp.max_tokens = 60;
        cr_assert_eq(eng_sched_submit(s, &gp, &rg[g]), ENG_OK);
    }
    eng_request_params ps[N];
    eng_request *rs[N];
    for (int i = 0; i < N; i++) {
        coll_init(&c[i]);
        ps[i] = params(toks[i], (size_t)(8 + (i * 5) % (L - 8)), &c[i]);
        ps[i].pooling = ENG_POOLING_MEAN;
    }
    cr_assert_eq(eng_sched_submit_many(s, ps, N, rs), ENG_OK);
    for (int i = 0; i < N; i++) coll_wait(&c[i]);
    normalise(alone.embd, m->n_embd);
    normalise(c[PICK].embd, m->n_embd);
    for (int k = 0; k < m->n_embd; k++)
        cr_assert(fabsf(alone.embd[k] - c[PICK].embd[k]) <= 1e-5f, "[%d] %g vs %g", k, alone.embd[k], c[PICK].embd[k]);
    for (int g = 0; g < 2; g++) coll_wait(&gen[g]);
    eng_sched_stats st;
    for (int tries = 0; tries < 100; tries++) {
        eng_sched_get_stats(s, &st);
        if (st.running == 0) break;
        usleep(10000);
    }
    cr_assert_eq(st.running, 0);
    for (int i = 0; i < N; i++) eng_request_release(rs[i]);
    for (int g = 0; g < 2; g++) eng_request_release(rg[g]);
    eng_request_release(ra);
    eng_sched_free(s);
    eng_model_free(m);
}

/* n = 4 members of one prompt of np tokens, seeds 500 + i. */
static void run_family(eng_sched *s, const int32_t *prompt, size_t np, coll *c, eng_request **r)
{
    eng_request_params ps[4];
    for (int i = 0; i < 4; i++) {
        coll_init(&c[i]);
        ps[i] = params(prompt, np, &c[i]);
        ps[i].sampling.seed = 500 + (uint64_t)i;
        ps[i].fork_of = i ? 1 : 0;
    }
    cr_assert_eq(eng_sched_submit_many(s, ps, 4, r), ENG_OK);
    for (int i = 0; i < 4; i++) coll_wait(&c[i]);
}

static uint64_t prompt_tokens(eng_sched *s)
{
    eng_sched_stats st;
    for (int tries = 0; tries < 100; tries++) {
        eng_sched_get_stats(s, &st);
        if (st.running == 0) break;
        usleep(10000);
    }
    return st.prompt_tokens;
}

Test(sched_share, four_forks_compute_the_prompt_once_and_equal_singles, .timeout = 120)
{
    eng_model *m = load();
    int32_t prompt[37]; /* a partial last block: the fork copies it */
    text(prompt, 37, 9);
    eng_sched *s = sched(m, 8, 16);
    coll c[4];
    eng_request *r[4];
    run_family(s, prompt, 37, c, r);
    cr_assert_eq(prompt_tokens(s), 37, "the prompt was computed once");
    cr_assert_eq(c[0].n_cached, 0);
    bool differ = false;
    for (int i = 1; i < 4; i++) {
        cr_assert_eq(c[i].n_cached, 37, "members report the prompt as cached");
        differ |= memcmp(c[i].tokens, c[0].tokens, sizeof c[0].tokens) != 0;
    }
    cr_assert(differ, "different seeds gave different choices");
    for (int i = 0; i < 4; i++) eng_request_release(r[i]);
    eng_sched_free(s);
    /* each member equals the request alone with its seed (a fresh scheduler:
     * no cached prefix) */
    for (int i = 0; i < 4; i++) {
        s = sched(m, 8, 16);
        coll one;
        coll_init(&one);
        eng_request_params p = params(prompt, 37, &one);
        p.sampling.seed = 500 + (uint64_t)i;
        eng_request *ro;
        cr_assert_eq(eng_sched_submit(s, &p, &ro), ENG_OK);
        coll_wait(&one);
        cr_assert_eq(one.n_tokens, c[i].n_tokens);
        for (int k = 0; k < one.n_tokens; k++) cr_assert_eq(one.tokens[k], c[i].tokens[k], "choice %d token %d", i, k);
        eng_request_release(ro);
        eng_sched_free(s);
    }
    eng_model_free(m);
}

Test(sched_share, families_share_steps_and_return_their_kv, .timeout = 120)
{
    eng_model *m = load();
    int32_t a[32], b[21]; /* a: whole blocks only; b: a partial one */
    text(a, 32, 1);
    text(b, 21, 2);
    eng_sched_params sp = eng_sched_default_params();
    sp.n_seq_max = 8;
    sp.n_ctx = 128;
    sp.n_kv_tokens = 8 * 64; /* tight: four families of 4 cannot all run at once */
    eng_sched *s;
    cr_assert_eq(eng_sched_new(m, &sp, &s), ENG_OK);
    coll c[4][4];
    eng_request_params ps[16];
    for (int f = 0; f < 4; f++)
        for (int i = 0; i < 4; i++) {
            coll_init(&c[f][i]);
            ps[f * 4 + i] = params(f % 2 ? b : a, f % 2 ? 21 : 32, &c[f][i]);
            ps[f * 4 + i].sampling.seed = 500 + (uint64_t)i;
            ps[f * 4 + i].fork_of = i ? f * 4 + 1 : 0;
        }
    eng_request *all[16];
    cr_assert_eq(eng_sched_submit_many(s, ps, 16, all), ENG_OK);
    for (int f = 0; f < 4; f++)
        for (int i = 0; i < 4; i++) {
            coll_wait(&c[f][i]);
            cr_assert_eq(c[f][i].n_tokens, 24);
            /* the same prompt and seed: the same choice in every family */
            if (f >= 2) cr_assert_eq(memcmp(c[f][i].tokens, c[f - 2][i].tokens, sizeof c[f][i].tokens), 0);
        }
    cr_assert_eq(prompt_tokens(s), 2 * 32 + 2 * 21);
    for (int k = 0; k < 16; k++) eng_request_release(all[k]);
    /* Every block came back: a request that needs the whole budget runs. */
    coll big;
    coll_init(&big);
    int32_t longp[100];
    text(longp, 100, 5);
    eng_request_params bp = params(longp, 100, &big);
    bp.max_tokens = 28;
    eng_request *rb;
    cr_assert_eq(eng_sched_submit(s, &bp, &rb), ENG_OK);
    coll_wait(&big);
    cr_assert_eq(big.n_tokens, 28);
    eng_request_release(rb);
    eng_sched_free(s);
    eng_model_free(m);
}

Test(sched_share, family_checks_and_queued_cancel, .timeout = 60)
{
    eng_model *m = load();
    eng_sched *s = sched(m, 2, 16);
    int32_t a[10], b[10];
    text(a, 10, 1);
    text(b, 10, 2);
    coll c[3];
    eng_request_params ps[3];
    eng_request *r[3];
    for (int i = 0; i < 3; i++) {
        coll_init(&c[i]);
        ps[i] = params(a, 10, &c[i]);
        ps[i].fork_of = i ? 1 : 0;
    }
    cr_assert_eq(eng_sched_submit_many(s, ps, 3, r), ENG_ECTXFULL, "a family larger than the slots");
    ps[1].prompt = b;
    cr_assert_eq(eng_sched_submit_many(s, ps, 2, r), ENG_EINVAL, "a member's prompt differs");
    ps[1].prompt = a;
    ps[1].fork_of = 2;
    cr_assert_eq(eng_sched_submit_many(s, ps, 2, r), ENG_EINVAL, "fork_of names a later request");
    ps[1].fork_of = 1;
    /* Occupy both slots, then queue a family and cancel its leader. */
    coll busy[2];
    eng_request *rbusy[2];
    for (int i = 0; i < 2; i++) {
        coll_init(&busy[i]);
        eng_request_params bp = params(b, 10, &busy[i]);
        bp.max_tokens = 100;
        cr_assert_eq(eng_sched_submit(s, &bp, &rbusy[i]), ENG_OK);
    }
    cr_assert_eq(eng_sched_submit_many(s, ps, 2, r), ENG_OK);
    eng_request_cancel(r[0]);
    coll_wait(&c[0]);
    coll_wait(&c[1]);
    cr_assert_eq(c[0].finish, ENG_FINISH_CANCELLED);
    cr_assert_eq(c[1].finish, ENG_FINISH_CANCELLED, "the whole family goes");
    for (int i = 0; i < 2; i++) {
        coll_wait(&busy[i]);
        eng_request_release(rbusy[i]);
        eng_request_release(r[i]);
    }
    eng_sched_free(s);
    eng_model_free(m);
}

/* stories260K copied with "llama.pooling_type" = v (tensors and keys as they are). */
static void write_with_pooling(const char *path, uint32_t v)
{
    eng__gguf *g;
    char err[256];
    cr_assert_eq(eng__gguf_open(td_path("models/stories260K.gguf"), &g, err, sizeof err), ENG_OK, "%s", err);
    eng__gguf_writer *w;
    cr_assert_eq(eng__gguf_writer_new(&w), ENG_OK);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)g->kv[i].key.len, g->kv[i].key.ptr);
        cr_assert_eq(eng__gguf_copy_kv(w, g, key), ENG_OK, "%s", eng__gguf_writer_error(w));
    }
    cr_assert_eq(eng__gguf_set_u32(w, "llama.pooling_type", v), ENG_OK);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const eng__gguf_tensor *t = &g->tensors[i];
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        cr_assert_eq(eng__gguf_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data, t->nbytes), ENG_OK, "%s",
                     eng__gguf_writer_error(w));
    }
    cr_assert_eq(eng__gguf_writer_write_file(w, path), ENG_OK, "%s", eng__gguf_writer_error(w));
    eng__gguf_writer_free(w);
    eng__gguf_close(g);
}

Test(sched_share, model_pooling_type_and_names, .timeout = 60)
{
    eng_model *m = load();
    cr_assert_eq(eng_model_pooling(m), ENG_POOLING_NONE, "stories260K names no pooling");
    eng_model_free(m);
    char path[] = "/tmp/orthoserve-pooling-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    const uint32_t vals[] = {2, 3, 1, 4, 0};
    const eng_pooling want[] = {ENG_POOLING_CLS, ENG_POOLING_LAST, ENG_POOLING_MEAN, ENG_POOLING_NONE,
                                ENG_POOLING_NONE};
    for (int i = 0; i < 5; i++) {
        write_with_pooling(path, vals[i]);
        char err[256];
        cr_assert_eq(eng_model_load(path, NULL, &m, err, sizeof err), ENG_OK, "%s", err);
        cr_assert_eq(eng_model_pooling(m), want[i], "pooling_type %u", vals[i]);
        eng_model_free(m);
    }
    unlink(path);
    cr_assert_eq(eng_pooling_from_name("cls"), ENG_POOLING_CLS);
    cr_assert_eq(eng_pooling_from_name("none"), ENG_POOLING_NONE);
    cr_assert_eq(eng_pooling_from_name("rank"), ENG_POOLING_NONE);
    cr_assert_str_eq(eng_pooling_name(ENG_POOLING_LAST), "last");
}
