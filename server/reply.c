/*
 * reply.c - the JSON bodies of the completion endpoints (whole responses,
 * SSE chunks, usage, logprobs, timings) and the OpenAI error object. The
 * streamed and non-streamed paths both build theirs here, so the two
 * cannot drift apart.
 */
#include "reply.h"
#include "textbuf.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char FINGERPRINT[] = "orthoserve-" ORTHOSERVE_VERSION;

size_t reply_piece(const eng_vocab *v, int32_t id, char *buf, size_t cap)
{
    size_t n = 0;
    if (eng_token_to_piece(v, id, false, buf, cap, &n) != ENG_OK) return 0;
    return n;
}

/* A JSON string of any bytes, invalid UTF-8 replaced by U+FFFD. */
static json_t *clean_string(const char *p, size_t n)
{
    size_t cl;
    char *clean = utf8_sanitize(p ? p : "", p ? n : 0, &cl);
    json_t *j = clean ? json_stringn(clean, cl) : json_string("");
    free(clean);
    return j;
}

static json_t *piece_string(const eng_vocab *v, int32_t id)
{
    char buf[256];
    return clean_string(buf, reply_piece(v, id, buf, sizeof buf));
}

static json_t *lp_value(float lp)
{
    /* JSON has no -Infinity; OpenAI reports impossible tokens as -9999. */
    return json_real(isfinite(lp) ? (double)lp : -9999.0);
}

/* {"token", "logprob", "bytes"} of the chat shape. */
static json_t *chat_token(const eng_vocab *v, int32_t id, float lp)
{
    char buf[256];
    size_t n = reply_piece(v, id, buf, sizeof buf);
    json_t *o = json_object();
    json_object_set_new(o, "token", piece_string(v, id));
    json_object_set_new(o, "logprob", lp_value(lp));
    json_t *bytes = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(bytes, json_integer((unsigned char)buf[i]));
    json_object_set_new(o, "bytes", bytes);
    return o;
}

static json_t *chat_logprobs(const eng_vocab *v, const lp_entry *e, size_t n)
{
    json_t *content = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o = chat_token(v, e[i].token, e[i].lp);
        json_t *top = json_array();
        for (int32_t t = 0; t < e[i].n_top; t++) json_array_append_new(top, chat_token(v, e[i].top_ids[t], e[i].top_lps[t]));
        json_object_set_new(o, "top_logprobs", top);
        json_array_append_new(content, o);
    }
    json_t *o = json_object();
    json_object_set_new(o, "content", content);
    json_object_set_new(o, "refusal", json_null());
    return o;
}

static json_t *text_logprobs(const eng_vocab *v, const lp_entry *e, size_t n)
{
    json_t *tokens = json_array(), *tlp = json_array(), *top = json_array(), *off = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(tokens, piece_string(v, e[i].token));
        json_array_append_new(tlp, e[i].null_lp ? json_null() : lp_value(e[i].lp));
        if (e[i].null_lp) {
            json_array_append_new(top, json_null());
        } else {
            json_t *d = json_object();
            for (int32_t t = 0; t < e[i].n_top; t++) {
                json_t *key = piece_string(v, e[i].top_ids[t]);
                /* Two ids with the same text: keep the more likely (listed first). */
                if (!json_object_get(d, json_string_value(key)))
                    json_object_set_new(d, json_string_value(key), lp_value(e[i].top_lps[t]));
                json_decref(key);
            }
            json_array_append_new(top, d);
        }
        json_array_append_new(off, json_integer((json_int_t)e[i].offset));
    }
    json_t *o = json_object();
    json_object_set_new(o, "tokens", tokens);
    json_object_set_new(o, "token_logprobs", tlp);
    json_object_set_new(o, "top_logprobs", top);
    json_object_set_new(o, "text_offset", off);
    return o;
}

json_t *reply_logprobs(const eng_vocab *v, bool chat, const lp_entry *e, size_t n)
{
    return chat ? chat_logprobs(v, e, n) : text_logprobs(v, e, n);
}

json_t *reply_usage(const reply_counts *c)
{
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(c->n_prompt));
    json_object_set_new(u, "completion_tokens", json_integer(c->n_gen));
    json_object_set_new(u, "total_tokens", json_integer(c->n_prompt + c->n_gen));
    json_t *d = json_object();
    json_object_set_new(d, "cached_tokens", json_integer(c->n_cached));
    json_object_set_new(u, "prompt_tokens_details", d);
    return u;
}

json_t *reply_timings(const reply_counts *c)
{
    json_t *t = json_object();
    json_object_set_new(t, "queue_ms", json_real(c->t_queue * 1e3));
    json_object_set_new(t, "prompt_n", json_integer(c->n_prompt));
    json_object_set_new(t, "prompt_ms", json_real(c->t_prompt * 1e3));
    json_object_set_new(t, "predicted_n", json_integer(c->n_gen));
    json_object_set_new(t, "predicted_ms", json_real(c->t_generate * 1e3));
    return t;
}

/* id, object, created, model, system_fingerprint. */
static json_t *envelope(const reply_head *h, bool chunk)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(h->id));
    json_object_set_new(o, "object", json_string(!h->chat ? "text_completion" : chunk ? "chat.completion.chunk"
                                                                                      : "chat.completion"));
    json_object_set_new(o, "created", json_integer(h->created));
    json_object_set_new(o, "model", json_string(h->model));
    json_object_set_new(o, "system_fingerprint", json_string(FINGERPRINT));
    return o;
}

