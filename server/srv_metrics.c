/*
 * srv_metrics.c - the server's metric families in one table, and every
 * observation of them (what "a request finished" or "a token arrived"
 * means in counters and histograms). Names, help texts and labels are the
 * public contract of docs/METRICS.md and tests/e2e/test_metrics.py.
 */
#include "srv_metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
#define AT(f) offsetof(srv_metrics, f)

/* One family. The exposition lists families in this order. */
typedef struct {
    size_t at;                  /* its handle in srv_metrics */
    const char *name, *help;
    metric_type type;
    const char *labels[METRIC_MAX_LABELS]; /* histograms: at most one */
    bool per_model;             /* carries the constant label model="<id>" */
    const double *bounds;       /* histograms */
    size_t n_bounds;
    const char *init[4];        /* label values whose series exist (at 0) from the start */
} family;

static const family FAMILIES[] = {
    {AT(requests), "orthoserve_http_requests_total", "HTTP requests by endpoint and status.", METRIC_COUNTER,
     {"endpoint", "status"}, false, NULL, 0, {NULL}},
    {AT(prompt_tokens), "orthoserve_prompt_tokens_total", "Prompt tokens processed.", METRIC_COUNTER, {NULL}, true,
     NULL, 0, {NULL}},
    {AT(gen_tokens), "orthoserve_generated_tokens_total", "Tokens generated.", METRIC_COUNTER, {NULL}, true, NULL, 0,
     {NULL}},
    {AT(cancelled), "orthoserve_requests_cancelled_total",
     "Generations cancelled, by reason (client_disconnect, timeout, shutdown).", METRIC_COUNTER, {"reason"}, false,
     NULL, 0, {"client_disconnect", "timeout", "shutdown"}},
    {AT(running), "orthoserve_requests_running", "Requests decoding or prefilling.", METRIC_GAUGE, {NULL}, false,
     NULL, 0, {NULL}},
    {AT(waiting), "orthoserve_requests_waiting", "Requests queued for a slot.", METRIC_GAUGE, {NULL}, false, NULL, 0,
     {NULL}},
    {AT(kv_used), "orthoserve_kv_tokens_used", "KV cache tokens in use.", METRIC_GAUGE, {NULL}, false, NULL, 0,
     {NULL}},
    {AT(kv_total), "orthoserve_kv_tokens_capacity", "KV cache budget in tokens.", METRIC_GAUGE, {NULL}, false, NULL,
     0, {NULL}},
    {AT(loaded), "orthoserve_model_loaded", "1 once the model is loaded.", METRIC_GAUGE, {NULL}, false, NULL, 0,
     {NULL}},
    {AT(active), "orthoserve_http_requests_active", "HTTP requests in progress.", METRIC_GAUGE, {NULL}, false, NULL,
     0, {NULL}},
    {AT(or_total), "orthoserve_orthorank_token_layers_total", "Token-layers processed, by phase (prefill, decode).",
     METRIC_COUNTER, {"phase"}, true, NULL, 0, {"prefill", "decode"}},
    {AT(or_skipped), "orthoserve_orthorank_token_layers_skipped_total",
     "Token-layers whose update OrthoRank or layer skipping left out, by phase.", METRIC_COUNTER, {"phase"}, true,
     NULL, 0, {"prefill", "decode"}},
    {AT(cached_tokens), "orthoserve_prompt_tokens_cached_total",
     "Prompt tokens reused from the prefix cache instead of recomputed.", METRIC_COUNTER, {NULL}, true, NULL, 0,
     {NULL}},
    {AT(finished), "orthoserve_requests_finished_total",
     "Generation requests finished, by finish reason (stop, length, cancelled, error).", METRIC_COUNTER,
     {"finish_reason"}, true, NULL, 0, {"stop", "length", "cancelled", "error"}},
    {AT(kv_cached), "orthoserve_kv_tokens_cached", "KV cache tokens kept for prefix reuse.", METRIC_GAUGE, {NULL},
     false, NULL, 0, {NULL}},
    {AT(kv_ratio), "orthoserve_kv_cache_usage_ratio",
     "KV cache tokens in use by running requests over the budget (0 to 1).", METRIC_GAUGE, {NULL}, false, NULL, 0,
     {NULL}},
    {AT(kv_bpt), "orthoserve_kv_cache_bytes_per_token",
     "KV cache bytes one token takes over all layers, by element type of K and V (f32, f16, q8_0).", METRIC_GAUGE,
     {"type_k", "type_v"}, false, NULL, 0, {NULL}},
    {AT(kv_bytes_used), "orthoserve_kv_cache_bytes_used", "KV cache bytes held by running requests.", METRIC_GAUGE,
     {NULL}, false, NULL, 0, {NULL}},
    {AT(kv_bytes_cap), "orthoserve_kv_cache_bytes_capacity", "KV cache bytes allocated (the budget in tokens "
     "times the bytes per token).", METRIC_GAUGE, {NULL}, false, NULL, 0, {NULL}},
    {AT(batch_tokens), "orthoserve_batch_tokens", "Tokens in the last scheduler step's batch.", METRIC_GAUGE, {NULL},
     false, NULL, 0, {NULL}},
    {AT(steps), "orthoserve_scheduler_steps_total", "Scheduler steps (forward passes) run.", METRIC_COUNTER, {NULL},
     false, NULL, 0, {NULL}},
    {AT(build_info), "orthoserve_build_info", "Build information; the value is 1.", METRIC_GAUGE,
     {"version", "kernels"}, false, NULL, 0, {NULL}},
    {AT(model_info), "orthoserve_model_info",
     "The loaded model: architecture, dominant weight type, layers, context per sequence, OrthoRank plan source; "
     "the value is 1.",
     METRIC_GAUGE, {"model", "architecture", "type", "n_layer", "n_ctx", "orthorank_plan"}, false, NULL, 0, {NULL}},
    {AT(ttft), "orthoserve_time_to_first_token_seconds",
     "Seconds from a request's arrival to its first generated token.", METRIC_HISTOGRAM, {NULL}, true, B_TTFT,
     NB(B_TTFT), {NULL}},
    {AT(itl), "orthoserve_inter_token_latency_seconds", "Seconds between consecutive generated tokens of a request.",
     METRIC_HISTOGRAM, {NULL}, true, B_ITL, NB(B_ITL), {NULL}},
    {AT(tpot), "orthoserve_time_per_output_token_seconds",
     "Per request: seconds from the first to the last token over the tokens after the first (requests with 2 or "
     "more tokens).",
     METRIC_HISTOGRAM, {NULL}, true, B_ITL, NB(B_ITL), {NULL}},
    {AT(e2e), "orthoserve_e2e_request_latency_seconds", "Seconds from a generation request's arrival to its end.",
     METRIC_HISTOGRAM, {NULL}, true, B_E2E, NB(B_E2E), {NULL}},
    {AT(queue), "orthoserve_request_queue_time_seconds", "Seconds a generation request waited for a scheduler slot.",
     METRIC_HISTOGRAM, {NULL}, true, B_QUEUE, NB(B_QUEUE), {NULL}},
    {AT(prompt_len), "orthoserve_request_prompt_tokens", "Prompt tokens per generation request.", METRIC_HISTOGRAM,
     {NULL}, true, B_TOKENS, NB(B_TOKENS), {NULL}},
    {AT(gen_len), "orthoserve_request_generation_tokens", "Generated tokens per generation request.",
     METRIC_HISTOGRAM, {NULL}, true, B_TOKENS, NB(B_TOKENS), {NULL}},
    {AT(sparsity), "orthoserve_request_orthorank_sparsity_effective",
     "Per request: token-layers skipped over token-layers processed (0 = dense).", METRIC_HISTOGRAM, {NULL}, true,
     B_SPARSITY, NB(B_SPARSITY), {NULL}},
    {AT(step), "orthoserve_step_duration_seconds",
     "Scheduler step duration, sampled: the mean step time of each 100 ms window the scheduler was busy "
     "throughout, counted once per step of the window.",
     METRIC_HISTOGRAM, {NULL}, true, B_STEP, NB(B_STEP), {NULL}},
};

