/*
 * http.c - libmicrohttpd driven from the libuv loop: routing by the route
 * table, body limits, API keys, CORS, replies, suspend/resume and the
 * disconnect watch. Handlers are reached only through the table's rows and
 * the hooks they attach (http.h).
 *
 * DESIGN: MHD runs in external-polling epoll mode (MHD_USE_EPOLL |
 * MHD_ALLOW_SUSPEND_RESUME, no MHD threads). A uv_poll_t watches MHD's epoll
 * fd and a uv_timer_t follows MHD_get_timeout; both call MHD_run, so every
 * MHD callback (access handler, content reader, request-completed) runs on
 * the loop thread. A request waiting for the engine is suspended; while it
 * is, MHD does not watch its socket, so a uv_poll_t on the socket reports a
 * client that hangs up (UV_DISCONNECT); hooks.on_hangup cancels its work.
 * Error responses decided from the headers are held until the body has been
 * read (so the client is never reset mid-send), except 413 for a declared
 * Content-Length over the limit, which is answered at once.
 */
#include "http.h"
#include "reply.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------ */
/* MHD <-> libuv                                                            */
/* ------------------------------------------------------------------------ */

static void on_mhd_timer(uv_timer_t *t);

void http_run(http_server *h)
{
    if (!h->mhd) return;
    MHD_run(h->mhd);
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(h->mhd, &ms) == MHD_YES) {
        if (ms > 3600000) ms = 3600000;
        uv_timer_start(&h->mhd_timer, on_mhd_timer, (uint64_t)ms, 0);
    } else {
        uv_timer_stop(&h->mhd_timer);
    }
}

static void on_mhd_timer(uv_timer_t *t) { http_run(t->data); }

static void on_mhd_poll(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    http_run(p->data);
}

/* ------------------------------------------------------------------------ */
/* Suspend / resume and the disconnect watch                                */
/* ------------------------------------------------------------------------ */

static void free_handle(uv_handle_t *h) { free(h); }

static void watch_close(hreq *r)
{
    if (!r->watch) return;
    /* uv_close stops the poll at once, while MHD still has the fd open. */
    uv_close((uv_handle_t *)r->watch, free_handle);
    r->watch = NULL;
}

static void on_watch(uv_poll_t *p, int status, int events)
{
    hreq *r = p->data;
    (void)events;
    (void)status;
    watch_close(r);
    if (r->hooks && r->hooks->on_hangup) r->hooks->on_hangup(r);
}

void http_suspend(hreq *r)
{
    if (r->suspended) return;
    MHD_suspend_connection(r->conn);
    r->suspended = true;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci || r->watch) return;
    uv_poll_t *w = malloc(sizeof *w);
    if (!w) return;
    if (uv_poll_init_socket(r->h->loop, w, ci->connect_fd)) {
        free(w);
        return;
    }
    w->data = r;
    r->watch = w;
    if (uv_poll_start(w, UV_DISCONNECT, on_watch)) watch_close(r);
}

void http_resume(hreq *r)
{
    if (!r->suspended) return;
    watch_close(r);
    r->suspended = false;
    MHD_resume_connection(r->conn);
    /* MHD handles a resumed connection in its next MHD_run: make that soon
     * (a zero timer coalesces many resumes into one run). */
    uv_timer_start(&r->h->mhd_timer, on_mhd_timer, 0, 0);
}

void http_attach(hreq *r, const http_hooks *hooks, void *ctx)
{
    r->hooks = hooks;
    r->ctx = ctx;
}

/* ------------------------------------------------------------------------ */
/* Responses                                                                */
/* ------------------------------------------------------------------------ */

static void add_common_headers(hreq *r, struct MHD_Response *resp, unsigned status)
{
    if (r->cors_origin) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->cors_origin);
        if (strcmp(r->cors_origin, "*")) MHD_add_response_header(resp, "Vary", "Origin");
    }
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    if (status == 405 && r->allow[0]) MHD_add_response_header(resp, "Allow", r->allow);
    if (status == 429 || status == 503) {
        char ra[32];
        snprintf(ra, sizeof ra, "%ld", r->h->cfg->retry_after);
        MHD_add_response_header(resp, "Retry-After", ra);
    }
}

static void queue(hreq *r, unsigned status, struct MHD_Response *resp)
{
    if (!resp) {
        r->responded = true;
        r->status = 500;
        return;
    }
    add_common_headers(r, resp, status);
    r->responded = true;
    r->status = (int)status;
    MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    http_resume(r);
}

