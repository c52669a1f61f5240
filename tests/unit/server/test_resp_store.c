/* Criterion tests for server/resp_store.c: the stored responses of
 * /v1/responses in SQLite: round trips, replacement, deletion, expiry by
 * ttl, the bound on records (oldest first), reopening, concurrent writers,
 * a write that fails (a full database) leaving the database as it was, and
 * a directory that cannot be made. */
#include "resp_store.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[256];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/orthoserve-store-XXXXXX");
    cr_assert(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

static resp_store *open_store(long max_records, double ttl)
{
    resp_store *st = resp_store_new(dir, max_records, ttl);
    cr_assert(st);
    return st;
}

static void put(resp_store *st, const char *id, double created, double now, const char *in, const char *out)
{
    char err[256] = "";
    cr_assert_eq(resp_store_put(st, id, created, now, in, strlen(in), out, strlen(out), err, sizeof err),
                 RESP_STORE_OK, "%s", err);
}

/* The record of id: 1 and its texts compared, or 0 when it is not there. */
static int has(resp_store *st, const char *id, double now, const char *in, const char *out)
{
    char *gi = NULL, *go = NULL, err[256] = "";
    resp_store_status rs = resp_store_get(st, id, now, &gi, &go, err, sizeof err);
    cr_assert_neq(rs, RESP_STORE_ERROR, "%s", err);
    if (rs == RESP_STORE_NOT_FOUND) return 0;
    if (in) cr_assert_str_eq(gi, in);
    if (out) cr_assert_str_eq(go, out);
    free(gi);
    free(go);
    return 1;
}

static long count(resp_store *st)
{
    char err[256] = "";
    long n = resp_store_count(st, err, sizeof err);
    cr_assert_geq(n, 0, "%s", err);
    return n;
}

TestSuite(resp_store, .init = setup, .fini = teardown);

Test(resp_store, nothing_is_created_before_first_use)
{
    resp_store *st = open_store(10, 100);
    char path[300];
    snprintf(path, sizeof path, "%s/sub", dir);
    resp_store_free(st);
    resp_store *s2 = resp_store_new(path, 10, 100);
    cr_assert_neq(access(path, F_OK), 0, "the directory appears only when the store is used");
    cr_assert_eq(count(s2), 0);
    cr_assert_eq(access(path, F_OK), 0);
    resp_store_free(s2);
}

Test(resp_store, round_trip_replace_delete)
{
    resp_store *st = open_store(10, 100);
    put(st, "resp_a", 1000, 1000, "[1]", "{\"a\":1}");
    put(st, "resp_b", 1001, 1001, "[2]", "{\"b\":\"\xc3\xa9\"}");
    cr_assert(has(st, "resp_a", 1002, "[1]", "{\"a\":1}"));
    cr_assert(has(st, "resp_b", 1002, "[2]", "{\"b\":\"\xc3\xa9\"}"));
    cr_assert_not(has(st, "resp_c", 1002, NULL, NULL));
    put(st, "resp_a", 1003, 1003, "[3]", "{\"a\":3}"); /* same id: replaced */
    cr_assert(has(st, "resp_a", 1004, "[3]", "{\"a\":3}"));
    cr_assert_eq(count(st), 2);
    char err[256];
    cr_assert_eq(resp_store_delete(st, "resp_a", 1005, err, sizeof err), RESP_STORE_OK);
    cr_assert_eq(resp_store_delete(st, "resp_a", 1005, err, sizeof err), RESP_STORE_NOT_FOUND);
    cr_assert_not(has(st, "resp_a", 1006, NULL, NULL));
    cr_assert_eq(count(st), 1);
    resp_store_free(st);
}

Test(resp_store, expired_records_are_missing_then_pruned)
{
    resp_store *st = open_store(10, 50);
    put(st, "old", 1000, 1000, "[]", "{}");
    put(st, "new", 1040, 1040, "[]", "{}");
    cr_assert(has(st, "old", 1049, NULL, NULL));
    cr_assert_not(has(st, "old", 1050, NULL, NULL), "ttl 50 s: gone at created + 50");
    char err[256];
    cr_assert_eq(resp_store_delete(st, "old", 1050, err, sizeof err), RESP_STORE_NOT_FOUND);
    cr_assert(has(st, "new", 1050, NULL, NULL));
    cr_assert_eq(count(st), 2, "not yet pruned: only a write prunes");
    put(st, "newer", 1060, 1060, "[]", "{}");
    cr_assert_eq(count(st), 2, "the write pruned the expired record");
    resp_store_free(st);
}

Test(resp_store, bounded_oldest_first)
{
    resp_store *st = open_store(3, 1e9);
    char id[16];
    for (int i = 0; i < 7; i++) {
        snprintf(id, sizeof id, "r%d", i);
        put(st, id, 1000 + i, 1000 + i, "[]", "{}");
        cr_assert_leq(count(st), 3);
    }
    for (int i = 0; i < 7; i++) {
        snprintf(id, sizeof id, "r%d", i);
        cr_assert_eq(has(st, id, 2000, NULL, NULL), i >= 4, "r%d", i);
    }
    resp_store_free(st);
}

Test(resp_store, survives_reopening)
{
    resp_store *st = open_store(10, 1e9);
    put(st, "keep", 1000, 1000, "[\"in\"]", "{\"out\":true}");
    resp_store_free(st);
    st = open_store(10, 1e9);
    cr_assert(has(st, "keep", 1001, "[\"in\"]", "{\"out\":true}"));
    resp_store_free(st);
}

typedef struct {
    resp_store *st;
    int t;
} writer_arg;

static void *writer(void *p)
{
    writer_arg *a = p;
    char id[32], out[64], err[256];
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof id, "t%d-%d", a->t, i);
        snprintf(out, sizeof out, "{\"t\":%d,\"i\":%d}", a->t, i);
        if (resp_store_put(a->st, id, 1000, 1000, "[]", 2, out, strlen(out), err, sizeof err) != RESP_STORE_OK)
            return (void *)1;
    }
    return NULL;
}

