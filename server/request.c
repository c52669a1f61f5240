/*
 * request.c - the completion endpoints' request bodies, validated field by
 * field into engine parameters (request.h). Every error names its field in
 * "param". The order of the checks decides which error a body with several
 * faults gets; tests/e2e/test_bad_input.py pins it.
 */
#include "request.h"
#include "grammar_cache.h"
#include "reply.h"
#include "rformat.h"
#include "sbuf.h"
#include "textbuf.h"
#include "tool_grammar.h"
#include "tool_request.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* "orthorank": the engine's field list says which fields exist, what they  */
/* hold and why a value is refused; nothing about them is repeated here.    */
/* ------------------------------------------------------------------------ */

/* One field's JSON value into p; why says what is wrong (after the field's name). */
static eng_status set_field(eng_orthorank_params *p, const eng_model *m, const eng_orthorank_field *f, json_t *x,
                            char *why, size_t len)
{
    switch (f->kind) {
    case ENG_ORTHORANK_FIELD_NUMBER:
    case ENG_ORTHORANK_FIELD_INTEGER:
        if (!json_is_number(x)) break;
        return eng_orthorank_set_number(p, f, json_number_value(x), why, len);
    case ENG_ORTHORANK_FIELD_NAME:
        return eng_orthorank_set_name(p, f, json_string_value(x), json_string_length(x), why, len);
    case ENG_ORTHORANK_FIELD_LAYERS: {
        if (!json_is_array(x)) break;
        /* More values than ENG_MAX_LAYERS are more than any model has
         * layers: refused before they are read. */
        double v[ENG_MAX_LAYERS];
        size_t n = json_array_size(x);
        for (size_t i = 0; i < n && i < ENG_MAX_LAYERS; i++) {
            json_t *e = json_array_get(x, i);
            v[i] = json_is_integer(e) ? (double)json_integer_value(e) : NAN;
        }
        return eng_orthorank_set_layers(p, m, v, n, why, len);
    }
    }
    snprintf(why, len, "must be %s", f->expect);
    return ENG_EINVAL;
}

/* "sparsity, token_ratio, ...": the fields a request may set. */
static void request_fields(char *buf, size_t cap)
{
    size_t n, o = 0;
    const eng_orthorank_field *fs = eng_orthorank_fields(&n);
    buf[0] = 0;
    for (size_t i = 0; i < n && o < cap; i++)
        if (fs[i].per_request) o += (size_t)snprintf(buf + o, cap - o, "%s%s", o ? ", " : "", fs[i].name);
}

