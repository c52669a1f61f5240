/*
 * api_openai.c - /v1/chat/completions, /v1/completions and /v1/models.
 *
 * A request body is validated into engine parameters by request.c (every
 * error names its field in "param"; the prompt is tokenized there, on a
 * libuv worker through http_offload, so a 4 MB prompt never stalls the
 * loop), and a job (job.c) is submitted to the scheduler. Engine
 * events come back through the bridge (api_on_event): the job records them
 * (token bytes go through its textbuf: UTF-8 boundaries, stop strings), and
 * the text goes either into the whole response (non-streaming) or into SSE
 * chunks (stream.c). Both paths share the same assembler and the same JSON
 * builders (reply.c), so streamed text equals non-streamed text.
 */
#include "api_openai.h"
#include "api_choices.h"
#include "job.h"
#include "orthorank_json.h"
#include "reply.h"
#include "request.h"
#include "server.h"
#include "stream.h"
#include "tool_reply.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Engine events -> output                                                  */
/* ------------------------------------------------------------------------ */

/* What the textbuf has released: into the stream, or kept for the reply. */
static void deliver_text(job *j, bool force)
{
    size_t n;
    const char *t = textbuf_take(j->tb, &n);
    if (j->stream && j->out) {
        if (n) j->out->text(j, t, n);
    } else if (j->stream && j->tcs) {
        if (n) tool_reply_stream(j, t, n, false);
    } else if (j->stream) {
        stream_text(j, t, n, force);
    } else if (n) {
        sbuf_add(&j->text, t, n);
    }
}

static void reply_whole(job *j)
{
    if (j->echo && j->echo_len) {
        /* echo: the prompt, then the completion */
        sbuf t = {0};
        sbuf_add(&t, j->echo_text, j->echo_len);
        sbuf_add(&t, j->text.p ? j->text.p : "", j->text.n);
        free(j->text.p);
        j->text = t;
    }
    reply_head h = job_head(j);
    reply_counts c = job_counts(j);
    json_t *lp = j->n_logprobs >= 0 ? job_logprobs_json(j, 0, j->n_lps) : NULL;
    if (j->tcs) { /* tool calls, reasoning_content */
        json_t *m = tool_reply_message(j, j->text.p, j->text.n);
        http_reply_json(j->hr, 200, reply_completion_msg(&h, m, NULL, 0, lp, tool_reply_finish(j), &c,
                                                         job_orthorank_json(j)));
        return;
    }
    http_reply_json(j->hr, 200, reply_completion(&h, j->text.p, j->text.n, lp, job_finish(j), &c,
                                                 job_orthorank_json(j)));
}

/* A generation that did not complete: 504 (timeout), 503 (cancelled
 * otherwise) or the engine's failure (a 5xx: reply_status_from_done); in
 * the stream when it has started. A client that hung up gets nothing: its
 * request ends as 499. */
static void reply_failure(job *j)
{
    unsigned st;
    if (!j->stream && job_cancelled(j) && !strcmp(j->cancel_reason, "client_disconnect")) {
        http_abandon(j->hr);
        return;
    }
    const char *type = "server_error", *code = NULL;
    char msg[200];
    if (job_cancelled(j) && !strcmp(j->cancel_reason, "timeout")) {
        st = 504;
        type = "timeout_error";
        code = "request_timeout";
        snprintf(msg, sizeof msg, "the request took longer than the server's limit of %g s",
                 j->s->cfg->request_timeout);
    } else if (job_cancelled(j)) {
        st = 503;
        type = "unavailable_error";
        code = "shutdown";
        snprintf(msg, sizeof msg, "the request was cancelled (%s)", j->cancel_reason);
    } else {
        st = reply_status_from_done(j->status, &type, &code);
        snprintf(msg, sizeof msg, "generation failed: %s", eng_strerror(j->status));
    }
    if (j->out) j->out->fail(j, st, type, code, msg);
    else if (j->stream) stream_error(j, type, code, msg);
    else http_reply_error(j->hr, st, type, code, NULL, "%s", msg);
}

