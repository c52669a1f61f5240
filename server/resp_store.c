/*
 * resp_store.c - the stored responses in SQLite (resp_store.h): opening
 * the database on first use, and one short transaction per call.
 *
 * Schema: responses(seq INTEGER PRIMARY KEY, id TEXT UNIQUE, created_at
 * REAL, input TEXT, response TEXT). seq orders records by insertion, so
 * "the oldest" is the smallest seq; created_at decides expiry against the
 * ttl in force now (a changed ttl applies to old records too).
 */
#include "resp_store.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct resp_store {
    pthread_mutex_t lock;
    char *dir;
    long max_records;
    double ttl;
    sqlite3 *db; /* NULL until the first call that opens it */
};

static const char SCHEMA[] = "CREATE TABLE IF NOT EXISTS responses("
                             "seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, "
                             "input TEXT NOT NULL, response TEXT NOT NULL);"
                             "CREATE INDEX IF NOT EXISTS responses_created ON responses(created_at);";

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

resp_store *resp_store_new(const char *dir, long max_records, double ttl)
{
    resp_store *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    if (!(st->dir = strdup(dir && dir[0] ? dir : "."))) {
        free(st);
        return NULL;
    }
    pthread_mutex_init(&st->lock, NULL);
    st->max_records = max_records < 1 ? 1 : max_records;
    st->ttl = ttl > 0 ? ttl : 1;
    return st;
}

void resp_store_free(resp_store *st)
{
    if (!st) return;
    sqlite3_close(st->db);
    pthread_mutex_destroy(&st->lock);
    free(st->dir);
    free(st);
}

/* A statement that returns no rows we need. */
static int exec(resp_store *st, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) == SQLITE_OK) return 0;
    set_err(err, errlen, "%s", msg ? msg : sqlite3_errmsg(st->db));
    sqlite3_free(msg);
    return -1;
}

/* Open the database when it is not open yet: the directory, WAL mode (its
 * commits append to the log, so a crash leaves the last whole transaction),
 * fsync on every commit, and the table. Under the lock. */
static int ensure_open(resp_store *st, char *err, size_t errlen)
{
    if (st->db) return 0;
    if (mkdir(st->dir, 0700) && errno != EEXIST) {
        set_err(err, errlen, "cannot create the state directory '%s': %s", st->dir, strerror(errno));
        return -1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/responses.sqlite3", st->dir);
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "cannot open '%s': %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return -1;
    }
    st->db = db;
    sqlite3_busy_timeout(db, 5000); /* another process on the same directory */
    sqlite3_stmt *s = NULL;
    int wal = 0;
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
        wal = !strcmp((const char *)sqlite3_column_text(s, 0), "wal");
    sqlite3_finalize(s);
    if (!wal) set_err(err, errlen, "cannot put '%s' in WAL mode: %s", path, sqlite3_errmsg(db));
    if (!wal || exec(st, "PRAGMA synchronous=FULL", err, errlen) || exec(st, SCHEMA, err, errlen)) {
        sqlite3_close(db);
        st->db = NULL;
        return -1;
    }
    return 0;
}

/* The lock, then the database open: 0, or -1 with the lock released. */
static int begin_call(resp_store *st, char *err, size_t errlen)
{
    pthread_mutex_lock(&st->lock);
    if (ensure_open(st, err, errlen)) {
        pthread_mutex_unlock(&st->lock);
        return -1;
    }
    return 0;
}

/* A failed statement inside a transaction: roll it back and say why. */
static resp_store_status fail_tx(resp_store *st, sqlite3_stmt *s, const char *what, char *err, size_t errlen)
{
    set_err(err, errlen, "%s: %s", what, sqlite3_errmsg(st->db));
    sqlite3_finalize(s);
    if (!sqlite3_get_autocommit(st->db)) sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    pthread_mutex_unlock(&st->lock);
    return RESP_STORE_ERROR;
}