int orthorank_parse(json_t *v, const eng_model *m, eng_orthorank_params *p, char *param, size_t param_len,
                    char *msg, size_t len)
{
    if (!v || json_is_null(v)) return 0;
    snprintf(param, param_len, "orthorank");
    if (!json_is_object(v)) {
        snprintf(msg, len, "'orthorank' must be an object");
        return -1;
    }
    char why[256];
    const char *key;
    json_t *x;
    json_object_foreach(v, key, x) {
        const eng_orthorank_field *f = eng_orthorank_field_find(key, strlen(key));
        if (!f || !f->per_request) {
            char known[128];
            request_fields(known, sizeof known);
            snprintf(msg, len, "unknown field 'orthorank.%s' (known: %s)", key, known);
            return -1;
        }
        if (set_field(p, m, f, x, why, sizeof why) != ENG_OK) {
            snprintf(param, param_len, "orthorank.%s", f->name);
            snprintf(msg, len, "'orthorank.%s' %s", f->name, why);
            return -1;
        }
    }
    const char *field;
    if (eng_orthorank_check(m, p, &field, why, sizeof why) != ENG_OK) {
        snprintf(param, param_len, "orthorank.%s", field);
        snprintf(msg, len, "'orthorank.%s' %s", field, why);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

int api_error_vset(api_error *e, unsigned status, const char *type, const char *code, const char *param,
                   const char *fmt, va_list ap)
{
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    return -1;
}

int api_error_set(api_error *e, unsigned status, const char *type, const char *code, const char *param,
                  const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    api_error_vset(e, status, type, code, param, fmt, ap);
    va_end(ap);
    return -1;
}

/* An engine call failed (the same reply as http_reply_eng_error). */
static void set_eng_error(api_error *e, eng_status st, const char *param, const char *msg)
{
    const char *type, *code;
    unsigned http = reply_status_from_eng(st, &type, &code);
    api_error_set(e, http, type ? type : "server_error", code, param, "%s", msg ? msg : eng_strerror(st));
}

/* ------------------------------------------------------------------------ */
/* Field validation                                                         */
/* ------------------------------------------------------------------------ */

typedef struct {
    const api_limits *lim;
    json_t *body;
    api_error *err;
    bool failed;
} vctx;

#define VFAIL(...)                                                                                            \
    do {                                                                                                      \
        vfail(__VA_ARGS__);                                                                                   \
        return;                                                                                               \
    } while (0)

/* A 400 naming its field; the first failure wins. Messages are cut at 400
 * bytes (the longer limit of api_error_set is for the few others). */
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
    api_error_set(v->err, 400, "invalid_request_error", code, param, "%s", msg);
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
    /* The engine takes floats: an open bound must hold after rounding too. */
    if (lo_open && !((float)d > (float)lo)) {
        vfail(v, key, "invalid_value", "'%s' must be in (%g, %g], got %g (%g as a 32-bit float)", key, lo, hi, d,
              (double)(float)d);
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

bool api_model_name_ok(const api_limits *lim, const char *name)
{
    return !strcmp(name, lim->model_id) || !strcmp(name, lim->model_file);
}

/* logit_bias: {"token id": bias in [-100, 100]} */
static void parse_logit_bias(vctx *v, api_request *c)
{
    eng_sampler_params *sp = &c->p.sampling;
    json_t *x = opt(v, "logit_bias");
    if (!x) return;
    if (!json_is_object(x))
        VFAIL(v, "logit_bias", "invalid_type", "'logit_bias' must be an object mapping token ids to numbers");
    int32_t nv = eng_vocab_n_tokens(v->lim->vocab);
    c->bias = calloc(json_object_size(x) + 1, sizeof *c->bias);
    const char *key;
    json_t *e;
    json_object_foreach(x, key, e) {
        char *end;
        long id = strtol(key, &end, 10);
        if (!key[0] || *end || id < 0 || id >= nv)
            VFAIL(v, "logit_bias", "invalid_value", "'logit_bias' key '%s' is not a token id in [0, %d)", key,
                  nv);
        if (!json_is_number(e) || !(json_number_value(e) >= -100 && json_number_value(e) <= 100))
            VFAIL(v, "logit_bias", "invalid_value", "'logit_bias' values must be numbers in [-100, 100]");
        if (c->bias) c->bias[sp->n_logit_bias++] = (eng_logit_bias){(int32_t)id, (float)json_number_value(e)};
    }
    sp->logit_bias = c->bias;
}

/* "cache_salt" (vLLM's): partitions the prefix cache further (api_cache_scope). */
static void parse_cache_salt(vctx *v, api_request *c)
{
    json_t *x = opt(v, "cache_salt");
    if (!x) return;
    if (!json_is_string(x)) VFAIL(v, "cache_salt", "invalid_type", "'cache_salt' must be a string");
    if (json_string_length(x) < 1 || json_string_length(x) > API_CACHE_SALT_MAX)
        VFAIL(v, "cache_salt", "invalid_value", "'cache_salt' must be 1 to %d bytes, got %zu", API_CACHE_SALT_MAX,
              json_string_length(x));
    c->cache_salt = json_string_value(x);
    c->cache_salt_len = json_string_length(x);
}

/* Everything both endpoints share: sampling, limits, stops, biases, OrthoRank. */
/* Structured output (rformat.c): the GBNF text to enforce, compiled by the
 * submitter (grammar_cache.c). */
static void parse_structured(vctx *v, api_request *c)
{
    rformat rf;
    char param[64], msg[500];
    const char *code = NULL;
    if (rformat_parse(v->body, v->lim->cfg, &rf, param, sizeof param, &code, msg, sizeof msg)) {
        if (!strcmp(code, "server_error")) {
            api_error_set(v->err, 500, "server_error", NULL, NULL, "out of memory");
            v->failed = true;
            return;
        }
        VFAIL(v, param, code, "%s", msg);
    }
    c->grammar_text = rf.gbnf;
    c->grammar_len = rf.len;
    c->grammar_param = rf.param;
}

static void parse_common(vctx *v, api_request *c, bool chat)
{
    const api_limits *lim = v->lim;
    const srv_config *cfg = lim->cfg;
    c->p.n_logprobs = -1;
    c->p.sampling = eng_sampler_default_params();
    eng_sampler_params *sp = &c->p.sampling;
    /* OpenAI semantics: temperature 1, top_p 1, no top-k / min-p unless asked. */
    sp->temperature = 1.0f;
    sp->top_k = 0;
    sp->top_p = 1.0f;
    sp->min_p = 0.0f;
    sp->seed = 0; /* the submitter draws one unless the body gives it */

    json_t *x;
    if ((x = json_object_get(v->body, "model")) && !json_is_null(x)) {
        if (!json_is_string(x)) VFAIL(v, "model", "invalid_type", "'model' must be a string");
        if (!api_model_name_ok(lim, json_string_value(x))) {
            v->failed = true;
            api_error_set(v->err, 404, "not_found_error", "model_not_found", "model",
                      "the model '%s' does not exist (this server serves '%s')", json_string_value(x),
                      lim->model_id);
            return;
        }
    }
    long long k;
    double d;
    bool b;
    /* Defaults: the server's limit (chat), OpenAI's 16 within it (completions). */
    long long max_tok = chat || cfg->max_tokens < 16 ? cfg->max_tokens : 16;
    const char *mt_key = "max_tokens";
    if (chat && opt(v, "max_completion_tokens")) mt_key = "max_completion_tokens";
    if (get_int(v, mt_key, chat ? 1 : 0, INT32_MAX, &k)) {
        if (k > cfg->max_tokens)
            VFAIL(v, mt_key, "invalid_value", "'%s' must be at most %ld on this server, got %lld", mt_key,
                  cfg->max_tokens, k);
        max_tok = k;
    }
    c->p.max_tokens = (int32_t)max_tok;
    if (get_number(v, "temperature", 0, 2, false, &d)) sp->temperature = (float)d;
    if (get_number(v, "top_p", 0, 1, false, &d)) {
        if ((float)d == 0) sp->temperature = 0; /* only the top token survives: greedy */
        else sp->top_p = (float)d;
    }
    if (get_int(v, "top_k", -1, INT32_MAX, &k)) sp->top_k = k < 0 ? 0 : (int32_t)k;
    if (get_number(v, "min_p", 0, 1, false, &d)) sp->min_p = (float)d;
    if (get_number(v, "presence_penalty", -2, 2, false, &d)) sp->presence_penalty = (float)d;
    if (get_number(v, "frequency_penalty", -2, 2, false, &d)) sp->frequency_penalty = (float)d;
    if (get_number(v, "repetition_penalty", 0, 100, true, &d)) sp->repeat_penalty = (float)d;
    if (get_number(v, "repeat_penalty", 0, 100, true, &d)) sp->repeat_penalty = (float)d;
    if (get_int(v, "repeat_last_n", -1, INT32_MAX, &k)) sp->repeat_last_n = (int32_t)k;
    if ((x = opt(v, "seed"))) {
        if (!json_is_integer(x)) VFAIL(v, "seed", "invalid_type", "'seed' must be an integer");
        sp->seed = (uint64_t)json_integer_value(x);
        c->seeded = true;
    }
    c->n_choices = 1;
    if (get_int(v, "n", 1, INT32_MAX, &k)) {
        if (k > cfg->max_n)
            VFAIL(v, "n", "invalid_value", "'n' must be at most %ld (the server's max_n), got %lld", cfg->max_n, k);
        c->n_choices = (int32_t)k;
    }
    if (!chat && get_int(v, "best_of", 1, INT32_MAX, &k) && k != 1)
        VFAIL(v, "best_of", "invalid_value", "only best_of=1 is supported");
    if (get_int(v, "min_tokens", 0, INT32_MAX, &k)) c->p.min_tokens = (int32_t)k;
    if (get_bool(v, "ignore_eos", &b)) c->p.ignore_eos = b;
    if (get_bool(v, "stream", &b)) c->stream = b;
    if ((x = opt(v, "stream_options"))) {
        if (!json_is_object(x)) VFAIL(v, "stream_options", "invalid_type", "'stream_options' must be an object");
        if (!c->stream)
            VFAIL(v, "stream_options", "invalid_value", "'stream_options' is only allowed when 'stream' is true");
        json_t *iu = json_object_get(x, "include_usage");
        if (iu && !json_is_null(iu)) {
            if (!json_is_boolean(iu))
                VFAIL(v, "stream_options.include_usage", "invalid_type",
                      "'stream_options.include_usage' must be a boolean");
            c->include_usage = json_is_true(iu);
        }
    }
    if ((x = opt(v, "user")) && !json_is_string(x)) VFAIL(v, "user", "invalid_type", "'user' must be a string");
    parse_cache_salt(v, c);
    if (v->failed) return;

    /* stop: a string or an array of strings. */
    if ((x = opt(v, "stop"))) {
        if (json_is_string(x)) {
            c->stops = malloc(sizeof *c->stops);
            if (c->stops) c->stops[c->n_stops++] = json_string_value(x);
        } else if (json_is_array(x)) {
            if (json_array_size(x) > 16) VFAIL(v, "stop", "invalid_value", "'stop' may hold at most 16 strings");
            c->stops = malloc((json_array_size(x) + 1) * sizeof *c->stops);
            size_t i;
            json_t *e;
            json_array_foreach(x, i, e) {
                if (!json_is_string(e))
                    VFAIL(v, "stop", "invalid_type", "'stop' must be a string or an array of strings");
                if (c->stops) c->stops[c->n_stops++] = json_string_value(e);
            }
        } else {
            VFAIL(v, "stop", "invalid_type", "'stop' must be a string or an array of strings");
        }
    }
    parse_logit_bias(v, c);
    if (v->failed) return;
    parse_structured(v, c);
    if (v->failed) return;
    char param[64], msg[300];
    c->orthorank = cfg->orthorank;
    if (orthorank_parse(json_object_get(v->body, "orthorank"), lim->model, &c->orthorank, param, sizeof param, msg,
                        sizeof msg))
        VFAIL(v, param, "invalid_value", "%s", msg);
}

static int32_t *tokenize(const eng_vocab *vocab, const char *text, size_t len, bool parse_special, size_t *n)
{
    size_t cap = len + 8;
    for (int tries = 0; tries < 2; tries++) {
        int32_t *ids = malloc(cap * sizeof *ids);
        if (!ids) return NULL;
        eng_status st = eng_tokenize(vocab, text, len, true, parse_special, ids, cap, n);
        if (st == ENG_OK) return ids;
        free(ids);
        if (st != ENG_ERANGE) return NULL;
        cap = *n;
    }
    return NULL;
}

/* A prompt text of len bytes that is sure to be longer than the context
 * allows (at least len / eng_vocab_max_token_bytes tokens): refused before
 * it is tokenized, so a huge body costs no tokenization. -1 (err set) then. */
static int refuse_by_bytes(vctx *v, api_request *c, size_t len)
{
    const api_limits *lim = v->lim;
    size_t per_token = (size_t)eng_vocab_max_token_bytes(lim->vocab);
    size_t room = (size_t)lim->n_ctx - (c->p.max_tokens > 0 ? 1 : 0);
    if (!per_token || len <= room * per_token) return 0;
    api_error_set(v->err, 400, "invalid_request_error", "context_length_exceeded", c->prompt_param,
              "this model's maximum context length is %d tokens, but the %s (%zu bytes) is more than %zu tokens%s",
              lim->n_ctx, c->chat ? "conversation" : "prompt", len, room,
              c->p.max_tokens > 0 ? " (and at least one must be generated)" : "");
    return -1;
}

/* The prompt's checks that need its tokens; takes ownership of ids. */
static int set_prompt(vctx *v, api_request *c, int32_t *ids, size_t n_ids)
{
    const api_limits *lim = v->lim;
    c->prompt = ids;
    c->p.prompt = ids;
    c->p.n_prompt = n_ids;
    if (n_ids == 0) {
        api_error_set(v->err, 400, "invalid_request_error", "invalid_value", c->prompt_param,
                  "the prompt is empty (and the model adds no BOS token)");
        return -1;
    }
    if ((int64_t)n_ids + (c->p.max_tokens > 0 ? 1 : 0) > lim->n_ctx) {
        api_error_set(v->err, 400, "invalid_request_error", "context_length_exceeded", c->prompt_param,
                  "this model's maximum context length is %d tokens, but the %s is %zu tokens%s", lim->n_ctx,
                  c->chat ? "conversation" : "prompt", n_ids,
                  c->p.max_tokens > 0 ? " (and at least one must be generated)" : "");
        return -1;
    }
    return 0;
}

void api_request_free(api_request *req)
{
    if (!req) return;
    free(req->prompt);
    free(req->bias);
    free(req->stops);
    free(req->echo_text);
    free(req->grammar_text);
    eng_grammar_release(req->p.grammar);
    memset(req, 0, sizeof *req);
}

/* ------------------------------------------------------------------------ */
/* Endpoints                                                                */
/* ------------------------------------------------------------------------ */

/* A content-part array's text parts, joined by newlines, into a new string
 * (*text, the caller frees it). false when a part is refused (v failed). */
static bool join_text_parts(vctx *v, json_t *content, const char *param, char **text)
{
    sbuf t = {0};
    size_t k;
    json_t *part;
    sbuf_add(&t, "", 0);
    json_array_foreach(content, k, part) {
        json_t *type = json_object_get(part, "type"), *txt = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type)) {
            vfail(v, param, "invalid_type", "'%s[%zu]' must be a content part object with a 'type'", param, k);
        } else if (strcmp(json_string_value(type), "text")) {
            vfail(v, param, "not_supported", "content parts of type '%s' are not supported (only 'text')",
                  json_string_value(type));
        } else if (!json_is_string(txt)) {
            vfail(v, param, "invalid_type", "'%s[%zu].text' must be a string", param, k);
        } else {
            if (k) sbuf_add(&t, "\n", 1);
            sbuf_add(&t, json_string_value(txt), json_string_length(txt));
            continue;
        }
        free(t.p);
        return false;
    }
    *text = t.p;
    return true;
}

/* messages[i] into cm (role, content); *owned: a string cm points into that
 * the caller frees. false when the message is refused (v failed). */
static bool parse_message(vctx *v, json_t *m, size_t i, eng_chat_msg *cm, char **owned)
{
    char param[64];
    snprintf(param, sizeof param, "messages[%zu]", i);
    if (!json_is_object(m)) {
        vfail(v, param, "invalid_type", "'%s' must be an object", param);
        return false;
    }
    json_t *role = json_object_get(m, "role");
    snprintf(param, sizeof param, "messages[%zu].role", i);
    if (!json_is_string(role)) {
        vfail(v, param, role ? "invalid_type" : "missing_field", "'%s' must be a string", param);
        return false;
    }
    const char *rs = json_string_value(role);
    if (!strcmp(rs, "developer")) rs = "system";
    if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant")) {
        vfail(v, param, "invalid_value", "'%s' must be 'system', 'user' or 'assistant' (got '%s')", param, rs);
        return false;
    }
    cm->role = rs;
    json_t *content = json_object_get(m, "content");
    snprintf(param, sizeof param, "messages[%zu].content", i);
    if (json_is_string(content)) {
        cm->content = json_string_value(content);
    } else if (json_is_array(content)) {
        if (!join_text_parts(v, content, param, owned)) return false;
        cm->content = *owned;
    } else if ((!content || json_is_null(content)) && !strcmp(rs, "assistant")) {
        cm->content = "";
    } else {
        vfail(v, param, content ? "invalid_type" : "missing_field", "'%s' must be a string or an array of text parts",
              param);
        return false;
    }
    return true;
}

