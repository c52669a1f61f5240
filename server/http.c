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
 * Errors decided from the headers (framing, 401, 404, 405, 413, 415) are
 * answered at once, without reading the body, and the connection is then
 * closed (Connection: close) when a body was announced. The JSON body is
 * parsed on a libuv worker (http_offload), never on the loop.
 */
#include "http.h"
#include "reply.h"

#include "jsoncount.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <malloc.h>
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
    else r->hangup_pending = true; /* offloaded work: told when hooks come */
}

void http_suspend(hreq *r)
{
    if (r->hangup_pending && r->hooks && r->hooks->on_hangup) {
        r->hangup_pending = false;
        r->hooks->on_hangup(r);
    }
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

void http_abandon(hreq *r)
{
    if (r->responded) return;
    r->responded = true;
    r->abandoned = true;
    r->status = 499;
    http_resume(r); /* MHD calls on_access again, which closes the connection */
}

void http_attach(hreq *r, const http_hooks *hooks, void *ctx)
{
    r->hooks = hooks;
    r->ctx = ctx;
}

/* Drop r's body bytes (parsed, or no longer wanted); a large body's memory
 * goes back to the OS. */
static void body_release(hreq *r)
{
    bool large = r->body_cap >= ((size_t)1 << 20);
    r->h->body_buffered -= r->body_cap;
    free(r->body);
    r->body = NULL;
    r->body_n = r->body_cap = 0;
    if (large) malloc_trim(0);
}

/* Free a request MHD is done with. */
static void req_free(hreq *r)
{
    json_decref(r->json);
    r->json = NULL;
    body_release(r); /* after the JSON tree: the trim returns both */
    free(r);
}

/* ------------------------------------------------------------------------ */
/* Work off the loop                                                        */
/* ------------------------------------------------------------------------ */

typedef struct {
    uv_work_t w;
    hreq *r;
    void (*work)(void *ctx);
    void (*done)(hreq *r, void *ctx);
    void *ctx;
} offload;

static void offload_work(uv_work_t *w)
{
    offload *o = w->data;
    o->work(o->ctx);
}

static void offload_after(uv_work_t *w, int status)
{
    offload *o = w->data;
    hreq *r = o->r;
    (void)status; /* never cancelled */
    r->offloaded = false;
    if (r->gone) {
        o->done(NULL, o->ctx);
        req_free(r);
    } else {
        o->done(r, o->ctx);
        if (!r->responded && !r->hooks && !r->offloaded)
            http_reply_error(r, 500, "server_error", NULL, NULL, "the request was not answered");
    }
    free(o);
}

void http_offload(hreq *r, void (*work)(void *ctx), void (*done)(hreq *r, void *ctx), void *ctx)
{
    offload *o = malloc(sizeof *o);
    if (o) *o = (offload){.w = {.data = o}, .r = r, .work = work, .done = done, .ctx = ctx};
    if (!o || uv_queue_work(r->h->loop, &o->w, offload_work, offload_after)) {
        free(o);
        done(NULL, ctx);
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    r->offloaded = true;
    http_suspend(r);
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
    if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (r->close_after) MHD_add_response_header(resp, "Connection", "close");
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

char *http_json_text(json_t *body, size_t *len)
{
    size_t n;
    char *txt = reply_dump(body, &n);
    if (!txt) return NULL;
    /* Responses end with a newline, as curl users expect. */
    char *t2 = realloc(txt, n + 2);
    if (t2) {
        txt = t2;
        txt[n++] = '\n';
        txt[n] = 0;
    }
    *len = n;
    return txt;
}

void http_reply_json(hreq *r, unsigned status, json_t *body)
{
    size_t n;
    char *txt = http_json_text(body, &n);
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

/* The Content-Length headers of a request: how many, and whether they differ. */
typedef struct {
    int n;
    bool differ;
    const char *first;
} cl_scan;

static enum MHD_Result scan_cl(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    cl_scan *c = cls;
    (void)kind;
    if (!key || strcasecmp(key, "Content-Length")) return MHD_YES;
    if (!c->n++) c->first = value;
    else if (strcmp(c->first ? c->first : "", value ? value : "")) c->differ = true;
    return MHD_YES;
}

/* Transfer-Encoding other than chunked (501), differing Content-Length
 * headers (400, RFC 9112 6.3: a request-smuggling primitive behind a proxy
 * that reads the other one). True when answered. */
static bool framing_error(hreq *r)
{
    const char *te = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Transfer-Encoding");
    if (te) {
        while (*te == ' ' || *te == '\t') te++;
        size_t n = strlen(te);
        while (n && (te[n - 1] == ' ' || te[n - 1] == '\t')) n--;
        if (n != 7 || strncasecmp(te, "chunked", 7)) {
            http_reply_error(r, 501, "invalid_request_error", "unsupported_transfer_encoding", NULL,
                             "Transfer-Encoding '%.*s' is not supported (only chunked)", (int)(n > 64 ? 64 : n), te);
            return true;
        }
    }
    cl_scan c = {0};
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, scan_cl, &c);
    if (c.differ) {
        http_reply_error(r, 400, "invalid_request_error", "invalid_content_length", NULL,
                         "the request has Content-Length headers with different values");
        return true;
    }
    return false;
}

/* The declared body size, 0 when none (chunked: unknown, 0). */
static unsigned long long declared_length(hreq *r)
{
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Length");
    return cl ? strtoull(cl, NULL, 10) : 0;
}

/* Header-time checks, each answered at once without reading the body: the
 * framing (501, 400), the API key (401, whatever the path: without a key
 * nothing tells which routes exist), the route (404, 405), the body's size
 * (413; 503 when the server already holds max_body_buffer bytes of bodies)
 * and type (415). When the request may go on, nothing is sent. */
static void first_call(hreq *r, const char *method)
{
    const http_server *h = r->h;
    const srv_config *cfg = h->cfg;
    const http_route *path_route = route(r, method);
    r->cors_origin = cors_match(cfg, MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Origin"));
    unsigned long long cl = r->declared = declared_length(r);
    r->close_after = cl > 0 || MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Transfer-Encoding");
    if (framing_error(r)) return;
    bool preflight = path_route && !strcmp(method, "OPTIONS"); /* no key needed */
    if (!preflight && !authorized(r)) {
        http_reply_error(r, 401, "authentication_error", "invalid_api_key", NULL,
                         "invalid or missing API key: send 'Authorization: Bearer <key>'");
    } else if (!path_route) {
        http_reply_error(r, 404, "not_found_error", "not_found", NULL, "no such endpoint: %s %s", method, r->path);
    } else if (!preflight && !r->route) {
        http_reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                         "method %s is not allowed on %s (use %s)", method, r->path, path_route->method);
    } else if (cl > (unsigned long long)cfg->max_body_bytes) {
        http_reply_error(r, 413, "invalid_request_error", "request_too_large", NULL,
                         "the request body is larger than the limit of %ld bytes", cfg->max_body_bytes);
    } else if (h->body_buffered + cl > (unsigned long long)cfg->max_body_buffer) {
        http_reply_error(r, 503, "unavailable_error", "server_busy", NULL,
                         "the server holds too many request bodies; retry later");
    } else if (!preflight && !strcmp(r->route->method, "POST") &&
               !json_content_type(MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Type"))) {
        http_reply_error(r, 415, "invalid_request_error", "unsupported_media_type", NULL,
                         "the request body must be JSON (Content-Type: application/json)");
    } else {
        r->close_after = false; /* the body will be read */
    }
}

/* A POST body being parsed on a worker. */
typedef struct {
    const char *body;
    size_t n;
    json_t *json;   /* the object, or NULL with msg set */
    bool too_many;  /* refused for its number of values (413) */
    char msg[300];
} body_parse;

/* The most JSON values a body may hold: jansson's tree costs ~80 bytes a
 * value, so 4 MiB of "[]," would otherwise become ~110 MB. */
#define MAX_JSON_VALUES ((size_t)1 << 18)

static void parse_work(void *ctx)
{
    body_parse *p = ctx;
    json_error_t je;
    if (!p->n) {
        snprintf(p->msg, sizeof p->msg, "the request body is empty");
        return;
    }
    if (json_count_values(p->body, p->n) > MAX_JSON_VALUES) {
        p->too_many = true;
        snprintf(p->msg, sizeof p->msg, "the request body holds more than %zu JSON values", MAX_JSON_VALUES);
        return;
    }
    p->json = json_loadb(p->body, p->n, JSON_REJECT_DUPLICATES, &je);
    if (!p->json) {
        snprintf(p->msg, sizeof p->msg, "the request body is not valid JSON: %s (at byte %d)", je.text, je.position);
    } else if (!json_is_object(p->json)) {
        json_decref(p->json);
        p->json = NULL;
        snprintf(p->msg, sizeof p->msg, "the request body must be a JSON object");
    }
}

/* The body is parsed: the handler, or the parse error. */
static void parse_done(hreq *r, void *ctx)
{
    body_parse *p = ctx;
    if (r) body_release(r);
    if (!r) {
        json_decref(p->json);
    } else if (!p->json) {
        http_reply_error(r, p->too_many ? 413 : 400, "invalid_request_error",
                         p->too_many ? "request_too_large" : "invalid_json", NULL, "%s", p->msg);
    } else {
        r->json = p->json; /* freed with r: a handler's work may still read it */
        r->route->fn(r);
    }
    free(p);
}

/* The whole request is in: the preflight, or the handler (a POST route's
 * after its body is parsed off the loop). */
static void dispatch(hreq *r, const char *method)
{
    if (r->body_over) {
        http_reply_error(r, 413, "invalid_request_error", "request_too_large", NULL,
                         "the request body is larger than the limit of %ld bytes", r->h->cfg->max_body_bytes);
        return;
    }
    if (!strcmp(method, "OPTIONS")) {
        reply_preflight(r);
        return;
    }
    if (strcmp(r->route->method, "POST")) {
        r->route->fn(r);
        return;
    }
    body_parse *p = calloc(1, sizeof *p);
    if (!p) {
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    p->body = r->body;
    p->n = r->body_n;
    http_offload(r, parse_work, parse_done, p);
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
    hreq *req;       /* the request whose headers are in, or NULL */
    unsigned char addr[16]; /* the peer's address (IPv4 as v4-mapped IPv6) */
} hconn;

/* The peer address of c as 16 bytes (IPv4 mapped into IPv6). */
static void peer_addr(struct MHD_Connection *c, unsigned char out[16])
{
    memset(out, 0, 16);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr) return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
    } else if (sa->sa_family == AF_INET) {
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
    }
}

static void conn_shut(http_server *h, hconn *c)
{
    shutdown(c->fd, SHUT_RDWR);
    c->shut = true;
    h->n_conns--;
}

/* Report connection-limit events the last warning did not: at most once
 * every 10 s, and (from http_sweep) until every event has been reported. */
static void warn_limits(http_server *h, double now)
{
    unsigned long long total = h->n_evicted + h->n_evicted_body + h->n_refused + h->n_refused_ip;
    if (total == h->n_warned || now - h->last_warn < 10) return;
    h->last_warn = now;
    h->n_warned = total;
    log_line(h->log, SRV_LOG_WARN,
             "max_connections (%ld) reached: %llu idle connection(s) and %llu receiving a body closed, %llu new "
             "one(s) refused; max_connections_per_ip (%ld): %llu refused (totals so far)",
             h->cfg->max_connections, h->n_evicted, h->n_evicted_body, h->n_refused, h->cfg->max_connections_per_ip,
             h->n_refused_ip);
}

/* Answer a new connection 503 and close it. Nothing has been read from
 * it, so the bytes cannot mix with MHD's output. Counted in the metrics
 * with endpoint "connection". */
static void refuse(http_server *h, hconn *fresh)
{
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
                               "Content-Type: application/json\r\nContent-Length: 119\r\n\r\n"
                               "{\"error\":{\"message\":\"too many connections; retry later\",\"type\":"
                               "\"unavailable_error\",\"param\":null,\"code\":\"server_busy\"}}\n";
    if (send(fresh->fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) { /* closed anyway */ }
    conn_shut(h, fresh);
    srv_metrics_request(h->mx, "connection", 503);
}

/* Whether c may be evicted, and since when: waiting for a request (idle or
 * trickling headers), or, with body, receiving the body of its request. */
static bool evictable(const hconn *c, bool body, double *since)
{
    if (!body) {
        *since = c->t_wait;
        return !c->in_request;
    }
    *since = c->req ? c->req->t0 : 0;
    return c->in_request && c->reading && c->req && !c->req->responded;
}

/* The open connection other than fresh evictable the longest, or NULL. */
static hconn *oldest(http_server *h, const hconn *fresh, bool body)
{
    hconn *old = NULL;
    double t_old = 0, t;
    for (hconn *c = h->conns; c; c = c->next) {
        if (c == fresh || c->shut || !evictable(c, body, &t) || (old && t >= t_old)) continue;
        old = c;
        t_old = t;
    }
    return old;
}

/* Past max_connections a new connection first evicts the connection that
 * has waited longest for a request (idle keep-alive or trickling headers),
 * then the one that has been receiving its body longest (its request is
 * logged and counted as 503), so neither idle nor slow-body connections can
 * starve active clients; when every connection holds a request being
 * answered, the new one gets 503 and is closed at once. MHD's own limit is
 * max_connections + CONN_HEADROOM (connections shut down here close at
 * MHD's next run); past it, new ones wait in the kernel's backlog. */
#define CONN_HEADROOM 64
static void refuse_or_evict(http_server *h, hconn *fresh)
{
    hconn *old = oldest(h, fresh, false);
    if (old) {
        h->n_evicted++;
    } else if ((old = oldest(h, fresh, true))) {
        old->req->status = 503;
        h->n_evicted_body++;
    }
    if (old) conn_shut(h, old);
    else {
        refuse(h, fresh);
        h->n_refused++;
    }
}

/* Connections from the same address as c, c included (not yet shut). */
static long same_addr(const http_server *h, const hconn *c)
{
    long n = 0;
    for (const hconn *o = h->conns; o; o = o->next) n += !o->shut && !memcmp(o->addr, c->addr, 16);
    return n;
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
        peer_addr(c, hc->addr);
        hc->next = h->conns;
        if (h->conns) h->conns->prev = hc;
        h->conns = hc;
        *socket_context = hc;
        h->n_conns++;
        if (same_addr(h, hc) > h->cfg->max_connections_per_ip) {
            refuse(h, hc);
            h->n_refused_ip++;
        } else if (h->n_conns > (size_t)h->cfg->max_connections) {
            refuse_or_evict(h, hc);
        }
        warn_limits(h, hc->t_wait);
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
        bool body_late = c->in_request && c->reading && c->req && !c->req->responded &&
                         (now - c->req->t0 > h->cfg->body_timeout || now - c->req->t_arrive > h->cfg->idle_timeout);
        if (body_late && !c->req->status) c->req->status = 408;
        if ((!c->in_request && now - c->t_wait > h->cfg->idle_timeout) || body_late ||
            (c->reading && peer_gone(c->fd)))
            conn_shut(h, c);
    }
    warn_limits(h, now);
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
    if (hc) {
        hc->in_request = true;
        hc->req = r;
    }
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
    http_server *h = r->h;
    double now = now_mono();
    if (!r->responded && (now - r->t_arrive > cfg->idle_timeout || now - r->t0 > cfg->body_timeout)) {
        /* MHD would send a response only after the whole body: close
         * instead (logged and counted as 408). */
        r->status = 408;
        return MHD_NO;
    }
    if (r->responded || r->body_over) return MHD_YES; /* discard */
    if (r->body_n + n > (size_t)cfg->max_body_bytes) {
        r->body_over = true;
        body_release(r);
        return MHD_YES;
    }
    if (r->body_n + n + 1 > r->body_cap) {
        /* Doubling (only bytes received are paid for), but not past the
         * declared length (a 4 MiB body takes 4 MiB, not 8). */
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_n + n + 1) cap *= 2;
        if (r->declared >= r->body_n + n && cap > r->declared + 1) cap = (size_t)r->declared + 1;
        if (h->body_buffered - r->body_cap + cap > (size_t)cfg->max_body_buffer) {
            /* Too many bodies held at once (a chunked one: declared ones
             * are checked at header time): close, counted as 503. */
            r->status = 503;
            return MHD_NO;
        }
        char *nb = realloc(r->body, cap);
        if (!nb) {
            log_line(h->log, SRV_LOG_WARN, "out of memory for a request body of %zu bytes: connection closed", cap);
            r->status = 503;
            return MHD_NO;
        }
        h->body_buffered += cap - r->body_cap;
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
    if (r->abandoned) return MHD_NO;
    if (r->responded || r->hooks || r->offloaded) return MHD_YES;
    dispatch(r, method);
    if (!r->responded && !r->hooks && !r->offloaded)
        http_reply_error(r, 500, "server_error", NULL, NULL, "the request was not answered");
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
        hc->req = NULL;
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
    if (r->offloaded) r->gone = true; /* freed when its work is back */
    else req_free(r);
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
    /* A client that hangs up mid-response is ordinary: not a warning. Nor
     * is MHD's note when on_access closes a connection (MHD_NO): each such
     * close is deliberate (client gone, slow or over-limit body) and the
     * access line records it with its status. */
    bool ordinary = !strncmp(msg, "Failed to send", 14) || strstr(msg, "closed by remote") ||
                    strstr(msg, "Connection reset") || strstr(msg, "Broken pipe") ||
                    strstr(msg, "Application reported internal error");
    log_line(h->log, ordinary ? SRV_LOG_DEBUG : SRV_LOG_WARN, "http: %s", msg);
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
