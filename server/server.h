/*
 * server.h - the HTTP server's shared state and the internal API between
 * its modules (http.c, api_openai.c, api_ops.c, stream.c, serve.c; request.h
 * is the part without HTTP).
 *
 * DESIGN: everything here belongs to the libuv loop thread: the MHD daemon
 * (driven by MHD_run from a uv_poll_t on its epoll fd and a uv_timer_t),
 * every connection (hreq), every generation (job), all JSON and the metrics
 * registry. The engine's scheduler thread only ever touches the bridge
 * (bridge.c). The model is loaded on a libuv worker thread while the server
 * already answers /health with 503.
 */
#ifndef ORTHOSERVE_SERVER_H
#define ORTHOSERVE_SERVER_H

#include "bridge.h"
#include "config.h"
#include "metrics.h"
#include "request.h"
#include "sbuf.h"
#include "orthoserve/engine.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct srv srv;
typedef struct hreq hreq;
typedef struct job job;

typedef enum { SRV_LOADING, SRV_READY, SRV_DRAINING, SRV_STOPPING } srv_state;

struct srv {
    srv_config *cfg;
    uv_loop_t *loop;
    struct MHD_Daemon *mhd;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer, sweep_timer, drain_timer, final_timer;
    uv_signal_t sig_int, sig_term;
    uv_work_t load_work;
    bridge br;
    int port; /* the bound port */

    metrics *mx;
    metric *m_requests, *m_prompt_tokens, *m_gen_tokens, *m_cancelled, *m_running, *m_waiting, *m_kv_used,
        *m_kv_total, *m_loaded, *m_connections, *m_or_total, *m_or_skipped, *m_cached_tokens;
    /* Issue 6 (docs/METRICS.md): the rest of the registry. */
    metric *m_finished, *m_kv_cached, *m_kv_ratio, *m_batch_tokens, *m_steps, *m_build_info, *m_model_info;
    metric *h_ttft, *h_itl, *h_tpot, *h_e2e, *h_queue, *h_prompt_len, *h_gen_len, *h_sparsity, *h_step;
    uv_timer_t stats_timer;   /* samples the scheduler's step counter (step duration) */
    uint64_t stats_steps;     /* steps at the last sample */
    double stats_t;           /* monotonic time of the last sample */
    bool stats_busy;          /* requests were running at the last sample */
    int log_level;            /* SRV_LOG_* */
    bool log_json;

    /* The model: written by the loader's after-work callback, on the loop. */
    eng_model *model;
    eng_sched *sched;
    const eng_vocab *vocab;
    eng_model_info info;
    int32_t n_ctx;
    eng_chat_format chat_fmt;
    char model_id[256];
    char model_file[256]; /* base name of the file */
    char load_err[512];
    char plan_file[512];  /* the OrthoRank plan in use, or "" (fallback) */
    double created; /* unix time the server started */

    srv_state state;
    bool load_done, stop_requested;
    job *jobs; /* live generations (doubly linked) */
    size_t n_jobs;
    hreq *reqs; /* live connections' requests (doubly linked) */
    struct hconn *conns; /* every open connection (http.c: arrival deadline, max_connections) */
    size_t n_conns;      /* of them, not yet shut down by http.c */
    size_t n_reqs;
    uint64_t seq;
    int exit_code;
};

/* One HTTP request (MHD's per-request context). */
struct hreq {
    srv *s;
    struct MHD_Connection *conn;
    hreq *prev, *next;
    char method[16];
    char path[256];
    const char *endpoint; /* metrics label */
    char *body;
    size_t body_n, body_cap;
    bool body_over;
    int early_status; /* an error decided at header time, sent after the body */
    char early_msg[400];
    const char *early_type, *early_code, *early_param;
    const char *allow; /* Allow header of a 405 */
    bool responded;
    int status;
    bool suspended;
    uv_poll_t *watch; /* disconnect watch while suspended */
    double t0;
    double t_arrive; /* since when the connection awaited this request (headers + body deadline) */
    const char *cors_origin; /* allowed origin to echo, or NULL */
    job *job;
    int64_t n_in, n_out;
    const char *cancel_reason;
    char id[129]; /* request id: a sane incoming X-Request-Id, else generated */
    double ttft;  /* seconds from arrival to the first token; < 0: none */
    double sparsity; /* OrthoRank effective sparsity of the generation; < 0: none */
    int64_t n_cached;
};

