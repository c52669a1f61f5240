/*
 * api_responses.c - POST /v1/responses, GET and DELETE /v1/responses/{id}.
 *
 * A request is validated off the loop (http_offload): its own fields by
 * resp_request.c, the stored conversation of previous_response_id read from
 * the store, then everything else by request.c on the chat body built from
 * them; the job is submitted by api_openai.c like a chat completion, with
 * this file's job_output in place of the completion output. Text reaches
 * the client as the Responses event stream (response.created ...
 * response.completed, each with its sequence_number) or as one response
 * object. A stored response is committed before the client is told it is
 * complete (the last event, or the whole reply, waits for the write), so
 * a previous_response_id sent right after always finds it.
 *
 * DESIGN: every store call runs on a libuv worker (http_offload or
 * uv_queue_work): a commit fsyncs, which must not stall the loop. A job can
 * be freed while its write runs (the client left): the write's state then
 * outlives it (orphan) and frees itself when the write is back.
 */
#include "api_responses.h"
#include "api_openai.h"
#include "job.h"
#include "resp_reply.h"
#include "resp_request.h"
#include "resp_store.h"
#include "server.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* One response being made: what the job's output hooks need. */
typedef struct {
    srv *s;
    char id[64], msg_id[64];
    long long created_at;
    resp_request rq;  /* echo, the conversation, store */
    bool store;       /* rq.store and the server stores */
    int seq;          /* the next event's sequence_number */
    sbuf text;        /* streamed so far */
    /* A reply split into reasoning, text and function calls (job.tcs: tool
     * calling, thinking templates): output items in order of appearance. */
    int msg_index;    /* the message's output_index; -1: not announced yet */
    json_t *output;   /* the items so far (the message's place is null until it closes) */
    sbuf reasoning;   /* streamed think text, one reasoning item once it ends */
    bool reasoning_sent;
    /* The write of the finished response (uv_queue_work). */
    uv_work_t w;
    job *j;
    bool writing, orphan;
    json_t *final;
    char *final_text, *items_text;
    size_t final_len, items_len;
    resp_store_status wst;
    char werr[256];
} resp_state;

static double now_unix(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* prefix + 48 hex digits from the kernel's generator: stored responses are
 * read by id, so ids must not be guessable. */
static void new_id(char *out, size_t cap, const char *prefix)
{
    unsigned char b[24];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        for (size_t i = 0; i < sizeof b; i++) b[i] = (unsigned char)((uint64_t)ts.tv_nsec >> (i % 8 * 8)) ^ (unsigned char)i;
    }
    size_t k = (size_t)snprintf(out, cap, "%s", prefix);
    for (size_t i = 0; i < sizeof b && k + 2 < cap; i++) k += (size_t)snprintf(out + k, cap - k, "%02x", b[i]);
}

static void state_free(resp_state *st)
{
    if (!st) return;
    resp_request_free(&st->rq);
    free(st->text.p);
    free(st->reasoning.p);
    json_decref(st->output);
    json_decref(st->final);
    free(st->final_text);
    free(st->items_text);
    free(st);
}

/* ------------------------------------------------------------------------ */
/* The event stream                                                         */
/* ------------------------------------------------------------------------ */

/* Append one event (steals ev; its sequence_number is set here). */
static void emit(resp_state *st, job *j, json_t *ev)
{
    json_object_set_new(ev, "sequence_number", json_integer(st->seq++));
    size_t n;
    char *rec = resp_reply_event(ev, &n);
    if (!rec) return;
    sbuf_add(&j->sse, rec, n);
    free(rec);
    if (j->hr) http_resume(j->hr);
}

static void end_stream(job *j)
{
    j->sse_end = true;
    if (j->hr) http_resume(j->hr);
}

static resp_head head_of(resp_state *st, const char *status, const char *incomplete, const reply_counts *c)
{
    return (resp_head){.id = st->id, .created_at = st->created_at, .model = st->s->model_id, .status = status,
                       .incomplete = incomplete, .counts = c, .echo = st->rq.echo};
}

/* An event about the output message's text part. */
static json_t *part_event(resp_state *st, const char *type)
{
    return json_pack("{s:s, s:s, s:i, s:i}", "type", type, "item_id", st->msg_id, "output_index", st->msg_index,
                     "content_index", 0);
}

