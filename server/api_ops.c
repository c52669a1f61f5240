/*
 * api_ops.c - the operational endpoints: /health, /ready, /metrics, and
 * llama-server's /tokenize (tokenized on a libuv worker: http_offload) and
 * /detokenize.
 */
#include "api_ops.h"
#include "server.h"
#include "srv_metrics.h"
#include "textbuf.h"

#include <stdlib.h>
#include <string.h>

static bool model_ready(hreq *r)
{
    if (r->s->state == SRV_LOADING || !r->s->vocab) {
        http_reply_error(r, 503, "unavailable_error", "loading", NULL, "the model is still loading");
        return false;
    }
    return true;
}

void api_health(hreq *r)
{
    srv *s = r->s;
    if (s->state == SRV_LOADING) {
        http_reply_error(r, 503, "unavailable_error", "loading", NULL, "the model is still loading");
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string("ok"));
    http_reply_json(r, 200, o);
}

void api_ready(hreq *r)
{
    srv *s = r->s;
    if (s->state == SRV_LOADING) {
        http_reply_error(r, 503, "unavailable_error", "loading", NULL, "the model is still loading");
        return;
    }
    if (s->state != SRV_READY) {
        http_reply_error(r, 503, "unavailable_error", "draining", NULL, "the server is shutting down");
        return;
    }
    eng_sched_stats st;
    eng_sched_get_stats(s->sched, &st);
    if (st.draining) {
        http_reply_error(r, 503, "unavailable_error", "draining", NULL, "the server is shutting down");
        return;
    }
    if (st.waiting >= s->cfg->max_queue) {
        http_reply_error(r, 503, "unavailable_error", "queue_full", NULL, "the request queue is full (%d waiting)",
                         st.waiting);
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string("ready"));
    json_object_set_new(o, "running", json_integer(st.running));
    json_object_set_new(o, "waiting", json_integer(st.waiting));
    http_reply_json(r, 200, o);
}

void api_metrics(hreq *r)
{
    srv *s = r->s;
    srv_metrics_refresh(&s->mx, s->sched, s->http.n_reqs);
    size_t n = 0;
    char *txt = srv_metrics_render(&s->mx, &n);
    if (!txt) {
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    http_reply_text(r, 200, "text/plain; version=0.0.4; charset=utf-8", txt, n);
}

static bool opt_bool(hreq *r, json_t *body, const char *key, bool def, bool *out)
{
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return true;
    }
    if (!json_is_boolean(v)) {
        http_reply_error(r, 400, "invalid_request_error", "invalid_type", key, "'%s' must be a boolean", key);
        return false;
    }
    *out = json_is_true(v);
    return true;
}

/* A token's piece as a JSON string when it is valid UTF-8, else its bytes. */
static json_t *piece_json(const eng_vocab *v, int32_t id)
{
    char buf[256];
    size_t n = 0;
    if (eng_token_to_piece(v, id, true, buf, sizeof buf, &n) != ENG_OK) n = 0;
    if (utf8_valid_prefix(buf, n) == n) return json_stringn(buf, n);
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer((unsigned char)buf[i]));
    return a;
}

/* A /tokenize body being tokenized on a worker (a 4 MB text takes seconds). */
typedef struct {
    const eng_vocab *v;
    const char *text; /* in r->json, which lives as long as r */
    size_t len;
    bool add_special, parse_special, with_pieces;
    eng_status st;
    char *reply; /* the response's text, made here too (1M tokens take a while) */
    size_t reply_n;
} tokenization;

static void tokenize_work(void *ctx)
{
    tokenization *t = ctx;
    size_t cap = t->len + 8, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    t->st = ids ? eng_tokenize(t->v, t->text, t->len, t->add_special, t->parse_special, ids, cap, &n) : ENG_ENOMEM;
    if (t->st == ENG_ERANGE) {
        free(ids);
        cap = n;
        ids = malloc(cap * sizeof *ids);
        t->st = ids ? eng_tokenize(t->v, t->text, t->len, t->add_special, t->parse_special, ids, cap, &n)
                    : ENG_ENOMEM;
    }
    if (t->st == ENG_OK) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
            if (t->with_pieces) {
                json_t *o = json_object();
                json_object_set_new(o, "id", json_integer(ids[i]));
                json_object_set_new(o, "piece", piece_json(t->v, ids[i]));
                json_array_append_new(arr, o);
            } else {
                json_array_append_new(arr, json_integer(ids[i]));
            }
        }
        json_t *o = json_object();
        json_object_set_new(o, "tokens", arr);
        if (!(t->reply = http_json_text(o, &t->reply_n))) t->st = ENG_ENOMEM;
    }
    free(ids);
}

static void tokenize_done(hreq *r, void *ctx)
{
    tokenization *t = ctx;
    if (r && t->st != ENG_OK) {
        http_reply_eng_error(r, t->st, "content", NULL);
    } else if (r) {
        http_reply_text(r, 200, "application/json", t->reply, t->reply_n);
        t->reply = NULL;
    }
    free(t->reply);
    free(t);
}

void api_tokenize(hreq *r)
{
    json_t *body = r->json;
    if (!model_ready(r)) return;
    json_t *c = json_object_get(body, "content");
    if (!json_is_string(c)) {
        http_reply_error(r, 400, "invalid_request_error", c ? "invalid_type" : "missing_field", "content",
                         "'content' must be a string");
        return;
    }
    tokenization *t = calloc(1, sizeof *t);
    if (!t) {
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    if (!opt_bool(r, body, "add_special", false, &t->add_special) ||
        !opt_bool(r, body, "parse_special", true, &t->parse_special) ||
        !opt_bool(r, body, "with_pieces", false, &t->with_pieces)) {
        free(t);
        return;
    }
    t->v = r->s->vocab;
    t->text = json_string_value(c);
    t->len = json_string_length(c);
    http_offload(r, tokenize_work, tokenize_done, t);
}

void api_detokenize(hreq *r)
{
    json_t *body = r->json;
    if (!model_ready(r)) return;
    json_t *t = json_object_get(body, "tokens");
    if (!json_is_array(t)) {
        http_reply_error(r, 400, "invalid_request_error", t ? "invalid_type" : "missing_field", "tokens",
                         "'tokens' must be an array of token ids");
        return;
    }
    const eng_vocab *v = r->s->vocab;
    int32_t nv = eng_vocab_n_tokens(v);
    size_t n = json_array_size(t);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) {
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(t, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) >= nv) {
            free(ids);
            http_reply_error(r, 400, "invalid_request_error", "invalid_value", "tokens",
                             "'tokens[%zu]' must be a token id in [0, %d)", i, nv);
            return;
        }
        ids[i] = (int32_t)json_integer_value(e);
    }
    size_t cap = n * 16 + 16, len = 0;
    char *buf = malloc(cap);
    eng_status st = buf ? eng_detokenize(v, ids, n, false, false, buf, cap, &len) : ENG_ENOMEM;
    if (st == ENG_ERANGE) {
        free(buf);
        cap = len + 1;
        buf = malloc(cap);
        st = buf ? eng_detokenize(v, ids, n, false, false, buf, cap, &len) : ENG_ENOMEM;
    }
    free(ids);
    if (st != ENG_OK) {
        free(buf);
        http_reply_eng_error(r, st, "tokens", NULL);
        return;
    }
    size_t cl;
    char *clean = utf8_sanitize(buf, len, &cl);
    free(buf);
    json_t *o = json_object();
    json_object_set_new(o, "content", clean ? json_stringn(clean, cl) : json_string(""));
    free(clean);
    http_reply_json(r, 200, o);
}
