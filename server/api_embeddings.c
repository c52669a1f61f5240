/*
 * api_embeddings.c - POST /v1/embeddings.
 *
 * The body (input: a string, an array of strings, an array of token ids or
 * an array of such arrays; encoding_format float or base64; dimensions;
 * user; model) is validated and tokenized on a worker (http_offload); every
 * input then becomes a pooling request of the engine (eng_request_params
 * .pooling), all of them in one eng_sched_submit_many: they queue (each
 * counts against max_queue while it waits), are admitted by the same
 * scheduler as generations, share their batch steps, and hold KV only while
 * they run. The pooling is the config's "pooling", else the model's
 * <arch>.pooling_type, else mean. Each input is a job (job.c) of a group,
 * so drain, timeouts and cancellation treat it as any generation; the
 * pooled vector is copied into the group on the scheduler thread before
 * the DONE event is posted (the bridge's lock orders it before the loop
 * reads it). The answer: each vector truncated to "dimensions" and
 * L2-normalised, in input order.
 */
#include "api_embeddings.h"
#include "job.h"
#include "reply.h"
#include "request.h"
#include "server.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A validated body: the inputs' tokens and the output's shape. */
typedef struct {
    int32_t **tok;
    size_t *n_tok, n;
    int32_t dims;       /* 0: the model's n_embd */
    bool base64;
} emb_body;

typedef struct {
    srv *s;
    hreq *hr;
    job **jobs;        /* (n) one per input */
    size_t n, n_done;
    int32_t n_embd;
    float *vec;        /* (n, n_embd) pooled vectors (written on the scheduler thread) */
    emb_body b;
} emb_group;

typedef struct {
    srv *s;
    json_t *body;
    api_limits lim;
    emb_body b;
    api_error err;
    bool failed;
} emb_work;

static void body_free(emb_body *b)
{
    for (size_t i = 0; b->tok && i < b->n; i++) free(b->tok[i]);
    free(b->tok);
    free(b->n_tok);
    memset(b, 0, sizeof *b);
}

/* ------------------------------------------------------------------------ */
/* Validation (worker thread)                                               */
/* ------------------------------------------------------------------------ */

static bool efail(emb_work *w, unsigned st, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static bool efail(emb_work *w, unsigned st, const char *code, const char *param, const char *fmt, ...)
{
    w->failed = true;
    va_list ap;
    va_start(ap, fmt);
    api_error_vset(&w->err, st, st == 404 ? "not_found_error" : "invalid_request_error", code, param, fmt, ap);
    va_end(ap);
    return false;
}

/* One input (a string or an array of token ids) into b->tok[i]. */
static bool parse_input(emb_work *w, json_t *x, size_t i, const char *param)
{
    const eng_vocab *v = w->lim.vocab;
    int32_t *ids = NULL;
    size_t n = 0;
    if (json_is_string(x)) {
        size_t len = json_string_length(x);
        if (!len) return efail(w, 400, "invalid_value", param, "'%s' must not be an empty string", param);
        size_t per = (size_t)eng_vocab_max_token_bytes(v);
        if (per && len > (size_t)w->lim.n_ctx * per)
            return efail(w, 400, "context_length_exceeded", param,
                         "this model's maximum context length is %d tokens, but '%s' (%zu bytes) is longer", w->lim.n_ctx,
                         param, len);
        size_t cap = len + 8;
        ids = malloc(cap * sizeof *ids);
        eng_status st = ids ? eng_tokenize(v, json_string_value(x), len, true, false, ids, cap, &n) : ENG_ENOMEM;
        if (st != ENG_OK) {
            free(ids);
            w->failed = true;
            w->err = (api_error){.status = 500, .type = "server_error"};
            snprintf(w->err.message, sizeof w->err.message, "tokenization failed");
            return false;
        }
    } else if (json_is_array(x) && json_array_size(x) > 0) {
        n = json_array_size(x);
        ids = malloc(n * sizeof *ids);
        int32_t nv = eng_vocab_n_tokens(v);
        for (size_t k = 0; ids && k < n; k++) {
            json_t *e = json_array_get(x, k);
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) >= nv) {
                free(ids);
                return efail(w, 400, "invalid_value", param, "'%s[%zu]' is not a token id in [0, %d)", param, k, nv);
            }
            ids[k] = (int32_t)json_integer_value(e);
        }
    } else {
        return efail(w, 400, json_is_array(x) ? "invalid_value" : "invalid_type", param,
                     "'%s' must be a non-empty string or array of token ids", param);
    }
    if (!ids) return efail(w, 500, NULL, NULL, "out of memory");
    w->b.tok[i] = ids;
    w->b.n_tok[i] = n;
    if (n > (size_t)w->lim.n_ctx)
        return efail(w, 400, "context_length_exceeded", param,
                     "this model's maximum context length is %d tokens, but '%s' is %zu tokens", w->lim.n_ctx, param, n);
    return true;
}