/* The message item announced at the next output_index, its part added. */
static void open_message(resp_state *st, job *j)
{
    st->msg_index = (int)json_array_size(st->output);
    json_array_append_new(st->output, json_null());
    emit(st, j, json_pack("{s:s, s:i, s:o}", "type", "response.output_item.added", "output_index", st->msg_index,
                          "item", resp_reply_message(st->msg_id, "in_progress", NULL, 0)));
    json_t *ev = part_event(st, "response.content_part.added");
    json_object_set_new(ev, "part", resp_reply_text_part("", 0));
    emit(st, j, ev);
}

static void out_begin(job *j)
{
    resp_state *st = j->out_ctx;
    resp_head h = head_of(st, "in_progress", NULL, NULL);
    emit(st, j, json_pack("{s:s, s:o}", "type", "response.created", "response", resp_reply_object(&h, NULL, NULL, NULL)));
    emit(st, j, json_pack("{s:s, s:o}", "type", "response.in_progress", "response",
                          resp_reply_object(&h, NULL, NULL, NULL)));
    st->msg_index = -1;
    if (!j->tcs) open_message(st, j); /* a split reply announces its items as they come */
}

static void text_delta(resp_state *st, job *j, const char *t, size_t n)
{
    sbuf_add(&st->text, t, n);
    json_t *part = resp_reply_text_part(t, n); /* the delta made valid UTF-8 */
    json_t *ev = part_event(st, "response.output_text.delta");
    json_object_set(ev, "delta", json_object_get(part, "text"));
    json_object_set_new(ev, "logprobs", json_array());
    json_decref(part);
    emit(st, j, ev);
}

/* ---- a split reply: reasoning, text, function calls ---------------------- */

/* An item that is complete when announced: added, then done. */
static void emit_whole_item(resp_state *st, job *j, json_t *item)
{
    int k = (int)json_array_size(st->output);
    emit(st, j, json_pack("{s:s, s:i, s:O}", "type", "response.output_item.added", "output_index", k, "item", item));
    emit(st, j, json_pack("{s:s, s:i, s:O}", "type", "response.output_item.done", "output_index", k, "item", item));
    json_array_append_new(st->output, item);
}

/* Item ids carry their response's ("<type>_<48 hex>..."): an item_reference
 * to one finds the stored response (resolve_references). */
static void item_id(const resp_state *st, const char *type, size_t k, char *out, size_t cap)
{
    if (!strcmp(type, "fc")) snprintf(out, cap, "fc_%s_%zu", st->id + 5, k);
    else snprintf(out, cap, "%s_%s", type, st->id + 5);
}

static void emit_reasoning(resp_state *st, job *j)
{
    if (st->reasoning_sent || !st->reasoning.n) return;
    st->reasoning_sent = true;
    char id[80];
    item_id(st, "rs", 0, id, sizeof id);
    emit_whole_item(st, j, resp_reply_reasoning(id, st->reasoning.p, st->reasoning.n));
}

/* A complete call: the item added with empty arguments, the arguments as
 * one delta and done, the item done. */
static void emit_call(resp_state *st, job *j, const tc_call *c, size_t k)
{
    char id[80];
    item_id(st, "fc", k, id, sizeof id);
    int idx = (int)json_array_size(st->output);
    emit(st, j, json_pack("{s:s, s:i, s:o}", "type", "response.output_item.added", "output_index", idx, "item",
                          resp_reply_function_call(id, c->id, c->name, "", "in_progress")));
    emit(st, j, json_pack("{s:s, s:s, s:i, s:s}", "type", "response.function_call_arguments.delta", "item_id", id,
                          "output_index", idx, "delta", c->arguments));
    emit(st, j, json_pack("{s:s, s:s, s:i, s:s, s:s}", "type", "response.function_call_arguments.done", "item_id",
                          id, "output_index", idx, "name", c->name, "arguments", c->arguments));
    json_t *item = resp_reply_function_call(id, c->id, c->name, c->arguments, "completed");
    emit(st, j, json_pack("{s:s, s:i, s:O}", "type", "response.output_item.done", "output_index", idx, "item", item));
    json_array_append_new(st->output, item);
}