/* Count the finished generation in the metrics. */
static void observe_end(job *j)
{
    srv_metrics_gen g = {.n_prompt = j->n_prompt, .n_gen = j->n_gen, .n_cached = j->n_cached,
                         .finish = job_finish(j), .cancel_reason = j->cancel_reason,
                         .orthorank = &j->orthorank, .e2e = now_mono() - j->t_start, .queue = j->t_queue,
                         .tpot = j->n_gen >= 2 ? (j->t_last - j->t_first) / (j->n_gen - 1) : -1,
                         .sparsity = job_sparsity(j)};
    srv_metrics_generation(&j->s->mx, &g);
}

/* The request is still there: its access-line facts, the last text, and
 * the end of the response. */
static void answer(job *j)
{
    hreq *r = j->hr;
    r->gen.n_in = j->n_prompt;
    r->gen.n_out = j->n_gen;
    r->gen.n_cached = j->n_cached;
    r->gen.ttft = j->n_gen > 0 ? j->t_first - j->t_start : -1;
    r->gen.sparsity = job_sparsity(j);
    bool failed = job_cancelled(j) || j->finish == ENG_FINISH_ERROR;
    if (job_cancelled(j) && !r->gen.cancel_reason) r->gen.cancel_reason = j->cancel_reason;
    if (!j->stop_hit && !job_cancelled(j)) textbuf_finish(j->tb);
    if (j->stream && !j->echo_sent) stream_text(j, "", 0, true);
    deliver_text(j, true);
    if (!failed && j->stream && j->tcs && !j->out) tool_reply_stream(j, "", 0, true);
    if (failed) reply_failure(j);
    else if (j->out) j->out->finish(j);
    else if (j->stream) stream_finish(j, tool_reply_finish(j));
    else reply_whole(j);
}

static void on_done(job *j, const eng_event *ev)
{
    job_done_event(j, ev);
    observe_end(j);
    if (j->hr) answer(j);
    if (!j->hr) job_free(j);
}

void api_on_event(const eng_event *ev, void *user)
{
    (void)user; /* the server; the job is the request's own pointer */
    job *j = ev->user;
    if (j->grp_event) { /* one of a group (api_choices.c, api_embeddings.c) */
        j->grp_event(j, ev);
        return;
    }
    switch (ev->type) {
    case ENG_EVENT_PROMPT: job_prompt_event(j, ev); break;
    case ENG_EVENT_TOKEN:
        if (job_token_event(j, ev)) deliver_text(j, false);
        break;
    case ENG_EVENT_DONE: on_done(j, ev); break;
    }
}

/* ------------------------------------------------------------------------ */
/* Submission                                                               */
/* ------------------------------------------------------------------------ */

bool api_server_ready(hreq *r)
{
    srv *s = r->s;
    if (s->state == SRV_LOADING) {
        http_reply_error(r, 503, "unavailable_error", "loading", NULL, "the model is still loading");
        return false;
    }
    if (s->state != SRV_READY) {
        http_reply_error(r, 503, "unavailable_error", "draining", NULL, "the server is shutting down");
        return false;
    }
    return true;
}

api_limits api_limits_of(srv *s)
{
    return (api_limits){.cfg = s->cfg, .vocab = s->vocab, .chat_fmt = s->chat_fmt, .tmpl = s->tmpl, .n_ctx = s->n_ctx,
                        .model = s->model, .model_id = s->model_id, .model_file = s->model_file,
                        .gcache = s->gcache};
}

static void reply_submit_error(hreq *r, const api_request *req, eng_status st)
{
    if (st == ENG_ECTXFULL)
        http_reply_error(r, 400, "invalid_request_error", "context_length_exceeded", req->prompt_param,
                         "the %s (%zu tokens) does not fit this model's context (%d tokens)",
                         req->chat ? "conversation" : "prompt", req->p.n_prompt, r->s->n_ctx);
    else if (st == ENG_EINVAL)
        http_reply_eng_error(r, st, NULL, "the request's parameters were refused by the engine");
    else
        http_reply_eng_error(r, st, NULL, NULL);
}

