/*
 * api_openai.c - /v1/chat/completions, /v1/completions and /v1/models.
 *
 * A request body is validated field by field into engine parameters (every
 * error names its field in "param"), the prompt is tokenized on the loop
 * thread, and a job is submitted to the scheduler. Engine events come back
 * through the bridge (api_on_event): token bytes go through the job's
 * textbuf (UTF-8 boundaries, stop strings), then either into the whole
 * response (non-streaming) or into SSE chunks (stream.c). Both paths share
 * the same assembler, so streamed text equals non-streamed text.
 */
#include "job.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
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
/* Field validation                                                         */
/* ------------------------------------------------------------------------ */

typedef struct {
    hreq *r;
    json_t *body;
    bool failed;
} vctx;

#define VFAIL(...)                                                                                            \
    do {                                                                                                      \
        vfail(__VA_ARGS__);                                                                                   \
        return;                                                                                               \
    } while (0)
#define HTTP_ERR_RETURN(...)                                                                                  \
    do {                                                                                                      \
        http_reply_error(__VA_ARGS__);                                                                        \
        return;                                                                                               \
    } while (0)

static void vfail(vctx *v, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void vfail(vctx *v, const char *param, const char *code, const char *fmt, ...)
{
    if (v->failed) return;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    v->failed = true;
    http_reply_error(v->r, 400, "invalid_request_error", code, param, "%s", msg);
}

/* The value of an optional field, NULL when absent or null. */
static json_t *opt(vctx *v, const char *key)
{
    json_t *x = json_object_get(v->body, key);
    return x && !json_is_null(x) ? x : NULL;
}

static bool get_number(vctx *v, const char *key, double lo, double hi, bool lo_open, double *out)
{
    json_t *x = opt(v, key);
    if (!x || v->failed) return false;
    if (!json_is_number(x)) {
        vfail(v, key, "invalid_type", "'%s' must be a number", key);
        return false;
    }
    double d = json_number_value(x);
    if (!(lo_open ? d > lo : d >= lo) || !(d <= hi)) {
        vfail(v, key, "invalid_value", "'%s' must be in %s%g, %g], got %g", key, lo_open ? "(" : "[", lo, hi, d);
        return false;
    }
    *out = d;
    return true;
}

static bool get_int(vctx *v, const char *key, long long lo, long long hi, long long *out)
{
    json_t *x = opt(v, key);
    if (!x || v->failed) return false;
    long long k;
    if (json_is_integer(x)) {
        k = json_integer_value(x);
    } else if (json_is_real(x) && json_real_value(x) == floor(json_real_value(x)) &&
               fabs(json_real_value(x)) < 9e15) {
        k = (long long)json_real_value(x);
    } else {
        vfail(v, key, "invalid_type", "'%s' must be an integer", key);
        return false;
    }
    if (k < lo || k > hi) {
        vfail(v, key, "invalid_value", "'%s' must be an integer in [%lld, %lld], got %lld", key, lo, hi, k);
        return false;
    }
    *out = k;
    return true;
}

static bool get_bool(vctx *v, const char *key, bool *out)
{
    json_t *x = opt(v, key);
    if (!x || v->failed) return false;
    if (!json_is_boolean(x)) {
        vfail(v, key, "invalid_type", "'%s' must be a boolean", key);
        return false;
    }
    *out = json_is_true(x);
    return true;
}

/* Everything both endpoints share. */
typedef struct {
    eng_request_params p;
    eng_sampler_params sp;
    eng_logit_bias *bias;
    const char **stops;
    size_t n_stops;
    bool stream, include_usage;
    orank_req orank;
    int32_t max_tokens;
} common;

static void common_free(common *c)
{
    free(c->bias);
    free(c->stops);
}

static void parse_common(vctx *v, common *c, bool chat)
{
    srv *s = v->r->s;
    memset(c, 0, sizeof *c);
    c->p.n_logprobs = -1;
    c->sp = eng_sampler_default_params();
    /* OpenAI semantics: temperature 1, top_p 1, no top-k / min-p unless asked. */
    c->sp.temperature = 1.0f;
    c->sp.top_k = 0;
    c->sp.top_p = 1.0f;
    c->sp.min_p = 0.0f;
    c->sp.seed = rng_next();

    json_t *x;
    if ((x = json_object_get(v->body, "model")) && !json_is_null(x)) {
        if (!json_is_string(x)) VFAIL(v, "model", "invalid_type", "'model' must be a string");
        if (!model_name_ok(s, json_string_value(x))) {
            v->failed = true;
            http_reply_error(v->r, 404, "not_found_error", "model_not_found", "model",
                             "the model '%s' does not exist (this server serves '%s')", json_string_value(x),
                             s->model_id);
            return;
        }
    }
    long long k;
    double d;
    bool b;
    long long max_tok = chat ? s->cfg->max_tokens : 16;
    const char *mt_key = "max_tokens";
    if (chat && opt(v, "max_completion_tokens")) mt_key = "max_completion_tokens";
    if (get_int(v, mt_key, chat ? 1 : 0, INT32_MAX, &k)) {
        if (k > s->cfg->max_tokens)
            VFAIL(v, mt_key, "invalid_value", "'%s' must be at most %ld on this server, got %lld", mt_key,
                         s->cfg->max_tokens, k);
        max_tok = k;
    }
    c->max_tokens = (int32_t)max_tok;
    if (get_number(v, "temperature", 0, 2, false, &d)) c->sp.temperature = (float)d;
    if (get_number(v, "top_p", 0, 1, false, &d)) {
        if (d == 0) c->sp.temperature = 0; /* only the top token survives: greedy */
        else c->sp.top_p = (float)d;
    }
    if (get_int(v, "top_k", -1, INT32_MAX, &k)) c->sp.top_k = k < 0 ? 0 : (int32_t)k;
    if (get_number(v, "min_p", 0, 1, false, &d)) c->sp.min_p = (float)d;
    if (get_number(v, "presence_penalty", -2, 2, false, &d)) c->sp.presence_penalty = (float)d;
    if (get_number(v, "frequency_penalty", -2, 2, false, &d)) c->sp.frequency_penalty = (float)d;
    if (get_number(v, "repetition_penalty", 0, 100, true, &d)) c->sp.repeat_penalty = (float)d;
    if (get_number(v, "repeat_penalty", 0, 100, true, &d)) c->sp.repeat_penalty = (float)d;
    if (get_int(v, "repeat_last_n", -1, INT32_MAX, &k)) c->sp.repeat_last_n = (int32_t)k;
    if ((x = opt(v, "seed"))) {
        if (!json_is_integer(x)) VFAIL(v, "seed", "invalid_type", "'seed' must be an integer");
        c->sp.seed = (uint64_t)json_integer_value(x);
    }
    if (get_int(v, "n", 1, INT32_MAX, &k) && k != 1)
        VFAIL(v, "n", "invalid_value", "only n=1 is supported, got n=%lld", k);
    if (!chat && get_int(v, "best_of", 1, INT32_MAX, &k) && k != 1)
        VFAIL(v, "best_of", "invalid_value", "only best_of=1 is supported");
    if (get_int(v, "min_tokens", 0, INT32_MAX, &k)) c->p.min_tokens = (int32_t)k;
    if (get_bool(v, "ignore_eos", &b)) c->p.ignore_eos = b;
    if (get_bool(v, "stream", &b)) c->stream = b;
    if ((x = opt(v, "stream_options"))) {
        if (!json_is_object(x)) VFAIL(v, "stream_options", "invalid_type", "'stream_options' must be an object");
        if (!c->stream)
            VFAIL(v, "stream_options", "invalid_value",
                         "'stream_options' is only allowed when 'stream' is true");
        json_t *iu = json_object_get(x, "include_usage");
        if (iu && !json_is_null(iu)) {
            if (!json_is_boolean(iu))
                VFAIL(v, "stream_options.include_usage", "invalid_type",
                             "'stream_options.include_usage' must be a boolean");
            c->include_usage = json_is_true(iu);
        }
    }
    if ((x = opt(v, "user")) && !json_is_string(x)) VFAIL(v, "user", "invalid_type", "'user' must be a string");
    if (v->failed) return;

    /* stop: a string or an array of strings. */
    if ((x = opt(v, "stop"))) {
        if (json_is_string(x)) {
            c->stops = malloc(sizeof *c->stops);
            if (c->stops) c->stops[c->n_stops++] = json_string_value(x);
        } else if (json_is_array(x)) {
            if (json_array_size(x) > 16)
                VFAIL(v, "stop", "invalid_value", "'stop' may hold at most 16 strings");
            c->stops = malloc((json_array_size(x) + 1) * sizeof *c->stops);
            size_t i;
            json_t *e;
            json_array_foreach(x, i, e) {
                if (!json_is_string(e)) VFAIL(v, "stop", "invalid_type", "'stop' must be a string or an array of strings");
                if (c->stops) c->stops[c->n_stops++] = json_string_value(e);
            }
        } else {
            VFAIL(v, "stop", "invalid_type", "'stop' must be a string or an array of strings");
        }
    }
    /* logit_bias: {"token id": bias in [-100, 100]} */
    if ((x = opt(v, "logit_bias"))) {
        if (!json_is_object(x))
            VFAIL(v, "logit_bias", "invalid_type", "'logit_bias' must be an object mapping token ids to numbers");
        int32_t nv = eng_vocab_n_tokens(s->vocab);
        c->bias = calloc(json_object_size(x) + 1, sizeof *c->bias);
        const char *key;
        json_t *e;
        json_object_foreach(x, key, e) {
            char *end;
            long id = strtol(key, &end, 10);
            if (!key[0] || *end || id < 0 || id >= nv)
                VFAIL(v, "logit_bias", "invalid_value", "'logit_bias' key '%s' is not a token id in [0, %d)",
                             key, nv);
            if (!json_is_number(e) || !(json_number_value(e) >= -100 && json_number_value(e) <= 100))
                VFAIL(v, "logit_bias", "invalid_value", "'logit_bias' values must be numbers in [-100, 100]");
            if (c->bias) c->bias[c->sp.n_logit_bias++] = (eng_logit_bias){(int32_t)id, (float)json_number_value(e)};
        }
        c->sp.logit_bias = c->bias;
    }
    if ((x = opt(v, "response_format"))) {
        json_t *t = json_is_object(x) ? json_object_get(x, "type") : NULL;
        if (!json_is_string(t))
            VFAIL(v, "response_format", "invalid_type",
                         "'response_format' must be an object with a string 'type'");
        const char *ts = json_string_value(t);
        if (!strcmp(ts, "json_object") || !strcmp(ts, "json_schema"))
            VFAIL(v, "response_format.type", "not_supported",
                         "response_format type '%s' is not supported by this server (only 'text')", ts);
        if (strcmp(ts, "text"))
            VFAIL(v, "response_format.type", "invalid_value",
                         "'response_format.type' must be 'text', 'json_object' or 'json_schema'");
    }
    const char *param = NULL;
    char msg[300];
    if (orthorank_parse(json_object_get(v->body, "orthorank"), s->cfg, s->info.n_layer, &c->orank, &param, msg,
                        sizeof msg))
        VFAIL(v, param, "invalid_value", "%s", msg);
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
    e->n_top = ev->n_top < 20 ? ev->n_top : 20;
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
json_t *job_logprobs_json(job *j, size_t from, size_t to);
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

json_t *job_usage_json(job *j);
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

json_t *job_orthorank_json(job *j);
json_t *job_orthorank_json(job *j)
{
    return orthorank_json(&j->orank, j->has_ors ? &j->ors : NULL, j->n_prompt, j->n_gen, j->s->info.n_layer);
}

json_t *job_timings_json(job *j);
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

/* Streaming hooks, in stream.c. */
void stream_begin(job *j);
void stream_text(job *j, const char *text, size_t n, bool force);
void stream_finish(job *j, const char *finish_reason);
void stream_error(job *j, unsigned status, const char *type, const char *code, const char *msg);

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
    if (ev->orthorank) {
        j->ors = *ev->orthorank;
        int32_t nl = j->ors.n_layers > 256 ? 256 : j->ors.n_layers;
        if (nl > 0) memcpy(j->ors_layers, ev->orthorank->layers, (size_t)nl * sizeof(int32_t));
        j->ors.n_layers = nl;
        j->ors.layers = j->ors_layers;
        j->has_ors = true;
        metric_add(s->m_or_total, "prefill", NULL, (double)j->ors.prefill_total);
        metric_add(s->m_or_total, "decode", NULL, (double)j->ors.decode_total);
        metric_add(s->m_or_skipped, "prefill", NULL, (double)j->ors.prefill_skipped);
        metric_add(s->m_or_skipped, "decode", NULL, (double)j->ors.decode_skipped);
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
    double sparsity = -1;
    if (j->has_ors && j->ors.prefill_total + j->ors.decode_total > 0)
        sparsity = (double)(j->ors.prefill_skipped + j->ors.decode_skipped) /
                   (double)(j->ors.prefill_total + j->ors.decode_total);
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

static int32_t *tokenize(srv *s, const char *text, size_t len, bool parse_special, size_t *n)
{
    size_t cap = len + 8;
    for (int tries = 0; tries < 2; tries++) {
        int32_t *ids = malloc(cap * sizeof *ids);
        if (!ids) return NULL;
        eng_status st = eng_tokenize(s->vocab, text, len, true, parse_special, ids, cap, n);
        if (st == ENG_OK) return ids;
        free(ids);
        if (st != ENG_ERANGE) return NULL;
        cap = *n;
    }
    return NULL;
}

/* Takes ownership of prompt (and echo_text). */
static void submit(hreq *r, common *c, bool chat, int32_t *prompt, size_t n_prompt, bool echo, char *echo_text,
                   size_t echo_len, int32_t n_logprobs, const char *prompt_param)
{
    srv *s = r->s;
    if (n_prompt == 0) {
        free(prompt);
        free(echo_text);
        http_reply_error(r, 400, "invalid_request_error", "invalid_value", prompt_param,
                         "the prompt is empty (and the model adds no BOS token)");
        return;
    }
    if ((int64_t)n_prompt + (c->max_tokens > 0 ? 1 : 0) > s->n_ctx) {
        free(prompt);
        free(echo_text);
        http_reply_error(r, 400, "invalid_request_error", "context_length_exceeded", prompt_param,
                         "this model's maximum context length is %d tokens, but the %s is %zu tokens%s", s->n_ctx,
                         chat ? "conversation" : "prompt", n_prompt,
                         c->max_tokens > 0 ? " (and at least one must be generated)" : "");
        return;
    }
    job *j = calloc(1, sizeof *j);
    if (!j) {
        free(prompt);
        free(echo_text);
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    j->s = s;
    j->chat = chat;
    j->stream = c->stream;
    j->include_usage = c->include_usage;
    j->echo = echo;
    j->echo_text = echo_text;
    j->echo_len = echo_len;
    j->n_logprobs = n_logprobs;
    j->orank = c->orank;
    j->n_prompt = (int32_t)n_prompt;
    j->first_prompt_token = prompt[0];
    j->created = (long long)time(NULL);
    snprintf(j->id, sizeof j->id, "%s-%016" PRIx64 "%08" PRIx64, chat ? "chatcmpl" : "cmpl", rng_next(),
             rng_next() & 0xffffffffu);
    j->deadline = r->t0 + s->cfg->request_timeout;
    j->t_start = r->t0;
    j->tb = textbuf_new(c->stops, c->n_stops);
    j->bu = (bridge_user){&s->br, j};
    if (!j->tb) {
        free(prompt);
        job_free(j);
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    if (echo && n_logprobs >= 0) {
        lp_entry e = {.token = prompt[0], .null_lp = true, .offset = 0};
        lp_push(j, &e);
        j->tok_chars = piece_chars(s, prompt[0]);
    }
    c->p.prompt = prompt;
    c->p.n_prompt = n_prompt;
    j->orp = orthorank_params(&j->orank, s->cfg);
    c->p.orthorank = &j->orp;
    c->p.max_tokens = c->max_tokens;
    c->p.sampling = c->sp;
    c->p.n_logprobs = n_logprobs;
    c->p.prompt_logprobs = echo && n_logprobs >= 0;
    c->p.on_event = bridge_event_cb;
    c->p.user = &j->bu;
    eng_status st = eng_sched_submit(s->sched, &c->p, &j->er);
    free(prompt);
    r->n_in = (int64_t)n_prompt;
    if (st != ENG_OK) {
        j->er = NULL;
        job_free(j);
        if (st == ENG_ECTXFULL)
            http_reply_error(r, 400, "invalid_request_error", "context_length_exceeded", prompt_param,
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

void api_chat(hreq *r, json_t *body)
{
    srv *s = r->s;
    if (!server_ready(r)) return;
    vctx v = {r, body, false};
    json_t *msgs = json_object_get(body, "messages");
    if (!msgs || json_is_null(msgs)) VFAIL(&v, "messages", "missing_field", "'messages' is required");
    if (!json_is_array(msgs)) VFAIL(&v, "messages", "invalid_type", "'messages' must be an array");
    size_t n = json_array_size(msgs);
    if (!n) VFAIL(&v, "messages", "invalid_value", "'messages' must not be empty");
    json_t *x;
    if ((x = opt(&v, "tools")) && (!json_is_array(x) || json_array_size(x)))
        VFAIL(&v, "tools", "not_supported", "tools are not supported by this server");
    if ((x = opt(&v, "functions")) && (!json_is_array(x) || json_array_size(x)))
        VFAIL(&v, "functions", "not_supported", "functions are not supported by this server");

    eng_chat_msg *cm = calloc(n, sizeof *cm);
    char **owned = calloc(n, sizeof *owned);
    char param[64];
    common c;
    memset(&c, 0, sizeof c);
    if (!cm || !owned) {
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(m)) {
            vfail(&v, param, "invalid_type", "'%s' must be an object", param);
            goto out;
        }
        json_t *role = json_object_get(m, "role");
        snprintf(param, sizeof param, "messages[%zu].role", i);
        if (!json_is_string(role)) {
            vfail(&v, param, role ? "invalid_type" : "missing_field", "'%s' must be a string", param);
            goto out;
        }
        const char *rs = json_string_value(role);
        if (!strcmp(rs, "developer")) rs = "system";
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant")) {
            vfail(&v, param, "invalid_value", "'%s' must be 'system', 'user' or 'assistant' (got '%s')", param, rs);
            goto out;
        }
        cm[i].role = rs;
        json_t *content = json_object_get(m, "content");
        snprintf(param, sizeof param, "messages[%zu].content", i);
        if (json_is_string(content)) {
            cm[i].content = json_string_value(content);
        } else if (json_is_array(content)) {
            sbuf t = {0};
            size_t k;
            json_t *part;
            sbuf_add(&t, "", 0);
            json_array_foreach(content, k, part) {
                json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
                if (!json_is_object(part) || !json_is_string(type)) {
                    free(t.p);
                    vfail(&v, param, "invalid_type", "'%s[%zu]' must be a content part object with a 'type'", param, k);
                    goto out;
                }
                if (strcmp(json_string_value(type), "text")) {
                    free(t.p);
                    vfail(&v, param, "not_supported", "content parts of type '%s' are not supported (only 'text')",
                          json_string_value(type));
                    goto out;
                }
                if (!json_is_string(text)) {
                    free(t.p);
                    vfail(&v, param, "invalid_type", "'%s[%zu].text' must be a string", param, k);
                    goto out;
                }
                if (k) sbuf_add(&t, "\n", 1);
                sbuf_add(&t, json_string_value(text), json_string_length(text));
            }
            owned[i] = t.p;
            cm[i].content = t.p;
        } else if ((!content || json_is_null(content)) && !strcmp(rs, "assistant")) {
            cm[i].content = "";
        } else {
            vfail(&v, param, content ? "invalid_type" : "missing_field",
                  "'%s' must be a string or an array of text parts", param);
            goto out;
        }
    }
    parse_common(&v, &c, true);
    if (v.failed) goto out;
    bool lp = false;
    long long top = 0;
    get_bool(&v, "logprobs", &lp);
    if (get_int(&v, "top_logprobs", 0, 20, &top) && !lp) {
        vfail(&v, "top_logprobs", "invalid_value", "'top_logprobs' requires 'logprobs' to be true");
        goto out;
    }
    if (v.failed) goto out;
    char *prompt_text = NULL;
    size_t prompt_len = 0;
    eng_status st = eng_chat_apply(s->chat_fmt, cm, n, true, &prompt_text, &prompt_len);
    if (st != ENG_OK) {
        http_reply_eng_error(r, st, "messages", "the messages could not be rendered with the chat template");
        goto out;
    }
    size_t n_ids = 0;
    int32_t *ids = tokenize(s, prompt_text, prompt_len, true, &n_ids);
    eng_free(prompt_text);
    if (!ids) {
        http_reply_error(r, 500, "server_error", NULL, NULL, "tokenization failed");
        goto out;
    }
    submit(r, &c, true, ids, n_ids, false, NULL, 0, lp ? (int32_t)top : -1, "messages");
out:
    common_free(&c);
    for (size_t i = 0; owned && i < n; i++) free(owned[i]);
    free(owned);
    free(cm);
}

void api_completions(hreq *r, json_t *body)
{
    srv *s = r->s;
    if (!server_ready(r)) return;
    vctx v = {r, body, false};
    json_t *pr = json_object_get(body, "prompt");
    if (!pr || json_is_null(pr)) VFAIL(&v, "prompt", "missing_field", "'prompt' is required");
    json_t *x;
    if ((x = opt(&v, "suffix")))
        VFAIL(&v, "suffix", "not_supported", "'suffix' (insertion) is not supported by this server");
    /* An array of one prompt is that prompt. */
    if (json_is_array(pr) && json_array_size(pr) == 1 &&
        (json_is_string(json_array_get(pr, 0)) || json_is_array(json_array_get(pr, 0))))
        pr = json_array_get(pr, 0);
    common c;
    parse_common(&v, &c, false);
    long long lpn = -1;
    bool echo = false;
    if (!v.failed) get_int(&v, "logprobs", 0, 20, &lpn);
    if (!v.failed) get_bool(&v, "echo", &echo);
    if (v.failed) {
        common_free(&c);
        return;
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    char *echo_text = NULL;
    size_t echo_len = 0;
    if (json_is_string(pr)) {
        ids = tokenize(s, json_string_value(pr), json_string_length(pr), false, &n_ids);
        if (!ids) {
            common_free(&c);
            HTTP_ERR_RETURN(r, 500, "server_error", NULL, NULL, "tokenization failed");
        }
        if (echo) {
            echo_text = strndup(json_string_value(pr), json_string_length(pr));
            echo_len = json_string_length(pr);
        }
    } else if (json_is_array(pr)) {
        size_t n = json_array_size(pr);
        if (!n) {
            common_free(&c);
            VFAIL(&v, "prompt", "invalid_value", "'prompt' must not be empty");
        }
        int32_t nv = eng_vocab_n_tokens(s->vocab);
        ids = malloc(n * sizeof *ids);
        for (size_t i = 0; ids && i < n; i++) {
            json_t *e = json_array_get(pr, i);
            if (!json_is_integer(e)) {
                free(ids);
                common_free(&c);
                VFAIL(&v, "prompt", "invalid_type",
                             "'prompt' must be a string, an array of token ids, or an array of one of those "
                             "(several prompts per request are not supported)");
            }
            if (json_integer_value(e) < 0 || json_integer_value(e) >= nv) {
                free(ids);
                common_free(&c);
                VFAIL(&v, "prompt", "invalid_value", "'prompt[%zu]' is not a token id in [0, %d)", i, nv);
            }
            ids[i] = (int32_t)json_integer_value(e);
        }
        n_ids = n;
        if (echo && ids) {
            size_t cap = n * 16 + 16, len = 0;
            char *buf = malloc(cap);
            if (buf && eng_detokenize(s->vocab, ids, n, false, false, buf, cap, &len) == ENG_ERANGE) {
                free(buf);
                cap = len + 1;
                buf = malloc(cap);
                if (buf && eng_detokenize(s->vocab, ids, n, false, false, buf, cap, &len) != ENG_OK) len = 0;
            }
            if (buf) echo_text = utf8_sanitize(buf, len, &echo_len);
            free(buf);
        }
    } else {
        common_free(&c);
        VFAIL(&v, "prompt", "invalid_type",
                     "'prompt' must be a string, an array of token ids, or an array of one of those");
    }
    if (!ids) {
        common_free(&c);
        HTTP_ERR_RETURN(r, 500, "server_error", NULL, NULL, "out of memory");
    }
    if (echo && !echo_text) echo_text = strdup("");
    submit(r, &c, false, ids, n_ids, echo, echo_text, echo_len, (int32_t)lpn, "prompt");
    common_free(&c);
}

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
