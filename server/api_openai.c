/*
 * api_openai.c - /v1/chat/completions, /v1/completions and /v1/models.
 *
 * A request body is validated into engine parameters by request.c (every
 * error names its field in "param"; the prompt is tokenized there, on the
 * loop thread), and a job is submitted to the scheduler. Engine events come back
 * through the bridge (api_on_event): token bytes go through the job's
 * textbuf (UTF-8 boundaries, stop strings), then either into the whole
 * response (non-streaming) or into SSE chunks (stream.c). Both paths share
 * the same assembler, so streamed text equals non-streamed text.
 */
#include "job.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */


static uint64_t rng_state;

static uint64_t rng_next(void)
{
    if (!rng_state) {
        FILE *f = fopen("/dev/urandom", "rb");
        if (!f || fread(&rng_state, sizeof rng_state, 1, f) != 1) rng_state = (uint64_t)time(NULL) * 2654435761u;
        if (f) fclose(f);
        rng_state |= 1;
    }
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static json_t *lp_value(float lp)
{
    /* JSON has no -Infinity; OpenAI reports impossible tokens as -9999. */
    return json_real(isfinite(lp) ? (double)lp : -9999.0);
}

/* The bytes a token renders to; at most cap bytes. */
static size_t piece_bytes(srv *s, int32_t id, char *buf, size_t cap)
{
    size_t n = 0;
    if (eng_token_to_piece(s->vocab, id, false, buf, cap, &n) != ENG_OK) return 0;
    return n;
}

static json_t *piece_string(srv *s, int32_t id)
{
    char buf[256];
    size_t n = piece_bytes(s, id, buf, sizeof buf), cl;
    char *clean = utf8_sanitize(buf, n, &cl);
    json_t *j = clean ? json_stringn(clean, cl) : json_string("");
    free(clean);
    return j;
}

static json_t *bytes_array(const char *p, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer((unsigned char)p[i]));
    return a;
}

static bool model_name_ok(srv *s, const char *name)
{
    return !strcmp(name, s->model_id) || !strcmp(name, s->model_file);
}

/* ------------------------------------------------------------------------ */
/* Jobs                                                                     */
/* ------------------------------------------------------------------------ */

static void job_free(job *j)
{
    if (!j) return;
    if (j->er) eng_request_release(j->er);
    textbuf_free(j->tb);
    free(j->text.p);
    free(j->lps);
    free(j->sse.p);
    free(j->echo_text);
    free(j);
}

static void job_unlink(job *j)
{
    srv *s = j->s;
    if (j->prev) j->prev->next = j->next;
    else if (s->jobs == j) s->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    j->prev = j->next = NULL;
    s->n_jobs--;
}

void job_cancel(job *j, const char *reason)
{
    if (j->done || j->stop_hit) return;
    if (!j->cancel_reason) j->cancel_reason = reason;
    if (j->hr && !j->hr->cancel_reason) j->hr->cancel_reason = reason;
    eng_request_cancel(j->er);
}

void job_detach(job *j, const char *reason)
{
    if (reason) job_cancel(j, reason);
    if (j->hr) j->hr->job = NULL;
    j->hr = NULL;
    if (j->done) job_free(j);
}

void jobs_sweep(srv *s, double now)
{
    for (job *j = s->jobs; j; j = j->next)
        if (!j->done && now > j->deadline) job_cancel(j, "timeout");
}

static bool lp_push(job *j, const lp_entry *e)
{
    if (j->n_lps == j->cap_lps) {
        size_t cap = j->cap_lps ? 2 * j->cap_lps : 64;
        lp_entry *n = realloc(j->lps, cap * sizeof *n);
        if (!n) return false;
        j->lps = n;
        j->cap_lps = cap;
    }
    j->lps[j->n_lps++] = *e;
    return true;
}

static void lp_from_event(job *j, const eng_event *ev, lp_entry *e)
{
    memset(e, 0, sizeof *e);
    e->token = ev->token;
    e->lp = ev->logprob;
    e->n_top = ev->n_top < ENG_MAX_TOP_LOGPROBS ? ev->n_top : ENG_MAX_TOP_LOGPROBS;
    if (e->n_top > j->n_logprobs) e->n_top = j->n_logprobs;
    for (int32_t i = 0; i < e->n_top; i++) {
        e->top_ids[i] = ev->top_ids[i];
        e->top_lps[i] = ev->top_logprobs[i];
    }
}