/* "input": one input, or a list of them (strings or token arrays). */
static bool parse_inputs(emb_work *w, json_t *in)
{
    bool list = json_is_array(in) && json_array_size(in) > 0 &&
                (json_is_string(json_array_get(in, 0)) || json_is_array(json_array_get(in, 0)));
    size_t n = list ? json_array_size(in) : 1;
    if (json_is_array(in) && json_array_size(in) == 0)
        return efail(w, 400, "invalid_value", "input", "'input' must not be empty");
    if (n > (size_t)w->lim.cfg->max_embedding_inputs)
        return efail(w, 400, "invalid_value", "input", "'input' has %zu inputs; the server takes at most %ld", n,
                     w->lim.cfg->max_embedding_inputs);
    w->b.tok = calloc(n, sizeof *w->b.tok);
    w->b.n_tok = calloc(n, sizeof *w->b.n_tok);
    w->b.n = n;
    if (!w->b.tok || !w->b.n_tok) return efail(w, 500, NULL, NULL, "out of memory");
    if (!list) return parse_input(w, in, 0, "input");
    for (size_t i = 0; i < n; i++) {
        char param[32];
        snprintf(param, sizeof param, "input[%zu]", i);
        if (!parse_input(w, json_array_get(in, i), i, param)) return false;
    }
    return true;
}

static void validate(void *ctx)
{
    emb_work *w = ctx;
    json_t *x, *body = w->body;
    if ((x = json_object_get(body, "model")) && !json_is_null(x)) {
        if (!json_is_string(x)) {
            efail(w, 400, "invalid_type", "model", "'model' must be a string");
            return;
        }
        if (!api_model_name_ok(&w->lim, json_string_value(x))) {
            efail(w, 404, "model_not_found", "model", "the model '%s' does not exist (this server serves '%s')",
                  json_string_value(x), w->lim.model_id);
            return;
        }
    }
    if ((x = json_object_get(body, "encoding_format")) && !json_is_null(x)) {
        if (!json_is_string(x) || (strcmp(json_string_value(x), "float") && strcmp(json_string_value(x), "base64"))) {
            efail(w, 400, "invalid_value", "encoding_format", "'encoding_format' must be \"float\" or \"base64\"");
            return;
        }
        w->b.base64 = !strcmp(json_string_value(x), "base64");
    }
    int32_t E = w->s->info.n_embd;
    if ((x = json_object_get(body, "dimensions")) && !json_is_null(x)) {
        if (!json_is_integer(x) || json_integer_value(x) < 1 || json_integer_value(x) > E) {
            efail(w, 400, "invalid_value", "dimensions", "'dimensions' must be an integer in [1, %d]", E);
            return;
        }
        w->b.dims = (int32_t)json_integer_value(x);
    }
    if ((x = json_object_get(body, "user")) && !json_is_null(x) && !json_is_string(x)) {
        efail(w, 400, "invalid_type", "user", "'user' must be a string");
        return;
    }
    if (!(x = json_object_get(body, "input")) || json_is_null(x)) {
        efail(w, 400, "missing_field", "input", "'input' is required");
        return;
    }
    parse_inputs(w, x);
}

/* ------------------------------------------------------------------------ */
/* The answer                                                               */
/* ------------------------------------------------------------------------ */

static char *base64(const unsigned char *p, size_t n)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *o = malloc((n + 2) / 3 * 4 + 1), *q = o;
    if (!o) return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        *q++ = A[v >> 18 & 63];
        *q++ = A[v >> 12 & 63];
        *q++ = i + 1 < n ? A[v >> 6 & 63] : '=';
        *q++ = i + 2 < n ? A[v & 63] : '=';
    }
    *q = 0;
    return o;
}

/* One vector: its first d values, L2-normalised (a zero vector stays zero),
 * as numbers or as base64 of little-endian float32. */