/* Step s once: 0 when it ran (done, or a row), -1 on an error. */
static int run(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

/* Delete the expired records and the oldest beyond max_records. Inside
 * the caller's transaction. */
static int prune(resp_store *st, double now)
{
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(st->db, "DELETE FROM responses WHERE created_at <= ?1", -1, &s, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_double(s, 1, now - st->ttl);
    int bad = run(s);
    sqlite3_finalize(s);
    if (bad) return -1;
    /* The seq of the newest record that no longer fits, and all before it. */
    if (sqlite3_prepare_v2(st->db,
                           "DELETE FROM responses WHERE seq <= (SELECT seq FROM responses ORDER BY seq DESC "
                           "LIMIT 1 OFFSET ?1)",
                           -1, &s, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(s, 1, st->max_records);
    bad = run(s);
    sqlite3_finalize(s);
    return bad ? -1 : 0;
}

resp_store_status resp_store_put(resp_store *st, const char *id, double created, double now, const char *input,
                                 size_t input_len, const char *response, size_t response_len, char *err,
                                 size_t errlen)
{
    if (begin_call(st, err, errlen)) return RESP_STORE_ERROR;
    sqlite3_stmt *s = NULL;
    if (sqlite3_exec(st->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return fail_tx(st, NULL, "cannot begin a transaction", err, errlen);
    if (sqlite3_prepare_v2(st->db,
                           "INSERT OR REPLACE INTO responses(id, created_at, input, response) VALUES(?1, ?2, ?3, ?4)",
                           -1, &s, NULL) != SQLITE_OK)
        return fail_tx(st, s, "cannot store the response", err, errlen);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_double(s, 2, created);
    sqlite3_bind_text(s, 3, input, (int)input_len, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, response, (int)response_len, SQLITE_STATIC);
    if (input_len > (size_t)1 << 30 || response_len > (size_t)1 << 30 || run(s))
        return fail_tx(st, s, "cannot store the response", err, errlen);
    sqlite3_finalize(s);
    if (prune(st, now)) return fail_tx(st, NULL, "cannot prune the stored responses", err, errlen);
    if (sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return fail_tx(st, NULL, "cannot commit the response", err, errlen);
    pthread_mutex_unlock(&st->lock);
    return RESP_STORE_OK;
}

/* A column's text as a new string (NULL when memory ran out). */
static char *column_dup(sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    int n = sqlite3_column_bytes(s, col);
    char *out = malloc((size_t)n + 1);
    if (!out) return NULL;
    if (n) memcpy(out, t, (size_t)n);
    out[n] = 0;
    return out;
}

resp_store_status resp_store_get(resp_store *st, const char *id, double now, char **input, char **response,
                                 char *err, size_t errlen)
{
    if (begin_call(st, err, errlen)) return RESP_STORE_ERROR;
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(st->db, "SELECT input, response FROM responses WHERE id = ?1 AND created_at > ?2", -1,
                           &s, NULL) != SQLITE_OK)
        return fail_tx(st, s, "cannot read the stored response", err, errlen);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_double(s, 2, now - st->ttl);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        sqlite3_finalize(s);
        pthread_mutex_unlock(&st->lock);
        return RESP_STORE_NOT_FOUND;
    }
    if (rc != SQLITE_ROW) return fail_tx(st, s, "cannot read the stored response", err, errlen);
    char *in = input ? column_dup(s, 0) : NULL, *out = response ? column_dup(s, 1) : NULL;
    sqlite3_finalize(s);
    pthread_mutex_unlock(&st->lock);
    if ((input && !in) || (response && !out)) {
        free(in);
        free(out);
        set_err(err, errlen, "out of memory");
        return RESP_STORE_ERROR;
    }
    if (input) *input = in;
    if (response) *response = out;
    return RESP_STORE_OK;
}

resp_store_status resp_store_delete(resp_store *st, const char *id, double now, char *err, size_t errlen)
{
    if (begin_call(st, err, errlen)) return RESP_STORE_ERROR;
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(st->db, "DELETE FROM responses WHERE id = ?1 AND created_at > ?2", -1, &s, NULL) !=
        SQLITE_OK)
        return fail_tx(st, s, "cannot delete the stored response", err, errlen);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_double(s, 2, now - st->ttl);
    if (run(s)) return fail_tx(st, s, "cannot delete the stored response", err, errlen);
    int n = sqlite3_changes(st->db);
    sqlite3_finalize(s);
    pthread_mutex_unlock(&st->lock);
    return n ? RESP_STORE_OK : RESP_STORE_NOT_FOUND;
}

long resp_store_count(resp_store *st, char *err, size_t errlen)
{
    if (begin_call(st, err, errlen)) return -1;
    sqlite3_stmt *s = NULL;
    long n = -1;
    if (sqlite3_prepare_v2(st->db, "SELECT count(*) FROM responses", -1, &s, NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
        n = (long)sqlite3_column_int64(s, 0);
    else
        set_err(err, errlen, "cannot count the stored responses: %s", sqlite3_errmsg(st->db));
    sqlite3_finalize(s);
    pthread_mutex_unlock(&st->lock);
    return n;
}

int resp_store_limit_pages(resp_store *st, long n_pages, char *err, size_t errlen)
{
    if (begin_call(st, err, errlen)) return -1;
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA max_page_count=%ld", n_pages);
    int rc = exec(st, sql, err, errlen);
    pthread_mutex_unlock(&st->lock);
    return rc;
}
