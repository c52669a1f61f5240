/*
 * tool_reply.c - the chat shapes of a split reply: OpenAI's message with
 * tool_calls (arguments as a JSON string) and reasoning_content, and its
 * streamed deltas. Calls are streamed once complete (toolcall.c decides
 * that), as a header delta and one arguments fragment each.
 */
#include "tool_reply.h"
#include "stream.h"

#include <stdlib.h>
#include <string.h>

json_t *tool_reply_calls(const tc_call *calls, size_t first, size_t n)
{
    json_t *a = json_array();
    for (size_t k = first; k < first + n; k++)
        json_array_append_new(a, json_pack("{s:s, s:s, s:{s:s, s:s}}", "id", calls[k].id, "type", "function",
                                           "function", "name", calls[k].name, "arguments", calls[k].arguments));
    return a;
}

json_t *tool_reply_message(job *j, const char *text, size_t n)
{
    tc_result r;
    if (tc_parse_reply(&j->tcs->o, j->tcs->single, text ? text : "", text ? n : 0, &r)) return NULL;
    j->tcs->n_calls = r.n_calls;
    json_t *m = json_object();
    json_object_set_new(m, "role", json_string("assistant"));
    json_object_set_new(m, "content", r.n_calls && !r.content_n ? json_null() : json_stringn(r.content, r.content_n));
    json_object_set_new(m, "refusal", json_null());
    if (r.reasoning) json_object_set_new(m, "reasoning_content", json_stringn(r.reasoning, r.reasoning_n));
    if (r.n_calls) json_object_set_new(m, "tool_calls", tool_reply_calls(r.calls, 0, r.n_calls));
    tc_result_free(&r);
    return m;
}

void tool_reply_stream(job *j, const char *t, size_t n, bool final)
{
    tc_delta d;
    if (tc_stream_push(j->tcs, t, n, final, &d)) return;
    if (d.reasoning_n) stream_delta(j, json_pack("{s:s%}", "reasoning_content", d.reasoning, d.reasoning_n));
    if (d.content_n) stream_delta(j, json_pack("{s:s%}", "content", d.content, d.content_n));
    for (size_t k = d.first; k < d.first + d.n; k++) {
        const tc_call *c = &d.r.calls[k];
        stream_delta(j, json_pack("{s:[{s:I, s:s, s:s, s:{s:s, s:s}}]}", "tool_calls", "index", (json_int_t)k, "id",
                                  c->id, "type", "function", "function", "name", c->name, "arguments", ""));
        stream_delta(j, json_pack("{s:[{s:I, s:{s:s}}]}", "tool_calls", "index", (json_int_t)k, "function",
                                  "arguments", c->arguments));
    }
    tc_delta_free(&d);
}

const char *tool_reply_finish(const job *j)
{
    const char *f = job_finish(j);
    return j->tcs && j->tcs->n_calls && !strcmp(f, "stop") ? "tool_calls" : f;
}