/* "messages" present, a non-empty array, no functions, and tools only with
 * a Jinja template (which renders them): its length, or 0 (v failed). */
static size_t check_messages(vctx *v, json_t **msgs)
{
    *msgs = json_object_get(v->body, "messages");
    json_t *x;
    if (!*msgs || json_is_null(*msgs))
        vfail(v, "messages", "missing_field", "'messages' is required");
    else if (!json_is_array(*msgs))
        vfail(v, "messages", "invalid_type", "'messages' must be an array");
    else if (!json_array_size(*msgs))
        vfail(v, "messages", "invalid_value", "'messages' must not be empty");
    else if ((x = opt(v, "tools")) && !json_is_array(x))
        vfail(v, "tools", "invalid_type", "'tools' must be an array");
    else if (json_array_size(x) && !v->lim->tmpl)
        vfail(v, "tools", "not_supported", "tools need the model's own chat template (this model has none)");
    else if ((x = opt(v, "functions")) && (!json_is_array(x) || json_array_size(x)))
        vfail(v, "functions", "not_supported", "functions are not supported by this server");
    else
        return json_array_size(*msgs);
    return 0;
}

/* The chat's logprobs and top_logprobs into out->p.n_logprobs. */
static void parse_chat_logprobs(vctx *v, api_request *out)
{
    bool lp = false;
    long long top = 0;
    get_bool(v, "logprobs", &lp);
    if (get_int(v, "top_logprobs", 0, ENG_MAX_TOP_LOGPROBS, &top) && !lp)
        vfail(v, "top_logprobs", "invalid_value", "'top_logprobs' requires 'logprobs' to be true");
    out->p.n_logprobs = lp ? (int32_t)top : -1;
}

