/*
 * resp_store.h - the stored responses of /v1/responses: one SQLite
 * database (STATE_DIR/responses.sqlite3, WAL mode) of records keyed by
 * response id, each holding the response object and the conversation that
 * led to it, both as JSON text.
 *
 * DESIGN: every call takes the store's mutex and does its statements on
 * the one connection, so calls may come from any thread; the server makes
 * them on libuv worker threads (http_offload), never on the loop, because a
 * commit waits for fsync (synchronous=FULL: a record whose write returned
 * survives kill -9 and a power cut). The database is opened on first use,
 * not at start, so a server that never stores a response creates nothing.
 * A write is one transaction (insert, then pruning), rolled back on any
 * failure, so the database holds whole records only.
 */
#ifndef ORTHOSERVE_RESP_STORE_H
#define ORTHOSERVE_RESP_STORE_H

#include <stddef.h>

typedef struct resp_store resp_store;

typedef enum {
    RESP_STORE_OK = 0,
    RESP_STORE_NOT_FOUND = 1, /* no such id, or it expired */
    RESP_STORE_ERROR = -1,    /* the database failed: the message says why */
} resp_store_status;

/* A store in directory dir (created on first use, mode 0700, when missing;
 * its parent must exist), keeping at most max_records records (>= 1; the
 * oldest go first) of at most ttl seconds (> 0) each. Nothing is opened
 * yet. NULL when memory ran out. Free with resp_store_free (NULL is fine). */
resp_store *resp_store_new(const char *dir, long max_records, double ttl);
void resp_store_free(resp_store *st);

/* Store a record: id (unique; an existing record of the id is replaced),
 * its creation time (unix seconds), conversation and response (JSON texts
 * of len bytes). Records older than ttl at now, and the oldest beyond
 * max_records, are deleted in the same transaction. RESP_STORE_OK or
 * RESP_STORE_ERROR with err (NUL-terminated, at most errlen) saying why;
 * on error the database is as it was. */
resp_store_status resp_store_put(resp_store *st, const char *id, double created, double now, const char *input,
                                 size_t input_len, const char *response, size_t response_len, char *err,
                                 size_t errlen);

/* The record of id unless it is older than ttl at now: *input and
 * *response are new NUL-terminated strings (free() them; either pointer
 * may be NULL when not wanted). RESP_STORE_OK, RESP_STORE_NOT_FOUND (out
 * pointers untouched) or RESP_STORE_ERROR (err set). */
resp_store_status resp_store_get(resp_store *st, const char *id, double now, char **input, char **response,
                                 char *err, size_t errlen);

/* Delete the record of id: RESP_STORE_OK when there was one (an expired
 * one counts as missing), RESP_STORE_NOT_FOUND, or RESP_STORE_ERROR. */
resp_store_status resp_store_delete(resp_store *st, const char *id, double now, char *err, size_t errlen);

/* How many records the database holds (expired ones not yet pruned
 * included), or -1 on error (err set). */
long resp_store_count(resp_store *st, char *err, size_t errlen);

/* Fault tests: cap the database at n_pages pages (SQLite's max_page_count),
 * so that a write that needs more fails as a full disk would. Opens the
 * database. 0 or -1 (err set). */
int resp_store_limit_pages(resp_store *st, long n_pages, char *err, size_t errlen);

#endif