void http_reply_text(hreq *r, unsigned status, const char *ctype, char *text, size_t len)
{
    if (r->responded) {
        free(text);
        return;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback(len, text, free);
    if (!resp) free(text);
    else MHD_add_response_header(resp, "Content-Type", ctype);
    queue(r, status, resp);
}

void http_reply_json(hreq *r, unsigned status, json_t *body)
{
    size_t n;
    char *txt = reply_dump(body, &n);
    if (!txt) {
        static const char oom[] =
            "{\"error\":{\"message\":\"could not encode the response\",\"type\":\"server_error\",\"param\":null,"
            "\"code\":null}}";
        txt = strdup(oom);
        status = 500;
        if (!txt) {
            queue(r, 500, NULL);
            return;
        }
        n = strlen(txt);
    }
    /* Responses end with a newline, as curl users expect. */
    char *t2 = realloc(txt, n + 2);
    if (t2) {
        txt = t2;
        txt[n++] = '\n';
        txt[n] = 0;
    }
    http_reply_text(r, status, "application/json", txt, n);
}

void http_reply_error(hreq *r, unsigned status, const char *type, const char *code, const char *param,
                      const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    http_reply_json(r, status, reply_error(msg, type, param, code));
}

void http_reply_eng_error(hreq *r, eng_status st, const char *param, const char *msg)
{
    const char *type, *code;
    unsigned http = reply_status_from_eng(st, &type, &code);
    if (st == ENG_EBUSY && !msg) msg = "the server is busy: too many requests are queued; retry later";
    if (st == ENG_ESTOPPED && !msg) msg = "the server is shutting down";
    http_reply_error(r, http, type ? type : "server_error", code, param, "%s", msg ? msg : eng_strerror(st));
}

/* ------------------------------------------------------------------------ */
/* Streaming responses                                                      */
/* ------------------------------------------------------------------------ */

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    hreq *r = cls;
    (void)pos;
    if (!r->hooks || !r->hooks->read) return MHD_CONTENT_READER_END_WITH_ERROR;
    long n = r->hooks->read(r, buf, max);
    if (n > 0) return (ssize_t)n;
    if (n < 0) return MHD_CONTENT_READER_END_OF_STREAM;
    /* Nothing yet: sleep until the bridge brings the next event. */
    http_suspend(r);
    return 0;
}

void http_start_stream(hreq *r)
{
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, r, NULL);
    if (resp) {
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    }
    queue(r, 200, resp);
}

/* ------------------------------------------------------------------------ */
/* Routing                                                                  */
/* ------------------------------------------------------------------------ */

static bool path_matches(const http_route *rt, const char *path)
{
    if (!rt->prefix) return !strcmp(rt->path, path);
    size_t n = strlen(rt->path);
    return !strncmp(path, rt->path, n) && path[n];
}

/* A GET route serves HEAD too. */
static bool method_matches(const http_route *rt, const char *method)
{
    if (!strcmp(rt->method, "GET")) return !strcmp(method, "GET") || !strcmp(method, "HEAD");
    return !strcmp(rt->method, method);
}

/* Look r's path up in the table: r->route (the row for method too, or
 * NULL), r->endpoint and r->allow (the path's methods). Returns the first
 * row of the path (NULL: unknown path). */
static const http_route *route(hreq *r, const char *method)
{
    const http_server *h = r->h;
    const http_route *first = NULL;
    size_t k = 0;
    for (size_t i = 0; i < h->n_routes; i++) {
        const http_route *rt = &h->routes[i];
        if (!path_matches(rt, r->path)) continue;
        if (!first) first = rt;
        if (!r->route && method_matches(rt, method)) r->route = rt;
        k += (size_t)snprintf(r->allow + k, sizeof r->allow - k, "%s, ",
                              !strcmp(rt->method, "GET") ? "GET, HEAD" : rt->method);
        if (k >= sizeof r->allow) k = sizeof r->allow - 1;
    }
    if (!first) return NULL;
    snprintf(r->allow + k, sizeof r->allow - k, "OPTIONS");
    r->endpoint = (r->route ? r->route : first)->label;
    if (r->route && r->route->prefix) r->path_rest = r->path + strlen(r->route->path);
    return first;
}

/* Constant-time in the configured key's length, whatever the candidate. */
static bool key_equal(const char *cand, size_t clen, const char *key)
{
    size_t klen = strlen(key);
    volatile unsigned char diff = (unsigned char)(clen != klen);
    for (size_t i = 0; i < klen; i++) diff |= (unsigned char)((i < clen ? (unsigned char)cand[i] : 0) ^ (unsigned char)key[i]);
    return diff == 0;
}

