/*
 * stream.c - Server-Sent Events for the completion endpoints.
 *
 * A streaming job appends "data: <chunk>\n\n" records to its SSE buffer;
 * MHD's content reader (http.c, through the job's hooks) drains it,
 * suspending the request when it is empty and being resumed here when a
 * record is appended. The chunks themselves are built by reply.c, like the
 * non-streamed response. Framing, in order: (chat) a first chunk with the
 * assistant role; text chunks as the textbuf releases text; a chunk with
 * the finish_reason and no content; with stream_options.include_usage one
 * more chunk with "choices": [] and usage (the orthorank object rides on
 * the last chunk either way); then "data: [DONE]". An error after the
 * headers were sent becomes a "data: {"error": ...}" record followed by
 * [DONE].
 */
#include "stream.h"
#include "http.h"
#include "reply.h"

#include <stdlib.h>

static void wake(job *j)
{
    if (j->hr) http_resume(j->hr);
}

/* "data: <json>\n\n" (steals chunk), into the group's stream for a choice. */
static void append_event(job *j, json_t *chunk)
{
    if (j->sink) j = j->sink;
    size_t n;
    char *txt = reply_dump(chunk, &n);
    if (!txt) return;
    sbuf_add(&j->sse, "data: ", 6);
    sbuf_add(&j->sse, txt, n);
    sbuf_add(&j->sse, "\n\n", 2);
    free(txt);
    wake(j);
}

static void append_done(job *j)
{
    if (j->sink) j = j->sink;
    sbuf_add(&j->sse, "data: [DONE]\n\n", 14);
    j->sse_end = true;
    wake(j);
}

void stream_begin(job *j)
{
    reply_head h = job_head(j);
    if (j->chat) append_event(j, reply_chunk(&h, "", 0, true, NULL, NULL));
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
    reply_head h = job_head(j);
    if (!j->echo_sent && j->echo) {
        /* The prompt goes first, with its log-probabilities (prompt events
         * all precede the first token). */
        j->echo_sent = true;
        append_event(j, reply_chunk(&h, j->echo_text, j->echo_len, false, NULL, pending_logprobs(j)));
    }
    j->echo_sent = true;
    if (!n) return;
    append_event(j, reply_chunk(&h, text, n, false, NULL, pending_logprobs(j)));
}

void stream_delta(job *j, json_t *delta)
{
    reply_head h = job_head(j);
    j->echo_sent = true;
    append_event(j, reply_chunk_delta(&h, delta, NULL, 0, NULL, pending_logprobs(j)));
}

void stream_finish(job *j, const char *finish_reason)
{
    reply_head h = job_head(j);
    reply_counts c = job_counts(j);
    json_t *chunks = json_array();
    reply_stream_end(&h, finish_reason, &c, job_orthorank_json(j), chunks);
    for (size_t i = 0; i < json_array_size(chunks); i++) append_event(j, json_incref(json_array_get(chunks, i)));
    json_decref(chunks);
    append_done(j);
}

void stream_record(job *j, json_t *chunk) { append_event(j, chunk); }
void stream_done(job *j) { append_done(j); }

void stream_error(job *j, const char *type, const char *code, const char *msg)
{
    append_event(j, reply_error(msg, type, NULL, code));
    append_done(j);
}