/* Count a token's text for text_offset. */
static size_t piece_chars(srv *s, int32_t id)
{
    char buf[256];
    size_t n = piece_bytes(s, id, buf, sizeof buf), cl;
    char *clean = utf8_sanitize(buf, n, &cl);
    size_t c = clean ? utf8_count(clean, cl) : 0;
    free(clean);
    return c;
}

/* Log-probabilities lps[from..to) in the shape of the endpoint. */
json_t *job_logprobs_json(job *j, size_t from, size_t to)
{
    srv *s = j->s;
    if (j->chat) {
        json_t *content = json_array();
        for (size_t i = from; i < to; i++) {
            const lp_entry *e = &j->lps[i];
            char buf[256];
            size_t n = piece_bytes(s, e->token, buf, sizeof buf);
            json_t *o = json_object();
            json_object_set_new(o, "token", piece_string(s, e->token));
            json_object_set_new(o, "logprob", lp_value(e->lp));
            json_object_set_new(o, "bytes", bytes_array(buf, n));
            json_t *top = json_array();
            for (int32_t t = 0; t < e->n_top; t++) {
                json_t *to_ = json_object();
                size_t tn = piece_bytes(s, e->top_ids[t], buf, sizeof buf);
                json_object_set_new(to_, "token", piece_string(s, e->top_ids[t]));
                json_object_set_new(to_, "logprob", lp_value(e->top_lps[t]));
                json_object_set_new(to_, "bytes", bytes_array(buf, tn));
                json_array_append_new(top, to_);
            }
            json_object_set_new(o, "top_logprobs", top);
            json_array_append_new(content, o);
        }
        json_t *o = json_object();
        json_object_set_new(o, "content", content);
        json_object_set_new(o, "refusal", json_null());
        return o;
    }
    json_t *tokens = json_array(), *tlp = json_array(), *top = json_array(), *off = json_array();
    for (size_t i = from; i < to; i++) {
        const lp_entry *e = &j->lps[i];
        json_array_append_new(tokens, piece_string(s, e->token));
        json_array_append_new(tlp, e->null_lp ? json_null() : lp_value(e->lp));
        if (e->null_lp) {
            json_array_append_new(top, json_null());
        } else {
            json_t *d = json_object();
            for (int32_t t = 0; t < e->n_top; t++) {
                json_t *key = piece_string(s, e->top_ids[t]);
                /* Two ids with the same text: keep the more likely (listed first). */
                if (!json_object_get(d, json_string_value(key)))
                    json_object_set_new(d, json_string_value(key), lp_value(e->top_lps[t]));
                json_decref(key);
            }
            json_array_append_new(top, d);
        }
        json_array_append_new(off, json_integer((json_int_t)e->offset));
    }
    json_t *o = json_object();
    json_object_set_new(o, "tokens", tokens);
    json_object_set_new(o, "token_logprobs", tlp);
    json_object_set_new(o, "top_logprobs", top);
    json_object_set_new(o, "text_offset", off);
    return o;
}

json_t *job_usage_json(job *j)
{
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(j->n_prompt));
    json_object_set_new(u, "completion_tokens", json_integer(j->n_gen));
    json_object_set_new(u, "total_tokens", json_integer(j->n_prompt + j->n_gen));
    json_t *d = json_object();
    json_object_set_new(d, "cached_tokens", json_integer(j->n_cached));
    json_object_set_new(u, "prompt_tokens_details", d);
    return u;
}

json_t *job_orthorank_json(job *j)
{
    return orthorank_json(&j->orthorank);
}

json_t *job_timings_json(job *j)
{
    json_t *t = json_object();
    json_object_set_new(t, "queue_ms", json_real(j->t_queue * 1e3));
    json_object_set_new(t, "prompt_n", json_integer(j->n_prompt));
    json_object_set_new(t, "prompt_ms", json_real(j->t_prompt * 1e3));
    json_object_set_new(t, "predicted_n", json_integer(j->n_gen));
    json_object_set_new(t, "predicted_ms", json_real(j->t_generate * 1e3));
    return t;
}


static const char *finish_name(job *j)
{
    if (j->stop_hit || j->finish == ENG_FINISH_STOP) return "stop";
    return "length";
}

static void deliver_text(job *j, bool force)
{
    size_t n;
    const char *t = textbuf_take(j->tb, &n);
    if (j->stream) {
        stream_text(j, t, n, force);
    } else if (n) {
        sbuf_add(&j->text, t, n);
    }
}

