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
#include "api_openai.h"
#include "http.h"
#include "job.h"
#include "log.h"
#include "plan.h"
#include "routes.h"
#include "server.h"
#include "srv_metrics.h"

#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Timers, signals and the drain                                            */
/* ------------------------------------------------------------------------ */

/* The step-duration histogram's sampler (every 100 ms once loaded). */
static void on_stats(uv_timer_t *t)
{
    srv *s = t->data;
    srv_metrics_sample_steps(&s->mx, s->sched, now_mono());
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* The last step: stop HTTP and close every handle so uv_run returns. */
static void finish(srv *s)
{
    if (s->state == SRV_STOPPING && !s->http.mhd) return;
    s->state = SRV_STOPPING;
    http_stop(&s->http);
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
    http_run(&s->http);
    uv_timer_start(&s->final_timer, on_final, 200, 0);
}

static void on_drain_timeout(uv_timer_t *t)
{
    srv *s = t->data;
    log_line(&s->log, SRV_LOG_WARN, "drain timeout: cancelling %zu request(s)", s->n_jobs);
    stop_engine(s);
}

/* The bridge's handler: the event goes to its job (api_openai.c); when the
 * last job of a drain has ended, the engine stops. */
static void on_event(const eng_event *ev, void *user)
{
    srv *s = user;
    api_on_event(ev, s);
    if (ev->type == ENG_EVENT_DONE && s->state == SRV_DRAINING && s->n_jobs == 0) stop_engine(s);
}

/* Begin draining (a signal, or one that came while the model loaded). */
static void srv_shutdown(srv *s)
{
    if (s->state == SRV_LOADING) {
        /* Nothing to drain yet, and the loader cannot be interrupted (an
         * open() on a stuck mount or a leased file, a long read): exit now.
         * _exit, not exit: libuv's exit-time cleanup joins its worker
         * threads, the loader among them. stderr is unbuffered. */
        log_line(&s->log, SRV_LOG_INFO, "stopping while the model loads: exiting now");
        _exit(0);
    }
    if (s->state == SRV_DRAINING) {
        log_line(&s->log, SRV_LOG_INFO, "second signal: stopping now");
        stop_engine(s);
        return;
    }
    if (s->state != SRV_READY) return;
    s->state = SRV_DRAINING;
    log_line(&s->log, SRV_LOG_INFO, "draining: %zu request(s) in flight, up to %g s", s->n_jobs, s->cfg->drain_timeout);
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
    log_line(&s->log, SRV_LOG_INFO, "received %s", signum == SIGINT ? "SIGINT" : "SIGTERM");
    srv_shutdown(s);
}

static void on_sweep(uv_timer_t *t)
{
    srv *s = t->data;
    double now = now_mono();
    jobs_sweep(s, now);
    http_sweep(&s->http, now);
}

/* ------------------------------------------------------------------------ */
/* Model loading on a worker thread                                         */
/* ------------------------------------------------------------------------ */

/* One forward pass on the BOS token (token 0 without one): a model whose
 * logits are not finite (NaN weights, a corrupt or hostile file) would fail
 * every request, so it is refused at load with a message saying why. The
 * cost is one decoded token (docs/SECURITY.md, "Model files"). 0 ok, else
 * -1 with err filled. */
static int check_logits(srv *s, char *err, size_t errlen)
{
    eng_context_params cp = eng_context_default_params();
    cp.n_ctx = 1;
    cp.n_seq_max = 1;
    cp.n_batch_max = 1;
    cp.n_threads = (int32_t)s->cfg->threads;
    eng_context *c = NULL;
    eng_status st = eng_context_new(s->model, &cp, &c);
    if (st == ENG_OK) {
        int32_t bos = eng_vocab_bos(eng_model_vocab(s->model)), pos = 0, seq = 0;
        int32_t tok = bos >= 0 ? bos : 0;
        int8_t want = 1;
        eng_batch b = {.n_tokens = 1, .token = &tok, .pos = &pos, .seq = &seq, .logits = &want};
        st = eng_decode(c, &b);
    }
    if (st != ENG_OK) {
        snprintf(err, errlen, "a test forward pass failed: %s", eng_strerror(st));
        eng_context_free(c);
        return -1;
    }
    eng_model_info info;
    eng_model_get_info(s->model, &info);
    const float *lg = eng_get_logits(c, 0);
    int32_t bad = 0;
    for (int32_t i = 0; i < info.n_vocab; i++) bad += !isfinite(lg[i]);
    eng_context_free(c);
    if (!bad) return 0;
    snprintf(err, errlen, "the model's logits are not finite (%d of %d NaN or infinite for one token): its "
             "weights are corrupt", bad, info.n_vocab);
    return -1;
}

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
    double t0 = now_mono();
    if (check_logits(s, s->load_err, sizeof s->load_err)) {
        eng_model_free(s->model);
        s->model = NULL;
        return;
    }
    log_line(&s->log, SRV_LOG_DEBUG, "logits check (one forward pass): %.1f ms", (now_mono() - t0) * 1e3);
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

/* ------------------------------------------------------------------------ */
/* The Jinja chat template: --chat-template-file, else the model's own      */
/* ------------------------------------------------------------------------ */

/* A whole file (NUL-terminated, free()), or NULL. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0;
    if (fseek(f, 0, SEEK_END) == 0) {
        long sz = ftell(f);
        if (sz >= 0 && sz < (64L << 20) && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)sz + 1)))
            n = fread(buf, 1, (size_t)sz, f);
        if (buf && n != (size_t)sz) {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        *len = n;
    }
    return buf;
}

/* With bos_token / eos_token from the vocabulary. A model template that does
 * not parse is logged and the built-in family renders instead. */
static void load_chat_template(srv *s)
{
    const char *src = s->info.chat_template;
    size_t len = src ? strlen(src) : 0;
    char *file = NULL;
    s->tmpl_origin = "tokenizer.chat_template";
    if (s->cfg->chat_template_file[0]) {
        file = read_file(s->cfg->chat_template_file, &len);
        src = file;
        s->tmpl_origin = s->cfg->chat_template_file;
    }
    if (!src) return;
    int32_t bos = eng_vocab_bos(s->vocab), eos = eng_vocab_eos(s->vocab);
    char err[512];
    s->tmpl = chat_tmpl_new(src, len, bos >= 0 ? eng_vocab_text(s->vocab, bos) : NULL,
                            eos >= 0 ? eng_vocab_text(s->vocab, eos) : NULL, err, sizeof err);
    if (!s->tmpl)
        log_line(&s->log, SRV_LOG_WARN, "chat template of %s not usable (%s): using the built-in '%s'",
                 s->tmpl_origin, err, eng_chat_format_name(s->chat_fmt));
    free(file);
}


static void load_done(uv_work_t *w, int status)
{
    srv *s = w->data;
    (void)status;
    s->load_done = true;
    if (!s->model) {
        log_line(&s->log, SRV_LOG_ERROR, "cannot load model %s: %s", s->cfg->model, s->load_err);
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
        if (s->chat_fmt == ENG_CHAT_UNKNOWN && !s->info.chat_template) s->chat_fmt = eng_chat_for_arch(s->info.arch);
        if (s->chat_fmt == ENG_CHAT_UNKNOWN) s->chat_fmt = ENG_CHAT_PLAIN;
        load_chat_template(s);
    }
    eng_sched_params sp = eng_sched_default_params();
    sp.n_ctx = s->cfg->ctx_size > 0 ? (int32_t)s->cfg->ctx_size : s->info.n_ctx_train;
    sp.n_seq_max = (int32_t)s->cfg->parallel;
    sp.n_batch_max = (int32_t)s->cfg->batch_size;
    sp.n_kv_tokens = (int32_t)s->cfg->kv_tokens;
    sp.max_queue = (int32_t)s->cfg->max_queue;
    sp.n_threads = (int32_t)s->cfg->threads;
    eng_kv_type_parse(s->cfg->cache_type_k, &sp.type_k); /* checked with the configuration */
    eng_kv_type_parse(s->cfg->cache_type_v, &sp.type_v);
    s->n_ctx = sp.n_ctx;
    eng_grammar_limits gl = {.max_bytes = (size_t)s->cfg->grammar_max_bytes,
                             .max_rules = (int32_t)s->cfg->grammar_max_rules,
                             .max_elements = (int32_t)s->cfg->grammar_max_elements,
                             .max_stacks = (int32_t)s->cfg->grammar_max_stacks,
                             .max_depth = (int32_t)s->cfg->grammar_max_depth,
                             .max_compile_ms = s->cfg->grammar_max_compile_ms};
    s->gcache = grammar_cache_new(s->vocab, &gl, (size_t)s->cfg->grammar_cache);
    eng_status st = s->gcache ? eng_sched_new(s->model, &sp, &s->sched) : ENG_ENOMEM;
    if (st != ENG_OK) {
        log_line(&s->log, SRV_LOG_ERROR, "cannot start the scheduler: %s", eng_strerror(st));
        s->exit_code = 1;
        finish(s);
        return;
    }
    s->state = SRV_READY;
    eng_orthorank_plan plan;
    eng_model_get_orthorank_plan(s->model, &plan);
    srv_metrics_model(&s->mx, s->model_id, &s->info, s->n_ctx, plan.source);
    const size_t kv_bpt = eng_kv_bytes_per_token(s->model, sp.type_k, sp.type_v);
    eng_sched_stats kst;
    eng_sched_get_stats(s->sched, &kst);
    const int64_t kv_budget = kst.kv_total; /* tokens, in whole blocks */
    srv_metrics_kv(&s->mx, sp.type_k, sp.type_v, kv_bpt);
    uv_timer_start(&s->stats_timer, on_stats, 100, 100);
    log_line(&s->log, SRV_LOG_INFO, "model %s loaded: %s, %d layers, context %d, %ld slots, chat template %s, kernels %s", s->model_id,
            s->info.arch, s->info.n_layer, s->n_ctx, s->cfg->parallel,
            s->tmpl ? s->tmpl_origin : eng_chat_format_name(s->chat_fmt),
            eng_kernel_name());
    log_line(&s->log, SRV_LOG_INFO, "KV cache: K %s, V %s, kv_tokens %lld x %zu bytes per token = %.1f MiB",
             eng_kv_type_name(sp.type_k), eng_kv_type_name(sp.type_v), (long long)kv_budget, kv_bpt,
             (double)kv_budget * (double)kv_bpt / 1048576.0);
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
    bus_changed_n = log_fatal_line(&s->log, bus_changed, sizeof bus_changed, msg, EXIT_SIGBUS);
    snprintf(msg, sizeof msg,
             "SIGBUS (bus error) while the model file %s is memory-mapped: it may have been truncated and "
             "restored, or its storage failed; exiting with status %d", bus_path, EXIT_SIGBUS);
    bus_other_n = log_fatal_line(&s->log, bus_other, sizeof bus_other, msg, EXIT_SIGBUS);
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
            log_line(&s->log, SRV_LOG_DEBUG, "open-file limit raised from %llu to %llu", (unsigned long long)was,
                     (unsigned long long)rl.rlim_cur);
        else getrlimit(RLIMIT_NOFILE, &rl);
    }
    /* The model, the loop, MHD, the log and the pool need a few dozen more. */
    rlim_t need = (rlim_t)s->cfg->max_connections + 64;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need)
        log_line(&s->log, SRV_LOG_WARN,
                 "the open-file limit (%llu) is below max_connections (%ld) + 64: connections beyond it "
                 "will fail; raise it (ulimit -n, or LimitNOFILE= in systemd) or lower max_connections",
                 (unsigned long long)rl.rlim_cur, s->cfg->max_connections);
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                              */
/* ------------------------------------------------------------------------ */