/* prompt_text (taken: freed here), tokenized, as the prompt. */
static void text_prompt(vctx *v, api_request *out, char *prompt_text, size_t prompt_len)
{
    size_t n_ids = 0;
    if (refuse_by_bytes(v, out, prompt_len)) {
        eng_free(prompt_text);
        v->failed = true;
        return;
    }
    int32_t *ids = tokenize(v->lim->vocab, prompt_text, prompt_len, true, &n_ids);
    eng_free(prompt_text);
    if (!ids) {
        api_error_set(v->err, 500, "server_error", NULL, NULL, "tokenization failed");
        v->failed = true;
        return;
    }
    if (set_prompt(v, out, ids, n_ids)) v->failed = true;
}

/* The rendered built-in chat template, tokenized, as the prompt. */
static void chat_prompt(vctx *v, api_request *out, const eng_chat_msg *cm, size_t n)
{
    char *prompt_text = NULL;
    size_t prompt_len = 0;
    eng_status st = eng_chat_apply(v->lim->chat_fmt, cm, n, true, &prompt_text, &prompt_len);
    if (st != ENG_OK) {
        set_eng_error(v->err, st, "messages", "the messages could not be rendered with the chat template");
        v->failed = true;
        return;
    }
    text_prompt(v, out, prompt_text, prompt_len);
}

