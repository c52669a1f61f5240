/*
 * log.h - the server's log: text or JSON lines on stderr, filtered by level,
 * and the one access line per HTTP request. Every server message goes
 * through here (the engine's too, through log_engine).
 *
 * Thread-safety: log_line and log_engine may be called from any thread
 * (each line is written with one call, so lines never interleave); the
 * logger itself is set up once on the loop thread before anything logs.
 */
#ifndef ORTHOSERVE_LOG_H
#define ORTHOSERVE_LOG_H

#include "config.h"
#include "orthoserve/engine.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Levels (config log_level); a message is printed when level <= logger.level. */
enum { SRV_LOG_ERROR = 0, SRV_LOG_WARN = 1, SRV_LOG_INFO = 2, SRV_LOG_DEBUG = 3 };

typedef struct {
    int level;      /* SRV_LOG_* */
    bool json;      /* log_format "json": one object per line */
    bool requests;  /* log_requests: the access line */
} logger;

/* From the config (log_level, verbose, log_format, log_requests); also
 * routes the engine's messages here at the same level. log_shutdown undoes
 * that before lg goes away. */
void log_init(logger *lg, const srv_config *cfg);
void log_shutdown(void);

void log_line(const logger *lg, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* What the access line says about a request's generation. A handler that
 * runs one fills it in (http.h: hreq.gen); zero / negative when none. */
typedef struct {
    int64_t n_in, n_out, n_cached; /* prompt, generated and prefix-cached tokens */
    double ttft;                   /* seconds from arrival to the first token; < 0: none */
    double sparsity;               /* effective OrthoRank sparsity; < 0: none */
    const char *cancel_reason;     /* NULL: not cancelled (a static string) */
} log_gen;

/* s as it may appear in a log line, into out (always terminated; cut at
 * cap): printable ASCII and valid UTF-8 as they are; control bytes, spaces,
 * DEL, '\\' and bytes that are not valid UTF-8 as \xNN. A client's path
 * can then neither start a forged line nor fake a field, and a JSON line
 * always has its "path". Returns out. */
char *log_escape(const char *s, char *out, size_t cap);

/* The access line (log_requests, at info level). Method and path are
 * escaped (log_escape). status 0 is logged as 499
 * (the client left before any response); seconds: arrival to end. */
void log_request(const logger *lg, const char *id, const char *method, const char *path, int status,
                 double seconds, bool aborted, const log_gen *g);

/* One fatal line in the configured format, ending in '\n', into buf
 * (prepared ahead, for a signal handler to write); returns its length. */
size_t log_fatal_line(const logger *lg, char *buf, size_t cap, const char *msg, int exit_code);

#endif