static bool authorized(hreq *r)
{
    const srv_config *c = r->h->cfg;
    if (!c->api_keys.n) return true;
    for (size_t i = 0; i < c->public_paths.n; i++)
        if (!strcmp(c->public_paths.v[i], r->path)) return true;
    const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7)) return false;
    h += 7;
    while (*h == ' ') h++;
    size_t n = strlen(h);
    while (n && h[n - 1] == ' ') n--;
    bool ok = false;
    for (size_t i = 0; i < c->api_keys.n; i++) {
        bool m = key_equal(h, n, c->api_keys.v[i]);
        ok |= m;
        r->key = m ? (int)i + 1 : r->key; /* whose prefix cache (api_cache_scope) */
    }
    return ok;
}

static const char *cors_match(const srv_config *cfg, const char *origin)
{
    if (!origin) return NULL;
    for (size_t i = 0; i < cfg->cors_origins.n; i++) {
        const char *o = cfg->cors_origins.v[i];
        if (!strcmp(o, "*")) return "*";
        if (!strcmp(o, origin)) return o;
    }
    return NULL;
}

static bool json_content_type(const char *ct)
{
    if (!ct) return true;
    while (*ct == ' ') ct++;
    size_t n = strcspn(ct, "; ");
    if (n == 16 && !strncasecmp(ct, "application/json", 16)) return true;
    /* curl --data without -H sends this; the body is still parsed as JSON. */
    if (n == 33 && !strncasecmp(ct, "application/x-www-form-urlencoded", 33)) return true;
    /* application/<anything>+json */
    if (n > 17 && !strncasecmp(ct, "application/", 12) && !strncasecmp(ct + n - 5, "+json", 5)) return true;
    return false;
}

static void set_early(hreq *r, int status, const char *type, const char *code, const char *msg)
{
    r->early_status = status;
    r->early_type = type;
    r->early_code = code;
    snprintf(r->early_msg, sizeof r->early_msg, "%s", msg);
}

static void reply_preflight(hreq *r)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (resp && r->cors_origin) {
        MHD_add_response_header(resp, "Access-Control-Allow-Methods", r->allow);
        const char *req_h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Access-Control-Request-Headers");
        MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                req_h ? req_h : "Authorization, Content-Type");
        MHD_add_response_header(resp, "Access-Control-Max-Age", "86400");
    }
    queue(r, 204, resp);
}

/* Header-time checks: an answer (413 at once) or an error held until the
 * body is in (set_early), or nothing when the request may go on. */