/* The model's Jinja template rendered from the body, tokenized. A BOS the
 * template wrote itself is left to the tokenizer, which adds it anyway. */
/* tool_choice required / named: the grammar of a call (tool_grammar.c),
 * compiled by the submitter like a response_format's. */
static void forced_call(vctx *v, api_request *out, const tool_req *tr, tc_format fmt, bool open)
{
    const char *what = tr->choice == TOOL_CHOICE_REQUIRED ? "required" : "function";
    if (fmt == TC_NONE || fmt == TC_QWEN3_CODER)
        VFAIL(v, "tool_choice", "not_supported", "'tool_choice' %s needs a chat template whose tool-call format the "
              "server can constrain (this one's: %s)", what, tc_format_name(fmt));
    if (out->grammar_text)
        VFAIL(v, "tool_choice", "invalid_value", "'tool_choice' %s cannot be combined with '%s' (both constrain the "
              "output)", what, out->grammar_param);
    const srv_config *cfg = v->lim->cfg;
    schema_limits sl = {.max_depth = (int)cfg->schema_max_depth, .max_rules = (int)cfg->grammar_max_rules,
                        .max_bytes = (size_t)cfg->grammar_max_bytes, .max_count = cfg->schema_max_count};
    tool_grammar_opts go = {.fmt = fmt, .think_open = open, .parallel = tr->parallel,
                            .name = tr->choice == TOOL_CHOICE_NAMED ? tr->name : NULL};
    char param[64], msg[500], *g = NULL;
    const char *code = NULL;
    if (tool_grammar(v->body, &go, &sl, &g, param, sizeof param, &code, msg, sizeof msg)) {
        if (!strcmp(code, "server_error")) {
            api_error_set(v->err, 500, "server_error", NULL, NULL, "out of memory");
            v->failed = true;
            return;
        }
        VFAIL(v, param, code, "%s", msg);
    }
    out->grammar_text = g;
    out->grammar_len = strlen(g);
    out->grammar_param = "tool_choice";
}