static metric *register_family(metrics *reg, const family *f, const char *model_id)
{
    size_t n = 0;
    while (n < METRIC_MAX_LABELS && f->labels[n]) n++;
    metric *h = f->type == METRIC_HISTOGRAM
                    ? metrics_add_histogram(reg, f->name, f->help, f->labels[0], f->bounds, f->n_bounds)
                    : metrics_add_labels(reg, f->name, f->help, f->type, f->labels, n);
    if (!h) return NULL;
    if (f->per_model) metric_const_label(h, "model", model_id);
    for (size_t i = 0; i < NB(f->init) && f->init[i]; i++) metric_add(h, f->init[i], NULL, 0);
    return h;
}

int srv_metrics_init(srv_metrics *m, const char *model_id)
{
    memset(m, 0, sizeof *m);
    if (!(m->reg = metrics_new())) return -1;
    int rc = 0;
    for (size_t i = 0; i < NB(FAMILIES); i++) {
        metric *h = register_family(m->reg, &FAMILIES[i], model_id);
        if (!h) rc = -1;
        *(metric **)((char *)m + FAMILIES[i].at) = h;
    }
    metric_set(m->build_info, ORTHOSERVE_VERSION, eng_kernel_name(), 1);
    return rc;
}

void srv_metrics_free(srv_metrics *m)
{
    metrics_free(m->reg);
    memset(m, 0, sizeof *m);
}

