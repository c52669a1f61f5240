/*
 * serve.c - orthoserve serve: configuration, the loop, model loading,
 * signals and the drain.
 *
 * DESIGN: the loop thread starts MHD first (so /health answers 503 at
 * once), then loads the model on a libuv worker thread; its after-work
 * callback (on the loop) starts the engine scheduler and flips /health to
 * 200. SIGINT/SIGTERM (uv_signal_t, on the loop) start the drain: /ready
 * and new generations get 503, eng_sched_drain stops admission, and
 * in-flight requests may finish until drain_timeout; then eng_sched_free
 * cancels the rest (their DONE events are delivered through the bridge),
 * a short grace lets MHD write those last bytes, every suspended
 * connection is resumed, MHD stops, and the process exits 0. A second
 * signal skips the wait.
 */
#include "serve.h"
#include "server.h"
#include "plan.h"

#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Logging: text or JSON lines on stderr, filtered by level                 */
/* ------------------------------------------------------------------------ */

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
static void emit(srv *s, int level, const char *text, json_t *json)
{
    if (s->log_json) {
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

static void vlog(srv *s, int level, const char *fmt, va_list ap)
{
    if (level > s->log_level) return;
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    emit(s, level, msg, NULL);
}

void srv_log(srv *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(s, SRV_LOG_INFO, fmt, ap);
    va_end(ap);
}

void srv_logl(srv *s, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(s, level, fmt, ap);
    va_end(ap);
}

void srv_log_request(srv *s, const hreq *r, bool aborted)
{
    if (!s->cfg->log_requests || SRV_LOG_INFO > s->log_level) return;
    int status = r->status ? r->status : 499;
    double ms = (now_mono() - r->t0) * 1e3;
    if (s->log_json) {
        json_t *o = json_object();
        json_object_set_new(o, "msg", json_string("request"));
        json_object_set_new(o, "request_id", json_string(r->id));
        json_object_set_new(o, "method", json_string(r->method));
        json_object_set_new(o, "path", json_string(r->path));
        json_object_set_new(o, "status", json_integer(status));
        json_object_set_new(o, "tokens_in", json_integer(r->n_in));
        json_object_set_new(o, "tokens_out", json_integer(r->n_out));
        json_object_set_new(o, "tokens_cached", json_integer(r->n_cached));
        json_object_set_new(o, "ttft_ms", r->ttft >= 0 ? json_real(r->ttft * 1e3) : json_null());
        json_object_set_new(o, "total_ms", json_real(ms));
        json_object_set_new(o, "sparsity_effective", r->sparsity >= 0 ? json_real(r->sparsity) : json_null());
        json_object_set_new(o, "aborted", json_boolean(aborted));
        json_object_set_new(o, "cancelled", r->cancel_reason ? json_string(r->cancel_reason) : json_null());
        emit(s, SRV_LOG_INFO, NULL, o);
        return;
    }
    char ttft[32] = "-", sp[32] = "-", line[1024];
    if (r->ttft >= 0) snprintf(ttft, sizeof ttft, "%.1f", r->ttft * 1e3);
    if (r->sparsity >= 0) snprintf(sp, sizeof sp, "%.4f", r->sparsity);
    snprintf(line, sizeof line, "%s %s %s %d in=%lld out=%lld cached=%lld ttft_ms=%s total_ms=%.1f sparsity=%s%s%s%s",
             r->id, r->method, r->path, status, (long long)r->n_in, (long long)r->n_out, (long long)r->n_cached, ttft,
             ms, sp, aborted ? " aborted" : "", r->cancel_reason ? " cancelled=" : "",
             r->cancel_reason ? r->cancel_reason : "");
    emit(s, SRV_LOG_INFO, line, NULL);
}

/* The engine's messages (scheduler thread or loop). */
static void log_engine(eng_log_level lvl, const char *msg, void *user)
{
    srv *s = user;
    int level = (int)lvl < 0 ? 0 : (int)lvl > 3 ? 3 : (int)lvl;
    char line[2048];
    snprintf(line, sizeof line, "engine %s: %s", LEVEL_NAMES[level], msg);
    emit(s, level, line, NULL);
}

/* ------------------------------------------------------------------------ */
/* Metrics registry and the step-duration sampler                           */
/* ------------------------------------------------------------------------ */

/* Bucket bounds (comparable to vLLM's, extended downwards: CPU decoding of
 * small models takes well under 10 ms per token). */
static const double B_TTFT[] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5,
                                5, 7.5, 10, 20, 40, 80, 160, 640};
static const double B_ITL[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                               0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80};
static const double B_E2E[] = {0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50,
                               60, 120, 240, 480, 960, 1920, 7680};
static const double B_QUEUE[] = {0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                 5, 10, 30, 60, 120, 300, 600};
static const double B_TOKENS[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
                                  100000, 200000, 500000, 1000000};
static const double B_SPARSITY[] = {0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
                                    0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1};
static const double B_STEP[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                2.5, 5, 10};
#define NB(a) (sizeof a / sizeof a[0])

static metric *with_model(srv *s, metric *f)
{
    metric_const_label(f, "model", s->model_id);
    return f;
}

/* Everything not registered in cli_serve's original block (see docs/METRICS.md). */
static void metrics_register(srv *s)
{
    metrics *m = s->mx;
    s->m_finished = with_model(s, metrics_add(m, "orthoserve_requests_finished_total",
                                              "Generation requests finished, by finish reason (stop, length, "
                                              "cancelled, error).", METRIC_COUNTER, "finish_reason", NULL));
    s->m_kv_cached = metrics_add(m, "orthoserve_kv_tokens_cached", "KV cache tokens kept for prefix reuse.",
                                 METRIC_GAUGE, NULL, NULL);
    s->m_kv_ratio = metrics_add(m, "orthoserve_kv_cache_usage_ratio",
                                "KV cache tokens in use by running requests over the budget (0 to 1).", METRIC_GAUGE,
                                NULL, NULL);
    s->m_batch_tokens = metrics_add(m, "orthoserve_batch_tokens", "Tokens in the last scheduler step's batch.",
                                    METRIC_GAUGE, NULL, NULL);
    s->m_steps = metrics_add(m, "orthoserve_scheduler_steps_total", "Scheduler steps (forward passes) run.",
                             METRIC_COUNTER, NULL, NULL);
    static const char *bl[] = {"version", "kernels"};
    s->m_build_info = metrics_add_labels(m, "orthoserve_build_info", "Build information; the value is 1.",
                                         METRIC_GAUGE, bl, 2);
    static const char *ml[] = {"model", "architecture", "type", "n_layer", "n_ctx", "orthorank_plan"};
    s->m_model_info = metrics_add_labels(m, "orthoserve_model_info",
                                         "The loaded model: architecture, dominant weight type, layers, context "
                                         "per sequence, OrthoRank plan source; the value is 1.",
                                         METRIC_GAUGE, ml, 6);
    s->h_ttft = with_model(s, metrics_add_histogram(m, "orthoserve_time_to_first_token_seconds",
                                                    "Seconds from a request's arrival to its first generated token.",
                                                    NULL, B_TTFT, NB(B_TTFT)));
    s->h_itl = with_model(s, metrics_add_histogram(m, "orthoserve_inter_token_latency_seconds",
                                                   "Seconds between consecutive generated tokens of a request.", NULL,
                                                   B_ITL, NB(B_ITL)));
    s->h_tpot = with_model(s, metrics_add_histogram(m, "orthoserve_time_per_output_token_seconds",
                                                    "Per request: seconds from the first to the last token over the "
                                                    "tokens after the first (requests with 2 or more tokens).",
                                                    NULL, B_ITL, NB(B_ITL)));
    s->h_e2e = with_model(s, metrics_add_histogram(m, "orthoserve_e2e_request_latency_seconds",
                                                   "Seconds from a generation request's arrival to its end.", NULL,
                                                   B_E2E, NB(B_E2E)));
    s->h_queue = with_model(s, metrics_add_histogram(m, "orthoserve_request_queue_time_seconds",
                                                     "Seconds a generation request waited for a scheduler slot.",
                                                     NULL, B_QUEUE, NB(B_QUEUE)));
    s->h_prompt_len = with_model(s, metrics_add_histogram(m, "orthoserve_request_prompt_tokens",
                                                          "Prompt tokens per generation request.", NULL, B_TOKENS,
                                                          NB(B_TOKENS)));
    s->h_gen_len = with_model(s, metrics_add_histogram(m, "orthoserve_request_generation_tokens",
                                                       "Generated tokens per generation request.", NULL, B_TOKENS,
                                                       NB(B_TOKENS)));
    s->h_sparsity = with_model(s, metrics_add_histogram(m, "orthoserve_request_orthorank_sparsity_effective",
                                                        "Per request: token-layers skipped over token-layers "
                                                        "processed (0 = dense).", NULL, B_SPARSITY, NB(B_SPARSITY)));
    s->h_step = with_model(s, metrics_add_histogram(m, "orthoserve_step_duration_seconds",
                                                    "Scheduler step duration, sampled: the mean step time of each "
                                                    "100 ms window the scheduler was busy throughout, counted once "
                                                    "per step of the window.", NULL, B_STEP, NB(B_STEP)));
    metric_set(s->m_build_info, ORTHOSERVE_VERSION, eng_kernel_name(), 1);
    metric *per_model[] = {s->m_prompt_tokens, s->m_gen_tokens, s->m_cached_tokens, s->m_or_total, s->m_or_skipped};
    for (size_t i = 0; i < NB(per_model); i++) with_model(s, per_model[i]);
    static const char *reasons[] = {"stop", "length", "cancelled", "error"};
    for (size_t i = 0; i < 4; i++) metric_add(s->m_finished, reasons[i], NULL, 0);
}

void srv_metrics_refresh(srv *s)
{
    metric_set(s->m_loaded, NULL, NULL, s->sched ? 1 : 0);
    metric_set(s->m_connections, NULL, NULL, (double)s->n_reqs);
    if (!s->sched) return;
    eng_sched_stats st;
    eng_sched_get_stats(s->sched, &st);
    metric_set(s->m_running, NULL, NULL, st.running);
    metric_set(s->m_waiting, NULL, NULL, st.waiting);
    metric_set(s->m_kv_used, NULL, NULL, st.kv_used);
    metric_set(s->m_kv_total, NULL, NULL, st.kv_total);
    metric_set(s->m_kv_cached, NULL, NULL, st.kv_cached);
    metric_set(s->m_kv_ratio, NULL, NULL, st.kv_total > 0 ? (double)st.kv_used / st.kv_total : 0);
    metric_set(s->m_batch_tokens, NULL, NULL, st.last_batch_tokens);
    metric_set(s->m_steps, NULL, NULL, (double)st.steps);
}

/* Step duration from the step counter: the engine reports steps, not their
 * times. A window in which requests were running at both ends is one in
 * which the scheduler stepped back to back, so its time over its steps is
 * the mean step time; idle or partly idle windows are not counted. */
static void on_stats(uv_timer_t *t)
{
    srv *s = t->data;
    if (!s->sched) return;
    eng_sched_stats st;
    eng_sched_get_stats(s->sched, &st);
    double now = now_mono();
    bool busy = st.running > 0;
    if (s->stats_t > 0 && s->stats_busy && busy && st.steps > s->stats_steps)
        metric_observe_n(s->h_step, NULL, (now - s->stats_t) / (double)(st.steps - s->stats_steps),
                         st.steps - s->stats_steps);
    s->stats_steps = st.steps;
    s->stats_t = now;
    s->stats_busy = busy;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* The last step: stop HTTP and close every handle so uv_run returns. */
static void finish(srv *s)
{
    if (s->state == SRV_STOPPING && !s->mhd) return;
    s->state = SRV_STOPPING;
    http_stop(s);
    bridge_flush(&s->br);
    uv_walk(s->loop, close_walk, NULL);
}

static void on_final(uv_timer_t *t)
{
    finish(t->data);
}

/* Free the scheduler (cancelling what is left), deliver the last events,
 * and give MHD a moment to write them. */
static void stop_engine(srv *s)
{
    uv_timer_stop(&s->drain_timer);
    if (s->sched) {
        eng_sched_free(s->sched);
        s->sched = NULL;
    }
    bridge_flush(&s->br);
    http_run(s);
    uv_timer_start(&s->final_timer, on_final, 200, 0);
}

static void on_drain_timeout(uv_timer_t *t)
{
    srv *s = t->data;
    srv_logl(s, SRV_LOG_WARN, "drain timeout: cancelling %zu request(s)", s->n_jobs);
    stop_engine(s);
}

void srv_job_finished(srv *s)
{
    if (s->state == SRV_DRAINING && s->n_jobs == 0) stop_engine(s);
}

void srv_shutdown(srv *s)
{
    if (s->state == SRV_LOADING) {
        /* The loader cannot be interrupted; stop as soon as it returns. */
        s->stop_requested = true;
        srv_log(s, "stopping after the model load finishes");
        return;
    }
    if (s->state == SRV_DRAINING) {
        srv_log(s, "second signal: stopping now");
        stop_engine(s);
        return;
    }
    if (s->state != SRV_READY) return;
    s->state = SRV_DRAINING;
    srv_log(s, "draining: %zu request(s) in flight, up to %g s", s->n_jobs, s->cfg->drain_timeout);
    eng_sched_drain(s->sched);
    if (s->n_jobs == 0) {
        stop_engine(s);
        return;
    }
    uv_timer_start(&s->drain_timer, on_drain_timeout, (uint64_t)(s->cfg->drain_timeout * 1000), 0);
}

static void on_signal(uv_signal_t *h, int signum)
{
    srv *s = h->data;
    srv_log(s, "received %s", signum == SIGINT ? "SIGINT" : "SIGTERM");
    srv_shutdown(s);
}

static void on_sweep(uv_timer_t *t)
{
    srv *s = t->data;
    double now = now_mono();
    jobs_sweep(s, now);
    http_sweep(s, now);
}

/* ------------------------------------------------------------------------ */
/* Model loading on a worker thread                                         */
/* ------------------------------------------------------------------------ */

static void load_work(uv_work_t *w)
{
    srv *s = w->data;
    eng_model_params mp = eng_model_default_params();
    mp.n_threads = (int32_t)s->cfg->threads;
    mp.use_mmap = s->cfg->mmap;
    mp.repack = s->cfg->repack;
    eng_status st = eng_model_load(s->cfg->model, &mp, &s->model, s->load_err, sizeof s->load_err);
    if (st != ENG_OK && !s->load_err[0]) snprintf(s->load_err, sizeof s->load_err, "%s", eng_strerror(st));
    if (st != ENG_OK) return;
    /* The OrthoRank plan: the configured file (an error if it is bad or
     * missing), else MODEL.orthorank.json beside the model when present,
     * else the engine's documented fallback order. */
    char err[512] = "";
    int rc;
    if (s->cfg->orthorank_plan[0]) {
        rc = plan_load(s->cfg->orthorank_plan, s->model, err, sizeof err);
        if (rc == 0) snprintf(s->plan_file, sizeof s->plan_file, "%s", s->cfg->orthorank_plan);
    } else {
        rc = plan_load_default(s->cfg->model, s->model, err, sizeof err);
        if (rc == 1) { /* loaded: err holds its path */
            snprintf(s->plan_file, sizeof s->plan_file, "%s", err);
            rc = 0;
        }
    }
    if (rc != 0) {
        snprintf(s->load_err, sizeof s->load_err, "OrthoRank plan: %s", err);
        eng_model_free(s->model);
        s->model = NULL;
    }
}

static void load_done(uv_work_t *w, int status)
{
    srv *s = w->data;
    (void)status;
    s->load_done = true;
    if (!s->model) {
        srv_logl(s, SRV_LOG_ERROR, "cannot load model %s: %s", s->cfg->model, s->load_err);
        s->exit_code = 1;
        finish(s);
        return;
    }
    eng_model_get_info(s->model, &s->info);
    s->vocab = eng_model_vocab(s->model);
    if (s->cfg->chat_template[0]) {
        s->chat_fmt = eng_chat_format_from_name(s->cfg->chat_template);
    } else {
        s->chat_fmt = eng_chat_detect(s->info.chat_template);
        if (s->chat_fmt == ENG_CHAT_UNKNOWN) s->chat_fmt = ENG_CHAT_PLAIN;
    }
    eng_sched_params sp = eng_sched_default_params();
    sp.n_ctx = s->cfg->ctx_size > 0 ? (int32_t)s->cfg->ctx_size : s->info.n_ctx_train;
    sp.n_seq_max = (int32_t)s->cfg->parallel;
    sp.n_batch_max = (int32_t)s->cfg->batch_size;
    sp.n_kv_tokens = (int32_t)s->cfg->kv_tokens;
    sp.max_queue = (int32_t)s->cfg->max_queue;
    sp.n_threads = (int32_t)s->cfg->threads;
    s->n_ctx = sp.n_ctx;
    eng_status st = eng_sched_new(s->model, &sp, &s->sched);
    if (st != ENG_OK) {
        srv_logl(s, SRV_LOG_ERROR, "cannot start the scheduler: %s", eng_strerror(st));
        s->exit_code = 1;
        finish(s);
        return;
    }
    s->state = SRV_READY;
    {
        char nl[16], nc[16];
        snprintf(nl, sizeof nl, "%d", s->info.n_layer);
        snprintf(nc, sizeof nc, "%d", s->n_ctx);
        eng_orthorank_plan plan;
        eng_model_get_orthorank_plan(s->model, &plan);
        const char *v[] = {s->model_id, s->info.arch ? s->info.arch : "", s->info.file_type ? s->info.file_type : "",
                           nl, nc, plan.source ? plan.source : "fallback"};
        metric_setv(s->m_model_info, v, 1);
    }
    uv_timer_start(&s->stats_timer, on_stats, 100, 100);
    srv_log(s, "model %s loaded: %s, %d layers, context %d, %ld slots, chat template %s, kernels %s", s->model_id,
            s->info.arch, s->info.n_layer, s->n_ctx, s->cfg->parallel, eng_chat_format_name(s->chat_fmt),
            eng_kernel_name());
    if (s->stop_requested) srv_shutdown(s);
}

/* ------------------------------------------------------------------------ */
/* Faults: the model file changed underneath the mapping; the fd limit      */
/* ------------------------------------------------------------------------ */

/* The weights are mapped MAP_PRIVATE, read-only (config mmap, the default).
 * Deleting or renaming the file is harmless (the inode lives on while it is
 * mapped), but truncating it makes every page past the new end raise SIGBUS
 * at its next access -- which would kill the server with a bare "Bus
 * error". This handler says what happened in one line on stderr and exits
 * with status 70. Async-signal-safe: only stat(2), write(2) and _exit(2), on
 * messages prepared at start. With mmap false the model is in memory and
 * the default action (core dump) stays. See docs/SECURITY.md, "Faults". */
enum { EXIT_SIGBUS = 70 };
static char bus_path[PATH_MAX];
static struct stat bus_st; /* the model file at start */
static char bus_changed[PATH_MAX + 1024], bus_other[PATH_MAX + 1024];
static size_t bus_changed_n, bus_other_n;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    (void)uc;
    struct stat now;
    bool changed = stat(bus_path, &now) != 0 || now.st_size != bus_st.st_size || now.st_ino != bus_st.st_ino ||
                   now.st_dev != bus_st.st_dev;
    const char *m = changed ? bus_changed : bus_other;
    size_t n = changed ? bus_changed_n : bus_other_n, off = 0;
    while (off < n) {
        ssize_t w = write(STDERR_FILENO, m + off, n - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    _exit(EXIT_SIGBUS);
}

/* One fatal line in the configured log format (prepared now, written from the handler). */
static size_t fatal_line(srv *s, char *buf, size_t cap, const char *msg)
{
    if (s->log_json) {
        json_t *o = json_object();
        json_object_set_new(o, "level", json_string("fatal"));
        json_object_set_new(o, "msg", json_string(msg));
        json_object_set_new(o, "exit_code", json_integer(EXIT_SIGBUS));
        char *line = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(o);
        snprintf(buf, cap, "%s\n", line ? line : msg);
        free(line);
    } else {
        snprintf(buf, cap, "orthoserve: fatal: %s\n", msg);
    }
    return strlen(buf);
}

static void install_sigbus(srv *s)
{
    if (!s->cfg->mmap) return;
    snprintf(bus_path, sizeof bus_path, "%s", s->cfg->model);
    if (stat(bus_path, &bus_st) != 0) return; /* the load will fail and say why */
    char msg[PATH_MAX + 512];
    snprintf(msg, sizeof msg,
             "SIGBUS: the model file %s was truncated or changed underneath the server (it is memory-mapped; "
             "replace model files by renaming a new file into place, or serve with mmap false); exiting with "
             "status %d", bus_path, EXIT_SIGBUS);
    bus_changed_n = fatal_line(s, bus_changed, sizeof bus_changed, msg);
    snprintf(msg, sizeof msg,
             "SIGBUS (bus error) while the model file %s is memory-mapped: it may have been truncated and "
             "restored, or its storage failed; exiting with status %d", bus_path, EXIT_SIGBUS);
    bus_other_n = fatal_line(s, bus_other, sizeof bus_other, msg);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
}

/* Every connection is a file descriptor: raise the soft open-file limit to
 * the hard one, and warn when max_connections cannot fit under it (MHD
 * then fails accept(2) with EMFILE beyond it instead of refusing cleanly). */
static void raise_fd_limit(srv *s)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    if (rl.rlim_cur != rl.rlim_max) {
        rlim_t was = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
            srv_logl(s, SRV_LOG_DEBUG, "open-file limit raised from %llu to %llu", (unsigned long long)was,
                     (unsigned long long)rl.rlim_cur);
        else getrlimit(RLIMIT_NOFILE, &rl);
    }
    /* The model, the loop, MHD, the log and the pool need a few dozen more. */
    rlim_t need = (rlim_t)s->cfg->max_connections + 64;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need)
        srv_logl(s, SRV_LOG_WARN,
                 "the open-file limit (%llu) is below max_connections (%ld) + 64: connections beyond it "
                 "will fail; raise it (ulimit -n, or LimitNOFILE= in systemd) or lower max_connections",
                 (unsigned long long)rl.rlim_cur, s->cfg->max_connections);
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                              */
/* ------------------------------------------------------------------------ */

int cli_serve(int argc, char **argv)
{
    srv_config cfg;
    int rc = srv_config_load(&cfg, argc, argv);
    if (rc) {
        srv_config_free(&cfg);
        return rc > 0 ? 0 : 2;
    }
    if (cfg.chat_template[0] && eng_chat_format_from_name(cfg.chat_template) == ENG_CHAT_UNKNOWN) {
        fprintf(stderr, "orthoserve: --chat-template (key 'chat_template'): unknown template '%s'\n",
                cfg.chat_template);
        srv_config_free(&cfg);
        return 2;
    }
    srv *s = calloc(1, sizeof *s);
    if (!s) {
        srv_config_free(&cfg);
        return 1;
    }
    s->cfg = &cfg;
    s->log_json = !strcmp(cfg.log_format, "json");
    s->log_level = !strcmp(cfg.log_level, "error") ? SRV_LOG_ERROR : !strcmp(cfg.log_level, "warn") ? SRV_LOG_WARN
                   : !strcmp(cfg.log_level, "debug") ? SRV_LOG_DEBUG : SRV_LOG_INFO;
    if (cfg.verbose) s->log_level = SRV_LOG_DEBUG;
    /* The engine's messages follow the same level. */
    eng_log_set(log_engine, s, s->log_level >= SRV_LOG_DEBUG ? ENG_LOG_DEBUG : (eng_log_level)s->log_level);
    s->loop = uv_default_loop();
    s->created = (double)time(NULL);
    s->state = SRV_LOADING;
    char *dup = strdup(cfg.model);
    snprintf(s->model_file, sizeof s->model_file, "%s", dup ? basename(dup) : cfg.model);
    free(dup);
    snprintf(s->model_id, sizeof s->model_id, "%s", cfg.alias[0] ? cfg.alias : s->model_file);

    s->mx = metrics_new();
    s->m_requests = metrics_add(s->mx, "orthoserve_http_requests_total", "HTTP requests by endpoint and status.",
                                METRIC_COUNTER, "endpoint", "status");
    s->m_prompt_tokens = metrics_add(s->mx, "orthoserve_prompt_tokens_total", "Prompt tokens processed.",
                                     METRIC_COUNTER, NULL, NULL);
    s->m_gen_tokens = metrics_add(s->mx, "orthoserve_generated_tokens_total", "Tokens generated.", METRIC_COUNTER,
                                  NULL, NULL);
    s->m_cancelled = metrics_add(s->mx, "orthoserve_requests_cancelled_total",
                                 "Generations cancelled, by reason (client_disconnect, timeout, shutdown).",
                                 METRIC_COUNTER, "reason", NULL);
    s->m_running = metrics_add(s->mx, "orthoserve_requests_running", "Requests decoding or prefilling.",
                               METRIC_GAUGE, NULL, NULL);
    s->m_waiting = metrics_add(s->mx, "orthoserve_requests_waiting", "Requests queued for a slot.", METRIC_GAUGE,
                               NULL, NULL);
    s->m_kv_used = metrics_add(s->mx, "orthoserve_kv_tokens_used", "KV cache tokens in use.", METRIC_GAUGE, NULL, NULL);
    s->m_kv_total = metrics_add(s->mx, "orthoserve_kv_tokens_capacity", "KV cache budget in tokens.", METRIC_GAUGE, NULL,
                                NULL);
    s->m_loaded = metrics_add(s->mx, "orthoserve_model_loaded", "1 once the model is loaded.", METRIC_GAUGE, NULL, NULL);
    s->m_connections = metrics_add(s->mx, "orthoserve_http_requests_active", "HTTP requests in progress.",
                                   METRIC_GAUGE, NULL, NULL);
    s->m_or_total = metrics_add(s->mx, "orthoserve_orthorank_token_layers_total",
                                "Token-layers processed, by phase (prefill, decode).", METRIC_COUNTER, "phase", NULL);
    s->m_or_skipped = metrics_add(s->mx, "orthoserve_orthorank_token_layers_skipped_total",
                                  "Token-layers whose update OrthoRank or layer skipping left out, by phase.",
                                  METRIC_COUNTER, "phase", NULL);
    s->m_cached_tokens = metrics_add(s->mx, "orthoserve_prompt_tokens_cached_total",
                                     "Prompt tokens reused from the prefix cache instead of recomputed.",
                                     METRIC_COUNTER, NULL, NULL);
    metric_add(s->m_cached_tokens, NULL, NULL, 0);
    metric_add(s->m_or_total, "prefill", NULL, 0);
    metric_add(s->m_or_total, "decode", NULL, 0);
    metric_add(s->m_or_skipped, "prefill", NULL, 0);
    metric_add(s->m_or_skipped, "decode", NULL, 0);
    metric_add(s->m_cancelled, "client_disconnect", NULL, 0);
    metric_add(s->m_cancelled, "timeout", NULL, 0);
    metric_add(s->m_cancelled, "shutdown", NULL, 0);
    metrics_register(s);

    bridge_init(&s->br, s->loop, api_on_event, s);
    uv_timer_init(s->loop, &s->sweep_timer);
    uv_timer_init(s->loop, &s->drain_timer);
    uv_timer_init(s->loop, &s->final_timer);
    uv_timer_init(s->loop, &s->stats_timer);
    s->sweep_timer.data = s->drain_timer.data = s->final_timer.data = s->stats_timer.data = s;
    uv_signal_init(s->loop, &s->sig_int);
    uv_signal_init(s->loop, &s->sig_term);
    s->sig_int.data = s->sig_term.data = s;
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    install_sigbus(s);
    raise_fd_limit(s);

    if (http_start(s)) {
        s->exit_code = 1;
        uv_walk(s->loop, close_walk, NULL);
        uv_run(s->loop, UV_RUN_DEFAULT);
        goto out;
    }
    srv_log(s, "listening on http://%s:%d (model %s loading)", strchr(cfg.host, ':') ? "[::]" : cfg.host, s->port,
            s->model_id);
    uv_timer_start(&s->sweep_timer, on_sweep, 250, 250);
    s->load_work.data = s;
    uv_queue_work(s->loop, &s->load_work, load_work, load_done);

    uv_run(s->loop, UV_RUN_DEFAULT);
    if (s->exit_code == 0) srv_log(s, "stopped");
out:
    rc = s->exit_code;
    if (s->sched) eng_sched_free(s->sched);
    eng_model_free(s->model);
    metrics_free(s->mx);
    uv_loop_close(s->loop);
    eng_log_set(NULL, NULL, ENG_LOG_ERROR);
    free(s);
    srv_config_free(&cfg);
    return rc;
}
