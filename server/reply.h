/*
 * reply.h - every JSON body the completion endpoints send, built in one
 * place for both the whole response and the streamed chunks: the response
 * and chunk envelopes, usage, logprobs, timings, and the OpenAI error
 * object; and the one way a body is turned into text. Pure functions of
 * their arguments (no server state, no HTTP). Loop thread or any thread.
 *
 * jansson conventions: json_t arguments are stolen (NULL: absent),
 * results are new references.
 */
#ifndef ORTHOSERVE_REPLY_H
#define ORTHOSERVE_REPLY_H

#include "orthoserve/engine.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What every completion body and chunk repeats. */
typedef struct {
    const char *id;       /* "chatcmpl-..." / "cmpl-..." */
    const char *model;    /* the served model id */
    long long created;    /* unix seconds */
    bool chat;            /* chat.completion(.chunk), else text_completion */
    bool include_usage;   /* chunks carry "usage": null (stream_options.include_usage) */
    int32_t index;        /* the choice's "index" */
} reply_head;

/* The counts and times a finished generation reports. */
typedef struct {
    int32_t n_prompt, n_gen, n_cached;
    double t_queue, t_prompt, t_generate; /* seconds */
} reply_counts;

/* One token's log-probability and its alternatives, as the job records it. */
typedef struct {
    int32_t token;
    float lp;
    bool null_lp; /* the first prompt token has no log-probability */
    int32_t n_top;
    int32_t top_ids[ENG_MAX_TOP_LOGPROBS];
    float top_lps[ENG_MAX_TOP_LOGPROBS];
    size_t offset; /* text_offset: code points before this token */
} lp_entry;

/* The bytes token id renders to (at most cap); 0 when it renders to none. */
size_t reply_piece(const eng_vocab *v, int32_t id, char *buf, size_t cap);

/* "usage" and "timings". */
json_t *reply_usage(const reply_counts *c);
json_t *reply_timings(const reply_counts *c);
/* "logprobs" of entries e[0..n) in the endpoint's shape (chat: content[];
 * completions: tokens / token_logprobs / top_logprobs / text_offset). */
json_t *reply_logprobs(const eng_vocab *v, bool chat, const lp_entry *e, size_t n);

/* The whole (non-streamed) response: one choice with text[0..n) (any
 * bytes; made valid UTF-8), then usage, orthorank and timings. */
json_t *reply_completion(const reply_head *h, const char *text, size_t n, json_t *logprobs, const char *finish,
                         const reply_counts *c, json_t *orthorank);
/* The same with chat's "message" built by the caller (stolen; tool calls,
 * reasoning_content: tool_reply.c); text is used by completions only. */
json_t *reply_completion_msg(const reply_head *h, json_t *message, const char *text, size_t n, json_t *logprobs,
                             const char *finish, const reply_counts *c, json_t *orthorank);
/* A chunk with one choice: text (chat: delta.content; NULL: none), the
 * assistant role (chat's first chunk), logprobs, finish_reason (NULL: null). */
json_t *reply_chunk(const reply_head *h, const char *text, size_t n, bool role, const char *finish,
                    json_t *logprobs);
/* The same with chat's "delta" built by the caller (stolen). */
json_t *reply_chunk_delta(const reply_head *h, json_t *delta, const char *text, size_t n, const char *finish,
                          json_t *logprobs);
/* The stream's last chunks: with include_usage, c's usage rides on an
 * extra chunk with "choices": []; either way the last chunk carries the
 * orthorank object and timings. Appends one or two chunks to out (an array). */
void reply_stream_end(const reply_head *h, const char *finish, const reply_counts *c, json_t *orthorank,
                      json_t *out);

/* The one eng_status -> HTTP mapping: the status, and the OpenAI error type
 * and code (either may be NULL: ENG_OK has no type, most have no code). */
unsigned reply_status_from_eng(eng_status st, const char **type, const char **code);

/* A failure the engine reports when a generation ends (the DONE event's
 * status): never the client's fault, whatever the status. 503
 * unavailable_error "out_of_memory" (worth a retry), else 500 server_error
 * "generation_failed" (e.g. non-finite logits from a corrupt model). */
unsigned reply_status_from_done(eng_status st, const char **type, const char **code);

/* {"error": {"message", "type", "param", "code"}}; msg is made valid UTF-8
 * (it may quote user input); param and code may be NULL. */
json_t *reply_error(const char *msg, const char *type, const char *param, const char *code);

/* Compact JSON text of o (steals o), 9 significant digits so every float32
 * round-trips; *len set. Free with free(); NULL if out of memory. */
char *reply_dump(json_t *o, size_t *len);

#endif
