/*
 * server.h - the server's state (struct srv): the parts it is made of
 * (HTTP layer, bridge, log, metrics), the served model, the live
 * generations and the lifecycle (serve.c). Functions live with their
 * modules: http.h, job.h, stream.h, reply.h, srv_metrics.h, log.h, the
 * handlers in api_openai.h, api_ops.h and orthorank_json.h, the route table
 * in routes.h.
 *
 * DESIGN: everything here belongs to the libuv loop thread: the MHD daemon
 * (driven by MHD_run from a uv_poll_t on its epoll fd and a uv_timer_t),
 * every connection (hreq), every generation (job), all JSON and the metrics
 * registry. The engine's scheduler thread only ever touches the bridge
 * (bridge.c). The model is loaded on a libuv worker thread while the server
 * already answers /health with 503.
 */
#ifndef ORTHOSERVE_SERVER_H
#define ORTHOSERVE_SERVER_H

#include "bridge.h"
#include "chat_tmpl.h"
#include "config.h"
#include "grammar_cache.h"
#include "http.h"
#include "log.h"
#include "resp_store.h"
#include "srv_metrics.h"
#include "orthoserve/engine.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct job job;

typedef enum { SRV_LOADING, SRV_READY, SRV_DRAINING, SRV_STOPPING } srv_state;

struct srv {
    srv_config *cfg;
    uv_loop_t *loop;
    http_server http;
    bridge br;
    logger log;
    srv_metrics mx;
    uv_timer_t sweep_timer, drain_timer, final_timer, stats_timer;
    uv_signal_t sig_int, sig_term;
    uv_work_t load_work;

    /* The model: written by the loader (worker thread, then its after-work
     * callback on the loop) before the state turns SRV_READY. */
    eng_model *model;
    eng_sched *sched;
    const eng_vocab *vocab;
    grammar_cache *gcache;  /* structured output: compiled grammars (thread-safe) */
    eng_model_info info;
    int32_t n_ctx;
    eng_chat_format chat_fmt;
    chat_tmpl *tmpl;      /* the Jinja template in use, or NULL (chat_fmt renders) */
    const char *tmpl_origin; /* "tokenizer.chat_template" or the template file */
    char model_id[256];
    char model_file[256]; /* base name of the file */
    char load_err[512];
    char plan_file[512];  /* the OrthoRank plan in use, or "" (fallback) */
    double created;       /* unix time the server started */

    srv_state state;
    bool load_done;
    job *jobs;            /* live generations (doubly linked; job.c) */
    size_t n_jobs;
    uint64_t rng;         /* xorshift64 state: response ids and seeds (job.c), never 0 */
    uint64_t cache_secret[2]; /* random: the key of api_cache_scope (request.h) */
    resp_store *store;    /* stored responses (api_responses.c); NULL when store_responses is off */
    int exit_code;
};

#endif
