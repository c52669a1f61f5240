/*
 * srv_metrics.h - the server's metrics (docs/METRICS.md): every family the
 * server exports, registered in one table, and the observations the rest
 * of the server reports (a request finished, a token arrived, a generation
 * ended, the scheduler's state at a scrape). metrics.c is the generic
 * Prometheus registry underneath. Loop thread only.
 *
 * Adding a metric: a handle below, a row in srv_metrics.c's FAMILIES, and
 * the observation (here, or in an existing observation function).
 */
#ifndef ORTHOSERVE_SRV_METRICS_H
#define ORTHOSERVE_SRV_METRICS_H

#include "metrics.h"
#include "orthoserve/engine.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    metrics *reg;
    /* Counters and gauges (names in srv_metrics.c's FAMILIES). */
    metric *requests, *prompt_tokens, *gen_tokens, *cancelled, *running, *waiting, *kv_used, *kv_total, *loaded,
        *active, *or_total, *or_skipped, *cached_tokens, *finished, *kv_cached, *kv_ratio, *batch_tokens, *steps,
        *build_info, *model_info;
    /* The KV cache's memory (srv_metrics_kv): bytes per token (labels type_k, type_v), in use, capacity. */
    metric *kv_bpt, *kv_bytes_used, *kv_bytes_cap;
    double kv_bytes_per_token;
    /* Histograms. */
    metric *ttft, *itl, *tpot, *e2e, *queue, *prompt_len, *gen_len, *sparsity, *step;
    /* The step-duration sampler (srv_metrics_sample_steps): its last sample. */
    uint64_t sample_steps; /* scheduler steps */
    double sample_t;       /* monotonic seconds; 0: none yet */
    bool sample_busy;      /* requests were running */
} srv_metrics;

/* Register every family (model_id: the constant "model" label). 0, or -1
 * when memory ran out (then free with srv_metrics_free all the same). */
int srv_metrics_init(srv_metrics *m, const char *model_id);
void srv_metrics_free(srv_metrics *m);

/* An HTTP request ended (endpoint: the route's label, or "other"). */
void srv_metrics_request(srv_metrics *m, const char *endpoint, int status);
/* A generated token reached the loop: the first one's time since the
 * request's arrival, or the time since the previous token. */
void srv_metrics_first_token(srv_metrics *m, double seconds);
void srv_metrics_next_token(srv_metrics *m, double seconds);

/* A generation ended, whatever its end. */
typedef struct {
    int32_t n_prompt, n_gen, n_cached;
    const char *finish;          /* "stop", "length", "cancelled" or "error" */
    const char *cancel_reason;   /* when cancelled: "client_disconnect", "timeout", "shutdown", ... */
    const eng_orthorank_stats *orthorank; /* NULL: the engine reported none */
    double e2e, queue;           /* seconds: arrival to end; waiting for a slot */
    double tpot;                 /* seconds per token after the first; < 0: fewer than 2 tokens */
    double sparsity;             /* effective OrthoRank sparsity; < 0: nothing was processed */
} srv_metrics_gen;
void srv_metrics_generation(srv_metrics *m, const srv_metrics_gen *g);

/* The loaded model (orthoserve_model_info). */
void srv_metrics_model(srv_metrics *m, const char *model_id, const eng_model_info *info, int32_t n_ctx,
                       const char *plan_source);
/* The KV cache's element types and what one token of it takes (bytes over
 * all layers); the byte gauges follow the token gauges from then on. */
void srv_metrics_kv(srv_metrics *m, eng_kv_type type_k, eng_kv_type type_v, size_t bytes_per_token);
/* The gauges read at a scrape: the scheduler's state (sched NULL: no model
 * yet) and the HTTP requests in progress. */
void srv_metrics_refresh(srv_metrics *m, eng_sched *sched, size_t active_requests);
/* Step duration from the step counter, sampled every 100 ms (now: monotonic seconds). */
void srv_metrics_sample_steps(srv_metrics *m, eng_sched *sched, double now);
/* The exposition text (free with free()), or NULL when memory ran out. */
char *srv_metrics_render(srv_metrics *m, size_t *len);

#endif
