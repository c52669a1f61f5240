/*
 * job.h - one generation request between the HTTP side and the engine:
 * its state, its lifetime, and what each engine event changes in it.
 * Loop thread only.
 *
 * Lifetime: created by a completion handler (job_new), submitted to the
 * scheduler, attached to its request (job_attach), fed by bridge events
 * (job_*_event; api_openai.c turns them into output). It is freed when both
 * its DONE event has been handled and its request has closed (hr == NULL),
 * whichever is last.
 */
#ifndef ORTHOSERVE_JOB_H
#define ORTHOSERVE_JOB_H

#include "bridge.h"
#include "http.h"
#include "reply.h"
#include "request.h"
#include "sbuf.h"
#include "tc_stream.h"
#include "textbuf.h"
#include "orthoserve/engine.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct job job;

/* The output of a job that answers in another shape than a completion
 * (the Responses API: api_responses.c). api_openai.c calls these in place
 * of its own output when job.out is set; ctx is job.out_ctx. */
typedef struct {
    void (*begin)(job *j);                          /* a stream's first records */
    void (*text)(job *j, const char *t, size_t n);  /* streamed text the textbuf released */
    void (*finish)(job *j);                         /* success: the whole reply, or the stream's end */
    void (*fail)(job *j, unsigned status, const char *type, const char *code, const char *msg);
    void (*release)(void *ctx);                     /* job_free: the job no longer needs ctx */
} job_output;

struct job {
    srv *s;
    hreq *hr; /* NULL once the request is gone */
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
    sbuf sse;                           /* SSE bytes not yet read by MHD (stream.c appends) */
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
    tc_stream *tcs;             /* the reply split into content, reasoning, tool calls (tool_reply.c), or NULL */
    const job_output *out;      /* NULL: a completion (stream.c / reply.c) */
    void *out_ctx;              /* out's, released by job_free */
    /* One of several engine requests answered as one HTTP response
     * (api_choices.c: n > 1 and prompt lists; api_embeddings.c): grp_event
     * takes this job's events instead of api_openai.c, grp is the group,
     * index the job's place in it (a choice's "index"); sink: the job whose
     * SSE buffer carries a streamed group's records (NULL: its own). */
    void (*grp_event)(job *j, const eng_event *ev);
    void *grp;
    int32_t index;
    job *sink;
};

/* A job for the validated request req of r (takes req's echo text; draws
 * the response id, and the seed when the body gave none, from s->rng).
 * Not yet linked, submitted or attached. NULL when memory ran out. */
job *job_new(hreq *r, api_request *req);
void job_free(job *j);
/* Link into s->jobs once submitted; job_done_event unlinks. */
void job_link(job *j);
/* j keeps r open: r's hang-up cancels j, r's close detaches it, and r's
 * stream reads j's SSE bytes. */
void job_attach(job *j, hreq *r);
/* Cancel a live job (reason: metrics label, e.g. "client_disconnect"). */
void job_cancel(job *j, const char *reason);
/* Cancel every live job whose deadline passed. */
void jobs_sweep(srv *s, double now);
/* Copy up to max pending SSE bytes; returns bytes copied, 0 when nothing is
 * pending, -1 at the end of the stream. */
long job_stream_read(job *j, char *buf, size_t max);

/* Engine events, recorded into the job. job_token_event returns false
 * when the token is ignored (after a stop string or the end); its text is
 * then waiting in j->tb. job_done_event records the end and unlinks j. */
void job_prompt_event(job *j, const eng_event *ev);
bool job_token_event(job *j, const eng_event *ev);
void job_done_event(job *j, const eng_event *ev);

/* After DONE: cancelled (not by a stop string), and the finish reason
 * ("stop", "length", "cancelled", "error"); the effective OrthoRank
 * sparsity (< 0: nothing was processed). */
bool job_cancelled(const job *j);
const char *job_finish(const job *j);
double job_sparsity(const job *j);

/* Response pieces from the job's state (reply.c builds the JSON). */
reply_head job_head(const job *j);
reply_counts job_counts(const job *j);
json_t *job_logprobs_json(job *j, size_t from, size_t to); /* lps[from..to) in the endpoint's shape */
json_t *job_orthorank_json(job *j);

#endif
