/*
 * resp_request.c - /v1/responses bodies into chat completions bodies
 * (resp_request.h). The Responses fields are checked here; everything the
 * two endpoints share (sampling, limits, the prompt, OrthoRank) is checked
 * once, by request.c, on the chat body built here.
 */
#include "resp_request.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(api_error *e, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(api_error *e, const char *param, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    api_error_vset(e, 400, "invalid_request_error", code, param, fmt, ap);
    va_end(ap);
    return -1;
}

static json_t *opt(json_t *body, const char *key)
{
    json_t *x = json_object_get(body, key);
    return x && !json_is_null(x) ? x : NULL;
}

/* The fields a request sets and the response repeats, with OpenAI's
 * defaults for those it omits. */
static const struct {
    const char *key;
    const char *def; /* JSON */
} ECHO[] = {
    {"instructions", "null"},         {"metadata", "{}"},        {"temperature", "1.0"},
    {"top_p", "1.0"},                 {"max_output_tokens", "null"}, {"previous_response_id", "null"},
    {"text", "{\"format\":{\"type\":\"text\"}}"}, {"tools", "[]"}, {"tool_choice", "\"auto\""},
    {"parallel_tool_calls", "true"},  {"truncation", "\"disabled\""}, {"user", "null"},
    {"reasoning", "{\"effort\":null,\"summary\":null}"},
};

static json_t *echo_fields(json_t *body, bool store)
{
    json_t *e = json_object();
    for (size_t i = 0; i < sizeof ECHO / sizeof ECHO[0]; i++) {
        json_t *x = opt(body, ECHO[i].key);
        json_object_set_new(e, ECHO[i].key, x ? json_deep_copy(x) : json_loads(ECHO[i].def, JSON_DECODE_ANY, NULL));
    }
    json_object_set_new(e, "store", json_boolean(store));
    return e;
}

/* metadata: at most 16 string values (keys <= 64, values <= 512 bytes). */
static int check_metadata(json_t *m, api_error *err)
{
    if (!json_is_object(m)) return fail(err, "metadata", "invalid_type", "'metadata' must be an object");
    if (json_object_size(m) > 16)
        return fail(err, "metadata", "invalid_value", "'metadata' may hold at most 16 pairs");
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v) {
        if (strlen(k) > 64 || !json_is_string(v) || json_string_length(v) > 512)
            return fail(err, "metadata", "invalid_value",
                        "'metadata' maps keys of at most 64 bytes to strings of at most 512 bytes");
    }
    return 0;
}

/* Fields this server does not do: refused rather than ignored. */
static int refuse_unsupported(json_t *body, api_error *err)
{
    json_t *x;
    if ((x = opt(body, "background")) && !json_is_false(x))
        return fail(err, "background", "not_supported", "background responses are not supported by this server");
    if (opt(body, "conversation"))
        return fail(err, "conversation", "not_supported", "conversations are not supported (use previous_response_id)");
    if (opt(body, "prompt"))
        return fail(err, "prompt", "not_supported", "prompt templates are not supported by this server");
    if ((x = opt(body, "truncation")) && !(json_is_string(x) && !strcmp(json_string_value(x), "disabled")))
        return fail(err, "truncation", "not_supported", "only 'truncation': 'disabled' is supported");
    if ((x = opt(body, "top_logprobs")) && !(json_is_integer(x) && json_integer_value(x) == 0))
        return fail(err, "top_logprobs", "not_supported", "'top_logprobs' is not supported on /v1/responses");
    return 0;
}

/* The input as an array of items (a string is one user message). */
static int input_items(json_t *body, resp_request *out, api_error *err)
{
    json_t *in = json_object_get(body, "input");
    if (!in || json_is_null(in)) return fail(err, "input", "missing_field", "'input' is required");
    if (json_is_string(in)) {
        out->input = json_pack("[{s:s, s:s, s:O}]", "type", "message", "role", "user", "content", in);
        return 0;
    }
    if (!json_is_array(in))
        return fail(err, "input", "invalid_type", "'input' must be a string or an array of input items");
    if (!json_array_size(in)) return fail(err, "input", "invalid_value", "'input' must not be empty");
    out->input = json_deep_copy(in);
    return 0;
}

