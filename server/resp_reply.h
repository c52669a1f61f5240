/*
 * resp_reply.h - the JSON bodies of /v1/responses: the response object
 * (whole, in the stream's events, and as stored), its output items, usage,
 * and the stream's event records. Pure functions of their arguments: any
 * thread. jansson conventions as reply.h (json_t arguments stolen unless
 * said borrowed; results new).
 */
#ifndef ORTHOSERVE_RESP_REPLY_H
#define ORTHOSERVE_RESP_REPLY_H

#include "reply.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* What the response object says besides its output. */
typedef struct {
    const char *id;           /* "resp_..." */
    long long created_at;     /* unix seconds */
    const char *model;
    const char *status;       /* "in_progress", "completed", "incomplete", "failed" */
    const char *incomplete;   /* incomplete_details.reason ("max_output_tokens"), or NULL */
    const reply_counts *counts; /* usage and timings; NULL: usage null (in progress) */
    json_t *echo;             /* borrowed: the request's fields the object repeats (resp_request.h) */
} resp_head;

/* The response object; error ({"code", "message"}) and orthorank may be
 * NULL, output is an array. */
json_t *resp_reply_object(const resp_head *h, json_t *output, json_t *error, json_t *orthorank);

/* A message output item (role assistant) with id and status; text NULL:
 * no content part yet, else one output_text part holding text[0..n)
 * (made valid UTF-8). */
json_t *resp_reply_message(const char *id, const char *status, const char *text, size_t n);
/* A function_call output item (arguments: a JSON text; status
 * "in_progress" or "completed"). */
json_t *resp_reply_function_call(const char *id, const char *call_id, const char *name, const char *arguments,
                                 const char *status);
/* A reasoning output item: the text of a thinking model's think block. */
json_t *resp_reply_reasoning(const char *id, const char *text, size_t n);
/* An output_text content part. */
json_t *resp_reply_text_part(const char *text, size_t n);

/* "usage": input_tokens (with input_tokens_details.cached_tokens),
 * output_tokens (with output_tokens_details.reasoning_tokens), total_tokens. */
json_t *resp_reply_usage(const reply_counts *c);

/* One stream record, "event: <type>\ndata: <json>\n\n", for ev (stolen;
 * ev.type names the event); *len set. Free with free(). NULL when out of
 * memory. */
char *resp_reply_event(json_t *ev, size_t *len);

#endif