static void split_text(resp_state *st, job *j, const char *t, size_t n, bool final)
{
    tc_delta d;
    if (tc_stream_push(j->tcs, t, n, final, &d)) return;
    if (d.reasoning_n) sbuf_add(&st->reasoning, d.reasoning, d.reasoning_n);
    if (d.content_n || d.n || final) emit_reasoning(st, j);
    if (d.content_n) {
        if (st->msg_index < 0) open_message(st, j);
        text_delta(st, j, d.content, d.content_n);
    }
    for (size_t k = d.first; k < d.first + d.n; k++) emit_call(st, j, &d.r.calls[k], k);
    tc_delta_free(&d);
}

static void out_text(job *j, const char *t, size_t n)
{
    resp_state *st = j->out_ctx;
    if (j->tcs) split_text(st, j, t, n, false);
    else text_delta(st, j, t, n);
}

/* The output of a split reply that was not streamed: reasoning, the
 * message (unless calls came without text), the calls. */
static json_t *split_output(resp_state *st, job *j, const char *msg_status)
{
    tc_result r;
    json_t *out = json_array();
    if (tc_parse_reply(&j->tcs->o, j->tcs->single, j->text.p ? j->text.p : "", j->text.n, &r)) return out;
    char id[80];
    item_id(st, "rs", 0, id, sizeof id);
    if (r.reasoning) json_array_append_new(out, resp_reply_reasoning(id, r.reasoning, r.reasoning_n));
    if (r.content_n || !r.n_calls)
        json_array_append_new(out, resp_reply_message(st->msg_id, msg_status, r.content, r.content_n));
    for (size_t k = 0; k < r.n_calls; k++) {
        item_id(st, "fc", k, id, sizeof id);
        json_array_append_new(out, resp_reply_function_call(id, r.calls[k].id, r.calls[k].name, r.calls[k].arguments,
                                                            "completed"));
    }
    tc_result_free(&r);
    return out;
}

/* The message's closing events: its text, its part, the item. */
static void stream_close_message(resp_state *st, job *j, json_t *msg)
{
    json_t *part = json_array_get(json_object_get(msg, "content"), 0);
    json_t *ev = part_event(st, "response.output_text.done");
    json_object_set(ev, "text", json_object_get(part, "text"));
    json_object_set_new(ev, "logprobs", json_array());
    emit(st, j, ev);
    ev = part_event(st, "response.content_part.done");
    json_object_set(ev, "part", part);
    emit(st, j, ev);
    emit(st, j, json_pack("{s:s, s:i, s:O}", "type", "response.output_item.done", "output_index", st->msg_index,
                          "item", msg));
}

/* The finished response to the client (steals obj). */
static void deliver(resp_state *st, job *j, json_t *obj)
{
    if (!j->stream) {
        http_reply_json(j->hr, 200, obj);
        return;
    }
    const char *status = json_string_value(json_object_get(obj, "status"));
    char type[40];
    snprintf(type, sizeof type, "response.%s", status ? status : "completed");
    emit(st, j, json_pack("{s:s, s:o}", "type", type, "response", obj));
    end_stream(j);
}

static void out_fail(job *j, unsigned status, const char *type, const char *code, const char *msg)
{
    resp_state *st = j->out_ctx;
    if (!j->stream) {
        http_reply_error(j->hr, status, type, code, NULL, "%s", msg);
        return;
    }
    reply_counts c = job_counts(j);
    resp_head h = head_of(st, "failed", NULL, &c);
    json_t *err = json_pack("{s:s, s:s}", "code", code ? code : "server_error", "message", msg);
    emit(st, j, json_pack("{s:s, s:o}", "type", "response.failed", "response",
                          resp_reply_object(&h, json_array(), err, job_orthorank_json(j))));
    end_stream(j);
}

/* ------------------------------------------------------------------------ */
/* The finished response, stored first when asked                           */
/* ------------------------------------------------------------------------ */

static void write_work(uv_work_t *w)
{
    resp_state *st = w->data;
    st->wst = resp_store_put(st->s->store, st->id, (double)st->created_at, now_unix(), st->items_text,
                             st->items_len, st->final_text, st->final_len, st->werr, sizeof st->werr);
}

