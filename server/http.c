/*
 * http.c - libmicrohttpd driven from the libuv loop: routing, body limits,
 * API keys, CORS, error bodies, suspend/resume and the disconnect watch.
 *
 * DESIGN: MHD runs in external-polling epoll mode (MHD_USE_EPOLL |
 * MHD_ALLOW_SUSPEND_RESUME, no MHD threads). A uv_poll_t watches MHD's epoll
 * fd and a uv_timer_t follows MHD_get_timeout; both call MHD_run, so every
 * MHD callback (access handler, content reader, request-completed) runs on
 * the loop thread. A request waiting for the engine is suspended; while it
 * is, MHD does not watch its socket, so a uv_poll_t on the socket reports a
 * client that hangs up (UV_DISCONNECT) and the job is cancelled at once.
 * Error responses decided from the headers are held until the body has been
 * read (so the client is never reset mid-send), except 413 for a declared
 * Content-Length over the limit, which is answered at once.
 */
#include "server.h"
#include "textbuf.h"

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

void http_run(srv *s)
{
    if (!s->mhd) return;
    MHD_run(s->mhd);
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(s->mhd, &ms) == MHD_YES) {
        if (ms > 3600000) ms = 3600000;
        uv_timer_start(&s->mhd_timer, on_mhd_timer, (uint64_t)ms, 0);
    } else {
        uv_timer_stop(&s->mhd_timer);
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
    if (r->job) job_cancel(r->job, "client_disconnect");
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
    if (uv_poll_init_socket(r->s->loop, w, ci->connect_fd)) {
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
    uv_timer_start(&r->s->mhd_timer, on_mhd_timer, 0, 0);
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
    if (status == 405 && r->allow) MHD_add_response_header(resp, "Allow", r->allow);
    if (status == 429 || status == 503) {
        char ra[32];
        snprintf(ra, sizeof ra, "%ld", r->s->cfg->retry_after);
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
    /* 9 significant digits round-trip every float32 the engine produces. */
    char *txt = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(body);
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
    }
    size_t n = strlen(txt);
    /* Responses end with a newline, as curl users expect. */
    char *t2 = realloc(txt, n + 2);
    if (t2) {
        txt = t2;
        txt[n++] = '\n';
        txt[n] = 0;
    }
    http_reply_text(r, status, "application/json", txt, n);
}

static json_t *error_body(const char *msg, const char *type, const char *param, const char *code)
{
    json_t *e = json_object();
    json_object_set_new(e, "message", json_string(msg));
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "param", param ? json_string(param) : json_null());
    json_object_set_new(e, "code", code ? json_string(code) : json_null());
    json_t *o = json_object();
    json_object_set_new(o, "error", e);
    return o;
}

void http_reply_error(hreq *r, unsigned status, const char *type, const char *code, const char *param,
                      const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Messages may quote user input: keep them valid UTF-8. */
    size_t n;
    char *clean = utf8_sanitize(msg, strlen(msg), &n);
    http_reply_json(r, status, error_body(clean ? clean : "error", type, param, code));
    free(clean);
}

void http_reply_eng_error(hreq *r, eng_status st, const char *param, const char *msg)
{
    const char *type, *code;
    unsigned http = http_status_from_eng(st, &type, &code);
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
    if (!r->job) return MHD_CONTENT_READER_END_WITH_ERROR;
    long n = job_stream_read(r->job, buf, max);
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

typedef enum {
    R_NONE,
    R_HEALTH,
    R_READY,
    R_METRICS,
    R_MODELS,
    R_MODEL,
    R_CHAT,
    R_COMPLETIONS,
    R_TOKENIZE,
    R_DETOKENIZE,
    R_ORTHORANK
} route_id;

typedef struct {
    const char *path;
    route_id id;
    const char *method; /* "GET" or "POST" */
    const char *label;
} route;

static const route ROUTES[] = {
    {"/health", R_HEALTH, "GET", "health"},
    {"/ready", R_READY, "GET", "ready"},
    {"/metrics", R_METRICS, "GET", "metrics"},
    {"/v1/models", R_MODELS, "GET", "models"},
    {"/models", R_MODELS, "GET", "models"},
    {"/v1/chat/completions", R_CHAT, "POST", "chat_completions"},
    {"/chat/completions", R_CHAT, "POST", "chat_completions"},
    {"/v1/completions", R_COMPLETIONS, "POST", "completions"},
    {"/completions", R_COMPLETIONS, "POST", "completions"},
    {"/tokenize", R_TOKENIZE, "POST", "tokenize"},
    {"/detokenize", R_DETOKENIZE, "POST", "detokenize"},
    {"/v1/orthorank", R_ORTHORANK, "GET", "orthorank"},
};

static const route *find_route(const char *path)
{
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++)
        if (!strcmp(ROUTES[i].path, path)) return &ROUTES[i];
    static const route model = {"/v1/models/", R_MODEL, "GET", "models"};
    if (!strncmp(path, "/v1/models/", 11) && path[11]) return &model;
    return NULL;
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
    const srv_config *c = r->s->cfg;
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
    for (size_t i = 0; i < c->api_keys.n; i++) ok |= key_equal(h, n, c->api_keys.v[i]);
    return ok;
}