/* Entry point                                                              */
/* ------------------------------------------------------------------------ */

/* The seed of s->rng (response ids, sampling seeds): never 0. */
static uint64_t random_seed(void)
{
    uint64_t x = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&x, sizeof x, 1, f) != 1) x = (uint64_t)time(NULL) * 2654435761u;
    if (f) fclose(f);
    return x | 1;
}

/* Everything before the loop runs: names, log, metrics, bridge, timers,
 * signals, and the HTTP layer's settings (http_start listens). */
static void srv_init(srv *s, srv_config *cfg)
{
    s->cfg = cfg;
    log_init(&s->log, cfg);
    s->loop = uv_default_loop();
    s->created = (double)time(NULL);
    s->state = SRV_LOADING;
    s->rng = random_seed();
    s->cache_secret[0] = random_seed();
    s->cache_secret[1] = random_seed();
    if (cfg->store_responses) /* opened on first use (resp_store.h); NULL: stored requests get 500 */
        s->store = resp_store_new(cfg->state_dir, cfg->max_stored_responses, cfg->stored_response_ttl);
    char *dup = strdup(cfg->model);
    snprintf(s->model_file, sizeof s->model_file, "%s", dup ? basename(dup) : cfg->model);
    free(dup);
    snprintf(s->model_id, sizeof s->model_id, "%s", cfg->alias[0] ? cfg->alias : s->model_file);
    /* Out of memory here leaves some metric handles NULL, which every
     * metric call accepts: the server runs without them. */
    srv_metrics_init(&s->mx, s->model_id);

    bridge_init(&s->br, s->loop, on_event, s);
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
    s->http = (http_server){.cfg = cfg, .loop = s->loop, .routes = server_routes, .n_routes = server_n_routes,
                            .app = s, .log = &s->log, .mx = &s->mx};
}