static void write_after(uv_work_t *w, int status)
{
    resp_state *st = w->data;
    (void)status;
    st->writing = false;
    if (st->orphan) { /* the job (and its request) went away meanwhile */
        state_free(st);
        return;
    }
    job *j = st->j;
    json_t *obj = st->final;
    st->final = NULL;
    if (st->wst == RESP_STORE_OK) {
        deliver(st, j, obj);
        return;
    }
    json_decref(obj);
    log_line(&st->s->log, SRV_LOG_ERROR, "response %s not stored: %s", st->id, st->werr);
    char msg[400];
    snprintf(msg, sizeof msg, "the response could not be stored: %s", st->werr);
    out_fail(j, 500, "server_error", "storage_error", msg);
}

/* Queue the write of obj (kept until it is back). false: it could not start. */
static bool start_write(resp_state *st, job *j, json_t *obj)
{
    st->final_text = reply_dump(json_incref(obj), &st->final_len);
    st->items_text = reply_dump(json_incref(st->rq.items), &st->items_len);
    if (!st->final_text || !st->items_text) return false;
    st->final = obj;
    st->j = j;
    st->w.data = st;
    if (uv_queue_work(st->s->loop, &st->w, write_work, write_after)) {
        st->final = NULL;
        return false;
    }
    st->writing = true;
    return true;
}

static void out_finish(job *j)
{
    resp_state *st = j->out_ctx;
    bool incomplete = !strcmp(job_finish(j), "length");
    const char *text = j->stream ? st->text.p : j->text.p;
    size_t n = j->stream ? st->text.n : j->text.n;
    const char *mst = incomplete ? "incomplete" : "completed";
    json_t *output;
    if (j->tcs && !j->stream) {
        output = split_output(st, j, mst);
    } else {
        if (j->tcs) split_text(st, j, "", 0, true);
        if (j->tcs && st->msg_index < 0 && !j->tcs->n_calls) open_message(st, j);
        text = j->stream ? st->text.p : text; /* split_text may have added the last text */
        n = j->stream ? st->text.n : n;
        if (st->msg_index >= 0 || !j->stream) {
            json_t *msg = resp_reply_message(st->msg_id, mst, text ? text : "", n);
            if (j->stream) stream_close_message(st, j, msg);
            if (j->stream) json_array_set(st->output, (size_t)st->msg_index, msg);
            else json_array_append(st->output, msg);
            json_decref(msg);
        }
        output = json_incref(st->output);
    }
    reply_counts c = job_counts(j);
    resp_head h = head_of(st, incomplete ? "incomplete" : "completed", incomplete ? "max_output_tokens" : NULL, &c);
    json_t *obj = resp_reply_object(&h, output, NULL, job_orthorank_json(j));
    if (!obj) {
        out_fail(j, 500, "server_error", NULL, "out of memory");
        return;
    }
    if (!st->store) {
        deliver(st, j, obj);
    } else if (!start_write(st, j, obj)) {
        json_decref(obj);
        out_fail(j, 500, "server_error", "storage_error", "the response could not be stored: out of memory");
    }
}

static void out_release(void *ctx)
{
    resp_state *st = ctx;
    if (st->writing) st->orphan = true; /* write_after frees it */
    else state_free(st);
}

static const job_output RESP_OUTPUT = {out_begin, out_text, out_finish, out_fail, out_release};

/* ------------------------------------------------------------------------ */
/* POST /v1/responses                                                       */
/* ------------------------------------------------------------------------ */

/* A body being validated on a worker: it reads only this. */
typedef struct {
    api_limits lim;
    resp_store *store; /* NULL: storage is off */
    json_t *body;      /* r->json, which lives as long as r */
    resp_state *st;
    int rc;
    api_request req;
    api_error err;
} creation;