/* Tools, tool_choice and parallel_tool_calls (tool_request.c), and how the
 * reply of the rendered prompt (text, len) is split: calls in the
 * template's format unless tool_choice is none; reasoning for a thinking
 * template, open from the start when the prompt ends inside <think>. */
static void tool_setup(vctx *v, api_request *out, const tool_req *tr, const char *text, size_t len)
{
    const chat_tmpl *t = v->lim->tmpl;
    tc_format fmt = tr->choice == TOOL_CHOICE_NONE ? TC_NONE : chat_tmpl_tool_format(t);
    size_t k = len;
    while (k && strchr(" \t\r\n", text[k - 1])) k--;
    bool open = k >= 7 && !memcmp(text + k - 7, "<think>", 7);
    out->tc = (tc_opts){.fmt = fmt, .thinking = chat_tmpl_thinking(t), .think_open = open};
    out->parse_reply = fmt != TC_NONE || out->tc.thinking || open;
    out->single_call = !tr->parallel;
    out->forced_tool = tr->choice == TOOL_CHOICE_REQUIRED ? "" : tr->choice == TOOL_CHOICE_NAMED ? tr->name : NULL;
    if (out->forced_tool) forced_call(v, out, tr, fmt, open);
}

static void jinja_prompt(vctx *v, api_request *out)
{
    tool_req tr;
    char tparam[64], tmsg[300];
    const char *tcode = NULL;
    if (tool_request_parse(v->body, &tr, tparam, sizeof tparam, &tcode, tmsg, sizeof tmsg)) {
        vfail(v, tparam, tcode, "%s", tmsg);
        return;
    }
    char *text = NULL, msg[512];
    size_t len = 0;
    const char *param = "messages";
    int rc = chat_tmpl_render(v->lim->tmpl, v->body, &text, &len, &param, msg, sizeof msg);
    if (rc == -2) {
        api_error_set(v->err, 500, "server_error", NULL, NULL, "out of memory");
        v->failed = true;
        return;
    }
    if (rc) {
        vfail(v, param, "invalid_value", "%s", msg);
        return;
    }
    tool_setup(v, out, &tr, text, len);
    if (v->failed) {
        eng_free(text);
        return;
    }
    const char *bos = chat_tmpl_bos(v->lim->tmpl);
    size_t nb = bos ? strlen(bos) : 0;
    if (nb && eng_vocab_add_bos(v->lim->vocab) && len >= nb && !memcmp(text, bos, nb)) {
        memmove(text, text + nb, len - nb + 1);
        len -= nb;
    }
    text_prompt(v, out, text, len);
}