/* Whether API keys are required, said once at start (an operator should
 * not have to infer it from a 401). */
static void log_auth(srv *s)
{
    const srv_config *c = s->cfg;
    if (!c->api_keys.n) {
        log_line(&s->log, SRV_LOG_INFO, "authentication: off (no api_keys or api_keys_file)");
        return;
    }
    char paths[512] = "";
    size_t k = 0;
    for (size_t i = 0; i < c->public_paths.n && k < sizeof paths; i++)
        k += (size_t)snprintf(paths + k, sizeof paths - k, "%s%s", i ? " " : "", c->public_paths.v[i]);
    log_line(&s->log, SRV_LOG_INFO, "authentication: on (%zu key%s); without a key: %s", c->api_keys.n,
             c->api_keys.n == 1 ? "" : "s", c->public_paths.n ? paths : "nothing");
}

/* Listen, load the model on a worker, and run the loop until the drain
 * (or a failure) closes every handle. */
static void srv_run(srv *s)
{
    if (http_start(&s->http)) {
        s->exit_code = 1;
        uv_walk(s->loop, close_walk, NULL);
        uv_run(s->loop, UV_RUN_DEFAULT);
        return;
    }
    log_line(&s->log, SRV_LOG_INFO, "listening on http://%s:%d (model %s loading)",
             strchr(s->cfg->host, ':') ? "[::]" : s->cfg->host, s->http.port, s->model_id);
    log_auth(s);
    uv_timer_start(&s->sweep_timer, on_sweep, 250, 250);
    s->load_work.data = s;
    uv_queue_work(s->loop, &s->load_work, load_work, load_done);
    uv_run(s->loop, UV_RUN_DEFAULT);
    if (s->exit_code == 0) log_line(&s->log, SRV_LOG_INFO, "stopped");
}