/* The stored conversation of previous_response_id: its items and output. */
static int load_previous(creation *c, json_t **items, json_t **output)
{
    const char *id = c->st->rq.previous_id;
    if (!c->store)
        return api_error_set(&c->err, 400, "invalid_request_error", "not_supported", "previous_response_id",
                       "previous_response_id needs stored responses, which this server does not keep "
                       "(store_responses is false)");
    char *in = NULL, *out = NULL, why[256];
    resp_store_status rs = resp_store_get(c->store, id, now_unix(), &in, &out, why, sizeof why);
    if (rs == RESP_STORE_NOT_FOUND)
        return api_error_set(&c->err, 404, "not_found_error", "previous_response_not_found", "previous_response_id",
                       "no stored response with id '%s' (unknown, deleted or expired)", id);
    if (rs != RESP_STORE_OK)
        return api_error_set(&c->err, 500, "server_error", "storage_error", NULL, "the stored responses cannot be read: %s",
                       why);
    json_t *resp = json_loads(out, 0, NULL);
    *items = json_loads(in, 0, NULL);
    free(in);
    free(out);
    *output = json_incref(json_object_get(resp, "output"));
    json_decref(resp);
    if (!json_is_array(*items) || !json_is_array(*output))
        return api_error_set(&c->err, 500, "server_error", "storage_error", NULL,
                       "the stored response '%s' is not readable", id);
    return 0;
}

/* An item_reference's item: the output item of that id of the stored
 * response its id names ("<type>_<48 hex digits of the response>"): a new
 * reference, or NULL with c->err set. */
static json_t *referenced_item(creation *c, const char *id, const char *param)
{
    const char *us = strchr(id, '_');
    char rid[RESP_ID_MAX + 8], why[256];
    if (!c->store) {
        api_error_set(&c->err, 400, "invalid_request_error", "not_supported", param,
                "item references need stored responses, which this server does not keep (store_responses is false)");
        return NULL;
    }
    snprintf(rid, sizeof rid, "resp_%.48s", us ? us + 1 : "");
    char *out = NULL;
    resp_store_status rs = us && strlen(us + 1) >= 48 ? resp_store_get(c->store, rid, now_unix(), NULL, &out, why,
                                                                       sizeof why)
                                                      : RESP_STORE_NOT_FOUND;
    if (rs == RESP_STORE_ERROR) {
        api_error_set(&c->err, 500, "server_error", "storage_error", NULL, "the stored responses cannot be read: %s", why);
        return NULL;
    }
    json_t *resp = out ? json_loads(out, 0, NULL) : NULL, *found = NULL, *it;
    free(out);
    size_t i;
    json_array_foreach(json_object_get(resp, "output"), i, it) {
        const char *iid = json_string_value(json_object_get(it, "id"));
        if (iid && !strcmp(iid, id)) found = json_incref(it);
    }
    json_decref(resp);
    if (!found)
        api_error_set(&c->err, 404, "not_found_error", "item_not_found", param,
                "no stored item with id '%.80s' (unknown, or its response was deleted or expired)", id);
    return found;
}

/* Replace every item_reference of the input by the stored item. */
static int resolve_references(creation *c)
{
    json_t *in = c->st->rq.input, *it;
    size_t i;
    json_array_foreach(in, i, it) {
        const char *type = json_string_value(json_object_get(it, "type"));
        const char *id = json_string_value(json_object_get(it, "id"));
        if (!type || strcmp(type, "item_reference")) continue;
        char param[32];
        snprintf(param, sizeof param, "input[%zu]", i);
        if (!id) return api_error_set(&c->err, 400, "invalid_request_error", "invalid_value", param,
                                "'%s' (an item_reference) needs a string 'id'", param);
        json_t *item = referenced_item(c, id, param);
        if (!item) return -1;
        json_array_set_new(in, i, item);
    }
    return 0;
}

static void create_work(void *ctx)
{
    creation *c = ctx;
    resp_request *rq = &c->st->rq;
    c->rc = -1;
    if (resp_request_parse(c->body, rq, &c->err) || resolve_references(c)) return;
    json_t *items = NULL, *output = NULL;
    if (rq->previous_id[0] && load_previous(c, &items, &output)) {
        json_decref(items);
        json_decref(output);
        return;
    }
    int rc = resp_request_build(rq, c->body, items, output, &c->err);
    json_decref(items);
    json_decref(output);
    if (rc) return;
    if (api_parse_chat(&c->lim, rq->chat, &c->req, &c->err)) {
        resp_request_map_error(rq, &c->err);
        return;
    }
    c->rc = 0;
}

