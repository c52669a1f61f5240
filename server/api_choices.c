/*
 * api_choices.c - completion requests answered with several choices: "n" > 1
 * on both endpoints, and on /v1/completions "prompt" as a list of prompts
 * (one choice per prompt, times n, in prompt order: choice index =
 * prompt * n + j).
 *
 * Every choice is a job (job.c) of one group, and all of them go to the
 * engine in one eng_sched_submit_many, so they share batch steps; the n
 * choices of a prompt are one engine family: the prompt is computed once and
 * its KV shared (usage counts it once; the prompt-token metric too). A
 * choice's events come here (job.grp_event). Seeds: choice j of a prompt
 * samples with seed + j, where seed is the body's "seed" or one drawn for the
 * request, so choice j equals the same request with n = 1 and "seed":
 * seed + j. Echo + logprobs: the prompt's log-probabilities come from the
 * family's leader and are copied to its other choices.
 *
 * Non-streamed: one response, every choice in index order. Streamed: the
 * choices' chunks interleave in one SSE stream (the first job's, the others
 * write into it through job.sink), each chunk with its choice's index; a
 * choice's finish chunk when it ends; after the last, usage (with
 * include_usage) and [DONE].
 */
#include "api_choices.h"
#include "job.h"
#include "reply.h"
#include "request.h"
#include "server.h"
#include "stream.h"
#include "tool_reply.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    srv *s;
    hreq *hr;            /* NULL once the request is gone */
    job **jobs;          /* (n) in index order */
    size_t n, n_done;
    int32_t per_prompt;  /* n: choices per prompt */
    bool stream;
    bool *lp_copied;     /* (n) a choice has its leader's prompt log-probabilities */
} group;

static void group_free(group *g)
{
    for (size_t i = 0; i < g->n; i++) job_free(g->jobs[i]);
    free(g->jobs);
    free(g->lp_copied);
    free(g);
}

static job *leader_of(const group *g, const job *j)
{
    return g->jobs[(size_t)j->index / (size_t)g->per_prompt * (size_t)g->per_prompt];
}

/* ------------------------------------------------------------------------ */
/* Events                                                                   */
/* ------------------------------------------------------------------------ */

/* A choice that is not its family's leader gets the leader's prompt
 * log-probabilities (echo), before its first token: the engine computes
 * the prompt once, and the leader's prompt events all precede the fork. */
static void copy_prompt_lps(group *g, job *j)
{
    job *l = leader_of(g, j);
    if (g->lp_copied[j->index] || l == j || !j->echo || j->n_logprobs < 0) return;
    g->lp_copied[j->index] = true;
    for (size_t i = 1; i < l->n_lps && i < (size_t)l->n_prompt; i++) {
        if (j->n_lps == j->cap_lps) {
            size_t cap = j->cap_lps ? 2 * j->cap_lps : 64;
            lp_entry *nl = realloc(j->lps, cap * sizeof *nl);
            if (!nl) return;
            j->lps = nl;
            j->cap_lps = cap;
        }
        j->lps[j->n_lps++] = l->lps[i];
    }
    j->tok_chars = l->tok_chars;
}

static void deliver(job *j, bool force)
{
    size_t n;
    const char *t = textbuf_take(j->tb, &n);
    if (j->stream && j->tcs) {
        if (n || force) tool_reply_stream(j, t, n, force);
    } else if (j->stream) {
        stream_text(j, t, n, force);
    } else if (n) {
        sbuf_add(&j->text, t, n);
    }
}

/* The counts of the whole group: each prompt once (its leader's), every
 * choice's tokens. */
static reply_counts totals(const group *g)
{
    reply_counts c = job_counts(g->jobs[0]);
    c.n_prompt = c.n_gen = c.n_cached = 0;
    for (size_t i = 0; i < g->n; i++) {
        const job *j = g->jobs[i];
        c.n_gen += j->n_gen;
        if (i % (size_t)g->per_prompt) continue;
        c.n_prompt += j->n_prompt;
        c.n_cached += j->n_cached;
        if (j->t_prompt > c.t_prompt) c.t_prompt = j->t_prompt;
        if (j->t_generate > c.t_generate) c.t_generate = j->t_generate;
    }
    return c;
}

static bool failed(const job *j) { return job_cancelled(j) || j->finish == ENG_FINISH_ERROR; }

/* The first choice that failed, or NULL. */
static const job *first_failure(const group *g)
{
    for (size_t i = 0; i < g->n; i++)
        if (failed(g->jobs[i])) return g->jobs[i];
    return NULL;
}

