/*
 * api_ops.c - the operational endpoints: /health, /ready, /metrics, and
 * llama-server's /tokenize and /detokenize.
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
    bool add_special, parse_special, with_pieces;
    if (!opt_bool(r, body, "add_special", false, &add_special) ||
        !opt_bool(r, body, "parse_special", true, &parse_special) ||
        !opt_bool(r, body, "with_pieces", false, &with_pieces))
        return;
    const eng_vocab *v = r->s->vocab;
    size_t len = json_string_length(c), cap = len + 8, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    eng_status st = ids ? eng_tokenize(v, json_string_value(c), len, add_special, parse_special, ids, cap, &n)
                        : ENG_ENOMEM;
    if (st == ENG_ERANGE) {
        free(ids);
        cap = n;
        ids = malloc(cap * sizeof *ids);
        st = ids ? eng_tokenize(v, json_string_value(c), len, add_special, parse_special, ids, cap, &n) : ENG_ENOMEM;
    }
    if (st != ENG_OK) {
        free(ids);
        http_reply_eng_error(r, st, "content", NULL);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        if (with_pieces) {
            json_t *o = json_object();
            json_object_set_new(o, "id", json_integer(ids[i]));
            json_object_set_new(o, "piece", piece_json(v, ids[i]));
            json_array_append_new(arr, o);
        } else {
            json_array_append_new(arr, json_integer(ids[i]));
        }
    }
    free(ids);
    json_t *o = json_object();
    json_object_set_new(o, "tokens", arr);
    http_reply_json(r, 200, o);
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