static json_t *vector_json(const float *v, int32_t d, bool b64)
{
    double ss = 0;
    for (int32_t k = 0; k < d; k++) ss += (double)v[k] * v[k];
    double inv = ss > 0 ? 1.0 / sqrt(ss) : 0;
    float *o = malloc((size_t)d * sizeof *o);
    if (!o) return json_null();
    for (int32_t k = 0; k < d; k++) o[k] = (float)(v[k] * inv);
    json_t *r;
    if (b64) {
        char *t = base64((const unsigned char *)o, (size_t)d * sizeof *o); /* x86-64: little-endian */
        r = t ? json_string(t) : json_null();
        free(t);
    } else {
        r = json_array();
        for (int32_t k = 0; k < d; k++) json_array_append_new(r, json_real(o[k]));
    }
    free(o);
    return r;
}

static void group_free(emb_group *g)
{
    for (size_t i = 0; i < g->n; i++) job_free(g->jobs[i]);
    free(g->jobs);
    free(g->vec);
    body_free(&g->b);
    free(g);
}

static void answer(emb_group *g)
{
    hreq *r = g->hr;
    int64_t n_tok = 0;
    for (size_t i = 0; i < g->n; i++) n_tok += (int64_t)g->b.n_tok[i];
    r->gen.n_in = n_tok;
    for (size_t i = 0; i < g->n; i++) {
        job *j = g->jobs[i];
        if (j->finish == ENG_FINISH_STOP) continue;
        if (job_cancelled(j) && j->cancel_reason && !strcmp(j->cancel_reason, "client_disconnect")) {
            http_abandon(r);
        } else if (job_cancelled(j) && j->cancel_reason && !strcmp(j->cancel_reason, "timeout")) {
            http_reply_error(r, 504, "timeout_error", "request_timeout", NULL,
                             "the request took longer than the server's limit of %g s", g->s->cfg->request_timeout);
        } else if (job_cancelled(j)) {
            http_reply_error(r, 503, "unavailable_error", "shutdown", NULL, "the request was cancelled (%s)",
                             j->cancel_reason ? j->cancel_reason : "unknown");
        } else {
            const char *type = "server_error", *code = NULL;
            unsigned st = reply_status_from_done(j->status, &type, &code);
            http_reply_error(r, st, type, code, NULL, "embedding failed: %s", eng_strerror(j->status));
        }
        return;
    }
    json_t *o = json_object(), *data = json_array(), *u = json_object();
    int32_t d = g->b.dims ? g->b.dims : g->n_embd;
    for (size_t i = 0; i < g->n; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "object", json_string("embedding"));
        json_object_set_new(e, "index", json_integer((json_int_t)i));
        json_object_set_new(e, "embedding", vector_json(g->vec + i * (size_t)g->n_embd, d, g->b.base64));
        json_array_append_new(data, e);
    }
    json_object_set_new(o, "object", json_string("list"));
    json_object_set_new(o, "data", data);
    json_object_set_new(o, "model", json_string(g->s->model_id));
    json_object_set_new(u, "prompt_tokens", json_integer(n_tok));
    json_object_set_new(u, "total_tokens", json_integer(n_tok));
    json_object_set_new(o, "usage", u);
    http_reply_json(r, 200, o);
}

/* The scheduler thread: keep the vector, then post the event. */
static void engine_event(const eng_event *ev, void *user)
{
    bridge_user *bu = user;
    job *j = bu->user;
    emb_group *g = j->grp;
    if (ev->type == ENG_EVENT_DONE && ev->embedding && ev->n_embd == g->n_embd)
        memcpy(g->vec + (size_t)j->index * (size_t)g->n_embd, ev->embedding, (size_t)g->n_embd * sizeof(float));
    bridge_event_cb(ev, user);
}

/* The loop: an input ended. */
static void input_event(job *j, const eng_event *ev)
{
    emb_group *g = j->grp;
    if (ev->type != ENG_EVENT_DONE) return;
    job_done_event(j, ev);
    srv_metrics_gen m = {.n_prompt = j->n_prompt, .n_cached = j->n_cached, .finish = job_finish(j),
                         .cancel_reason = j->cancel_reason, .e2e = now_mono() - j->t_start, .queue = j->t_queue,
                         .tpot = -1, .sparsity = -1};
    srv_metrics_generation(&g->s->mx, &m);
    if (++g->n_done < g->n) return;
    if (g->hr) answer(g);
    else group_free(g);
}

static void on_hangup(hreq *r)
{
    emb_group *g = r->ctx;
    for (size_t i = 0; i < g->n; i++) job_cancel(g->jobs[i], "client_disconnect");
}

static void on_close(hreq *r, const char *reason)
{
    emb_group *g = r->ctx;
    for (size_t i = 0; reason && i < g->n; i++) job_cancel(g->jobs[i], reason);
    g->hr = NULL;
    if (g->n_done == g->n) group_free(g);
}

