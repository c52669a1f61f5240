/*
 * tool_reply.h - a chat job's reply split into content, reasoning_content
 * and tool_calls (the job's tc_stream, from a Jinja template's tool-call
 * format): the whole message, the streamed deltas in OpenAI's shape, the
 * finish reason. Loop thread.
 */
#ifndef ORTHOSERVE_TOOL_REPLY_H
#define ORTHOSERVE_TOOL_REPLY_H

#include "job.h"
#include "toolcall.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* The chat "message" of j's finished reply text[0..n) (j->tcs set):
 * content (null when calls came and no text), reasoning_content when the
 * template thinks, tool_calls when calls were found. */
json_t *tool_reply_message(job *j, const char *text, size_t n);
/* Streamed text t[0..n) the textbuf released (final: the reply is
 * complete) as chunks: content and reasoning_content deltas, and per call
 * one delta with index, id, type, function.name and "arguments": "", then
 * one with the arguments. */
void tool_reply_stream(job *j, const char *t, size_t n, bool final);
/* The finish reason: "tool_calls" when calls were found and the model
 * stopped, else job_finish(j). */
const char *tool_reply_finish(const job *j);
/* tool_calls[first .. first + n) of calls as the message lists them. */
json_t *tool_reply_calls(const tc_call *calls, size_t first, size_t n);

#endif