static void on_prompt(job *j, const eng_event *ev)
{
    if (!j->echo || j->n_logprobs < 0) return;
    lp_entry e;
    lp_from_event(j, ev, &e);
    e.offset = j->tok_chars;
    j->tok_chars += piece_chars(j->s, ev->token);
    lp_push(j, &e);
}

static void on_token(job *j, const eng_event *ev)
{
    if (j->stop_hit || j->done) return;
    srv *s = j->s;
    if (j->n_gen == 0 && j->echo) j->tok_chars = utf8_count(j->echo_text, j->echo_len);
    j->n_gen++;
    /* TTFT and inter-token latency, as the loop sees the tokens. */
    double now = now_mono();
    if (j->n_gen == 1) {
        j->t_first = now;
        metric_observe(s->h_ttft, NULL, now - j->t_start);
    } else {
        metric_observe(s->h_itl, NULL, now - j->t_last);
    }
    j->t_last = now;
    if (j->n_logprobs >= 0) {
        lp_entry e;
        lp_from_event(j, ev, &e);
        e.offset = j->tok_chars;
        lp_push(j, &e);
    }
    if (j->n_logprobs >= 0 || j->echo) j->tok_chars += piece_chars(s, ev->token);
    char buf[256];
    size_t n = piece_bytes(s, ev->token, buf, sizeof buf);
    if (textbuf_push(j->tb, buf, n)) {
        j->stop_hit = true;
        eng_request_cancel(j->er); /* the stop string decided it: no more tokens needed */
    }
    deliver_text(j, false);
}

static void reply_whole(job *j, const char *finish)
{
    srv *s = j->s;
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(j->id));
    json_object_set_new(o, "object", json_string(j->chat ? "chat.completion" : "text_completion"));
    json_object_set_new(o, "created", json_integer(j->created));
    json_object_set_new(o, "model", json_string(s->model_id));
    json_object_set_new(o, "system_fingerprint", json_string("orthoserve-" ORTHOSERVE_VERSION));
    json_t *ch = json_object();
    json_object_set_new(ch, "index", json_integer(0));
    size_t tl;
    if (j->echo && j->echo_len) {
        /* echo: the prompt, then the completion */
        sbuf t = {0};
        sbuf_add(&t, j->echo_text, j->echo_len);
        sbuf_add(&t, j->text.p ? j->text.p : "", j->text.n);
        free(j->text.p);
        j->text = t;
    }
    char *text = utf8_sanitize(j->text.p ? j->text.p : "", j->text.n, &tl);
    if (j->chat) {
        json_t *m = json_object();
        json_object_set_new(m, "role", json_string("assistant"));
        json_object_set_new(m, "content", text ? json_stringn(text, tl) : json_string(""));
        json_object_set_new(m, "refusal", json_null());
        json_object_set_new(ch, "message", m);
    } else {
        json_object_set_new(ch, "text", text ? json_stringn(text, tl) : json_string(""));
    }
    free(text);
    json_object_set_new(ch, "logprobs", j->n_logprobs >= 0 ? job_logprobs_json(j, 0, j->n_lps) : json_null());
    json_object_set_new(ch, "finish_reason", json_string(finish));
    json_t *choices = json_array();
    json_array_append_new(choices, ch);
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "usage", job_usage_json(j));
    json_object_set_new(o, "orthorank", job_orthorank_json(j));
    json_object_set_new(o, "timings", job_timings_json(j));
    http_reply_json(j->hr, 200, o);
}

