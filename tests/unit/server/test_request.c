/* Criterion tests for server/request.c: request bodies -> engine parameters
 * or errors, on stories260K (no HTTP). The e2e suite test_bad_input.py covers
 * the error replies through the real server; these pin what the parser
 * hands the engine, and the bugs fuzz_request found. */
#include "request.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef ORTHOSERVE_TESTDATA
#define ORTHOSERVE_TESTDATA "../shared/testdata"
#endif

static eng_model *model;
static eng_sched *sched;
static srv_config cfg;
static api_limits lim;

static void on_event(const eng_event *ev, void *user)
{
    (void)ev;
    (void)user;
}

/* The server over stories260K with extra serve flags (NULL-terminated). */
static void setup_with(const char *const *flags)
{
    char *argv[32] = {"serve", "-m", "stories260K.gguf"};
    int argc = 3;
    for (; flags && *flags; flags++) argv[argc++] = (char *)*flags;
    char **env = environ, *no_env[] = {NULL}; /* the flags alone decide */
    environ = no_env;
    int rc = srv_config_load(&cfg, argc, argv);
    environ = env;
    cr_assert_eq(rc, 0);
    char err[256] = "";
    cr_assert_eq(eng_model_load(ORTHOSERVE_TESTDATA "/models/stories260K.gguf", NULL, &model, err, sizeof err), ENG_OK,
                 "%s", err);
    eng_model_info info;
    eng_model_get_info(model, &info);
    eng_sched_params sp = eng_sched_default_params();
    sp.n_ctx = cfg.ctx_size > 0 ? (int32_t)cfg.ctx_size : info.n_ctx_train;
    cr_assert_eq(eng_sched_new(model, &sp, &sched), ENG_OK);
    lim = (api_limits){.cfg = &cfg, .vocab = eng_model_vocab(model), .chat_fmt = ENG_CHAT_PLAIN, .n_ctx = sp.n_ctx,
                       .model = model, .model_id = "stories260K.gguf", .model_file = "stories260K.gguf"};
}

static void setup(void) { setup_with(NULL); }

static void teardown(void)
{
    eng_sched_free(sched);
    eng_model_free(model);
    srv_config_free(&cfg);
}

/* Parse text as one endpoint's body: 0 ok or -1 with *e. */
static int parse(bool chat, const char *text, api_request *q, api_error *e, json_t **body)
{
    json_error_t je;
    *body = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    cr_assert(*body, "bad test JSON: %s", je.text);
    return chat ? api_parse_chat(&lim, *body, q, e) : api_parse_completions(&lim, *body, q, e);
}

/* The engine's answer on q as the server submits it. */
static eng_status engine_says(api_request *q)
{
    eng_request_params p = q->p;
    p.orthorank = &q->orthorank;
    p.on_event = on_event;
    return eng_sched_validate(sched, &p);
}

static void expect_error(bool chat, const char *text, unsigned status, const char *code, const char *param)
{
    api_request q;
    api_error e;
    json_t *body;
    cr_assert_eq(parse(chat, text, &q, &e, &body), -1, "%s accepted", text);
    cr_assert_eq(e.status, status, "%s: status %u", text, e.status);
    cr_assert_str_eq(e.code, code, "%s", text);
    cr_assert_str_eq(e.param, param, "%s", text);
    cr_assert(e.message[0]);
    json_decref(body);
}

