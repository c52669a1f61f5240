/*
 * http.h - the HTTP layer: libmicrohttpd driven from the libuv loop, with
 * routing by a table of rows, body limits, API keys, CORS, replies,
 * suspend/resume and the disconnect watch. It knows paths and callbacks,
 * never the handlers behind them: the route table (routes.c) and the hooks
 * a handler attaches to a request it keeps open are all it is told.
 *
 * DESIGN: everything here runs on the libuv loop thread (see http.c).
 * A handler answers at once (http_reply_*), or keeps the request open:
 * it attaches hooks (http_attach), then suspends it (waiting for an
 * answer) or starts a stream (http_start_stream, read through hooks.read).
 * When the client hangs up while the request is suspended, hooks.on_hangup
 * runs; when MHD is done with the request, hooks.on_close runs, after which
 * the hreq is gone. Work that would stall the loop (JSON parsing,
 * tokenizing) runs on libuv's worker threads through http_offload.
 */
#ifndef ORTHOSERVE_HTTP_H
#define ORTHOSERVE_HTTP_H

#include "config.h"
#include "log.h"
#include "srv_metrics.h"
#include "orthoserve/engine.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct srv srv; /* the application's state: opaque here, handed to handlers as hreq.s */
typedef struct hreq hreq;

/* A handler answers (http_reply_*) or attaches hooks and keeps r open. */
typedef void (*http_handler)(hreq *r);

/* One route: a row of the table given to the server. */
typedef struct {
    const char *method; /* "GET" (HEAD too) or "POST" (the body must be a JSON object: hreq.json) */
    const char *path;   /* the exact path; with prefix, a prefix ("/v1/models/") that something must follow */
    bool prefix;        /* what follows the prefix is in hreq.path_rest */
    http_handler fn;
    const char *label;  /* endpoint label of orthoserve_http_requests_total */
} http_route;

/* What a handler that keeps its request open gives http.c (http_attach).
 * Each may be NULL. The handler's own pointer is hreq.ctx. */
typedef struct {
    /* The client hung up while r was suspended; r stays open until on_close. */
    void (*on_hangup)(hreq *r);
    /* MHD is done with r. reason: NULL when the response was sent in full,
     * else "client_disconnect". r is freed right after. */
    void (*on_close)(hreq *r, const char *reason);
    /* A streamed response's next bytes: copy at most max into buf; return
     * the count, 0 when nothing is pending yet (r is suspended until
     * http_resume), -1 at the end of the stream. */
    long (*read)(hreq *r, char *buf, size_t max);
} http_hooks;

/* One HTTP request (MHD's per-request context). Handlers read method,
 * path, path_rest, json and id; set ctx/hooks through http_attach; fill in
 * gen for the access line. The rest is http.c's. */
struct hreq {
    struct http_server *h;
    srv *s; /* h->app */
    struct MHD_Connection *conn;
    hreq *prev, *next;
    char method[16];
    char path[256];
    const char *path_rest;    /* prefix routes: the path after the prefix */
    json_t *json;             /* POST routes: the body (borrowed during the handler) */
    const http_route *route;  /* the route serving this method and path, or NULL */
    const char *endpoint;     /* metrics label */
    char id[129];             /* request id: a sane incoming X-Request-Id, else generated */
    int key;                  /* 1 + the index of the API key that authenticated it; 0: none */
    double t0;                /* monotonic arrival (headers in) */
    double t_arrive;          /* since when the connection awaited this request (headers + body deadline) */
    log_gen gen;              /* the access line's facts about a generation */
    void *ctx;                /* the handler's (http_attach) */
    const http_hooks *hooks;
    char *body;
    size_t body_n, body_cap; /* body_cap is counted in http_server.body_buffered */
    unsigned long long declared; /* Content-Length, 0 when none */
    bool body_over;
    bool close_after; /* answered before its body was read: Connection: close */
    char allow[48]; /* the methods of a known path: Allow of a 405, a preflight's Allow-Methods */
    bool responded;
    int status;
    bool suspended;
    bool offloaded;      /* work of http_offload in flight: r is not freed until it is back */
    bool gone;           /* MHD closed r while work was in flight */
    bool hangup_pending; /* the client hung up before hooks were attached */
    bool abandoned;      /* http_abandon: closed without an answer */
    uv_poll_t *watch; /* disconnect watch while suspended */
    const char *cors_origin; /* allowed origin to echo, or NULL */
};

typedef struct http_server {
    /* Set by the caller before http_start. */
    const srv_config *cfg;
    uv_loop_t *loop;
    const http_route *routes;
    size_t n_routes;
    srv *app;
    const logger *log;
    srv_metrics *mx;      /* counts every request by endpoint and status */
    /* http.c's own. */
    struct MHD_Daemon *mhd;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer;
    int port;             /* the bound port */
    hreq *reqs;           /* live requests (doubly linked) */
    size_t n_reqs;
    struct hconn *conns;  /* every open connection (arrival deadline, max_connections) */
    size_t n_conns;       /* of them, not yet shut down here */
    uint64_t seq;         /* requests seen (generated request ids) */
    unsigned boot;        /* random per process, in generated request ids */
    size_t body_buffered; /* body bytes held over all requests (max_body_buffer) */
    /* Connection-limit events, for the rate-limited warning (http_sweep
     * reports what the last warning did not). */
    double last_warn;
    unsigned long long n_evicted, n_evicted_body, n_refused, n_refused_ip, n_warned;
} http_server;

int http_start(http_server *h);              /* listen; 0 or -1 (message printed) */
void http_stop(http_server *h);              /* resume everything, stop MHD, stop its handles */
void http_run(http_server *h);               /* run MHD now and re-arm its timer */
void http_sweep(http_server *h, double now); /* deadlines of slow and half-closed connections */
double now_mono(void);                       /* monotonic seconds */

/* Replies. Each takes ownership of body / text. Works in the handler and
 * on a suspended request (which it then resumes); a second reply is dropped. */
void http_reply_json(hreq *r, unsigned status, json_t *body);
/* The text http_reply_json sends for body (steals it): for a large body
 * made off the loop (http_offload), then sent with http_reply_text as
 * "application/json". NULL when out of memory. Any thread. */
char *http_json_text(json_t *body, size_t *len);
void http_reply_text(hreq *r, unsigned status, const char *ctype, char *text, size_t len);
void http_reply_error(hreq *r, unsigned status, const char *type, const char *code, const char *param,
                      const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* An engine status through the one eng_status -> HTTP mapping (reply.h). */
void http_reply_eng_error(hreq *r, eng_status st, const char *param, const char *msg);

/* The client of suspended r is gone: close r without an answer (logged and
 * counted as 499, as every request whose client left). */
void http_abandon(hreq *r);

/* Keep r open: hooks (static) and the handler's pointer. */
void http_attach(hreq *r, const http_hooks *hooks, void *ctx);
/* Start a text/event-stream response read through hooks.read. */
void http_start_stream(hreq *r);
void http_suspend(hreq *r);
void http_resume(hreq *r);

/* Run work(ctx) on a libuv worker thread (parsing, tokenizing: anything
 * that would stall the loop), then done(r, ctx) on the loop. r is suspended
 * meanwhile; work must not touch r, only ctx. done answers r, attaches
 * hooks or offloads again; r is NULL when the request was closed meanwhile
 * (the client left, or the server stopped): done then only frees ctx. */
void http_offload(hreq *r, void (*work)(void *ctx), void (*done)(hreq *r, void *ctx), void *ctx);

#endif