static void on_done(job *j, const eng_event *ev)
{
    srv *s = j->s;
    j->done = true;
    j->finish = ev->finish;
    j->status = ev->status;
    j->t_queue = ev->t_queue;
    j->t_prompt = ev->t_prompt;
    j->t_generate = ev->t_generate;
    j->n_cached = ev->n_cached;
    if (ev->n_prompt > 0) j->n_prompt = ev->n_prompt;
    const eng_orthorank_stats *stats = ev->orthorank; /* the bridge's copy */
    if (stats) {
        j->orthorank = *stats;
        metric_add(s->m_or_total, "prefill", NULL, (double)stats->prefill_total);
        metric_add(s->m_or_total, "decode", NULL, (double)stats->decode_total);
        metric_add(s->m_or_skipped, "prefill", NULL, (double)stats->prefill_skipped);
        metric_add(s->m_or_skipped, "decode", NULL, (double)stats->decode_skipped);
    }
    metric_add(s->m_prompt_tokens, NULL, NULL, j->n_prompt);
    metric_add(s->m_cached_tokens, NULL, NULL, j->n_cached);
    metric_add(s->m_gen_tokens, NULL, NULL, j->n_gen);
    bool cancelled = ev->finish == ENG_FINISH_CANCELLED && !j->stop_hit;
    if (cancelled) {
        if (!j->cancel_reason) j->cancel_reason = s->state != SRV_READY ? "shutdown" : "unknown";
        metric_add(s->m_cancelled, j->cancel_reason, NULL, 1);
    }
    /* Per-request histograms: every admitted generation, whatever its end. */
    double sparsity = stats && stats->prefill_total + stats->decode_total > 0 ? stats->sparsity_effective : -1;
    metric_add(s->m_finished, cancelled ? "cancelled" : ev->finish == ENG_FINISH_ERROR ? "error" : finish_name(j), NULL,
               1);
    metric_observe(s->h_e2e, NULL, now_mono() - j->t_start);
    metric_observe(s->h_queue, NULL, j->t_queue);
    metric_observe(s->h_prompt_len, NULL, j->n_prompt);
    metric_observe(s->h_gen_len, NULL, j->n_gen);
    if (sparsity >= 0) metric_observe(s->h_sparsity, NULL, sparsity);
    if (j->n_gen >= 2) metric_observe(s->h_tpot, NULL, (j->t_last - j->t_first) / (j->n_gen - 1));
    job_unlink(j);
    hreq *r = j->hr;
    if (r) {
        r->n_in = j->n_prompt;
        r->n_out = j->n_gen;
        r->n_cached = j->n_cached;
        r->ttft = j->n_gen > 0 ? j->t_first - j->t_start : -1;
        r->sparsity = sparsity;
        if (cancelled && !r->cancel_reason) r->cancel_reason = j->cancel_reason;
        if (!j->stop_hit && !cancelled) textbuf_finish(j->tb);
        if (j->stream && !j->echo_sent) stream_text(j, "", 0, true);
        deliver_text(j, true);
        if (cancelled || ev->finish == ENG_FINISH_ERROR) {
            unsigned st = 500;
            const char *type = "server_error", *code = NULL;
            char msg[200];
            if (cancelled && !strcmp(j->cancel_reason, "timeout")) {
                st = 504;
                type = "timeout_error";
                code = "request_timeout";
                snprintf(msg, sizeof msg, "the request took longer than the server's limit of %g s",
                         s->cfg->request_timeout);
            } else if (cancelled) {
                st = 503;
                type = "unavailable_error";
                code = "shutdown";
                snprintf(msg, sizeof msg, "the request was cancelled (%s)", j->cancel_reason);
            } else {
                st = http_status_from_eng(ev->status, &type, &code);
                if (!type) type = "server_error";
                snprintf(msg, sizeof msg, "generation failed: %s", eng_strerror(ev->status));
            }
            if (j->stream) stream_error(j, st, type, code, msg);
            else http_reply_error(r, st, type, code, NULL, "%s", msg);
        } else if (j->stream) {
            stream_finish(j, finish_name(j));
        } else {
            reply_whole(j, finish_name(j));
        }
    }
    srv_job_finished(s);
    if (!j->hr) job_free(j);
}

void api_on_event(const eng_event *ev, void *user)
{
    (void)user; /* the server; the job is the request's own pointer */
    job *j = ev->user;
    switch (ev->type) {
    case ENG_EVENT_PROMPT: on_prompt(j, ev); break;
    case ENG_EVENT_TOKEN: on_token(j, ev); break;
    case ENG_EVENT_DONE: on_done(j, ev); break;
    }
}

/* ------------------------------------------------------------------------ */
/* Submission                                                               */
/* ------------------------------------------------------------------------ */

static bool server_ready(hreq *r)
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

/* The facts a request is validated against. */
static api_limits limits_of(srv *s)
{
    return (api_limits){.cfg = s->cfg, .vocab = s->vocab, .chat_fmt = s->chat_fmt, .n_ctx = s->n_ctx,
                        .model = s->model, .model_id = s->model_id, .model_file = s->model_file};
}

