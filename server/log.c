/*
 * log.c - the server's log lines on stderr: levels, the text and JSON
 * formats, the per-request access line and the engine's messages.
 */
#include "log.h"
#include "textbuf.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *LEVEL_NAMES[] = {"error", "warn", "info", "debug"};

/* "2025-05-20T08:30:00.123Z" */
static void iso_time(char *buf, size_t n)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t k = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + k, n - k, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* Write one finished line with a single call, so lines from the loop and
 * the engine thread never interleave. json: an object to which time and
 * level are prepended (stolen). */
static void emit(const logger *lg, int level, const char *text, json_t *json)
{
    if (lg->json) {
        char ts[40];
        iso_time(ts, sizeof ts);
        json_t *o = json_object();
        json_object_set_new(o, "time", json_string(ts));
        json_object_set_new(o, "level", json_string(LEVEL_NAMES[level]));
        if (!json) {
            json = json_object();
            json_object_set_new(json, "msg", json_string(text));
        }
        json_object_update(o, json);
        json_decref(json);
        char *line = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(6));
        json_decref(o);
        if (line) fprintf(stderr, "%s\n", line);
        free(line);
        return;
    }
    json_decref(json);
    fprintf(stderr, "orthoserve: %s\n", text ? text : "");
}

void log_line(const logger *lg, int level, const char *fmt, ...)
{
    if (level > lg->level) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    emit(lg, level, msg, NULL);
}

/* The engine's messages (scheduler thread or loop). */
static void log_engine(eng_log_level lvl, const char *msg, void *user)
{
    int level = (int)lvl < 0 ? 0 : (int)lvl > 3 ? 3 : (int)lvl;
    char line[2048];
    snprintf(line, sizeof line, "engine %s: %s", LEVEL_NAMES[level], msg);
    emit(user, level, line, NULL);
}

void log_init(logger *lg, const srv_config *cfg)
{
    lg->json = !strcmp(cfg->log_format, "json");
    lg->requests = cfg->log_requests;
    lg->level = !strcmp(cfg->log_level, "error") ? SRV_LOG_ERROR : !strcmp(cfg->log_level, "warn") ? SRV_LOG_WARN
                : !strcmp(cfg->log_level, "debug") ? SRV_LOG_DEBUG : SRV_LOG_INFO;
    if (cfg->verbose) lg->level = SRV_LOG_DEBUG;
    /* The engine's messages follow the same level. */
    eng_log_set(log_engine, lg, lg->level >= SRV_LOG_DEBUG ? ENG_LOG_DEBUG : (eng_log_level)lg->level);
}

void log_shutdown(void) { eng_log_set(NULL, NULL, ENG_LOG_ERROR); }

char *log_escape(const char *s, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t k = 0, n = strlen(s);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        bool ok = c < 0x80 ? c > 0x20 && c != 0x7f && c != '\\'
                           : i + len <= n && utf8_valid_prefix(s + i, len) == len;
        if (!ok) len = 1;
        if (k + (ok ? len : 4) >= cap) break;
        if (ok) {
            memcpy(out + k, s + i, len);
            k += len;
        } else {
            out[k++] = '\\';
            out[k++] = 'x';
            out[k++] = hex[c >> 4];
            out[k++] = hex[c & 15];
        }
        i += len;
    }
    if (cap) out[k] = 0;
    return out;
}

void log_request(const logger *lg, const char *id, const char *method, const char *path, int status,
                 double seconds, bool aborted, const log_gen *g)
{
    if (!lg->requests || SRV_LOG_INFO > lg->level) return;
    if (!status) status = 499;
    double ms = seconds * 1e3;
    char m[64], p[1100];
    method = log_escape(method, m, sizeof m);
    path = log_escape(path, p, sizeof p);
    if (lg->json) {
        json_t *o = json_object();
        json_object_set_new(o, "msg", json_string("request"));
        json_object_set_new(o, "request_id", json_string(id));
        json_object_set_new(o, "method", json_string(method));
        json_object_set_new(o, "path", json_string(path));
        json_object_set_new(o, "status", json_integer(status));
        json_object_set_new(o, "tokens_in", json_integer(g->n_in));
        json_object_set_new(o, "tokens_out", json_integer(g->n_out));
        json_object_set_new(o, "tokens_cached", json_integer(g->n_cached));
        json_object_set_new(o, "ttft_ms", g->ttft >= 0 ? json_real(g->ttft * 1e3) : json_null());
        json_object_set_new(o, "total_ms", json_real(ms));
        json_object_set_new(o, "sparsity_effective", g->sparsity >= 0 ? json_real(g->sparsity) : json_null());
        json_object_set_new(o, "aborted", json_boolean(aborted));
        json_object_set_new(o, "cancelled", g->cancel_reason ? json_string(g->cancel_reason) : json_null());
        emit(lg, SRV_LOG_INFO, NULL, o);
        return;
    }
    char ttft[32] = "-", sp[32] = "-", line[1600];
    if (g->ttft >= 0) snprintf(ttft, sizeof ttft, "%.1f", g->ttft * 1e3);
    if (g->sparsity >= 0) snprintf(sp, sizeof sp, "%.4f", g->sparsity);
    snprintf(line, sizeof line, "%s %s %s %d in=%lld out=%lld cached=%lld ttft_ms=%s total_ms=%.1f sparsity=%s%s%s%s",
             id, method, path, status, (long long)g->n_in, (long long)g->n_out, (long long)g->n_cached, ttft, ms, sp,
             aborted ? " aborted" : "", g->cancel_reason ? " cancelled=" : "", g->cancel_reason ? g->cancel_reason : "");
    emit(lg, SRV_LOG_INFO, line, NULL);
}

size_t log_fatal_line(const logger *lg, char *buf, size_t cap, const char *msg, int exit_code)
{
    if (lg->json) {
        json_t *o = json_object();
        json_object_set_new(o, "level", json_string("fatal"));
        json_object_set_new(o, "msg", json_string(msg));
        json_object_set_new(o, "exit_code", json_integer(exit_code));
        char *line = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(o);
        snprintf(buf, cap, "%s\n", line ? line : msg);
        free(line);
    } else {
        snprintf(buf, cap, "orthoserve: fatal: %s\n", msg);
    }
    return strlen(buf);
}