static void set_choice(json_t *o, json_t *choice)
{
    json_t *choices = json_array();
    json_array_append_new(choices, choice);
    json_object_set_new(o, "choices", choices);
}

json_t *reply_completion(const reply_head *h, const char *text, size_t n, json_t *logprobs, const char *finish,
                         const reply_counts *c, json_t *orthorank)
{
    json_t *m = NULL;
    if (h->chat) {
        m = json_object();
        json_object_set_new(m, "role", json_string("assistant"));
        json_object_set_new(m, "content", clean_string(text, n));
        json_object_set_new(m, "refusal", json_null());
    }
    return reply_completion_msg(h, m, text, n, logprobs, finish, c, orthorank);
}

json_t *reply_completion_msg(const reply_head *h, json_t *message, const char *text, size_t n, json_t *logprobs,
                             const char *finish, const reply_counts *c, json_t *orthorank)
{
    json_t *o = envelope(h, false);
    json_t *ch = json_object();
    json_object_set_new(ch, "index", json_integer(h->index));
    if (h->chat) json_object_set_new(ch, "message", message);
    else json_object_set_new(ch, "text", clean_string(text, n));
    json_object_set_new(ch, "logprobs", logprobs ? logprobs : json_null());
    json_object_set_new(ch, "finish_reason", json_string(finish));
    set_choice(o, ch);
    json_object_set_new(o, "usage", reply_usage(c));
    json_object_set_new(o, "orthorank", orthorank ? orthorank : json_null());
    json_object_set_new(o, "timings", reply_timings(c));
    return o;
}

json_t *reply_chunk(const reply_head *h, const char *text, size_t n, bool role, const char *finish, json_t *logprobs)
{
    json_t *d = NULL;
    if (h->chat) {
        d = json_object();
        if (role) json_object_set_new(d, "role", json_string("assistant"));
        if (text) json_object_set_new(d, "content", json_stringn(text, n));
    }
    return reply_chunk_delta(h, d, text, n, finish, logprobs);
}

json_t *reply_chunk_delta(const reply_head *h, json_t *delta, const char *text, size_t n, const char *finish,
                          json_t *logprobs)
{
    json_t *o = envelope(h, true);
    json_t *ch = json_object();
    json_object_set_new(ch, "index", json_integer(h->index));
    if (h->chat) json_object_set_new(ch, "delta", delta);
    else json_object_set_new(ch, "text", json_stringn(text ? text : "", text ? n : 0));
    json_object_set_new(ch, "logprobs", logprobs ? logprobs : json_null());
    json_object_set_new(ch, "finish_reason", finish ? json_string(finish) : json_null());
    set_choice(o, ch);
    if (h->include_usage) json_object_set_new(o, "usage", json_null());
    return o;
}

void reply_stream_end(const reply_head *h, const char *finish, const reply_counts *c, json_t *orthorank, json_t *out)
{
    json_t *fin = reply_chunk(h, NULL, 0, false, finish, NULL);
    json_array_append_new(out, fin);
    json_t *last = fin;
    if (h->include_usage) {
        last = envelope(h, true);
        json_object_set_new(last, "choices", json_array());
        json_object_set_new(last, "usage", reply_usage(c));
        json_array_append_new(out, last);
    }
    json_object_set_new(last, "orthorank", orthorank ? orthorank : json_null());
    json_object_set_new(last, "timings", reply_timings(c));
}

unsigned reply_status_from_eng(eng_status st, const char **type, const char **code)
{
    const char *t = "server_error", *c = NULL;
    unsigned http = 500;
    switch (st) {
    case ENG_OK: http = 200; t = NULL; break;
    case ENG_EINVAL: http = 400; t = "invalid_request_error"; break;
    case ENG_ECTXFULL: http = 400; t = "invalid_request_error"; c = "context_length_exceeded"; break;
    case ENG_EUNSUPPORTED: http = 400; t = "invalid_request_error"; c = "not_supported"; break;
    case ENG_EBUSY: http = 429; t = "rate_limit_error"; c = "queue_full"; break;
    case ENG_ESTOPPED: http = 503; t = "unavailable_error"; c = "draining"; break;
    case ENG_ECANCELED: http = 503; t = "unavailable_error"; c = "cancelled"; break;
    case ENG_ENOMEM: http = 503; t = "unavailable_error"; c = "out_of_memory"; break;
    case ENG_EIO: case ENG_EFORMAT: case ENG_ERANGE: http = 500; t = "server_error"; break;
    }
    if (type) *type = t;
    if (code) *code = c;
    return http;
}

unsigned reply_status_from_done(eng_status st, const char **type, const char **code)
{
    bool oom = st == ENG_ENOMEM;
    if (type) *type = oom ? "unavailable_error" : "server_error";
    if (code) *code = oom ? "out_of_memory" : "generation_failed";
    return oom ? 503 : 500;
}

json_t *reply_error(const char *msg, const char *type, const char *param, const char *code)
{
    size_t n;
    char *clean = utf8_sanitize(msg, strlen(msg), &n);
    json_t *e = json_object();
    json_object_set_new(e, "message", json_string(clean ? clean : "error"));
    free(clean);
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "param", param ? json_string(param) : json_null());
    json_object_set_new(e, "code", code ? json_string(code) : json_null());
    json_t *o = json_object();
    json_object_set_new(o, "error", e);
    return o;
}

char *reply_dump(json_t *o, size_t *len)
{
    char *txt = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(o);
    *len = txt ? strlen(txt) : 0;
    return txt;
}