static void reply_request_error(hreq *r, const api_error *e)
{
    http_reply_error(r, e->status, e->type, e->code, e->param[0] ? e->param : NULL, "%s", e->message);
}

/* Queue a validated request as a job. Takes ownership of req's echo text. */
static void submit(hreq *r, api_request *req)
{
    srv *s = r->s;
    bool chat = req->chat;
    size_t n_prompt = req->p.n_prompt;
    job *j = calloc(1, sizeof *j);
    if (!j) {
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    j->s = s;
    j->chat = chat;
    j->stream = req->stream;
    j->include_usage = req->include_usage;
    j->echo = req->echo;
    j->echo_text = req->echo_text;
    j->echo_len = req->echo_len;
    req->echo_text = NULL;
    j->n_logprobs = req->p.n_logprobs;
    j->n_prompt = (int32_t)n_prompt;
    j->first_prompt_token = req->prompt[0];
    j->created = (long long)time(NULL);
    snprintf(j->id, sizeof j->id, "%s-%016" PRIx64 "%08" PRIx64, chat ? "chatcmpl" : "cmpl", rng_next(),
             rng_next() & 0xffffffffu);
    j->deadline = r->t0 + s->cfg->request_timeout;
    j->t_start = r->t0;
    j->tb = textbuf_new(req->stops, req->n_stops);
    j->bu = (bridge_user){&s->br, j};
    if (!j->tb) {
        job_free(j);
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    if (req->p.prompt_logprobs) {
        lp_entry e = {.token = req->prompt[0], .null_lp = true, .offset = 0};
        lp_push(j, &e);
        j->tok_chars = piece_chars(s, req->prompt[0]);
    }
    if (!req->seeded) req->p.sampling.seed = rng_next();
    req->p.orthorank = &req->orthorank;
    req->p.on_event = bridge_event_cb;
    req->p.user = &j->bu;
    eng_status st = eng_sched_submit(s->sched, &req->p, &j->er);
    r->n_in = (int64_t)n_prompt;
    if (st != ENG_OK) {
        j->er = NULL;
        job_free(j);
        if (st == ENG_ECTXFULL)
            http_reply_error(r, 400, "invalid_request_error", "context_length_exceeded", req->prompt_param,
                             "the %s (%zu tokens) does not fit this model's context (%d tokens)",
                             chat ? "conversation" : "prompt", n_prompt, s->n_ctx);
        else if (st == ENG_EINVAL)
            http_reply_eng_error(r, st, NULL, "the request's parameters were refused by the engine");
        else
            http_reply_eng_error(r, st, NULL, NULL);
        return;
    }
    j->next = s->jobs;
    if (s->jobs) s->jobs->prev = j;
    s->jobs = j;
    s->n_jobs++;
    j->hr = r;
    r->job = j;
    if (j->stream) {
        stream_begin(j);
        http_start_stream(r);
    } else {
        http_suspend(r);
    }
}

/* ------------------------------------------------------------------------ */
/* Endpoints                                                                */
/* ------------------------------------------------------------------------ */

/* Validate (request.c), then submit or reply with the error. */
static void completion(hreq *r, json_t *body, bool chat)
{
    if (!server_ready(r)) return;
    api_limits lim = limits_of(r->s);
    api_request req;
    api_error err;
    int rc = chat ? api_parse_chat(&lim, body, &req, &err) : api_parse_completions(&lim, body, &req, &err);
    if (rc) {
        reply_request_error(r, &err);
        return;
    }
    submit(r, &req);
    api_request_free(&req);
}

void api_chat(hreq *r, json_t *body) { completion(r, body, true); }
void api_completions(hreq *r, json_t *body) { completion(r, body, false); }

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
        json_object_set_new(meta, "chat_template", json_string(eng_chat_format_name(s->chat_fmt)));
        json_object_set_new(m, "meta", meta);
    }
    return m;
}

void api_models(hreq *r, const char *id)
{
    srv *s = r->s;
    if (id) {
        if (!model_name_ok(s, id)) {
            http_reply_error(r, 404, "not_found_error", "model_not_found", "model", "the model '%s' does not exist",
                             id);
            return;
        }
        http_reply_json(r, 200, model_json(s));
        return;
    }
    json_t *o = json_object(), *data = json_array();
    json_array_append_new(data, model_json(s));
    json_object_set_new(o, "object", json_string("list"));
    json_object_set_new(o, "data", data);
    http_reply_json(r, 200, o);
}