/* --chat-template-file readable and parsing, before anything starts. */
static int check_template_file(const char *path)
{
    size_t len = 0;
    char *src = read_file(path, &len), err[512];
    if (!src) {
        fprintf(stderr, "orthoserve: --chat-template-file: cannot read %s\n", path);
        return -1;
    }
    chat_tmpl *t = chat_tmpl_new(src, len, NULL, NULL, err, sizeof err);
    free(src);
    if (!t) fprintf(stderr, "orthoserve: --chat-template-file %s: %s\n", path, err);
    chat_tmpl_free(t);
    return t ? 0 : -1;
}

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
    if (cfg.chat_template_file[0] && check_template_file(cfg.chat_template_file)) {
        srv_config_free(&cfg);
        return 2;
    }
    if (cfg.pooling[0] && eng_pooling_from_name(cfg.pooling) == ENG_POOLING_NONE) {
        fprintf(stderr, "orthoserve: --pooling (key 'pooling'): '%s' is not one of mean, cls, last\n", cfg.pooling);
        srv_config_free(&cfg);
        return 2;
    }
    char kerr[512] = ""; /* ORTHOSERVE_ISA: refused before listening, as a model load would */
    if (eng_kernels_check(kerr, sizeof kerr) != ENG_OK) {
        fprintf(stderr, "orthoserve: %s\n", kerr);
        srv_config_free(&cfg);
        return 2;
    }
    srv *s = calloc(1, sizeof *s);
    if (!s) {
        srv_config_free(&cfg);
        return 1;
    }
    srv_init(s, &cfg);
    srv_run(s);
    rc = s->exit_code;
    if (s->sched) eng_sched_free(s->sched);
    grammar_cache_free(s->gcache);
    eng_model_free(s->model);
    chat_tmpl_free(s->tmpl);
    srv_metrics_free(&s->mx);
    resp_store_free(s->store);
    uv_loop_close(s->loop);
    log_shutdown();
    free(s);
    srv_config_free(&cfg);
    return rc;
}