static void create_done(hreq *r, void *ctx)
{
    creation *c = ctx;
    resp_state *st = c->st;
    if (r && c->rc) {
        http_reply_error(r, c->err.status, c->err.type, c->err.code, c->err.param[0] ? c->err.param : NULL, "%s",
                         c->err.message);
    } else if (r && api_server_ready(r)) {
        st->store = st->rq.store && c->store;
        json_object_set_new(st->rq.echo, "store", json_boolean(st->store));
        api_submit(r, &c->req, &RESP_OUTPUT, st); /* st is the job's now */
        st = NULL;
    }
    if (!c->rc) api_request_free(&c->req);
    state_free(st);
    free(c);
}

void api_responses_create(hreq *r)
{
    if (!api_server_ready(r)) return;
    creation *c = calloc(1, sizeof *c);
    resp_state *st = calloc(1, sizeof *st);
    if (!c || !st) {
        free(c);
        free(st);
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    st->s = r->s;
    st->created_at = (long long)time(NULL);
    st->output = json_array();
    new_id(st->id, sizeof st->id, "resp_");
    /* The message's id carries its response's: an item_reference to it
     * finds the stored response (resolve_references). */
    snprintf(st->msg_id, sizeof st->msg_id, "msg_%s", st->id + 5);
    c->lim = api_limits_of(r->s);
    c->store = r->s->store;
    c->body = r->json;
    c->st = st;
    http_offload(r, create_work, create_done, c);
}

/* ------------------------------------------------------------------------ */
/* GET / DELETE /v1/responses/{id}                                          */
/* ------------------------------------------------------------------------ */

typedef struct {
    resp_store *store;
    char id[RESP_ID_MAX + 1];
    bool del;
    resp_store_status rs;
    char *text;
    char why[256];
} lookup;

static void lookup_work(void *ctx)
{
    lookup *l = ctx;
    double now = now_unix();
    l->rs = l->del ? resp_store_delete(l->store, l->id, now, l->why, sizeof l->why)
                   : resp_store_get(l->store, l->id, now, NULL, &l->text, l->why, sizeof l->why);
}

static void lookup_done(hreq *r, void *ctx)
{
    lookup *l = ctx;
    if (!r) {
    } else if (l->rs == RESP_STORE_NOT_FOUND) {
        http_reply_error(r, 404, "not_found_error", "response_not_found", NULL,
                         "no stored response with id '%s' (unknown, deleted or expired)", l->id);
    } else if (l->rs != RESP_STORE_OK) {
        http_reply_error(r, 500, "server_error", "storage_error", NULL, "the stored responses cannot be read: %s",
                         l->why);
    } else if (l->del) {
        http_reply_json(r, 200, json_pack("{s:s, s:s, s:b}", "id", l->id, "object", "response", "deleted", 1));
    } else {
        http_reply_text(r, 200, "application/json", l->text, strlen(l->text));
        l->text = NULL;
    }
    free(l->text);
    free(l);
}

/* An id as the server makes them: letters, digits, '_' and '-'. */
static bool id_ok(const char *id)
{
    size_t n = strlen(id);
    if (!n || n > RESP_ID_MAX) return false;
    for (size_t i = 0; i < n; i++)
        if (!(id[i] == '_' || id[i] == '-' || (id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'z') ||
              (id[i] >= 'A' && id[i] <= 'Z')))
            return false;
    return true;
}

static void lookup_start(hreq *r, bool del)
{
    const char *id = r->path_rest;
    if (!r->s->store || !id_ok(id)) {
        http_reply_error(r, 404, "not_found_error", "response_not_found", NULL,
                         "no stored response with id '%.80s'%s", id,
                         r->s->store ? "" : " (this server does not store responses: store_responses is false)");
        return;
    }
    lookup *l = calloc(1, sizeof *l);
    if (!l) {
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    l->store = r->s->store;
    l->del = del;
    snprintf(l->id, sizeof l->id, "%s", id);
    http_offload(r, lookup_work, lookup_done, l);
}

void api_responses_get(hreq *r) { lookup_start(r, false); }
void api_responses_delete(hreq *r) { lookup_start(r, true); }
