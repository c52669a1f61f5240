/*
 * tc_stream.h - a reply being generated, parsed again (toolcall.h) as it
 * grows, turned into what a client has not been sent yet: new content, new
 * reasoning, newly completed tool calls. Pure (no HTTP, no JSON): the
 * streamed chat chunks and Responses events are built from its deltas.
 */
#ifndef ORTHOSERVE_TC_STREAM_H
#define ORTHOSERVE_TC_STREAM_H

#include "sbuf.h"
#include "toolcall.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    tc_opts o;          /* fmt TC_NONE: no calls looked for (reasoning only) */
    bool single;        /* parallel_tool_calls false: only the first call is kept */
    sbuf text;          /* the whole reply so far */
    sbuf content, reasoning; /* what has been sent of each */
    size_t n_calls;     /* calls sent (complete ones only) */
} tc_stream;

/* What a push added: new text of each (views into the stream's buffers,
 * valid until the next push) and the calls [first, first + n) of r. */
typedef struct {
    const char *content, *reasoning;
    size_t content_n, reasoning_n;
    size_t first, n;
    tc_result r;        /* the whole parse (free with tc_delta_free) */
} tc_delta;

/* Start a stream (o copied; single: keep one call). */
void tc_stream_init(tc_stream *s, const tc_opts *o, bool single);
void tc_stream_free(tc_stream *s);
/* Append t[0..n) and parse the whole reply (final: it is complete, nothing
 * is held back any more). Content and reasoning are sent only as they
 * extend what was sent (a reply whose content is trimmed later, when a call
 * follows, keeps what it sent). 0, or -1 when memory ran out. */
int tc_stream_push(tc_stream *s, const char *t, size_t n, bool final, tc_delta *d);
void tc_delta_free(tc_delta *d);

/* A finished reply parsed once (the non-streamed path): the calls cut to
 * the first when single. 0 or -1 (no memory). */
int tc_parse_reply(const tc_opts *o, bool single, const char *text, size_t n, tc_result *out);

#endif
