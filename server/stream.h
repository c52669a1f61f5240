/*
 * stream.h - Server-Sent Events for the completion endpoints: the records
 * of a streaming job, appended to its SSE bytes (job.h: sse), which the
 * request's stream reads (job_stream_read). Loop thread only.
 *
 * Order: (chat) the role chunk (stream_begin); text chunks as the textbuf
 * releases text (stream_text; echo first); the finish (and usage) chunks
 * and [DONE] (stream_finish) -- or an error record and [DONE]
 * (stream_error). Without a request (hr NULL) the records just pile up
 * (the fuzz harness reads them with job_stream_read).
 */
#ifndef ORTHOSERVE_STREAM_H
#define ORTHOSERVE_STREAM_H

#include "job.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

void stream_begin(job *j);
void stream_text(job *j, const char *text, size_t n, bool force);
/* A chat chunk with this delta (stolen: reasoning_content, tool_calls;
 * tool_reply.c) and the pending log-probabilities. */
void stream_delta(job *j, json_t *delta);
void stream_finish(job *j, const char *finish_reason);
void stream_error(job *j, const char *type, const char *code, const char *msg);
/* One record (steals chunk), and [DONE]: for groups of choices, which end
 * each choice and then the stream themselves (api_choices.c). A job with a
 * sink (job.h) writes into the sink's stream. */
void stream_record(job *j, json_t *chunk);
void stream_done(job *j);

#endif
