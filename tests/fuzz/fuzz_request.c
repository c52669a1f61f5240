/*
 * fuzz_request - libFuzzer harness for the completion endpoints' request
 * validation (server/request.c): any bytes -> json_loadb with the flags
 * http.c uses -> api_parse_chat and api_parse_completions, each under two
 * server configurations over stories260K (from $ORTHOSERVE_TESTDATA or the
 * compiled-in test data path):
 *
 *   0  the defaults: context 128 (the model's), max_tokens 4096, chat
 *      template detected from the model (none: "plain"), dense OrthoRank;
 *   1  tight: --ctx-size 40 --max-tokens 8 --chat-template llama2 --alias
 *      tiny, OrthoRank layer_skip at sparsity 0.4 by default.
 *
 * The input is the request body itself (seeds: the e2e tests' bodies,
 * tests/fuzz/request_seeds.py; dictionary: fuzz_request.dict). Checked:
 *
 * - a refused body gets status 400 (type invalid_request_error, a known
 *   code) or 404 (model_not_found for a "model" naming another model), a
 *   non-empty message and a param that names the field at fault: its first
 *   component is a top-level key of the body that is present, or absent for
 *   a missing_field error on that key itself;
 * - an accepted body gives a request inside the documented ranges:
 *   1 <= n_prompt, every token id < n_vocab, n_prompt + (max_tokens > 0) <=
 *   n_ctx, max_tokens in [chat ? 1 : 0, the server's max_tokens],
 *   temperature in [0, 2], top_p in (0, 1], min_p in [0, 1], penalties in
 *   [-2, 2], repetition penalty in (0, 100], at most 16 stop strings (valid
 *   UTF-8), logit biases in range, logprobs in [-1, 20], echo text valid
 *   UTF-8, include_usage only with stream, OrthoRank layers distinct;
 * - and, the point: the engine accepts it. eng_sched_validate (what
 *   eng_sched_submit would say, without queueing) returns ENG_OK on the
 *   request as the server submits it (p.orthorank, callback, seed);
 * - the same body gives the same answer twice (no hidden state);
 * - everything is freed (LeakSanitizer).
 */
#include "fuzz.h"
#include "request.h"
#include "textbuf.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


#define N_VARIANTS 2

static eng_model *model;
static srv_config cfg[N_VARIANTS];
static eng_sched *sched[N_VARIANTS];
static api_limits lim[N_VARIANTS];
static char model_file[] = "stories260K.gguf";

static void on_event(const eng_event *ev, void *user)
{
    (void)ev;
    (void)user;
}

static void setup_variant(int v, const char *path)
{
    char *argv0[] = {"serve", "-m", (char *)path, "--threads", "1", NULL};
    char *argv1[] = {"serve",          "-m",           (char *)path,   "--threads",         "1",
                     "--ctx-size",     "40",           "--max-tokens", "8",                 "--chat-template",
                     "llama2",         "--alias",      "tiny",         "--orthorank-sparsity", "0.4",
                     "--orthorank-method", "layer_skip", NULL};
    char **argv = v == 0 ? argv0 : argv1;
    int argc = 0;
    while (argv[argc]) argc++;
    /* The flags alone decide: no ORTHOSERVE_* variable of the caller's. */
    char **env = environ, *no_env[] = {NULL};
    environ = no_env;
    int rc = srv_config_load(&cfg[v], argc, argv);
    environ = env;
    if (rc != 0) {
        fprintf(stderr, "fuzz_request: configuration %d refused\n", v);
        exit(2);
    }
    /* As serve.c's load_done sets up the server. */
    eng_model_info info;
    eng_model_get_info(model, &info);
    eng_chat_format fmt;
    if (cfg[v].chat_template[0]) {
        fmt = eng_chat_format_from_name(cfg[v].chat_template);
    } else {
        fmt = eng_chat_detect(info.chat_template);
        if (fmt == ENG_CHAT_UNKNOWN) fmt = ENG_CHAT_PLAIN;
    }
    eng_sched_params sp = eng_sched_default_params();
    sp.n_ctx = cfg[v].ctx_size > 0 ? (int32_t)cfg[v].ctx_size : info.n_ctx_train;
    sp.n_seq_max = (int32_t)cfg[v].parallel;
    sp.n_batch_max = (int32_t)cfg[v].batch_size;
    sp.n_kv_tokens = (int32_t)cfg[v].kv_tokens;
    sp.max_queue = (int32_t)cfg[v].max_queue;
    sp.n_threads = (int32_t)cfg[v].threads;
    if (eng_sched_new(model, &sp, &sched[v]) != ENG_OK) {
        fprintf(stderr, "fuzz_request: cannot start scheduler %d\n", v);
        exit(2);
    }
    lim[v] = (api_limits){.cfg = &cfg[v], .vocab = eng_model_vocab(model), .chat_fmt = fmt, .n_ctx = sp.n_ctx,
                          .model = model, .model_id = cfg[v].alias[0] ? cfg[v].alias : model_file,
                          .model_file = model_file};
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("ORTHOSERVE_TESTDATA");
    if (!dir || !*dir) dir = ORTHOSERVE_TESTDATA;
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/models/%s", dir, model_file);
    eng_model_params mp = eng_model_default_params();
    mp.n_threads = 1;
    if (eng_model_load(path, &mp, &model, err, sizeof err) != ENG_OK) {
        fprintf(stderr, "fuzz_request: cannot load %s: %s (set ORTHOSERVE_TESTDATA)\n", path, err);
        exit(2);
    }
    for (int v = 0; v < N_VARIANTS; v++) setup_variant(v, path);
    return 0;
}