/* Structured output: the request's GBNF compiled into p.grammar (or found
 * in the cache), for every road that parses a body (chat, completions, each
 * prompt of a list, /v1/responses). */
static int compile_grammar(const api_limits *lim, api_request *q, api_error *e)
{
    if (!q->grammar_text) return 0;
    char msg[400];
    bool hit;
    eng_status st = grammar_cache_get(lim->gcache, q->grammar_text, q->grammar_len, &q->p.grammar, &hit, msg,
                                      sizeof msg);
    if (st == ENG_OK) return 0;
    e->status = st == ENG_EINVAL ? 400 : 500;
    e->type = st == ENG_EINVAL ? "invalid_request_error" : "server_error";
    e->code = st == ENG_EINVAL ? "invalid_grammar" : NULL;
    snprintf(e->param, sizeof e->param, "%s", q->grammar_param);
    if (st == ENG_EINVAL && strcmp(q->grammar_param, "grammar") && strstr(msg, "left-recursive"))
        snprintf(e->message, sizeof e->message, "%s: the schema recurses (through $ref, anyOf or allOf) before "
                 "matching any character, so no finite value matches it", q->grammar_param);
    else
        snprintf(e->message, sizeof e->message, "%s: %s", q->grammar_param,
                 st == ENG_EINVAL ? msg : eng_strerror(st));
    api_request_free(q);
    return -1;
}

int api_parse_chat(const api_limits *lim, json_t *body, api_request *out, api_error *err)
{
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    out->chat = true;
    out->prompt_param = "messages";
    vctx v = {lim, body, err, false};
    json_t *msgs;
    size_t n = check_messages(&v, &msgs);
    eng_chat_msg *cm = n ? calloc(n, sizeof *cm) : NULL;
    char **owned = n ? calloc(n, sizeof *owned) : NULL;
    if (n && (!cm || !owned)) {
        api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        v.failed = true;
    }
    for (size_t i = 0; !v.failed && !lim->tmpl && i < n; i++)
        parse_message(&v, json_array_get(msgs, i), i, &cm[i], &owned[i]);
    if (!v.failed) parse_common(&v, out, true);
    if (!v.failed) parse_chat_logprobs(&v, out);
    if (!v.failed && lim->tmpl) jinja_prompt(&v, out);
    else if (!v.failed) chat_prompt(&v, out, cm, n);
    for (size_t i = 0; owned && i < n; i++) free(owned[i]);
    free(owned);
    free(cm);
    if (v.failed) {
        api_request_free(out);
        return -1;
    }
    return lim->gcache ? compile_grammar(lim, out, err) : 0;
}