static const http_hooks EMB_HOOKS = {on_hangup, on_close, NULL};

/* ------------------------------------------------------------------------ */
/* Submission                                                               */
/* ------------------------------------------------------------------------ */

static eng_pooling pooling_of(const srv *s)
{
    if (s->cfg->pooling[0]) return eng_pooling_from_name(s->cfg->pooling);
    eng_pooling p = eng_model_pooling(s->model);
    return p != ENG_POOLING_NONE ? p : ENG_POOLING_MEAN;
}

/* An input's job: the group's, with its index; no text, no sampling. */
static job *input_job(emb_group *g, hreq *r, size_t i)
{
    job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->s = g->s;
    j->bu = (bridge_user){&g->s->br, j};
    j->grp_event = input_event;
    j->grp = g;
    j->index = (int32_t)i;
    j->n_logprobs = -1;
    j->n_prompt = (int32_t)g->b.n_tok[i];
    j->deadline = r->t0 + g->s->cfg->request_timeout;
    j->t_start = r->t0;
    return j;
}

static void submit(hreq *r, emb_body *b)
{
    srv *s = r->s;
    emb_group *g = calloc(1, sizeof *g);
    eng_request_params *ps = calloc(b->n, sizeof *ps);
    eng_request **ers = calloc(b->n, sizeof *ers);
    bool ok = g && ps && ers;
    if (ok) {
        g->s = s;
        g->n = b->n;
        g->b = *b;
        memset(b, 0, sizeof *b);
        g->n_embd = s->info.n_embd;
        g->jobs = calloc(g->n, sizeof *g->jobs);
        g->vec = calloc(g->n * (size_t)g->n_embd, sizeof *g->vec);
        ok = g->jobs && g->vec;
    }
    eng_pooling pool = pooling_of(s);
    uint64_t scope = api_cache_scope(s->cache_secret, r->key, NULL, 0);
    for (size_t i = 0; ok && i < g->n; i++) {
        ok = (g->jobs[i] = input_job(g, r, i)) != NULL;
        ps[i] = (eng_request_params){.prompt = g->b.tok[i], .n_prompt = g->b.n_tok[i], .n_logprobs = -1,
                                     .sampling = eng_sampler_default_params(), .on_event = engine_event,
                                     .user = ok ? &g->jobs[i]->bu : NULL, .cache_scope = scope, .pooling = pool};
    }
    eng_status st = ok ? eng_sched_submit_many(s->sched, ps, g->n, ers) : ENG_ENOMEM;
    free(ps);
    if (st != ENG_OK) {
        if (g && g->jobs) group_free(g);
        else if (g) {
            body_free(&g->b);
            free(g->vec);
            free(g);
        }
        free(ers);
        if (st == ENG_ENOMEM) http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        else if (st == ENG_ECTXFULL)
            http_reply_error(r, 400, "invalid_request_error", "context_length_exceeded", "input",
                             "an input does not fit this server's context or KV budget");
        else http_reply_eng_error(r, st, NULL, NULL);
        return;
    }
    for (size_t i = 0; i < g->n; i++) {
        g->jobs[i]->er = ers[i];
        job_link(g->jobs[i]);
    }
    free(ers);
    g->hr = r;
    http_attach(r, &EMB_HOOKS, g);
    http_suspend(r);
}

static void validated(hreq *r, void *ctx)
{
    emb_work *w = ctx;
    if (r && w->failed)
        http_reply_error(r, w->err.status, w->err.type ? w->err.type : "server_error", w->err.code,
                         w->err.param[0] ? w->err.param : NULL, "%s", w->err.message);
    else if (r && r->s->state != SRV_READY)
        http_reply_error(r, 503, "unavailable_error", "draining", NULL, "the server is shutting down");
    else if (r)
        submit(r, &w->b);
    body_free(&w->b);
    free(w);
}

void api_embeddings(hreq *r)
{
    srv *s = r->s;
    if (s->state != SRV_READY) {
        bool loading = s->state == SRV_LOADING;
        http_reply_error(r, 503, "unavailable_error", loading ? "loading" : "draining", NULL, "%s",
                         loading ? "the model is still loading" : "the server is shutting down");
        return;
    }
    emb_work *w = calloc(1, sizeof *w);
    if (!w) {
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    w->s = s;
    w->body = r->json;
    w->lim = (api_limits){.cfg = s->cfg, .vocab = s->vocab, .chat_fmt = s->chat_fmt, .n_ctx = s->n_ctx,
                          .model = s->model, .model_id = s->model_id, .model_file = s->model_file};
    http_offload(r, validate, validated, w);
}