static bool valid_utf8(const char *s, size_t n) { return utf8_valid_prefix(s, n) == n; }

static bool one_of(const char *s, const char *const *set)
{
    for (; *set; set++)
        if (s && !strcmp(s, *set)) return true;
    return false;
}

/* The body's top-level key that param names ("messages[2].role" -> "messages"). */
static void param_key(const char *param, char *key, size_t cap)
{
    size_t n = strcspn(param, ".[");
    if (n >= cap) n = cap - 1;
    memcpy(key, param, n);
    key[n] = 0;
}

static void check_error(json_t *body, const api_error *e)
{
    static const char *const codes400[] = {"invalid_type",   "invalid_value", "missing_field",
                                           "not_supported", "context_length_exceeded", "invalid_schema", NULL};
    CHECK(e->message[0] && strlen(e->message) < sizeof e->message);
    CHECK(strlen(e->param) < sizeof e->param);
    if (e->status == 404) {
        CHECK(!strcmp(e->type, "not_found_error") && e->code && !strcmp(e->code, "model_not_found"));
        CHECK(!strcmp(e->param, "model"));
        CHECK(json_is_string(json_object_get(body, "model")));
        return;
    }
    CHECK(e->status == 400);
    CHECK(e->type && !strcmp(e->type, "invalid_request_error"));
    CHECK(one_of(e->code, codes400));
    /* Every 400 names its field, and the field is (or, missing, is not) in the body. */
    CHECK(e->param[0]);
    char key[64];
    param_key(e->param, key, sizeof key);
    CHECK(key[0]);
    json_t *x = json_object_get(body, key);
    bool present = x && !json_is_null(x);
    if (!strcmp(e->code, "missing_field") && !strcmp(key, e->param)) CHECK(!present);
    else CHECK(present);
}