Test(request, chat_fields, .init = setup, .fini = teardown, .timeout = 30)
{
    api_request q;
    api_error e;
    json_t *body;
    cr_assert_eq(parse(true,
                       "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\","
                       "\"content\":[{\"type\":\"text\",\"text\":\"Once\"},{\"type\":\"text\",\"text\":\"upon\"}]}],"
                       "\"max_tokens\":5,\"temperature\":0.5,\"stop\":[\"x\",\"yz\"],\"logit_bias\":{\"13\":-100},"
                       "\"logprobs\":true,\"top_logprobs\":2,\"stream\":true,"
                       "\"stream_options\":{\"include_usage\":true},\"seed\":42}",
                       &q, &e, &body),
                 0, "%s", e.message);
    cr_assert(q.chat && q.stream && q.include_usage && q.seeded && !q.echo);
    cr_assert_eq(q.p.max_tokens, 5);
    cr_assert_float_eq(q.p.sampling.temperature, 0.5f, 1e-6);
    cr_assert_eq(q.p.sampling.seed, 42u);
    cr_assert_eq(q.n_stops, 2);
    cr_assert_str_eq(q.stops[1], "yz");
    cr_assert_eq(q.p.sampling.n_logit_bias, 1);
    cr_assert_eq(q.p.sampling.logit_bias[0].token, 13);
    cr_assert_eq(q.p.n_logprobs, 2);
    cr_assert(!q.p.prompt_logprobs);
    cr_assert(q.p.n_prompt > 1 && q.p.prompt[0] == eng_vocab_bos(lim.vocab));
    cr_assert_str_eq(q.prompt_param, "messages");
    cr_assert_eq(engine_says(&q), ENG_OK);
    api_request_free(&q);
    json_decref(body);
}

Test(request, completions_token_ids_and_echo, .init = setup, .fini = teardown, .timeout = 30)
{
    api_request q;
    api_error e;
    json_t *body;
    cr_assert_eq(
        parse(false, "{\"prompt\":[[1,400,300]],\"echo\":true,\"logprobs\":0,\"max_tokens\":0}", &q, &e, &body), 0,
        "%s", e.message);
    cr_assert(!q.chat && q.echo && q.echo_text && !q.seeded);
    cr_assert_eq(q.p.n_prompt, 3);
    cr_assert_eq(q.p.prompt[1], 400);
    cr_assert_eq(q.p.max_tokens, 0);
    cr_assert(q.p.prompt_logprobs && q.p.n_logprobs == 0);
    cr_assert_eq(engine_says(&q), ENG_OK);
    api_request_free(&q);
    json_decref(body);
}

Test(request, errors_name_their_field, .init = setup, .fini = teardown, .timeout = 30)
{
    expect_error(false, "{\"max_tokens\":2}", 400, "missing_field", "prompt");
    expect_error(true, "{\"messages\":[{\"role\":\"user\"}]}", 400, "missing_field", "messages[0].content");
    expect_error(false, "{\"prompt\":\"Hi\",\"model\":\"gpt-4o\"}", 404, "model_not_found", "model");
    expect_error(false, "{\"prompt\":[1,99999]}", 400, "invalid_value", "prompt");
    expect_error(true, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"top_logprobs\":3}", 400,
                 "invalid_value", "top_logprobs");
    /* 128 positions: 200 token ids cannot fit. */
    char big[2048] = "{\"prompt\":[1";
    for (int i = 0; i < 199; i++) strcat(big, ",300");
    strcat(big, "]}");
    expect_error(false, big, 400, "context_length_exceeded", "prompt");
}

/* Found by fuzz_request (regressions/fuzz_request/completions-default-max-tokens.json):
 * a completions request without max_tokens got OpenAI's default 16 even on
 * a server whose max_tokens is lower. */