int resp_request_parse(json_t *body, resp_request *out, api_error *err)
{
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    out->store = true;
    json_t *x;
    if ((x = opt(body, "stream"))) {
        if (!json_is_boolean(x)) return fail(err, "stream", "invalid_type", "'stream' must be a boolean");
        out->stream = json_is_true(x);
    }
    if ((x = opt(body, "store"))) {
        if (!json_is_boolean(x)) return fail(err, "store", "invalid_type", "'store' must be a boolean");
        out->store = json_is_true(x);
    }
    if ((x = opt(body, "previous_response_id"))) {
        if (!json_is_string(x) || !json_string_length(x) || json_string_length(x) > RESP_ID_MAX)
            return fail(err, "previous_response_id", "invalid_value",
                        "'previous_response_id' must be a response id (1 to %d bytes)", RESP_ID_MAX);
        snprintf(out->previous_id, sizeof out->previous_id, "%s", json_string_value(x));
    }
    if ((x = opt(body, "instructions")) && !json_is_string(x))
        return fail(err, "instructions", "invalid_type", "'instructions' must be a string");
    if ((x = opt(body, "metadata")) && check_metadata(x, err)) return -1;
    if (refuse_unsupported(body, err)) return -1;
    if ((x = opt(body, "max_output_tokens")) && !json_is_integer(x))
        return fail(err, "max_output_tokens", "invalid_type", "'max_output_tokens' must be an integer");
    if (input_items(body, out, err)) return -1;
    if (!(out->echo = echo_fields(body, out->store)) || !out->input) {
        resp_request_free(out);
        err->status = 500;
        err->type = "server_error";
        snprintf(err->message, sizeof err->message, "out of memory");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Items -> chat messages                                                   */
/* ------------------------------------------------------------------------ */

typedef struct {
    json_t *msgs, *params;
    api_error *err;
} conv;

static void push(conv *c, json_t *msg, const char *param)
{
    json_array_append_new(c->msgs, msg);
    json_array_append_new(c->params, json_string(param));
}

/* A message's content: a string stays; parts of type input_text /
 * output_text become chat's text parts; others keep their type, which
 * chat refuses naming it. */
static json_t *content_of(json_t *content)
{
    if (!json_is_array(content)) return json_incref(content);
    json_t *parts = json_array();
    size_t i;
    json_t *p;
    json_array_foreach(content, i, p) {
        json_t *t = json_object_get(p, "type");
        const char *ts = json_string_value(t);
        if (json_is_object(p) && ts && (!strcmp(ts, "input_text") || !strcmp(ts, "output_text"))) {
            json_t *q = json_deep_copy(p);
            json_object_set_new(q, "type", json_string("text"));
            json_object_del(q, "annotations");
            json_object_del(q, "logprobs");
            json_array_append_new(parts, q);
        } else {
            json_array_append(parts, p);
        }
    }
    return parts;
}

/* function_call: a tool call of the assistant, joined to the assistant
 * message just before it when there is one (chat keeps a turn's calls in
 * one message). */
static int function_call(conv *c, json_t *it, const char *param)
{
    json_t *id = json_object_get(it, "call_id"), *name = json_object_get(it, "name"),
           *args = json_object_get(it, "arguments");
    if (!json_is_string(id) || !json_is_string(name) || !json_is_string(args))
        return fail(c->err, param, "invalid_value",
                    "'%s' (a function_call) needs string 'call_id', 'name' and 'arguments'", param);
    json_t *call = json_pack("{s:O, s:s, s:{s:O, s:O}}", "id", id, "type", "function", "function", "name", name,
                             "arguments", args);
    size_t n = json_array_size(c->msgs);
    json_t *last = n ? json_array_get(c->msgs, n - 1) : NULL;
    const char *role = last ? json_string_value(json_object_get(last, "role")) : NULL;
    if (role && !strcmp(role, "assistant")) {
        json_t *calls = json_object_get(last, "tool_calls");
        if (!calls) json_object_set_new(last, "tool_calls", calls = json_array());
        json_array_append_new(calls, call);
        return 0;
    }
    push(c, json_pack("{s:s, s:n, s:[o]}", "role", "assistant", "content", "tool_calls", call), param);
    return 0;
}

static int item_to_message(conv *c, json_t *it, const char *param)
{
    if (!json_is_object(it)) return fail(c->err, param, "invalid_type", "'%s' must be an object", param);
    json_t *t = json_object_get(it, "type");
    const char *ts = t ? json_string_value(t) : "message";
    if (!ts) return fail(c->err, param, "invalid_type", "'%s.type' must be a string", param);
    if (!strcmp(ts, "message")) {
        json_t *m = json_object();
        json_t *role = json_object_get(it, "role"), *content = json_object_get(it, "content");
        if (role) json_object_set(m, "role", role);
        if (content) json_object_set_new(m, "content", content_of(content));
        push(c, m, param);
        return 0;
    }
    if (!strcmp(ts, "function_call")) return function_call(c, it, param);
    if (!strcmp(ts, "function_call_output")) {
        json_t *id = json_object_get(it, "call_id"), *o = json_object_get(it, "output");
        if (!json_is_string(id) || !o)
            return fail(c->err, param, "invalid_value",
                        "'%s' (a function_call_output) needs a string 'call_id' and an 'output'", param);
        push(c, json_pack("{s:s, s:O, s:o}", "role", "tool", "tool_call_id", id, "content", content_of(o)), param);
        return 0;
    }
    if (!strcmp(ts, "reasoning")) return 0; /* a thinking model's own notes: not context for the next turn */
    if (!strcmp(ts, "item_reference"))
        return fail(c->err, param, "not_supported", "an item_reference must name an output item of a stored response");
    return fail(c->err, param, "not_supported", "input items of type '%s' are not supported", ts);
}

static int add_items(conv *c, json_t *items, const char *prefix, bool indexed)
{
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it) {
        char param[64];
        if (indexed) snprintf(param, sizeof param, "%s[%zu]", prefix, i);
        else snprintf(param, sizeof param, "%s", prefix);
        if (item_to_message(c, it, param)) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The chat body                                                            */
/* ------------------------------------------------------------------------ */

/* Fields copied as they are (chat has the same name and meaning); the
 * extensions at the end are orthoserve's and vLLM's, as on chat. */
static const char *const SAME[] = {"model", "temperature", "top_p", "parallel_tool_calls", "user", "seed", "top_k",
                                   "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
                                   "repeat_penalty", "repeat_last_n", "stop", "logit_bias", "min_tokens",
                                   "ignore_eos", "cache_salt", "orthorank", "grammar"};

/* text.format -> response_format (json_schema's fields move under "json_schema"). */
static int text_format(json_t *chat, json_t *body, api_error *err)
{
    json_t *text = opt(body, "text");
    if (!text) return 0;
    if (!json_is_object(text)) return fail(err, "text", "invalid_type", "'text' must be an object");
    json_t *f = opt(text, "format");
    if (!f) return 0;
    json_t *t = json_is_object(f) ? json_object_get(f, "type") : NULL;
    if (!json_is_string(t))
        return fail(err, "text.format", "invalid_type", "'text.format' must be an object with a string 'type'");
    if (strcmp(json_string_value(t), "json_schema")) {
        json_object_set_new(chat, "response_format", json_pack("{s:O}", "type", t));
        return 0;
    }
    json_t *js = json_deep_copy(f);
    json_object_del(js, "type");
    json_object_set_new(chat, "response_format", json_pack("{s:s, s:o}", "type", "json_schema", "json_schema", js));
    return 0;
}

/* tools (flat function tools) -> chat's {"type": "function", "function": {...}};
 * tool_choice {"type": "function", "name"} -> {"type": "function", "function": {"name"}}. */
static int tools(json_t *chat, json_t *body, api_error *err)
{
    json_t *ts = opt(body, "tools"), *tc = opt(body, "tool_choice");
    if (ts) {
        if (!json_is_array(ts)) return fail(err, "tools", "invalid_type", "'tools' must be an array");
        json_t *out = json_array();
        size_t i;
        json_t *t;
        json_array_foreach(ts, i, t) {
            const char *type = json_string_value(json_object_get(t, "type"));
            char param[64];
            snprintf(param, sizeof param, "tools[%zu].type", i);
            if (!type || strcmp(type, "function")) {
                json_decref(out);
                return fail(err, param, "not_supported", "tools of type '%s' are not supported (only 'function')",
                            type ? type : "(none)");
            }
            json_t *fn = json_deep_copy(t);
            json_object_del(fn, "type");
            json_array_append_new(out, json_pack("{s:s, s:o}", "type", "function", "function", fn));
        }
        json_object_set_new(chat, "tools", out);
    }
    if (tc) {
        json_t *name = json_is_object(tc) ? json_object_get(tc, "name") : NULL;
        if (name)
            json_object_set_new(chat, "tool_choice", json_pack("{s:s, s:{s:O}}", "type", "function", "function",
                                                               "name", name));
        else
            json_object_set(chat, "tool_choice", tc);
    }
    return 0;
}

int resp_request_build(resp_request *rq, json_t *body, json_t *prev_items, json_t *prev_output, api_error *err)
{
    memset(err, 0, sizeof *err);
    conv c = {json_array(), json_array(), err};
    json_t *chat = json_object();
    rq->chat = chat;
    rq->params = c.params;
    json_object_set_new(chat, "messages", c.msgs);
    json_t *x;
    if ((x = opt(body, "instructions")))
        push(&c, json_pack("{s:s, s:O}", "role", "system", "content", x), "instructions");
    if (prev_items && add_items(&c, prev_items, "previous_response_id", false)) return -1;
    if (prev_output && add_items(&c, prev_output, "previous_response_id", false)) return -1;
    if (add_items(&c, rq->input, "input", json_is_array(json_object_get(body, "input")))) return -1;
    rq->items = json_array();
    if (prev_items) json_array_extend(rq->items, prev_items);
    if (prev_output) json_array_extend(rq->items, prev_output);
    json_array_extend(rq->items, rq->input);
    for (size_t i = 0; i < sizeof SAME / sizeof SAME[0]; i++)
        if ((x = json_object_get(body, SAME[i]))) json_object_set(chat, SAME[i], x);
    if ((x = json_object_get(body, "max_output_tokens"))) json_object_set(chat, "max_tokens", x);
    json_object_set_new(chat, "stream", json_boolean(rq->stream));
    if (text_format(chat, body, err) || tools(chat, body, err)) return -1;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Errors in the Responses body's terms                                     */
/* ------------------------------------------------------------------------ */

/* Replace the first "from" in s (cap bytes) by "to". */
static void replace(char *s, size_t cap, const char *from, const char *to)
{
    char *p = strstr(s, from);
    if (!p) return;
    char tail[600];
    snprintf(tail, sizeof tail, "%s", p + strlen(from));
    snprintf(p, cap - (size_t)(p - s), "%s%s", to, tail);
}

static void rename_field(api_error *err, const char *from, const char *to)
{
    size_t n = strlen(from);
    if (!strncmp(err->param, from, n) && (err->param[n] == 0 || err->param[n] == '.' || err->param[n] == '[')) {
        char rest[64];
        snprintf(rest, sizeof rest, "%s", err->param + n);
        snprintf(err->param, sizeof err->param, "%s%s", to, rest);
    }
    char q[80], r[80];
    snprintf(q, sizeof q, "'%s", from);
    snprintf(r, sizeof r, "'%s", to);
    replace(err->message, sizeof err->message, q, r);
}

void resp_request_map_error(const resp_request *rq, api_error *err)
{
    unsigned long k;
    char name[32];
    if (sscanf(err->param, "messages[%lu]", &k) == 1 && k < json_array_size(rq->params)) {
        snprintf(name, sizeof name, "messages[%lu]", k);
        rename_field(err, name, json_string_value(json_array_get(rq->params, k)));
    } else if (!strcmp(err->param, "messages")) {
        rename_field(err, "messages", "input");
    }
    rename_field(err, "max_tokens", "max_output_tokens");
    rename_field(err, "response_format.type", "text.format.type");
    rename_field(err, "response_format", "text.format");
}

void resp_request_free(resp_request *rq)
{
    if (!rq) return;
    json_decref(rq->input);
    json_decref(rq->echo);
    json_decref(rq->items);
    json_decref(rq->chat);
    json_decref(rq->params);
    memset(rq, 0, sizeof *rq);
}
