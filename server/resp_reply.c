/*
 * resp_reply.c - the /v1/responses JSON bodies (resp_reply.h), in the
 * shapes of OpenAI's Responses API reference; openapi.yaml holds their
 * schemas, which the e2e suite validates every body and event against.
 */
#include "resp_reply.h"
#include "textbuf.h"

#include <stdlib.h>
#include <string.h>

json_t *resp_reply_usage(const reply_counts *c)
{
    return json_pack("{s:i, s:{s:i}, s:i, s:{s:i}, s:i}", "input_tokens", (int)c->n_prompt, "input_tokens_details",
                     "cached_tokens", (int)c->n_cached, "output_tokens", (int)c->n_gen, "output_tokens_details",
                     "reasoning_tokens", 0, "total_tokens", (int)(c->n_prompt + c->n_gen));
}

json_t *resp_reply_text_part(const char *text, size_t n)
{
    size_t len = 0;
    char *clean = utf8_sanitize(text ? text : "", n, &len);
    json_t *p = json_pack("{s:s, s:s%, s:[], s:[]}", "type", "output_text", "text", clean ? clean : "", len,
                          "annotations", "logprobs");
    free(clean);
    return p;
}

json_t *resp_reply_message(const char *id, const char *status, const char *text, size_t n)
{
    json_t *content = json_array();
    if (text) json_array_append_new(content, resp_reply_text_part(text, n));
    return json_pack("{s:s, s:s, s:s, s:s, s:o}", "id", id, "type", "message", "status", status, "role",
                     "assistant", "content", content);
}

json_t *resp_reply_function_call(const char *id, const char *call_id, const char *name, const char *arguments,
                                 const char *status)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "id", id, "type", "function_call", "status", status, "call_id",
                     call_id, "name", name, "arguments", arguments);
}

json_t *resp_reply_reasoning(const char *id, const char *text, size_t n)
{
    size_t len = 0;
    char *clean = utf8_sanitize(text ? text : "", n, &len);
    json_t *r = json_pack("{s:s, s:s, s:s, s:[], s:[{s:s, s:s%}]}", "id", id, "type", "reasoning", "status",
                          "completed", "summary", "content", "type", "reasoning_text", "text", clean ? clean : "", len);
    free(clean);
    return r;
}

json_t *resp_reply_object(const resp_head *h, json_t *output, json_t *error, json_t *orthorank)
{
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:s}", "id", h->id, "object", "response", "created_at",
                          (json_int_t)h->created_at, "status", h->status, "model", h->model);
    if (!o) {
        json_decref(output);
        json_decref(error);
        json_decref(orthorank);
        return NULL;
    }
    json_object_set_new(o, "output", output ? output : json_array());
    json_object_set_new(o, "error", error ? error : json_null());
    json_object_set_new(o, "incomplete_details",
                        h->incomplete ? json_pack("{s:s}", "reason", h->incomplete) : json_null());
    if (h->echo) json_object_update(o, h->echo);
    json_object_set_new(o, "background", json_false());
    json_object_set_new(o, "service_tier", json_string("default"));
    json_object_set_new(o, "usage", h->counts ? resp_reply_usage(h->counts) : json_null());
    if (orthorank) json_object_set_new(o, "orthorank", orthorank);
    if (h->counts) json_object_set_new(o, "timings", reply_timings(h->counts));
    return o;
}

char *resp_reply_event(json_t *ev, size_t *len)
{
    const char *type = json_string_value(json_object_get(ev, "type"));
    size_t tl = type ? strlen(type) : 0, n;
    char *type_copy = type ? strdup(type) : NULL;
    char *data = reply_dump(ev, &n); /* steals ev */
    char *out = data && type_copy ? malloc(tl + n + 32) : NULL;
    if (out) {
        size_t k = 0;
        memcpy(out + k, "event: ", 7), k += 7;
        memcpy(out + k, type_copy, tl), k += tl;
        memcpy(out + k, "\ndata: ", 7), k += 7;
        memcpy(out + k, data, n), k += n;
        memcpy(out + k, "\n\n", 3), k += 2;
        *len = k;
    }
    free(type_copy);
    free(data);
    return out;
}