static void first_call(hreq *r, const char *method)
{
    const srv_config *cfg = r->h->cfg;
    const http_route *path_route = route(r, method);
    r->cors_origin = cors_match(cfg, MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Origin"));
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Length");
    if (cl) {
        char *end;
        unsigned long long v = strtoull(cl, &end, 10);
        if (v > (unsigned long long)cfg->max_body_bytes) {
            r->body_over = true;
            http_reply_error(r, 413, "invalid_request_error", "request_too_large", NULL,
                             "the request body is larger than the limit of %ld bytes", cfg->max_body_bytes);
            return;
        }
    }
    if (!path_route) {
        set_early(r, 404, "not_found_error", "not_found", "");
        snprintf(r->early_msg, sizeof r->early_msg, "no such endpoint: %s %s", method, r->path);
        return;
    }
    if (!strcmp(method, "OPTIONS")) return; /* preflight: no auth */
    if (!r->route) {
        set_early(r, 405, "invalid_request_error", "method_not_allowed", "");
        snprintf(r->early_msg, sizeof r->early_msg, "method %s is not allowed on %s (use %s)", method, r->path,
                 path_route->method);
        return;
    }
    if (!authorized(r)) {
        set_early(r, 401, "authentication_error", "invalid_api_key",
                  "invalid or missing API key: send 'Authorization: Bearer <key>'");
        return;
    }
    if (!strcmp(r->route->method, "POST") &&
        !json_content_type(MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Type"))) {
        set_early(r, 415, "invalid_request_error", "unsupported_media_type",
                  "the request body must be JSON (Content-Type: application/json)");
        return;
    }
}

/* The body of a POST route: a JSON object, or an error reply (NULL). */
static json_t *parse_body(hreq *r)
{
    json_error_t je;
    if (!r->body_n) {
        http_reply_error(r, 400, "invalid_request_error", "invalid_json", NULL, "the request body is empty");
        return NULL;
    }
    json_t *body = json_loadb(r->body, r->body_n, JSON_REJECT_DUPLICATES, &je);
    if (!body) {
        http_reply_error(r, 400, "invalid_request_error", "invalid_json", NULL,
                         "the request body is not valid JSON: %s (at byte %d)", je.text, je.position);
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        http_reply_error(r, 400, "invalid_request_error", "invalid_json", NULL, "the request body must be a JSON object");
        return NULL;
    }
    return body;
}

/* The whole request is in: the held error, the preflight, or the handler. */
static void dispatch(hreq *r, const char *method)
{
    if (r->early_status) {
        http_reply_error(r, (unsigned)r->early_status, r->early_type, r->early_code, NULL, "%s", r->early_msg);
        return;
    }
    if (r->body_over) {
        http_reply_error(r, 413, "invalid_request_error", "request_too_large", NULL,
                         "the request body is larger than the limit of %ld bytes", r->h->cfg->max_body_bytes);
        return;
    }
    if (!strcmp(method, "OPTIONS")) {
        reply_preflight(r);
        return;
    }
    if (!strcmp(r->route->method, "POST") && !(r->json = parse_body(r))) return;
    r->route->fn(r);
    json_decref(r->json);
    r->json = NULL;
    if (!r->responded && !r->hooks)
        http_reply_error(r, 500, "server_error", NULL, NULL, "the request was not answered");
}

/* An incoming X-Request-Id is kept when it is sane: 1 to 128 printable
 * ASCII characters without spaces (it goes into log lines and a header).
 * Otherwise: req-<random per process>-<sequence number>, unique across
 * replicas and restarts in practice. */
static void set_request_id(hreq *r, const char *in)
{
    http_server *h = r->h;
    if (in) {
        size_t n = 0;
        while (n <= 128 && in[n] > 0x20 && in[n] < 0x7f) n++;
        if (n && n <= 128 && !in[n]) {
            memcpy(r->id, in, n + 1);
            h->seq++;
            return;
        }
    }
    while (!h->boot) {
        FILE *f = fopen("/dev/urandom", "rb");
        if (!f || fread(&h->boot, sizeof h->boot, 1, f) != 1) h->boot = (unsigned)time(NULL) ^ (unsigned)getpid();
        if (f) fclose(f);
    }
    snprintf(r->id, sizeof r->id, "req-%08x-%llu", h->boot, (unsigned long long)++h->seq);
}

/* ------------------------------------------------------------------------ */
/* Slow clients and connection floods                                       */
/* ------------------------------------------------------------------------ */

/* MHD's connection timeout (idle_timeout) counts from the last byte
 * received, so a client that trickles a byte now and then (slowloris) would
 * hold its connection for ever. So every connection is tracked here too: a
 * request's headers and body must arrive within idle_timeout seconds of the
 * connection's accept or of the end of its previous request. Past that, a
 * request whose headers are in is closed at its next byte (on_access; it is
 * logged and counted as status 408, as MHD cannot answer before the body); a
 * connection still sending headers is shut down by the sweep, and MHD, seeing
 * the end of the stream, closes it. An idle keep-alive connection is closed
 * at the same moment MHD's own timeout would close it.
 *
 * A client that sends part of a request and closes at once is noticed by
 * the sweep too. libmicrohttpd 0.9.75 (epoll, edge-triggered) takes a short
 * recv() as "no longer readable" without waiting for EAGAIN; when the peer's
 * FIN arrived before that read, it came with the same edge, no later edge
 * follows, and MHD never reads the end of the stream: the socket sat in
 * CLOSE_WAIT until idle_timeout, and one whose headers were in also held a
 * request slot that eviction cannot take (a few dozen such clients, which
 * cost the sender nothing, kept everyone else out with 503 for a minute).
 * So while MHD waits for request bytes (h->reading), the sweep peeks at the
 * socket; at the end of the stream it shuts the socket down, MHD sees the
 * hang-up and closes the connection (a request in progress ends as 499).
 * Connections whose request is complete are not peeked: a suspended one has
 * the disconnect watch, and one being answered finds out when it writes. */
typedef struct hconn {
    struct hconn *prev, *next;
    int fd;
    bool shut;       /* shut down here (MHD closes it at its next run) */
    double t_wait;   /* since when a request is awaited */
    bool in_request; /* its headers are in: on_access / on_completed own it */
    bool reading;    /* MHD waits for request bytes (headers or body) from the peer */
} hconn;

/* Past max_connections a new connection first evicts the connection that
 * has waited longest for a request (idle keep-alive or trickling: it holds
 * no request), so idle connections cannot starve active clients; when every
 * connection holds a request, the new one gets 503 and is closed at once.
 * MHD's own limit is max_connections + CONN_HEADROOM (connections shut down
 * here close at MHD's next run); past it, new ones wait in the kernel's
 * backlog. Nothing has been read from a new socket when this runs, so the
 * 503 written here cannot mix with MHD's output. */
#define CONN_HEADROOM 64
static void refuse_or_evict(http_server *h, hconn *fresh, double now)
{
    hconn *old = NULL;
    for (hconn *c = h->conns; c; c = c->next)
        if (c != fresh && !c->in_request && !c->shut && (!old || c->t_wait < old->t_wait)) old = c;
    if (old) {
        shutdown(old->fd, SHUT_RDWR);
        old->shut = true;
        h->n_conns--;
        h->n_evicted++;
    } else {
        static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
                                   "Content-Length: 0\r\n\r\n";
        if (send(fresh->fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) { /* closed anyway */ }
        shutdown(fresh->fd, SHUT_RDWR);
        fresh->shut = true;
        h->n_conns--;
        h->n_refused++;
    }
    if (now - h->last_warn >= 10) {
        h->last_warn = now;
        log_line(h->log, SRV_LOG_WARN,
                 "max_connections (%ld) reached: %llu idle connection(s) closed, %llu new one(s) refused so far",
                 h->cfg->max_connections, h->n_evicted, h->n_refused);
    }
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    http_server *h = cls;
    hconn *hc = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        if (!(hc = calloc(1, sizeof *hc))) return;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        hc->fd = ci ? ci->connect_fd : -1;
        hc->t_wait = now_mono();
        hc->reading = true;
        hc->next = h->conns;
        if (h->conns) h->conns->prev = hc;
        h->conns = hc;
        *socket_context = hc;
        if (++h->n_conns > (size_t)h->cfg->max_connections) refuse_or_evict(h, hc, hc->t_wait);
        return;
    }
    if (!hc) return;
    if (hc->prev) hc->prev->next = hc->next;
    else h->conns = hc->next;
    if (hc->next) hc->next->prev = hc->prev;
    if (!hc->shut) h->n_conns--;
    free(hc);
    *socket_context = NULL;
}

static hconn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* Whether the peer has closed its end (or reset the connection) and left
 * nothing unread. */
static bool peer_gone(int fd)
{
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return true;
    return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

void http_sweep(http_server *h, double now)
{
    for (hconn *c = h->conns; c; c = c->next) {
        if (c->shut || c->fd < 0) continue;
        if ((!c->in_request && now - c->t_wait > h->cfg->idle_timeout) || (c->reading && peer_gone(c->fd))) {
            shutdown(c->fd, SHUT_RDWR);
            c->shut = true;
            h->n_conns--;
        }
    }
}

/* The headers are in: a new hreq, and the header-time checks. */
static hreq *new_request(http_server *h, struct MHD_Connection *c, const char *url, const char *method)
{
    hreq *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->h = h;
    r->s = h->app;
    r->conn = c;
    r->t0 = now_mono();
    hconn *hc = conn_of(c);
    r->t_arrive = hc ? hc->t_wait : r->t0;
    if (hc) hc->in_request = true;
    snprintf(r->method, sizeof r->method, "%s", method);
    /* The path without a query string. */
    size_t n = strcspn(url, "?");
    if (n >= sizeof r->path) n = sizeof r->path - 1;
    memcpy(r->path, url, n);
    r->path[n] = 0;
    set_request_id(r, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id"));
    r->gen.ttft = r->gen.sparsity = -1;
    r->next = h->reqs;
    if (h->reqs) h->reqs->prev = r;
    h->reqs = r;
    h->n_reqs++;
    first_call(r, method);
    return r;
}

/* A piece of the body: kept up to max_body_bytes. MHD_NO closes the connection. */
static enum MHD_Result add_body(hreq *r, const char *data, size_t n)
{
    const srv_config *cfg = r->h->cfg;
    if (!r->responded && now_mono() - r->t_arrive > cfg->idle_timeout) {
        /* MHD would send a response only after the whole body: close
         * instead (logged and counted as 408). */
        r->status = 408;
        return MHD_NO;
    }
    if (r->responded || r->early_status || r->body_over) return MHD_YES; /* discard */
    if (r->body_n + n > (size_t)cfg->max_body_bytes) {
        r->body_over = true;
        free(r->body);
        r->body = NULL;
        r->body_n = r->body_cap = 0;
        return MHD_YES;
    }
    if (r->body_n + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_n + n + 1) cap *= 2;
        char *nb = realloc(r->body, cap);
        if (!nb) return MHD_NO;
        r->body = nb;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_n, data, n);
    r->body_n += n;
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
    hreq *r = *con_cls;
    (void)version;
    if (!r) {
        *con_cls = r = new_request(cls, c, url, method);
        return r ? MHD_YES : MHD_NO;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        return add_body(r, upload_data, n);
    }
    /* The final call (again after each resume): the whole request is in. */
    hconn *hc = conn_of(c);
    if (hc) hc->reading = false;
    if (r->responded || r->hooks) return MHD_YES;
    dispatch(r, method);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    http_server *h = cls;
    hreq *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    watch_close(r);
    if (r->suspended) {
        /* MHD can end a request whose connection we suspended in the same
         * run (the content reader suspended it, then the peer's close was
         * seen). MHD never cleans up a suspended connection, and nobody is
         * left to resume this one: resume it here so the socket is closed
         * instead of lingering in CLOSE_WAIT for ever. */
        r->suspended = false;
        MHD_resume_connection(c);
        uv_timer_start(&h->mhd_timer, on_mhd_timer, 0, 0);
    }
    hconn *hc = conn_of(c);
    if (hc) {
        hc->in_request = false;
        hc->reading = true; /* kept alive: the next request's bytes are awaited */
        hc->t_wait = now_mono();
    }
    bool aborted = toe != MHD_REQUEST_TERMINATED_COMPLETED_OK;
    if (r->hooks && r->hooks->on_close) r->hooks->on_close(r, aborted ? "client_disconnect" : NULL);
    int status = r->status ? r->status : 499; /* 499: the client went away before any response */
    srv_metrics_request(h->mx, r->endpoint, status);
    log_request(h->log, r->id, r->method, r->path, status, now_mono() - r->t0, aborted, &r->gen);
    if (r->prev) r->prev->next = r->next;
    else h->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    h->n_reqs--;
    free(r->body);
    free(r);
}

/* ------------------------------------------------------------------------ */
/* Start / stop                                                             */
/* ------------------------------------------------------------------------ */

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    http_server *h = cls;
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) msg[--n] = 0;
    log_line(h->log, SRV_LOG_WARN, "http: %s", msg);
}

int http_start(http_server *h)
{
    const srv_config *cfg = h->cfg;
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char port[16];
    snprintf(port, sizeof port, "%ld", cfg->port);
    int gai = getaddrinfo(cfg->host, port, &hints, &ai);
    if (gai) {
        fprintf(stderr, "orthoserve: cannot resolve host '%s': %s\n", cfg->host, gai_strerror(gai));
        return -1;
    }
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    /* MHD's own messages go through the server's log (format, level). */
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    h->mhd = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_access, h,
                              MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
                              MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                              MHD_OPTION_NOTIFY_CONNECTION, on_connection, h,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections + CONN_HEADROOM,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(cfg->idle_timeout + 0.5),
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
                              MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
                              MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->mhd) {
        fprintf(stderr, "orthoserve: cannot listen on %s:%ld (in use, or not allowed)\n", cfg->host, cfg->port);
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : (int)cfg->port;
    di = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di) {
        fprintf(stderr, "orthoserve: MHD has no epoll fd\n");
        MHD_stop_daemon(h->mhd);
        h->mhd = NULL;
        return -1;
    }
    uv_timer_init(h->loop, &h->mhd_timer);
    h->mhd_timer.data = h;
    uv_poll_init(h->loop, &h->mhd_poll, di->epoll_fd);
    h->mhd_poll.data = h;
    uv_poll_start(&h->mhd_poll, UV_READABLE, on_mhd_poll);
    http_run(h);
    return 0;
}

void http_stop(http_server *h)
{
    if (!h->mhd) return;
    /* MHD_stop_daemon with suspended connections is an API violation. */
    for (hreq *r = h->reqs; r; r = r->next) http_resume(r);
    MHD_run(h->mhd);
    uv_poll_stop(&h->mhd_poll);
    uv_timer_stop(&h->mhd_timer);
    MHD_stop_daemon(h->mhd);
    h->mhd = NULL;
}