static void reply_failed(group *g, const job *j)
{
    if (!g->stream && job_cancelled(j) && j->cancel_reason && !strcmp(j->cancel_reason, "client_disconnect")) {
        http_abandon(g->hr);
        return;
    }
    unsigned st = 503;
    const char *type = "unavailable_error", *code = "shutdown";
    char msg[200];
    if (job_cancelled(j) && j->cancel_reason && !strcmp(j->cancel_reason, "timeout")) {
        st = 504;
        type = "timeout_error";
        code = "request_timeout";
        snprintf(msg, sizeof msg, "the request took longer than the server's limit of %g s", g->s->cfg->request_timeout);
    } else if (job_cancelled(j)) {
        snprintf(msg, sizeof msg, "the request was cancelled (%s)", j->cancel_reason ? j->cancel_reason : "unknown");
    } else {
        st = reply_status_from_done(j->status, &type, &code);
        snprintf(msg, sizeof msg, "generation failed: %s", eng_strerror(j->status));
    }
    if (g->stream) stream_error(g->jobs[0], type, code, msg);
    else http_reply_error(g->hr, st, type, code, NULL, "%s", msg);
}

/* Every choice in one response, in index order. */
static void reply_all(group *g, const reply_counts *c)
{
    json_t *o = NULL;
    for (size_t i = 0; i < g->n; i++) {
        job *j = g->jobs[i];
        sbuf t = {0};
        if (j->echo && j->echo_len) sbuf_add(&t, j->echo_text, j->echo_len);
        sbuf_add(&t, j->text.p ? j->text.p : "", j->text.n);
        reply_head h = job_head(j);
        json_t *lp = j->n_logprobs >= 0 ? job_logprobs_json(j, 0, j->n_lps) : NULL;
        json_t *m = j->tcs ? tool_reply_message(j, t.p, t.n) : NULL; /* tool calls, reasoning */
        json_t *one = m ? reply_completion_msg(&h, m, NULL, 0, lp, tool_reply_finish(j), c,
                                               i ? NULL : job_orthorank_json(j))
                        : reply_completion(&h, t.p ? t.p : "", t.n, lp, job_finish(j), c,
                                           i ? NULL : job_orthorank_json(j));
        free(t.p);
        if (!o) {
            o = one;
            continue;
        }
        json_array_append(json_object_get(o, "choices"), json_array_get(json_object_get(one, "choices"), 0));
        json_decref(one);
    }
    http_reply_json(g->hr, 200, o);
}

/* The last choice ended: the answer (or the stream's end). */
static void answer(group *g, job *last)
{
    hreq *r = g->hr;
    reply_counts c = totals(g);
    r->gen.n_in = c.n_prompt;
    r->gen.n_out = c.n_gen;
    r->gen.n_cached = c.n_cached;
    r->gen.ttft = g->jobs[0]->n_gen > 0 ? g->jobs[0]->t_first - g->jobs[0]->t_start : -1;
    const job *bad = first_failure(g);
    if (bad) {
        if (!r->gen.cancel_reason && job_cancelled(bad)) r->gen.cancel_reason = bad->cancel_reason;
        reply_failed(g, bad);
    } else if (g->stream) {
        reply_head h = job_head(last);
        json_t *chunks = json_array();
        reply_stream_end(&h, tool_reply_finish(last), &c, job_orthorank_json(g->jobs[0]), chunks);
        for (size_t i = 0; i < json_array_size(chunks); i++) stream_record(last, json_incref(json_array_get(chunks, i)));
        json_decref(chunks);
        stream_done(g->jobs[0]);
    } else {
        reply_all(g, &c);
    }
}

static void choice_done(group *g, job *j, const eng_event *ev)
{
    bool lead = leader_of(g, j) == j;
    copy_prompt_lps(g, j);
    job_done_event(j, ev);
    srv_metrics_gen m = {.n_prompt = lead ? j->n_prompt : 0, .n_gen = j->n_gen, .n_cached = lead ? j->n_cached : 0,
                         .finish = job_finish(j), .cancel_reason = j->cancel_reason, .orthorank = &j->orthorank,
                         .e2e = now_mono() - j->t_start, .queue = j->t_queue,
                         .tpot = j->n_gen >= 2 ? (j->t_last - j->t_first) / (j->n_gen - 1) : -1,
                         .sparsity = job_sparsity(j)};
    srv_metrics_generation(&g->s->mx, &m);
    g->n_done++;
    if (g->hr) {
        if (!j->stop_hit && !job_cancelled(j)) textbuf_finish(j->tb);
        if (j->stream && !j->echo_sent && !failed(j)) stream_text(j, "", 0, true);
        deliver(j, true);
        if (g->stream && !failed(j) && g->n_done < g->n) {
            reply_head h = job_head(j);
            stream_record(j, reply_chunk(&h, NULL, 0, false, tool_reply_finish(j), NULL));
        }
        if (g->n_done == g->n) answer(g, j);
    }
    if (g->n_done == g->n && !g->hr) group_free(g);
}

