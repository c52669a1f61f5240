/*
 * job.h - one generation request between the HTTP side and the engine
 * (api_openai.c, stream.c). Loop thread only.
 *
 * Lifetime: created by a completion handler, submitted to the scheduler,
 * fed by bridge events. It is freed when both its DONE event has been
 * handled and its connection has completed (hr == NULL), whichever is last.
 */
#ifndef ORTHOSERVE_JOB_H
#define ORTHOSERVE_JOB_H

#include "server.h"
#include "textbuf.h"

typedef struct {
    int32_t token;
    float lp;
    bool null_lp; /* the first prompt token has no log-probability */
    int32_t n_top;
    int32_t top_ids[ENG_MAX_TOP_LOGPROBS];
    float top_lps[ENG_MAX_TOP_LOGPROBS];
    size_t offset; /* text_offset: code points before this token */
} lp_entry;

struct job {
    srv *s;
    hreq *hr; /* NULL once the connection is gone */
    job *prev, *next;
    eng_request *er;
    bridge_user bu;
    bool chat;   /* chat.completion(.chunk) vs text_completion */
    bool stream, include_usage, echo;
    int32_t n_logprobs; /* -1: none */
    textbuf *tb;
    char id[64];
    long long created;
    sbuf text;                          /* whole text (non-streaming) */
    lp_entry *lps;                      /* log-probabilities, in order */
    size_t n_lps, cap_lps, lps_sent;    /* lps_sent: already streamed */
    size_t tok_chars;                   /* text_offset counter */
    sbuf sse;                           /* SSE bytes not yet read by MHD */
    size_t sse_off;
    bool sse_end;
    bool echo_sent;
    char *echo_text;
    size_t echo_len;
    int32_t first_prompt_token;
    int32_t n_prompt, n_gen;
    int32_t n_cached; /* prompt tokens reused from the prefix cache */
    bool stop_hit, done;
    eng_finish_reason finish;
    eng_status status;
    const char *cancel_reason;
    double deadline;
    double t_queue, t_prompt, t_generate;
    double t_start;             /* monotonic: the HTTP request's arrival */
    double t_first, t_last;     /* monotonic: first / latest token event on the loop; 0: none yet */
    eng_orthorank_stats orthorank; /* what the engine reported at DONE */
};

/* Streaming (stream.c), driven by api_openai.c: the chat role chunk, text
 * as the textbuf releases it, the finish (and usage) chunks and [DONE], or
 * an error record. Without a connection (hr NULL) the records just pile up
 * in sse (the fuzz harness reads them with job_stream_read). */
void stream_begin(job *j);
void stream_text(job *j, const char *text, size_t n, bool force);
void stream_finish(job *j, const char *finish_reason);
void stream_error(job *j, unsigned status, const char *type, const char *code, const char *msg);
/* Response pieces (api_openai.c) that stream.c also sends. */
json_t *job_logprobs_json(job *j, size_t from, size_t to); /* lps[from..to) in the endpoint's shape */
json_t *job_usage_json(job *j);
json_t *job_orthorank_json(job *j);
json_t *job_timings_json(job *j);

#endif
