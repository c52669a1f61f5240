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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void srv_log(srv *s, const char *fmt, ...)
{
    (void)s;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "orthoserve: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static void log_engine(eng_log_level lvl, const char *msg, void *user)
{
    (void)user;
    static const char *names[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "orthoserve: engine %s: %s\n", names[lvl], msg);
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
    srv_log(s, "drain timeout: cancelling %zu request(s)", s->n_jobs);
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
    jobs_sweep(s, now_mono());
}

/* ------------------------------------------------------------------------ */
/* Model loading on a worker thread                                         */
/* ------------------------------------------------------------------------ */

static void load_work(uv_work_t *w)
{
    srv *s = w->data;
    eng_model_params mp = eng_model_default_params();
    mp.n_threads = (int32_t)s->cfg->threads;
    eng_status st = eng_model_load(s->cfg->model, &mp, &s->model, s->load_err, sizeof s->load_err);
    if (st != ENG_OK && !s->load_err[0]) snprintf(s->load_err, sizeof s->load_err, "%s", eng_strerror(st));
    if (st != ENG_OK) return;
    /* The OrthoRank plan: the configured file (an error if it is bad or
     * missing), else MODEL.orthorank.json beside the model when present,
     * else the engine's documented fallback order. */
    char err[512] = "";
    int rc;
    if (s->cfg->or_plan[0]) {
        rc = plan_load(s->cfg->or_plan, s->model, err, sizeof err);
        if (rc == 0) snprintf(s->plan_file, sizeof s->plan_file, "%s", s->cfg->or_plan);
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
        srv_log(s, "cannot load model %s: %s", s->cfg->model, s->load_err);
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
        srv_log(s, "cannot start the scheduler: %s", eng_strerror(st));
        s->exit_code = 1;
        finish(s);
        return;
    }
    s->state = SRV_READY;
    srv_log(s, "model %s loaded: %s, %d layers, context %d, %ld slots, chat template %s, kernels %s", s->model_id,
            s->info.arch, s->info.n_layer, s->n_ctx, s->cfg->parallel, eng_chat_format_name(s->chat_fmt),
            eng_kernel_name());
    if (s->stop_requested) srv_shutdown(s);
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
    if (cfg.verbose) eng_log_set(log_engine, NULL, ENG_LOG_DEBUG);
    else eng_log_set(log_engine, NULL, ENG_LOG_WARN);

    srv *s = calloc(1, sizeof *s);
    if (!s) return 1;
    s->cfg = &cfg;
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
    s->m_kv_total = metrics_add(s->mx, "orthoserve_kv_tokens_total", "KV cache budget in tokens.", METRIC_GAUGE, NULL,
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

    bridge_init(&s->br, s->loop, api_on_event, s);
    uv_timer_init(s->loop, &s->sweep_timer);
    uv_timer_init(s->loop, &s->drain_timer);
    uv_timer_init(s->loop, &s->final_timer);
    s->sweep_timer.data = s->drain_timer.data = s->final_timer.data = s;
    uv_signal_init(s->loop, &s->sig_int);
    uv_signal_init(s->loop, &s->sig_term);
    s->sig_int.data = s->sig_term.data = s;
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    signal(SIGPIPE, SIG_IGN);

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
    free(s);
    srv_config_free(&cfg);
    return rc;
}