static void group_event(job *j, const eng_event *ev)
{
    group *g = j->grp;
    switch (ev->type) {
    case ENG_EVENT_PROMPT: job_prompt_event(j, ev); break;
    case ENG_EVENT_TOKEN:
        copy_prompt_lps(g, j);
        if (job_token_event(j, ev) && g->hr) deliver(j, false);
        break;
    case ENG_EVENT_DONE: choice_done(g, j, ev); break;
    }
}

/* ------------------------------------------------------------------------ */
/* The request's hooks                                                      */
/* ------------------------------------------------------------------------ */

static void on_hangup(hreq *r)
{
    group *g = r->ctx;
    for (size_t i = 0; i < g->n; i++) job_cancel(g->jobs[i], "client_disconnect");
}

static void on_close(hreq *r, const char *reason)
{
    group *g = r->ctx;
    for (size_t i = 0; reason && i < g->n; i++) job_cancel(g->jobs[i], reason);
    g->hr = NULL;
    g->jobs[0]->hr = NULL;
    if (g->n_done == g->n) group_free(g);
}

static long on_read(hreq *r, char *buf, size_t max)
{
    group *g = r->ctx;
    return job_stream_read(g->jobs[0], buf, max);
}

static const http_hooks GROUP_HOOKS = {on_hangup, on_close, on_read};

/* ------------------------------------------------------------------------ */
/* Submission                                                               */
/* ------------------------------------------------------------------------ */

/* The jobs of the group: n per prompt, sharing the first one's id. */
static bool make_jobs(group *g, hreq *r, api_request *reqs, size_t n_prompts)
{
    size_t per = (size_t)g->per_prompt;
    for (size_t p = 0, k = 0; p < n_prompts; p++) {
        api_request *req = &reqs[p];
        char *echo = req->echo_text ? strndup(req->echo_text, req->echo_len) : NULL;
        for (size_t c = 0; c < per; c++, k++) {
            if (c > 0 && echo) req->echo_text = strndup(echo, req->echo_len);
            job *j = g->jobs[k] = job_new(r, req); /* draws the seed when the body gave none */
            req->seeded = true;
            if (!j) {
                free(echo);
                return false;
            }
            j->grp_event = group_event;
            j->grp = g;
            j->index = (int32_t)k;
            j->sink = g->stream && k > 0 ? g->jobs[0] : NULL;
            if (k > 0) {
                memcpy(j->id, g->jobs[0]->id, sizeof j->id);
                j->created = g->jobs[0]->created;
            }
        }
        free(echo);
    }
    return true;
}

static void reply_submit_error(hreq *r, const api_request *req, eng_status st)
{
    if (st == ENG_ECTXFULL)
        http_reply_error(r, 400, "invalid_request_error", "context_length_exceeded", req->prompt_param,
                         "the %s (%zu tokens) with its %d choices does not fit this server's context or KV budget",
                         req->chat ? "conversation" : "prompt", req->p.n_prompt, req->n_choices);
    else if (st == ENG_EINVAL)
        http_reply_eng_error(r, st, NULL, "the request's parameters were refused by the engine");
    else
        http_reply_eng_error(r, st, NULL, NULL);
}

/* The engine parameters of every choice (seed + j, the family links). */
static eng_request_params *choice_params(group *g, hreq *r, api_request *reqs)
{
    srv *s = g->s;
    size_t per = (size_t)g->per_prompt;
    eng_request_params *ps = calloc(g->n, sizeof *ps);
    for (size_t k = 0; ps && k < g->n; k++) {
        api_request *req = &reqs[k / per];
        eng_request_params *p = &ps[k];
        *p = req->p;
        p->sampling.seed = req->p.sampling.seed + (uint64_t)(k % per);
        p->orthorank = &req->orthorank;
        p->on_event = bridge_event_cb;
        p->user = &g->jobs[k]->bu;
        p->cache_scope = api_cache_scope(s->cache_secret, r->key, req->cache_salt, req->cache_salt_len);
        p->fork_of = k % per ? (int32_t)(k / per * per + 1) : 0;
    }
    return ps;
}

