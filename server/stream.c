/*
 * stream.c - Server-Sent Events for the completion endpoints.
 *
 * A streaming job appends "data: <chunk>\n\n" records to its SSE buffer;
 * MHD's content reader (http.c) drains it, suspending the connection when it
 * is empty and being resumed here when a record is appended. Framing, in
 * order: (chat) a first chunk with the assistant role; text chunks as the
 * textbuf releases text; a chunk with the finish_reason and no content;
 * with stream_options.include_usage one more chunk with "choices": [] and
 * usage (the orthorank object rides on the last chunk either way); then
 * "data: [DONE]". An error after the headers were sent becomes a
 * "data: {"error": ...}" record followed by [DONE].
 */
#include "job.h"

#include <stdlib.h>
#include <string.h>

static void wake(job *j)
{
    if (j->hr) http_resume(j->hr);
}

void stream_append_event(job *j, json_t *chunk)
{
    char *txt = json_dumps(chunk, JSON_COMPACT | JSON_REAL_PRECISION(9)); /* float32 round-trips */
    json_decref(chunk);
    if (!txt) return;
    sbuf_add(&j->sse, "data: ", 6);
    sbuf_add(&j->sse, txt, strlen(txt));
    sbuf_add(&j->sse, "\n\n", 2);
    free(txt);
    wake(j);
}

void stream_append_done(job *j)
{
    sbuf_add(&j->sse, "data: [DONE]\n\n", 14);
    j->sse_end = true;
    wake(j);
}

long job_stream_read(job *j, char *buf, size_t max)
{
    size_t avail = j->sse.n - j->sse_off;
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, j->sse.p + j->sse_off, n);
        j->sse_off += n;
        if (j->sse_off == j->sse.n) j->sse_off = j->sse.n = 0;
        return (long)n;
    }
    return j->sse_end ? -1 : 0;
}

static json_t *chunk_base(job *j)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(j->id));
    json_object_set_new(o, "object", json_string(j->chat ? "chat.completion.chunk" : "text_completion"));
    json_object_set_new(o, "created", json_integer(j->created));
    json_object_set_new(o, "model", json_string(j->s->model_id));
    json_object_set_new(o, "system_fingerprint", json_string("orthoserve-" ORTHOSERVE_VERSION));
    return o;
}

/* One chunk with one choice: content text (or role), logprobs, finish. */
static json_t *chunk(job *j, const char *text, size_t n, bool role, const char *finish, json_t *logprobs)
{
    json_t *o = chunk_base(j);
    json_t *ch = json_object();
    json_object_set_new(ch, "index", json_integer(0));
    if (j->chat) {
        json_t *d = json_object();
        if (role) json_object_set_new(d, "role", json_string("assistant"));
        if (text) json_object_set_new(d, "content", json_stringn(text, n));
        json_object_set_new(ch, "delta", d);
    } else {
        json_object_set_new(ch, "text", json_stringn(text ? text : "", text ? n : 0));
    }
    json_object_set_new(ch, "logprobs", logprobs ? logprobs : json_null());
    json_object_set_new(ch, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *choices = json_array();
    json_array_append_new(choices, ch);
    json_object_set_new(o, "choices", choices);
    if (j->include_usage) json_object_set_new(o, "usage", json_null());
    return o;
}

void stream_begin(job *j)
{
    if (j->chat) stream_append_event(j, chunk(j, "", 0, true, NULL, NULL));
}

/* Pending log-probabilities (those not yet streamed), or NULL. */
static json_t *pending_logprobs(job *j)
{
    if (j->n_logprobs < 0) return NULL;
    json_t *lp = job_logprobs_json(j, j->lps_sent, j->n_lps);
    j->lps_sent = j->n_lps;
    return lp;
}

void stream_text(job *j, const char *text, size_t n, bool force)
{
    (void)force;
    if (!j->echo_sent && j->echo) {
        /* The prompt goes first, with its log-probabilities (prompt events
         * all precede the first token). */
        j->echo_sent = true;
        stream_append_event(j, chunk(j, j->echo_text, j->echo_len, false, NULL, pending_logprobs(j)));
    }
    j->echo_sent = true;
    if (!n) return;
    stream_append_event(j, chunk(j, text, n, false, NULL, pending_logprobs(j)));
}

void stream_finish(job *j, const char *finish_reason)
{
    json_t *c = chunk(j, NULL, 0, false, finish_reason, NULL);
    if (!j->include_usage) {
        json_object_set_new(c, "orthorank", job_orthorank_json(j));
        json_object_set_new(c, "timings", job_timings_json(j));
    }
    stream_append_event(j, c);
    if (j->include_usage) {
        json_t *u = chunk_base(j);
        json_object_set_new(u, "choices", json_array());
        json_object_set_new(u, "usage", job_usage_json(j));
        json_object_set_new(u, "orthorank", job_orthorank_json(j));
        json_object_set_new(u, "timings", job_timings_json(j));
        stream_append_event(j, u);
    }
    stream_append_done(j);
}

void stream_error(job *j, unsigned status, const char *type, const char *code, const char *msg)
{
    (void)status;
    json_t *e = json_object();
    json_object_set_new(e, "message", json_string(msg));
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "param", json_null());
    json_object_set_new(e, "code", code ? json_string(code) : json_null());
    json_t *o = json_object();
    json_object_set_new(o, "error", e);
    stream_append_event(j, o);
    stream_append_done(j);
}