static void check_request(int v, bool chat, json_t *body, api_request *q)
{
    const api_limits *l = &lim[v];
    const eng_request_params *p = &q->p;
    int32_t nv = eng_vocab_n_tokens(l->vocab);
    CHECK(q->chat == chat);
    CHECK(!strcmp(q->prompt_param, chat ? "messages" : "prompt"));
    /* The prompt. */
    CHECK(p->n_prompt >= 1 && q->prompt && p->prompt == q->prompt);
    for (size_t i = 0; i < p->n_prompt; i++) CHECK(p->prompt[i] >= 0 && p->prompt[i] < nv);
    CHECK((int64_t)p->n_prompt + (p->max_tokens > 0 ? 1 : 0) <= l->n_ctx);
    /* Limits and sampling. */
    CHECK(p->max_tokens >= (chat ? 1 : 0) && p->max_tokens <= l->cfg->max_tokens);
    CHECK(p->min_tokens >= 0);
    const eng_sampler_params *sp = &p->sampling;
    CHECK(sp->temperature >= 0 && sp->temperature <= 2);
    CHECK(sp->top_p > 0 && sp->top_p <= 1);
    CHECK(sp->min_p >= 0 && sp->min_p <= 1);
    CHECK(sp->top_k >= 0);
    CHECK(sp->presence_penalty >= -2 && sp->presence_penalty <= 2);
    CHECK(sp->frequency_penalty >= -2 && sp->frequency_penalty <= 2);
    CHECK(sp->repeat_penalty > 0 && sp->repeat_penalty <= 100);
    CHECK(sp->repeat_last_n >= -1);
    json_t *lb = json_object_get(body, "logit_bias");
    CHECK(sp->n_logit_bias <= (json_is_object(lb) ? json_object_size(lb) : 0));
    CHECK(sp->n_logit_bias == 0 || sp->logit_bias == q->bias);
    for (size_t i = 0; i < sp->n_logit_bias; i++)
        CHECK(q->bias[i].token >= 0 && q->bias[i].token < nv && q->bias[i].bias >= -100 && q->bias[i].bias <= 100);
    json_t *seed = json_object_get(body, "seed");
    CHECK(q->seeded == (seed && !json_is_null(seed)));
    /* Stops: at most 16 non-NULL valid UTF-8 strings (views into the body). */
    CHECK(q->n_stops <= 16);
    for (size_t i = 0; i < q->n_stops; i++) CHECK(q->stops[i] && valid_utf8(q->stops[i], strlen(q->stops[i])));
    /* Output options. */
    CHECK(p->n_logprobs >= -1 && p->n_logprobs <= ENG_MAX_TOP_LOGPROBS);
    CHECK(!q->include_usage || q->stream);
    CHECK(p->prompt_logprobs == (q->echo && p->n_logprobs >= 0));
    if (q->echo) CHECK(!chat && q->echo_text && valid_utf8(q->echo_text, q->echo_len));
    else CHECK(!q->echo_text);
    CHECK(!p->on_event && !p->user && !p->orthorank);
    /* OrthoRank: the layers are the model's, distinct; the settings pass the engine's check. */
    const eng_orthorank_params *orp = &q->orthorank;
    eng_model_info info;
    eng_model_get_info(model, &info);
    const int32_t n_layer = info.n_layer;
    CHECK(orp->n_layers >= 0 && orp->n_layers <= n_layer);
    for (int32_t i = 0; i < orp->n_layers; i++) {
        CHECK(orp->layers[i] >= 0 && orp->layers[i] < n_layer);
        for (int32_t k = 0; k < i; k++) CHECK(orp->layers[k] != orp->layers[i]);
    }
    CHECK(eng_orthorank_check(model, orp, NULL, NULL, 0) == ENG_OK);

    /* The engine accepts what the server would submit (api_openai.c submit). */
    eng_request_params ep = *p;
    ep.orthorank = orp;
    ep.on_event = on_event;
    if (!q->seeded) ep.sampling.seed = 0x5eed;
    eng_status st = eng_sched_validate(sched[v], &ep);
    if (st != ENG_OK) {
        fprintf(stderr,
                "fuzz_request: config %d %s: the engine refuses an accepted request: %s (n_prompt %zu, "
                "max_tokens %d, temperature %g, top_p %g, min_p %g, repeat_penalty %g, orthorank sparsity %g "
                "token_ratio %g layers %d)\n",
                v, chat ? "chat" : "completions", eng_strerror(st), p->n_prompt, p->max_tokens,
                (double)sp->temperature, (double)sp->top_p, (double)sp->min_p, (double)sp->repeat_penalty,
                orp->sparsity, orp->token_ratio, orp->n_layers);
        CHECK(st == ENG_OK);
    }
    /* The stop strings make a text assembler. */
    textbuf *tb = textbuf_new(q->stops, q->n_stops);
    CHECK(tb);
    textbuf_free(tb);
}

static void run(int v, bool chat, json_t *body)
{
    api_request q, q2;
    api_error e, e2;
    int rc = chat ? api_parse_chat(&lim[v], body, &q, &e) : api_parse_completions(&lim[v], body, &q, &e);
    CHECK(rc == 0 || rc == -1);
    int rc2 = chat ? api_parse_chat(&lim[v], body, &q2, &e2) : api_parse_completions(&lim[v], body, &q2, &e2);
    CHECK(rc2 == rc);
    if (rc) {
        check_error(body, &e);
        CHECK(e2.status == e.status && !strcmp(e2.param, e.param) && !strcmp(e2.message, e.message));
        return;
    }
    check_request(v, chat, body, &q);
    CHECK(q2.p.n_prompt == q.p.n_prompt && !memcmp(q2.prompt, q.prompt, q.p.n_prompt * sizeof *q.prompt));
    CHECK(q2.p.max_tokens == q.p.max_tokens && q2.n_stops == q.n_stops && q2.echo_len == q.echo_len);
    api_request_free(&q);
    api_request_free(&q2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!model) LLVMFuzzerInitialize(NULL, NULL);
    if (size == 0) return 0; /* http.c answers an empty body itself */
    json_error_t je;
    json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    if (!body) return 0;
    if (json_is_object(body)) { /* http.c refuses anything else before the endpoints */
        for (int v = 0; v < N_VARIANTS; v++) {
            run(v, true, body);
            run(v, false, body);
        }
    }
    json_decref(body);
    return 0;
}