void api_submit(hreq *r, api_request *req, const job_output *out, void *out_ctx)
{
    srv *s = r->s;
    if (req->n_choices > 1) { /* "n": several choices of one prompt */
        choices_submit(r, req, 1);
        return;
    }
    job *j = job_new(r, req);
    if (!j) {
        if (out && out->release) out->release(out_ctx);
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    j->out = out;
    j->out_ctx = out_ctx;
    req->p.orthorank = &req->orthorank;
    req->p.on_event = bridge_event_cb;
    req->p.user = &j->bu;
    req->p.cache_scope = api_cache_scope(s->cache_secret, r->key, req->cache_salt, req->cache_salt_len);
    eng_status st = eng_sched_submit(s->sched, &req->p, &j->er);
    r->gen.n_in = (int64_t)req->p.n_prompt;
    if (st != ENG_OK) {
        j->er = NULL;
        job_free(j);
        reply_submit_error(r, req, st);
        return;
    }
    job_link(j);
    job_attach(j, r);
    if (j->stream) {
        if (j->out) j->out->begin(j);
        else stream_begin(j);
        http_start_stream(r);
    } else {
        http_suspend(r);
    }
}

/* ------------------------------------------------------------------------ */
/* Endpoints                                                                */
/* ------------------------------------------------------------------------ */

/* A completion body being validated and tokenized on a worker: it reads
 * only this (lim's config and vocabulary do not change while serving). */
typedef struct {
    api_limits lim;
    bool chat;
    json_t *body; /* r->json, which lives as long as r */
    int rc;
    api_request req;
    api_error err;
} validation;

static void validate_work(void *ctx)
{
    validation *v = ctx;
    v->rc = v->chat ? api_parse_chat(&v->lim, v->body, &v->req, &v->err)
                    : api_parse_completions(&v->lim, v->body, &v->req, &v->err);
}

/* Back on the loop: submit (unless the server began draining meanwhile) or
 * reply with the error. r is NULL when the request is gone. */
static void validate_done(hreq *r, void *ctx)
{
    validation *v = ctx;
    if (r && v->rc)
        http_reply_error(r, v->err.status, v->err.type, v->err.code, v->err.param[0] ? v->err.param : NULL, "%s",
                         v->err.message);
    else if (r && api_server_ready(r))
        api_submit(r, &v->req, NULL, NULL);
    if (!v->rc) api_request_free(&v->req);
    free(v);
}

/* Validate (request.c, off the loop), then submit or reply with the error. */
static void completion(hreq *r, bool chat)
{
    if (!api_server_ready(r)) return;
    if (!chat && choices_is_prompt_list(r->json)) { /* several prompts */
        api_limits lim = api_limits_of(r->s);
        choices_completions(r, &lim);
        return;
    }
    validation *v = calloc(1, sizeof *v);
    if (!v) {
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    v->lim = api_limits_of(r->s);
    v->chat = chat;
    v->body = r->json;
    http_offload(r, validate_work, validate_done, v);
}

void api_chat(hreq *r) { completion(r, true); }
void api_completions(hreq *r) { completion(r, false); }

static json_t *model_json(srv *s)
{
    json_t *m = json_object();
    json_object_set_new(m, "id", json_string(s->model_id));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer((json_int_t)s->created));
    json_object_set_new(m, "owned_by", json_string("orthoserve"));
    if (s->sched) {
        json_t *meta = json_object();
        json_object_set_new(meta, "n_ctx", json_integer(s->n_ctx));
        json_object_set_new(meta, "n_ctx_train", json_integer(s->info.n_ctx_train));
        json_object_set_new(meta, "n_vocab", json_integer(s->info.n_vocab));
        json_object_set_new(meta, "n_layer", json_integer(s->info.n_layer));
        json_object_set_new(meta, "n_params", json_integer((json_int_t)s->info.n_params));
        json_object_set_new(meta, "chat_template", json_string(s->tmpl ? "jinja" : eng_chat_format_name(s->chat_fmt)));
        json_object_set_new(m, "meta", meta);
    }
    return m;
}

void api_models(hreq *r)
{
    json_t *o = json_object(), *data = json_array();
    json_array_append_new(data, model_json(r->s));
    json_object_set_new(o, "object", json_string("list"));
    json_object_set_new(o, "data", data);
    http_reply_json(r, 200, o);
}

void api_model(hreq *r)
{
    srv *s = r->s;
    api_limits lim = api_limits_of(s);
    if (!api_model_name_ok(&lim, r->path_rest)) {
        http_reply_error(r, 404, "not_found_error", "model_not_found", "model", "the model '%s' does not exist",
                         r->path_rest);
        return;
    }
    http_reply_json(r, 200, model_json(s));
}