Test(request, completions_default_within_the_limit, .fini = teardown, .timeout = 30)
{
    setup_with((const char *const[]){"--max-tokens", "8", NULL});
    api_request q;
    api_error e;
    json_t *body;
    cr_assert_eq(parse(false, "{\"prompt\":\"Hi\"}", &q, &e, &body), 0, "%s", e.message);
    cr_assert_eq(q.p.max_tokens, 8);
    api_request_free(&q);
    json_decref(body);
    cr_assert_eq(parse(true, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}", &q, &e, &body), 0);
    cr_assert_eq(q.p.max_tokens, 8);
    api_request_free(&q);
    json_decref(body);
}

Test(request, completions_default_is_16, .init = setup, .fini = teardown, .timeout = 30)
{
    api_request q;
    api_error e;
    json_t *body;
    cr_assert_eq(parse(false, "{\"prompt\":\"Hi\"}", &q, &e, &body), 0, "%s", e.message);
    cr_assert_eq(q.p.max_tokens, 16);
    api_request_free(&q);
    json_decref(body);
}

/* Found by fuzz_request: values in range as doubles that round to a float
 * the engine refuses (the server answered 400 "refused by the engine"
 * without naming the field). */
Test(request, floats_the_engine_takes, .init = setup, .fini = teardown, .timeout = 30)
{
    api_request q;
    api_error e;
    json_t *body;
    /* top_p that rounds to 0: greedy, like top_p 0. */
    cr_assert_eq(parse(false, "{\"prompt\":\"Hi\",\"top_p\":1e-50}", &q, &e, &body), 0, "%s", e.message);
    cr_assert_eq(q.p.sampling.temperature, 0);
    cr_assert_eq(q.p.sampling.top_p, 1);
    cr_assert_eq(engine_says(&q), ENG_OK);
    api_request_free(&q);
    json_decref(body);
    expect_error(false, "{\"prompt\":\"Hi\",\"repetition_penalty\":1e-50}", 400, "invalid_value", "repetition_penalty");
    expect_error(true, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"repeat_penalty\":1e-46}", 400,
                 "invalid_value", "repeat_penalty");
    expect_error(false, "{\"prompt\":\"Hi\",\"orthorank\":{\"token_ratio\":1e-50}}", 400, "invalid_value",
                 "orthorank.token_ratio");
    /* 0.99999999 is 1 as a float: no sparsity can be reached. */
    expect_error(false, "{\"prompt\":\"Hi\",\"orthorank\":{\"sparsity\":0.3,\"token_ratio\":0.99999999}}", 400,
                 "invalid_value", "orthorank.token_ratio");
    /* The smallest positive float is fine. */
    cr_assert_eq(parse(false, "{\"prompt\":\"Hi\",\"repetition_penalty\":1.5e-45}", &q, &e, &body), 0, "%s",
                 e.message);
    cr_assert_eq(engine_says(&q), ENG_OK);
    api_request_free(&q);
    json_decref(body);
}

/* OrthoRank: the config's defaults (one struct), the body's fields on top. */
Test(request, orthorank_fields_on_top_of_the_defaults, .fini = teardown, .timeout = 30)
{
    setup_with((const char *const[]){"--orthorank-sparsity", "0.2", "--orthorank-method", "random",
                                      "--orthorank-min-tokens", "8", NULL});
    api_request q;
    api_error e;
    json_t *body;
    cr_assert_eq(parse(false, "{\"prompt\":\"Hi\"}", &q, &e, &body), 0, "%s", e.message);
    cr_assert_eq(memcmp(&q.orthorank, &cfg.orthorank, sizeof q.orthorank), 0, "no object: the defaults");
    cr_assert_eq(q.orthorank.sparsity, 0.2);
    cr_assert_eq(q.orthorank.method, ENG_ORTHORANK_METHOD_RANDOM);
    cr_assert_eq(q.orthorank.min_tokens, 8);
    api_request_free(&q);
    json_decref(body);
    cr_assert_eq(parse(false, "{\"prompt\":\"Hi\",\"orthorank\":{\"token_ratio\":0.5,\"layers\":[4,1],"
                              "\"decode\":\"full\"}}",
                       &q, &e, &body),
                 0, "%s", e.message);
    cr_assert_eq(q.orthorank.sparsity, 0.2, "kept");
    cr_assert_eq(q.orthorank.method, ENG_ORTHORANK_METHOD_RANDOM, "kept");
    cr_assert_eq(q.orthorank.token_ratio, 0.5);
    cr_assert_eq(q.orthorank.decode, ENG_ORTHORANK_DECODE_FULL);
    cr_assert_eq(q.orthorank.n_layers, 2);
    cr_assert_eq(q.orthorank.layers[0], 4);
    cr_assert_eq(q.orthorank.layers[1], 1);
    cr_assert_eq(engine_says(&q), ENG_OK);
    api_request_free(&q);
    json_decref(body);
    /* the config's defaults count in the whole check: k = 1 with its sparsity 0.2 */
    cr_assert_eq(parse(false, "{\"prompt\":\"Hi\",\"orthorank\":{\"token_ratio\":1}}", &q, &e, &body), -1);
    cr_assert_str_eq(e.param, "orthorank.token_ratio");
    cr_assert_str_eq(e.message, "'orthorank.token_ratio' 1 updates every token, so no sparsity above 0 can be reached");
    json_decref(body);
}

/* cache_salt (issue 15, D4): a string of 1 to API_CACHE_SALT_MAX bytes,
 * else a 400 naming it; and the scope it goes into. */
Test(request, cache_salt, .init = setup, .fini = teardown, .timeout = 30)
{
    api_request q;
    api_error e;
    json_t *body;
    cr_assert_eq(parse(false, "{\"prompt\":\"Hi\",\"cache_salt\":\"tenant-7\"}", &q, &e, &body), 0, "%s", e.message);
    cr_assert_eq(q.cache_salt_len, 8);
    cr_assert(!memcmp(q.cache_salt, "tenant-7", 8));
    api_request_free(&q);
    json_decref(body);
    cr_assert_eq(parse(true, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}", &q, &e, &body), 0, "%s",
                 e.message);
    cr_assert_null(q.cache_salt);
    api_request_free(&q);
    json_decref(body);
    expect_error(false, "{\"prompt\":\"Hi\",\"cache_salt\":7}", 400, "invalid_type", "cache_salt");
    expect_error(true, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"cache_salt\":\"\"}", 400,
                 "invalid_value", "cache_salt");
    char big[API_CACHE_SALT_MAX + 64];
    snprintf(big, sizeof big, "{\"prompt\":\"Hi\",\"cache_salt\":\"%0*d\"}", API_CACHE_SALT_MAX + 1, 0);
    expect_error(false, big, 400, "invalid_value", "cache_salt");
}

/* The scope is SipHash-2-4 of the key's 4 bytes and the salt: the
 * reference vector (key 00..0f, message 00..0e), and distinct scopes for
 * distinct keys, salts and secrets. */
Test(request, cache_scope)
{
    const uint64_t k[2] = {0x0706050403020100u, 0x0f0e0d0c0b0a0908u};
    const char tail[] = "\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e";
    cr_assert_eq(api_cache_scope(k, 0x03020100, tail, 11), 0xa129ca6149be45e5u);
    const uint64_t s1[2] = {1, 2}, s2[2] = {1, 3};
    uint64_t none = api_cache_scope(s1, 0, NULL, 0);
    cr_assert_eq(none, api_cache_scope(s1, 0, NULL, 0));
    cr_assert_neq(none, api_cache_scope(s1, 1, NULL, 0));
    cr_assert_neq(api_cache_scope(s1, 1, NULL, 0), api_cache_scope(s1, 2, NULL, 0));
    cr_assert_neq(api_cache_scope(s1, 1, NULL, 0), api_cache_scope(s1, 1, "a", 1));
    cr_assert_neq(api_cache_scope(s1, 1, "a", 1), api_cache_scope(s1, 1, "b", 1));
    cr_assert_neq(none, api_cache_scope(s2, 0, NULL, 0));
}

/* A prompt whose bytes alone prove it longer than the context is refused
 * before tokenization (the message gives bytes, not tokens); one just under
 * the bound is tokenized and refused by its token count. */
Test(request, prompt_refused_by_bytes_before_tokenizing, .init = setup, .fini = teardown, .timeout = 30)
{
    size_t per = (size_t)eng_vocab_max_token_bytes(lim.vocab), room = (size_t)lim.n_ctx - 1;
    cr_assert_gt(per, 0);
    size_t cap = (room * per + 2) + 64;
    char *body = malloc(cap);
    for (int k = 0; k < 2; k++) {
        size_t n = room * per + (k ? 1 : 0); /* at the bound, one byte over */
        size_t o = (size_t)snprintf(body, cap, "{\"prompt\":\"");
        memset(body + o, 'a', n);
        snprintf(body + o + n, cap - o - n, "\",\"max_tokens\":4}");
        api_request q;
        api_error e;
        json_t *b;
        cr_assert_eq(parse(false, body, &q, &e, &b), -1);
        cr_assert_str_eq(e.code, "context_length_exceeded");
        cr_assert_str_eq(e.param, "prompt");
        cr_assert_eq(strstr(e.message, "bytes") != NULL, k == 1, "%s", e.message);
        json_decref(b);
    }
    free(body);
}