void choices_submit(hreq *r, api_request *reqs, size_t n_prompts)
{
    srv *s = r->s;
    group *g = calloc(1, sizeof *g);
    size_t n = n_prompts * (size_t)reqs[0].n_choices;
    if (g) {
        g->s = s;
        g->n = n;
        g->per_prompt = reqs[0].n_choices;
        g->stream = reqs[0].stream;
        g->jobs = calloc(n, sizeof *g->jobs);
        g->lp_copied = calloc(n, sizeof *g->lp_copied);
    }
    eng_request **ers = calloc(n, sizeof *ers);
    eng_request_params *ps = NULL;
    if (!g || !g->jobs || !g->lp_copied || !ers || !make_jobs(g, r, reqs, n_prompts) ||
        !(ps = choice_params(g, r, reqs))) {
        if (g && g->jobs) group_free(g);
        else free(g);
        free(ers);
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    eng_status st = eng_sched_submit_many(s->sched, ps, n, ers);
    free(ps);
    r->gen.n_in = (int64_t)reqs[0].p.n_prompt;
    if (st != ENG_OK) {
        group_free(g);
        free(ers);
        reply_submit_error(r, &reqs[0], st);
        return;
    }
    for (size_t k = 0; k < n; k++) {
        g->jobs[k]->er = ers[k];
        job_link(g->jobs[k]);
    }
    free(ers);
    g->hr = r;
    g->jobs[0]->hr = r; /* the stream's owner: appending wakes r */
    http_attach(r, &GROUP_HOOKS, g);
    if (g->stream) {
        for (size_t k = 0; k < n; k++) stream_begin(g->jobs[k]);
        http_start_stream(r);
    } else {
        http_suspend(r);
    }
}

/* ------------------------------------------------------------------------ */
/* /v1/completions with a list of prompts                                   */
/* ------------------------------------------------------------------------ */

bool choices_is_prompt_list(json_t *body)
{
    json_t *pr = json_object_get(body, "prompt");
    if (!json_is_array(pr) || json_array_size(pr) < 2) return false;
    json_t *e = json_array_get(pr, 0);
    return json_is_string(e) || json_is_array(e);
}

typedef struct {
    api_limits lim;
    json_t *body;
    api_request *reqs;
    size_t n, n_ok;
    api_error err;
    bool failed;
} prompts_work;

/* Each prompt as the body with that one prompt (a shallow copy: the values
 * are the body's, which outlives the requests). Worker thread. */
static void prompts_parse(void *ctx)
{
    prompts_work *w = ctx;
    json_t *pr = json_object_get(w->body, "prompt");
    w->n = json_array_size(pr);
    if (w->n > (size_t)w->lim.cfg->max_prompts) {
        w->failed = true;
        w->err = (api_error){.status = 400, .type = "invalid_request_error", .code = "invalid_value"};
        snprintf(w->err.param, sizeof w->err.param, "prompt");
        snprintf(w->err.message, sizeof w->err.message, "'prompt' lists %zu prompts; the server takes at most %ld",
                 w->n, w->lim.cfg->max_prompts);
        return;
    }
    w->reqs = calloc(w->n, sizeof *w->reqs);
    for (size_t i = 0; w->reqs && i < w->n && !w->failed; i++) {
        json_t *one = json_copy(w->body);
        json_t *e = json_array_get(pr, i);
        if (!one || (!json_is_string(e) && !json_is_array(e)) || json_object_set(one, "prompt", e)) {
            w->failed = true;
            w->err = (api_error){.status = 400, .type = "invalid_request_error", .code = "invalid_type"};
            snprintf(w->err.param, sizeof w->err.param, "prompt[%zu]", i);
            snprintf(w->err.message, sizeof w->err.message,
                     "'prompt[%zu]' must be a string or an array of token ids (in a list of prompts)", i);
        } else if (api_parse_completions(&w->lim, one, &w->reqs[i], &w->err)) {
            w->failed = true;
            if (!strcmp(w->err.param, "prompt")) snprintf(w->err.param, sizeof w->err.param, "prompt[%zu]", i);
        } else {
            w->n_ok++;
        }
        json_decref(one);
    }
    if (!w->reqs) {
        w->failed = true;
        w->err = (api_error){.status = 500, .type = "server_error"};
        snprintf(w->err.message, sizeof w->err.message, "out of memory");
    }
}

static void prompts_done(hreq *r, void *ctx)
{
    prompts_work *w = ctx;
    if (r && w->failed)
        http_reply_error(r, w->err.status, w->err.type, w->err.code, w->err.param[0] ? w->err.param : NULL, "%s",
                         w->err.message);
    else if (r && r->s->state != SRV_READY)
        http_reply_error(r, 503, "unavailable_error", "draining", NULL, "the server is shutting down");
    else if (r)
        choices_submit(r, w->reqs, w->n);
    for (size_t i = 0; i < w->n_ok; i++) api_request_free(&w->reqs[i]);
    free(w->reqs);
    free(w);
}

void choices_completions(hreq *r, const api_limits *lim)
{
    prompts_work *w = calloc(1, sizeof *w);
    if (!w) {
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    w->lim = *lim;
    w->body = r->json;
    http_offload(r, prompts_parse, prompts_done, w);
}