Test(resp_store, concurrent_writers)
{
    resp_store *st = open_store(1000, 1e9);
    pthread_t th[4];
    writer_arg a[4];
    for (int t = 0; t < 4; t++) {
        a[t] = (writer_arg){st, t};
        pthread_create(&th[t], NULL, writer, &a[t]);
    }
    for (int t = 0; t < 4; t++) {
        void *rc;
        pthread_join(th[t], &rc);
        cr_assert_null(rc, "writer %d failed", t);
    }
    cr_assert_eq(count(st), 160);
    char id[32], out[64];
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < 40; i += 13) {
            snprintf(id, sizeof id, "t%d-%d", t, i);
            snprintf(out, sizeof out, "{\"t\":%d,\"i\":%d}", t, i);
            cr_assert(has(st, id, 1001, "[]", out));
        }
    resp_store_free(st);
}

/* PRAGMA integrity_check on the file, from a connection of our own. */
static void check_integrity(void)
{
    char path[300];
    snprintf(path, sizeof path, "%s/responses.sqlite3", dir);
    sqlite3 *db;
    cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    cr_assert_eq(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &s, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(s), SQLITE_ROW);
    cr_assert_str_eq((const char *)sqlite3_column_text(s, 0), "ok");
    sqlite3_finalize(s);
    sqlite3_close(db);
}

Test(resp_store, failed_write_leaves_the_database_as_it_was)
{
    resp_store *st = open_store(2, 1e9);
    put(st, "a", 1000, 1000, "[1]", "{\"a\":1}");
    put(st, "b", 1001, 1001, "[2]", "{\"b\":2}");
    char err[256] = "";
    cr_assert_eq(resp_store_limit_pages(st, 8, err, sizeof err), 0, "%s", err);
    size_t big = 1 << 20; /* far more than 8 pages */
    char *blob = malloc(big + 1);
    memset(blob, 'x', big);
    blob[big] = 0;
    /* It would also have pruned "a" (max 2): the rollback keeps it. */
    cr_assert_eq(resp_store_put(st, "c", 1002, 1002, "[]", 2, blob, big, err, sizeof err), RESP_STORE_ERROR);
    cr_assert(strstr(err, "full"), "the error says why: %s", err);
    cr_assert(has(st, "a", 1003, "[1]", "{\"a\":1}"));
    cr_assert(has(st, "b", 1003, "[2]", "{\"b\":2}"));
    cr_assert_not(has(st, "c", 1003, NULL, NULL));
    cr_assert_eq(count(st), 2);
    free(blob);
    resp_store_free(st);
    check_integrity();
}

Test(resp_store, unusable_directory_is_an_error_each_time)
{
    char path[300];
    snprintf(path, sizeof path, "%s/missing/parent", dir);
    resp_store *st = resp_store_new(path, 10, 100);
    char err[256] = "";
    cr_assert_eq(resp_store_put(st, "a", 1, 1, "[]", 2, "{}", 2, err, sizeof err), RESP_STORE_ERROR);
    cr_assert(strstr(err, path), "names the directory: %s", err);
    err[0] = 0;
    cr_assert_eq(resp_store_get(st, "a", 1, NULL, NULL, err, sizeof err), RESP_STORE_ERROR);
    cr_assert(err[0]);
    resp_store_free(st);
}