/* --- http.c ------------------------------------------------------------- */
int http_start(srv *s);            /* listen; 0 or -1 (message printed) */
void http_stop(srv *s);            /* resume everything, stop MHD, close its handles */
void http_run(srv *s);             /* run MHD now and re-arm its timer */
void http_sweep(srv *s, double now); /* close connections whose request is not in after idle_timeout */
double now_mono(void);
/* Replies. Each takes ownership of body / text. Works in the access
 * handler and on a suspended connection (which it then resumes). */
void http_reply_json(hreq *r, unsigned status, json_t *body);
void http_reply_text(hreq *r, unsigned status, const char *ctype, char *text, size_t len);
void http_reply_error(hreq *r, unsigned status, const char *type, const char *code, const char *param,
                      const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* http_status_from_eng (the one eng_status -> HTTP mapping) is in request.h. */
void http_reply_eng_error(hreq *r, eng_status st, const char *param, const char *msg);
/* Streaming: start a text/event-stream response read from r->job. */
void http_start_stream(hreq *r);
void http_suspend(hreq *r);
void http_resume(hreq *r);

/* --- api_openai.c --------------------------------------------------------- */
/* Validate the body (request.c), then submit a job or reply with the error. */
void api_chat(hreq *r, json_t *body);
void api_completions(hreq *r, json_t *body);
void api_models(hreq *r, const char *id); /* id NULL: the list */
/* Bridge handler: one engine event for a job. Loop thread. */
void api_on_event(const eng_event *ev, void *user);
/* Cancel a live job (reason: metrics label, e.g. "client_disconnect"). */
void job_cancel(job *j, const char *reason);
/* The connection is gone (its request completed): detach; cancel the job
 * with reason when it is still running (reason NULL: normal end). */
void job_detach(job *j, const char *reason);
/* Cancel every live job whose deadline passed. */
void jobs_sweep(srv *s, double now);
/* The job's SSE bytes for the content reader. */
/* Stream reader support (stream.c): copy up to max pending SSE bytes; returns
 * bytes copied, 0 when nothing is pending, -1 at the end of the stream. */
long job_stream_read(job *j, char *buf, size_t max);

/* --- stream.c ------------------------------------------------------------ */
void stream_append_event(job *j, json_t *chunk); /* "data: <json>\n\n", steals chunk */
void stream_append_done(job *j);                 /* "data: [DONE]\n\n" and end */

/* --- api_ops.c ----------------------------------------------------------- */
void api_health(hreq *r);
void api_ready(hreq *r);
void api_metrics(hreq *r);
void api_tokenize(hreq *r, json_t *body);
void api_detokenize(hreq *r, json_t *body);

/* --- orthorank_json.c (orthorank_parse: request.h) ----------------------- */
/* The response's "orthorank" object from what the engine reported. */
json_t *orthorank_json(const eng_orthorank_stats *st);
/* GET /v1/orthorank: the loaded plan and the defaults. */
void api_orthorank(hreq *r);

/* --- serve.c ------------------------------------------------------------- */
void srv_shutdown(srv *s);       /* begin draining (signal) */
void srv_job_finished(srv *s);   /* a job ended: maybe the drain is complete */
void srv_log(srv *s, const char *fmt, ...) __attribute__((format(printf, 2, 3))); /* info */
/* Log levels (config log_level); a message is printed when level <= s->log_level. */
enum { SRV_LOG_ERROR = 0, SRV_LOG_WARN = 1, SRV_LOG_INFO = 2, SRV_LOG_DEBUG = 3 };
void srv_logl(srv *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Set the scheduler gauges of the registry from eng_sched_get_stats (at every scrape). */
void srv_metrics_refresh(srv *s);
/* One line per request (config log_format), at info level. Loop thread. */
void srv_log_request(srv *s, const hreq *r, bool aborted);

#endif