void srv_metrics_request(srv_metrics *m, const char *endpoint, int status)
{
    char st[16];
    snprintf(st, sizeof st, "%d", status);
    metric_add(m->requests, endpoint ? endpoint : "other", st, 1);
}

void srv_metrics_first_token(srv_metrics *m, double seconds) { metric_observe(m->ttft, NULL, seconds); }
void srv_metrics_next_token(srv_metrics *m, double seconds) { metric_observe(m->itl, NULL, seconds); }

void srv_metrics_generation(srv_metrics *m, const srv_metrics_gen *g)
{
    if (g->orthorank) {
        metric_add(m->or_total, "prefill", NULL, (double)g->orthorank->prefill_total);
        metric_add(m->or_total, "decode", NULL, (double)g->orthorank->decode_total);
        metric_add(m->or_skipped, "prefill", NULL, (double)g->orthorank->prefill_skipped);
        metric_add(m->or_skipped, "decode", NULL, (double)g->orthorank->decode_skipped);
    }
    metric_add(m->prompt_tokens, NULL, NULL, g->n_prompt);
    metric_add(m->cached_tokens, NULL, NULL, g->n_cached);
    metric_add(m->gen_tokens, NULL, NULL, g->n_gen);
    if (!strcmp(g->finish, "cancelled")) metric_add(m->cancelled, g->cancel_reason, NULL, 1);
    metric_add(m->finished, g->finish, NULL, 1);
    metric_observe(m->e2e, NULL, g->e2e);
    metric_observe(m->queue, NULL, g->queue);
    metric_observe(m->prompt_len, NULL, g->n_prompt);
    metric_observe(m->gen_len, NULL, g->n_gen);
    if (g->sparsity >= 0) metric_observe(m->sparsity, NULL, g->sparsity);
    if (g->tpot >= 0) metric_observe(m->tpot, NULL, g->tpot);
}

void srv_metrics_model(srv_metrics *m, const char *model_id, const eng_model_info *info, int32_t n_ctx,
                       const char *plan_source)
{
    char nl[16], nc[16];
    snprintf(nl, sizeof nl, "%d", info->n_layer);
    snprintf(nc, sizeof nc, "%d", n_ctx);
    const char *v[] = {model_id, info->arch ? info->arch : "", info->file_type ? info->file_type : "", nl, nc,
                       plan_source ? plan_source : "fallback"};
    metric_setv(m->model_info, v, 1);
}

void srv_metrics_kv(srv_metrics *m, eng_kv_type type_k, eng_kv_type type_v, size_t bytes_per_token)
{
    m->kv_bytes_per_token = (double)bytes_per_token;
    metric_set(m->kv_bpt, eng_kv_type_name(type_k), eng_kv_type_name(type_v), (double)bytes_per_token);
}

void srv_metrics_refresh(srv_metrics *m, eng_sched *sched, size_t active_requests)
{
    metric_set(m->loaded, NULL, NULL, sched ? 1 : 0);
    metric_set(m->active, NULL, NULL, (double)active_requests);
    if (!sched) return;
    eng_sched_stats st;
    eng_sched_get_stats(sched, &st);
    metric_set(m->running, NULL, NULL, st.running);
    metric_set(m->waiting, NULL, NULL, st.waiting);
    metric_set(m->kv_used, NULL, NULL, st.kv_used);
    metric_set(m->kv_total, NULL, NULL, st.kv_total);
    metric_set(m->kv_cached, NULL, NULL, st.kv_cached);
    metric_set(m->kv_ratio, NULL, NULL, st.kv_total > 0 ? (double)st.kv_used / st.kv_total : 0);
    metric_set(m->kv_bytes_used, NULL, NULL, st.kv_used * m->kv_bytes_per_token);
    metric_set(m->kv_bytes_cap, NULL, NULL, st.kv_total * m->kv_bytes_per_token);
    metric_set(m->batch_tokens, NULL, NULL, st.last_batch_tokens);
    metric_set(m->steps, NULL, NULL, (double)st.steps);
}

/* The engine reports steps, not their times. A window in which requests
 * were running at both ends is one in which the scheduler stepped back to
 * back, so its time over its steps is the mean step time; idle or partly
 * idle windows are not counted. */
void srv_metrics_sample_steps(srv_metrics *m, eng_sched *sched, double now)
{
    if (!sched) return;
    eng_sched_stats st;
    eng_sched_get_stats(sched, &st);
    bool busy = st.running > 0;
    if (m->sample_t > 0 && m->sample_busy && busy && st.steps > m->sample_steps)
        metric_observe_n(m->step, NULL, (now - m->sample_t) / (double)(st.steps - m->sample_steps),
                         st.steps - m->sample_steps);
    m->sample_steps = st.steps;
    m->sample_t = now;
    m->sample_busy = busy;
}

char *srv_metrics_render(srv_metrics *m, size_t *len) { return m->reg ? metrics_render(m->reg, len) : NULL; }