static const char *cors_match(srv *s, const char *origin)
{
    if (!origin) return NULL;
    for (size_t i = 0; i < s->cfg->cors_origins.n; i++) {
        const char *o = s->cfg->cors_origins.v[i];
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

static void set_early(hreq *r, int status, const char *type, const char *code, const char *param, const char *msg)
{
    r->early_status = status;
    r->early_type = type;
    r->early_code = code;
    r->early_param = param;
    snprintf(r->early_msg, sizeof r->early_msg, "%s", msg);
}

static void reply_preflight(hreq *r, const route *rt)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (resp && r->cors_origin) {
        MHD_add_response_header(resp, "Access-Control-Allow-Methods", rt->method[0] == 'G' ? "GET, HEAD, OPTIONS" : "POST, OPTIONS");
        const char *req_h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Access-Control-Request-Headers");
        MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                req_h ? req_h : "Authorization, Content-Type");
        MHD_add_response_header(resp, "Access-Control-Max-Age", "86400");
    }
    queue(r, 204, resp);
}

/* Header-time checks. Returns true when a response (or a held error) is decided. */
static void first_call(hreq *r, const char *method)
{
    srv *s = r->s;
    const route *rt = find_route(r->path);
    r->endpoint = rt ? rt->label : "other";
    r->cors_origin = cors_match(s, MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Origin"));
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Length");
    if (cl) {
        char *end;
        unsigned long long v = strtoull(cl, &end, 10);
        if (v > (unsigned long long)s->cfg->max_body_bytes) {
            r->body_over = true;
            http_reply_error(r, 413, "invalid_request_error", "request_too_large", NULL,
                             "the request body is larger than the limit of %ld bytes", s->cfg->max_body_bytes);
            return;
        }
    }
    if (!rt) {
        set_early(r, 404, "not_found_error", "not_found", NULL, "no such endpoint");
        snprintf(r->early_msg, sizeof r->early_msg, "no such endpoint: %s %s", method, r->path);
        return;
    }
    if (!strcmp(method, "OPTIONS")) return; /* preflight: no auth */
    bool is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    bool want_get = !strcmp(rt->method, "GET");
    if ((want_get && !is_get) || (!want_get && strcmp(method, "POST"))) {
        set_early(r, 405, "invalid_request_error", "method_not_allowed", NULL, "");
        r->allow = want_get ? "GET, HEAD, OPTIONS" : "POST, OPTIONS";
        snprintf(r->early_msg, sizeof r->early_msg, "method %s is not allowed on %s (use %s)", method, r->path,
                 rt->method);
        return;
    }
    if (!authorized(r)) {
        set_early(r, 401, "authentication_error", "invalid_api_key", NULL,
                  "invalid or missing API key: send 'Authorization: Bearer <key>'");
        return;
    }
    if (!want_get && !json_content_type(MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Type"))) {
        set_early(r, 415, "invalid_request_error", "unsupported_media_type", NULL,
                  "the request body must be JSON (Content-Type: application/json)");
        return;
    }
}

static void dispatch(hreq *r, const char *method)
{
    srv *s = r->s;
    const route *rt = find_route(r->path);
    if (r->early_status) {
        http_reply_error(r, (unsigned)r->early_status, r->early_type, r->early_code, r->early_param, "%s",
                         r->early_msg);
        return;
    }
    if (r->body_over) {
        http_reply_error(r, 413, "invalid_request_error", "request_too_large", NULL,
                         "the request body is larger than the limit of %ld bytes", s->cfg->max_body_bytes);
        return;
    }
    if (!strcmp(method, "OPTIONS")) {
        reply_preflight(r, rt);
        return;
    }
    json_t *body = NULL;
    if (!strcmp(rt->method, "POST")) {
        json_error_t je;
        if (!r->body_n) {
            http_reply_error(r, 400, "invalid_request_error", "invalid_json", NULL, "the request body is empty");
            return;
        }
        body = json_loadb(r->body, r->body_n, JSON_REJECT_DUPLICATES, &je);
        if (!body) {
            http_reply_error(r, 400, "invalid_request_error", "invalid_json", NULL,
                             "the request body is not valid JSON: %s (at byte %d)", je.text, je.position);
            return;
        }
        if (!json_is_object(body)) {
            json_decref(body);
            http_reply_error(r, 400, "invalid_request_error", "invalid_json", NULL,
                             "the request body must be a JSON object");
            return;
        }
    }
    switch (rt->id) {
    case R_HEALTH: api_health(r); break;
    case R_READY: api_ready(r); break;
    case R_METRICS: api_metrics(r); break;
    case R_MODELS: api_models(r, NULL); break;
    case R_MODEL: api_models(r, r->path + 11); break;
    case R_CHAT: api_chat(r, body); break;
    case R_COMPLETIONS: api_completions(r, body); break;
    case R_TOKENIZE: api_tokenize(r, body); break;
    case R_DETOKENIZE: api_detokenize(r, body); break;
    case R_ORTHORANK: api_orthorank(r); break;
    case R_NONE: break;
    }
    json_decref(body);
    if (!r->responded && !r->job)
        http_reply_error(r, 500, "server_error", NULL, NULL, "the request was not answered");
}

/* An incoming X-Request-Id is kept when it is sane: 1 to 128 printable
 * ASCII characters without spaces (it goes into log lines and a header).
 * Otherwise: req-<random per process>-<sequence number>, unique across
 * replicas and restarts in practice. */
static void set_request_id(hreq *r, const char *in)
{
    static unsigned boot;
    if (in) {
        size_t n = 0;
        while (n <= 128 && in[n] > 0x20 && in[n] < 0x7f) n++;
        if (n && n <= 128 && !in[n]) {
            memcpy(r->id, in, n + 1);
            r->s->seq++;
            return;
        }
    }
    while (!boot) {
        FILE *f = fopen("/dev/urandom", "rb");
        if (!f || fread(&boot, sizeof boot, 1, f) != 1) boot = (unsigned)time(NULL) ^ (unsigned)getpid();
        if (f) fclose(f);
    }
    snprintf(r->id, sizeof r->id, "req-%08x-%llu", boot, (unsigned long long)++r->s->seq);
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
static void refuse_or_evict(srv *s, hconn *fresh, double now)
{
    static double last_warn;
    static unsigned long long n_evicted, n_refused;
    hconn *old = NULL;
    for (hconn *h = s->conns; h; h = h->next)
        if (h != fresh && !h->in_request && !h->shut && (!old || h->t_wait < old->t_wait)) old = h;
    if (old) {
        shutdown(old->fd, SHUT_RDWR);
        old->shut = true;
        s->n_conns--;
        n_evicted++;
    } else {
        static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
                                   "Content-Length: 0\r\n\r\n";
        if (send(fresh->fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) { /* closed anyway */ }
        shutdown(fresh->fd, SHUT_RDWR);
        fresh->shut = true;
        s->n_conns--;
        n_refused++;
    }
    if (now - last_warn >= 10) {
        last_warn = now;
        srv_logl(s, SRV_LOG_WARN,
                 "max_connections (%ld) reached: %llu idle connection(s) closed, %llu new one(s) refused so far",
                 s->cfg->max_connections, n_evicted, n_refused);
    }
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    srv *s = cls;
    hconn *h = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        if (!(h = calloc(1, sizeof *h))) return;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        h->fd = ci ? ci->connect_fd : -1;
        h->t_wait = now_mono();
        h->reading = true;
        h->next = s->conns;
        if (s->conns) s->conns->prev = h;
        s->conns = h;
        *socket_context = h;
        if (++s->n_conns > (size_t)s->cfg->max_connections) refuse_or_evict(s, h, h->t_wait);
        return;
    }
    if (!h) return;
    if (h->prev) h->prev->next = h->next;
    else s->conns = h->next;
    if (h->next) h->next->prev = h->prev;
    if (!h->shut) s->n_conns--;
    free(h);
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

void http_sweep(srv *s, double now)
{
    for (hconn *h = s->conns; h; h = h->next) {
        if (h->shut || h->fd < 0) continue;
        if ((!h->in_request && now - h->t_wait > s->cfg->idle_timeout) || (h->reading && peer_gone(h->fd))) {
            shutdown(h->fd, SHUT_RDWR);
            h->shut = true;
            s->n_conns--;
        }
    }
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
    srv *s = cls;
    hreq *r = *con_cls;
    (void)version;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        r->s = s;
        r->conn = c;
        r->t0 = now_mono();
        hconn *h = conn_of(c);
        r->t_arrive = h ? h->t_wait : r->t0;
        if (h) h->in_request = true;
        snprintf(r->method, sizeof r->method, "%s", method);
        /* The path without a query string. */
        size_t n = strcspn(url, "?");
        if (n >= sizeof r->path) n = sizeof r->path - 1;
        memcpy(r->path, url, n);
        r->path[n] = 0;
        set_request_id(r, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id"));
        r->ttft = r->sparsity = -1;
        r->next = s->reqs;
        if (s->reqs) s->reqs->prev = r;
        s->reqs = r;
        s->n_reqs++;
        *con_cls = r;
        first_call(r, method);
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (!r->responded && now_mono() - r->t_arrive > s->cfg->idle_timeout) {
            /* MHD would send a response only after the whole body: close
             * instead (logged and counted as 408). */
            r->status = 408;
            return MHD_NO;
        }
        if (r->responded || r->early_status || r->body_over) return MHD_YES; /* discard */
        if (r->body_n + n > (size_t)s->cfg->max_body_bytes) {
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
        memcpy(r->body + r->body_n, upload_data, n);
        r->body_n += n;
        return MHD_YES;
    }
    /* The final call: the whole request is in. */
    hconn *h = conn_of(c);
    if (h) h->reading = false;
    if (r->responded || r->job) return MHD_YES;
    dispatch(r, method);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    srv *s = cls;
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
        uv_timer_start(&s->mhd_timer, on_mhd_timer, 0, 0);
    }
    hconn *h = conn_of(c);
    if (h) {
        h->in_request = false;
        h->reading = true; /* kept alive: the next request's bytes are awaited */
        h->t_wait = now_mono();
    }
    if (r->job) job_detach(r->job, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? NULL : "client_disconnect");
    int status = r->status ? r->status : 499; /* 499: the client went away before any response */
    char st[8];
    snprintf(st, sizeof st, "%d", status);
    metric_add(s->m_requests, r->endpoint ? r->endpoint : "other", st, 1);
    srv_log_request(s, r, toe != MHD_REQUEST_TERMINATED_COMPLETED_OK);
    if (r->prev) r->prev->next = r->next;
    else s->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    s->n_reqs--;
    free(r->body);
    free(r);
}

/* ------------------------------------------------------------------------ */
/* Start / stop                                                             */
/* ------------------------------------------------------------------------ */

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) msg[--n] = 0;
    srv_logl(cls, SRV_LOG_WARN, "http: %s", msg);
}

int http_start(srv *s)
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char port[16];
    snprintf(port, sizeof port, "%ld", s->cfg->port);
    int gai = getaddrinfo(s->cfg->host, port, &hints, &ai);
    if (gai) {
        fprintf(stderr, "orthoserve: cannot resolve host '%s': %s\n", s->cfg->host, gai_strerror(gai));
        return -1;
    }
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    /* MHD's own messages go through the server's log (format, level). */
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->mhd = MHD_start_daemon(flags, (uint16_t)s->cfg->port, NULL, NULL, on_access, s,
                              MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
                              MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                              MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->cfg->max_connections + CONN_HEADROOM,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(s->cfg->idle_timeout + 0.5),
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
                              MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
                              MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->mhd) {
        fprintf(stderr, "orthoserve: cannot listen on %s:%ld (in use, or not allowed)\n", s->cfg->host,
                s->cfg->port);
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : (int)s->cfg->port;
    di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di) {
        fprintf(stderr, "orthoserve: MHD has no epoll fd\n");
        MHD_stop_daemon(s->mhd);
        s->mhd = NULL;
        return -1;
    }
    uv_timer_init(s->loop, &s->mhd_timer);
    s->mhd_timer.data = s;
    uv_poll_init(s->loop, &s->mhd_poll, di->epoll_fd);
    s->mhd_poll.data = s;
    uv_poll_start(&s->mhd_poll, UV_READABLE, on_mhd_poll);
    http_run(s);
    return 0;
}

void http_stop(srv *s)
{
    if (!s->mhd) return;
    /* MHD_stop_daemon with suspended connections is an API violation. */
    for (hreq *r = s->reqs; r; r = r->next) http_resume(r);
    MHD_run(s->mhd);
    uv_poll_stop(&s->mhd_poll);
    uv_timer_stop(&s->mhd_timer);
    MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
}