int api_parse_completions(const api_limits *lim, json_t *body, api_request *out, api_error *err)
{
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    out->prompt_param = "prompt";
    vctx v = {lim, body, err, false};
    json_t *pr = json_object_get(body, "prompt");
    if (!pr || json_is_null(pr)) {
        vfail(&v, "prompt", "missing_field", "'prompt' is required");
        return -1;
    }
    if (opt(&v, "suffix")) {
        vfail(&v, "suffix", "not_supported", "'suffix' (insertion) is not supported by this server");
        return -1;
    }
    /* An array of one prompt is that prompt. */
    if (json_is_array(pr) && json_array_size(pr) == 1 &&
        (json_is_string(json_array_get(pr, 0)) || json_is_array(json_array_get(pr, 0))))
        pr = json_array_get(pr, 0);
    parse_common(&v, out, false);
    long long lpn = -1;
    bool echo = false;
    if (!v.failed) get_int(&v, "logprobs", 0, ENG_MAX_TOP_LOGPROBS, &lpn);
    if (!v.failed) get_bool(&v, "echo", &echo);
    if (v.failed) goto fail;
    out->p.n_logprobs = (int32_t)lpn;
    out->echo = echo;
    out->p.prompt_logprobs = echo && lpn >= 0;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (json_is_string(pr)) {
        if (refuse_by_bytes(&v, out, json_string_length(pr))) goto fail;
        ids = tokenize(lim->vocab, json_string_value(pr), json_string_length(pr), false, &n_ids);
        if (!ids) {
            api_error_set(err, 500, "server_error", NULL, NULL, "tokenization failed");
            goto fail;
        }
        if (echo) {
            out->echo_text = strndup(json_string_value(pr), json_string_length(pr));
            out->echo_len = json_string_length(pr);
        }
    } else if (json_is_array(pr)) {
        size_t n = json_array_size(pr);
        if (!n) {
            vfail(&v, "prompt", "invalid_value", "'prompt' must not be empty");
            goto fail;
        }
        int32_t nv = eng_vocab_n_tokens(lim->vocab);
        ids = malloc(n * sizeof *ids);
        for (size_t i = 0; ids && i < n; i++) {
            json_t *e = json_array_get(pr, i);
            if (!json_is_integer(e)) {
                free(ids);
                vfail(&v, "prompt", "invalid_type",
                      "'prompt' must be a string, an array of token ids, or an array of one of those "
                      "(several prompts per request are not supported)");
                goto fail;
            }
            if (json_integer_value(e) < 0 || json_integer_value(e) >= nv) {
                free(ids);
                vfail(&v, "prompt", "invalid_value", "'prompt[%zu]' is not a token id in [0, %d)", i, nv);
                goto fail;
            }
            ids[i] = (int32_t)json_integer_value(e);
        }
        n_ids = n;
        if (echo && ids) {
            size_t cap = n * 16 + 16, len = 0;
            char *buf = malloc(cap);
            if (buf && eng_detokenize(lim->vocab, ids, n, false, false, buf, cap, &len) == ENG_ERANGE) {
                free(buf);
                cap = len + 1;
                buf = malloc(cap);
                if (buf && eng_detokenize(lim->vocab, ids, n, false, false, buf, cap, &len) != ENG_OK) len = 0;
            }
            if (buf) out->echo_text = utf8_sanitize(buf, len, &out->echo_len);
            free(buf);
        }
    } else {
        vfail(&v, "prompt", "invalid_type",
              "'prompt' must be a string, an array of token ids, or an array of one of those");
        goto fail;
    }
    if (!ids) {
        api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        goto fail;
    }
    if (echo && !out->echo_text) out->echo_text = strdup("");
    if (set_prompt(&v, out, ids, n_ids)) goto fail;
    return lim->gcache ? compile_grammar(lim, out, err) : 0;
fail:
    api_request_free(out);
    return -1;
}

/* ------------------------------------------------------------------------ */
/* The prefix-cache scope                                                   */
/* ------------------------------------------------------------------------ */

static uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

static void sip_round(uint64_t v[4])
{
    v[0] += v[1]; v[1] = rotl(v[1], 13); v[1] ^= v[0]; v[0] = rotl(v[0], 32);
    v[2] += v[3]; v[3] = rotl(v[3], 16); v[3] ^= v[2];
    v[0] += v[3]; v[3] = rotl(v[3], 21); v[3] ^= v[0];
    v[2] += v[1]; v[1] = rotl(v[1], 17); v[1] ^= v[2]; v[2] = rotl(v[2], 32);
}

/* SipHash-2-4 (Aumasson and Bernstein) of m[0..n) under the key k. */
static uint64_t siphash24(const uint64_t k[2], const unsigned char *m, size_t n)
{
    uint64_t v[4] = {k[0] ^ 0x736f6d6570736575u, k[1] ^ 0x646f72616e646f6du, k[0] ^ 0x6c7967656e657261u,
                     k[1] ^ 0x7465646279746573u};
    size_t full = n / 8 * 8;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t x = 0;
        for (int b = 0; b < 8; b++) x |= (uint64_t)m[i + (size_t)b] << (8 * b);
        v[3] ^= x;
        sip_round(v);
        sip_round(v);
        v[0] ^= x;
    }
    uint64_t w = (uint64_t)n << 56; /* the last word: the tail, and the length's low byte on top */
    for (size_t i = full; i < n; i++) w |= (uint64_t)m[i] << (8 * (i - full));
    v[3] ^= w;
    sip_round(v);
    sip_round(v);
    v[0] ^= w;
    v[2] ^= 0xff;
    for (int r = 0; r < 4; r++) sip_round(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

uint64_t api_cache_scope(const uint64_t secret[2], int key, const char *salt, size_t salt_len)
{
    /* The key's 4 bytes, then the salt (at least 1 byte when given, so no
     * (key, salt) pair reads as another). */
    unsigned char m[4 + API_CACHE_SALT_MAX];
    uint32_t k = (uint32_t)key;
    for (int b = 0; b < 4; b++) m[b] = (unsigned char)(k >> (8 * b));
    if (!salt || salt_len > API_CACHE_SALT_MAX) salt_len = 0;
    if (salt_len) memcpy(m + 4, salt, salt_len);
    return siphash24(secret, m, 4 + salt_len);
}
