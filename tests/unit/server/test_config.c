/* Criterion tests for server/config.c: one precedence (defaults < config
 * file < ORTHOSERVE_* environment < flags) for every kind of key (string,
 * integer, number, boolean, list), and the errors, which name the key. */
#include "config.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

static srv_config cfg;
static char err_text[4096];

/* A config file with this JSON text; its path (static storage). */
static const char *config_file(const char *json)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/orthoserve-test-config-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, json, strlen(json)), (ssize_t)strlen(json));
    close(fd);
    return path;
}

/* srv_config_load on "serve" + args (NULL-terminated) with exactly the
 * environment env (NULL-terminated "NAME=value" strings); what it printed
 * on stderr lands in err_text. */
static int load(const char *const *env, const char *const *args)
{
    char *argv[32] = {"serve"};
    int argc = 1;
    for (; args && *args; args++) argv[argc++] = (char *)*args;
    char *envv[16] = {NULL};
    for (size_t i = 0; env && env[i]; i++) envv[i] = (char *)env[i];
    char **saved_env = environ;
    environ = envv;
    fflush(stderr);
    FILE *cap = tmpfile();
    cr_assert(cap);
    int saved_err = dup(2);
    dup2(fileno(cap), 2);
    int rc = srv_config_load(&cfg, argc, argv);
    fflush(stderr);
    dup2(saved_err, 2);
    close(saved_err);
    environ = saved_env;
    rewind(cap);
    size_t n = fread(err_text, 1, sizeof err_text - 1, cap);
    err_text[n] = 0;
    fclose(cap);
    return rc;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})
#define ENV(...) ((const char *const[]){__VA_ARGS__, NULL})

static void teardown(void) { srv_config_free(&cfg); }
TestSuite(config, .fini = teardown, .timeout = 10);

Test(config, defaults)
{
    cr_assert_eq(load(NULL, ARGS("-m", "m.gguf")), 0, "%s", err_text);
    cr_expect_str_eq(cfg.model, "m.gguf");
    cr_expect_str_eq(cfg.host, "127.0.0.1");
    cr_expect_eq(cfg.port, 8080);
    cr_expect_eq(cfg.threads, 2);
    cr_expect(cfg.mmap && cfg.repack && cfg.log_requests && !cfg.verbose);
    cr_expect_eq(cfg.request_timeout, 600);
    cr_expect_eq(cfg.idle_timeout, 60);
    cr_expect_str_eq(cfg.alias, "");
    cr_expect_eq(cfg.api_keys.n, 0);
    /* The probes (/health, /ready) and the scrape answer without a key (D2). */
    cr_assert_eq(cfg.public_paths.n, 3);
    cr_expect_str_eq(cfg.public_paths.v[0], "/health");
    cr_expect_str_eq(cfg.public_paths.v[1], "/ready");
    cr_expect_str_eq(cfg.public_paths.v[2], "/metrics");
    cr_expect_str_eq(cfg.log_format, "text");
    cr_expect_str_eq(cfg.log_level, "info");
    cr_expect_null(cfg.config_file);
    cr_expect_str_eq(err_text, "");
}

/* Each source overrides the one before, key by key. */
Test(config, precedence_file_env_flags)
{
    const char *path = config_file("{\"model\": \"file.gguf\", \"port\": 1000, \"alias\": \"from-file\", "
                                   "\"threads\": 3, \"host\": \"0.0.0.0\"}");
    const char *const *env = ENV("ORTHOSERVE_PORT=2000", "ORTHOSERVE_ALIAS=from-env");
    cr_assert_eq(load(env, ARGS("--config", path, "--port", "3000")), 0, "%s", err_text);
    cr_expect_eq(cfg.port, 3000);                 /* flag over env over file */
    cr_expect_str_eq(cfg.alias, "from-env");      /* env over file */
    cr_expect_eq(cfg.threads, 3);                 /* file over default */
    cr_expect_str_eq(cfg.host, "0.0.0.0");
    cr_expect_str_eq(cfg.model, "file.gguf");
    cr_expect_str_eq(cfg.config_file, path);
    srv_config_free(&cfg);
    cr_assert_eq(load(env, ARGS("--config", path)), 0, "%s", err_text);
    cr_expect_eq(cfg.port, 2000);
    srv_config_free(&cfg);
    cr_assert_eq(load(NULL, ARGS("--config", path)), 0, "%s", err_text);
    cr_expect_eq(cfg.port, 1000);
    cr_expect_str_eq(cfg.alias, "from-file");
    unlink(path);
}

Test(config, config_file_from_environment)
{
    const char *path = config_file("{\"model\": \"env-file.gguf\", \"max_queue\": 9}");
    char var[128];
    snprintf(var, sizeof var, "ORTHOSERVE_CONFIG=%s", path);
    cr_assert_eq(load(ENV(var), NULL), 0, "%s", err_text);
    cr_expect_str_eq(cfg.model, "env-file.gguf");
    cr_expect_eq(cfg.max_queue, 9);
    unlink(path);
}

Test(config, strings_and_short_flags)
{
    cr_assert_eq(load(ENV("ORTHOSERVE_HOST=::1"), ARGS("-m", "a.gguf", "-a", "alias", "--chat-template", "chatml")),
                 0, "%s", err_text);
    cr_expect_str_eq(cfg.host, "::1");
    cr_expect_str_eq(cfg.alias, "alias");
    cr_expect_str_eq(cfg.chat_template, "chatml");
}

Test(config, integers_and_numbers)
{
    const char *path = config_file("{\"model\": \"m\", \"ctx_size\": 256, \"drain_timeout\": 2.5, \"idle_timeout\": 7}");
    cr_assert_eq(load(ENV("ORTHOSERVE_BATCH_SIZE=64", "ORTHOSERVE_REQUEST_TIMEOUT=0.25"),
                      ARGS("--config", path, "-c", "512", "--max-tokens", "9")),
                 0, "%s", err_text);
    cr_expect_eq(cfg.ctx_size, 512);
    cr_expect_eq(cfg.batch_size, 64);
    cr_expect_eq(cfg.max_tokens, 9);
    cr_expect_eq(cfg.request_timeout, 0.25);
    cr_expect_eq(cfg.drain_timeout, 2.5);
    cr_expect_eq(cfg.idle_timeout, 7); /* an integer where a number is expected */
    unlink(path);
}

Test(config, booleans)
{
    const char *path = config_file("{\"model\": \"m\", \"mmap\": false, \"repack\": false, \"verbose\": true}");
    /* Text forms: 1/0, true/false, yes/no, on/off (any case); a bare flag is true. */
    cr_assert_eq(load(ENV("ORTHOSERVE_REPACK=ON", "ORTHOSERVE_LOG_REQUESTS=no"),
                      ARGS("--config", path, "--mmap", "--verbose=0")),
                 0, "%s", err_text);
    cr_expect(cfg.mmap);          /* flag over file */
    cr_expect(cfg.repack);        /* env over file */
    cr_expect(!cfg.log_requests); /* env over default */
    cr_expect(!cfg.verbose);      /* flag over file */
    unlink(path);
}

Test(config, lists)
{
    /* File: an array or a comma-separated string; env: comma-separated
     * (blanks trimmed, empty items skipped); flags: repeated flags add up
     * and replace what the sources before them said. */
    const char *path = config_file("{\"model\": \"m\", \"api_keys\": [\"f1\", \"f2\"], \"cors_origins\": \"a, b\"}");
    cr_assert_eq(load(ENV("ORTHOSERVE_PUBLIC_PATHS= /x , ,/y"), ARGS("--config", path)), 0, "%s", err_text);
    cr_assert_eq(cfg.api_keys.n, 2);
    cr_expect_str_eq(cfg.api_keys.v[1], "f2");
    cr_assert_eq(cfg.cors_origins.n, 2);
    cr_expect_str_eq(cfg.cors_origins.v[1], "b");
    cr_assert_eq(cfg.public_paths.n, 2);
    cr_expect_str_eq(cfg.public_paths.v[0], "/x");
    cr_expect_str_eq(cfg.public_paths.v[1], "/y");
    srv_config_free(&cfg);
    cr_assert_eq(load(ENV("ORTHOSERVE_API_KEYS=e1"), ARGS("--config", path, "--api-key", "k1,k2", "--api-key", "k3")),
                 0, "%s", err_text);
    cr_assert_eq(cfg.api_keys.n, 3);
    cr_expect_str_eq(cfg.api_keys.v[0], "k1");
    cr_expect_str_eq(cfg.api_keys.v[2], "k3");
    unlink(path);
}

Test(config, api_keys_file_appends)
{
    const char *keys = config_file("# comment\n\n  key-a  \nkey-b\n");
    cr_assert_eq(load(NULL, ARGS("-m", "m", "--api-key", "flag-key", "--api-keys-file", keys)), 0, "%s", err_text);
    cr_assert_eq(cfg.api_keys.n, 3);
    cr_expect_str_eq(cfg.api_keys.v[0], "flag-key");
    cr_expect_str_eq(cfg.api_keys.v[1], "key-a");
    cr_expect_str_eq(cfg.api_keys.v[2], "key-b");
    unlink(keys);
}

Test(config, help)
{
    fflush(stdout);
    FILE *out = tmpfile();
    int saved = dup(1);
    dup2(fileno(out), 1);
    int rc = load(NULL, ARGS("--help"));
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    cr_expect_eq(rc, 1);
    char buf[256] = "";
    rewind(out);
    cr_expect(fgets(buf, sizeof buf, out) && strstr(buf, "usage: orthoserve serve"));
    fclose(out);
}

/* An error returns -1 and says which key (and source) is at fault. */
static void expect_error(const char *const *env, const char *const *args, const char *needle)
{
    cr_expect_eq(load(env, args), -1, "accepted, expected an error mentioning %s", needle);
    cr_expect(strstr(err_text, needle), "stderr '%s' does not mention '%s'", err_text, needle);
    srv_config_free(&cfg);
}

Test(config, errors_name_the_key)
{
    expect_error(NULL, ARGS("--port", "8080"), "a model is required");
    expect_error(NULL, ARGS("-m", "m", "--port", "70000"), "--port (key 'port'): expected an integer in [0, 65535]");
    expect_error(NULL, ARGS("-m", "m", "--threads", "2x"), "key 'threads'");
    expect_error(NULL, ARGS("-m", "m", "--timeout", "nan"), "key 'request_timeout'");
    expect_error(NULL, ARGS("-m", "m", "--mmap=maybe"), "key 'mmap'): expected true or false, got maybe");
    expect_error(ENV("ORTHOSERVE_PORT=-1"), ARGS("-m", "m"), "environment ORTHOSERVE_PORT (key 'port')");
    expect_error(ENV("ORTHOSERVE_IDLE_TIMEOUT=0"), ARGS("-m", "m"), "key 'idle_timeout'");
    expect_error(NULL, ARGS("-m", "m", "--log-format", "xml"), "key 'log_format'");
    expect_error(NULL, ARGS("-m", "m", "--log-level", "loud"), "key 'log_level'");
    expect_error(NULL, ARGS("-m", "m", "stray"), "unexpected argument 'stray'");
    expect_error(NULL, ARGS("-m", "m", "--no-such-flag"), "--help");
    expect_error(NULL, ARGS("-m", "m", "--api-keys-file", "/nonexistent/keys"), "key 'api_keys_file'");
    const char *empty = config_file("# no key here\n");
    expect_error(NULL, ARGS("-m", "m", "--api-keys-file", empty), "holds no key");
    unlink(empty);
}

Test(config, file_errors_name_the_key)
{
    const char *const bad[][2] = {
        {"{\"model\": \"m\", \"prot\": 1}", "unknown key 'prot'"},
        {"{\"model\": \"m\", \"port\": \"80\"}", "key 'port': expected an integer in [0, 65535], got a JSON string"},
        {"{\"model\": \"m\", \"port\": 1.5}", "key 'port'"},
        {"{\"model\": \"m\", \"mmap\": 1}", "key 'mmap': expected true or false, got 1"},
        {"{\"model\": \"m\", \"api_keys\": [1]}", "key 'api_keys': expected an array of strings"},
        {"{\"model\": \"m\", \"alias\": null}", "key 'alias': expected a string"},
        {"{\"model\": \"m\", \"request_timeout\": 0}", "key 'request_timeout'"},
        {"[1, 2]", "expected a JSON object"},
        {"{\"model\": ", "line 1"},
        {"{\"port\": 1, \"port\": 2}", "duplicate"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *path = config_file(bad[i][0]);
        expect_error(NULL, ARGS("--config", path), bad[i][1]);
        unlink(path);
    }
    expect_error(NULL, ARGS("-m", "m", "--config", "/nonexistent/orthoserve.json"), "/nonexistent/orthoserve.json");
}

/* An explicitly given key list without a key would turn authentication off
 * silently (issue 15, D5): refused from every source, naming the source.
 * Leaving the setting out is how a server runs without keys. */
Test(config, empty_key_list_is_refused)
{
    const char *need = "an empty key list would turn authentication off";
    expect_error(NULL, ARGS("-m", "m", "--api-key", ""), "--api-key (key 'api_keys')");
    expect_error(NULL, ARGS("-m", "m", "--api-key", " , "), need);
    expect_error(NULL, ARGS("-m", "m", "--api-key", "k1", "--api-key", ""), need);
    expect_error(ENV("ORTHOSERVE_API_KEYS="), ARGS("-m", "m"), "environment ORTHOSERVE_API_KEYS (key 'api_keys')");
    expect_error(ENV("ORTHOSERVE_API_KEYS= ,"), ARGS("-m", "m"), need);
    const char *const files[] = {"{\"model\": \"m\", \"api_keys\": []}", "{\"model\": \"m\", \"api_keys\": \"\"}",
                                 "{\"model\": \"m\", \"api_keys\": [\" \"]}",
                                 "{\"model\": \"m\", \"api_keys\": [\"k1\", \"\"]}"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        const char *path = config_file(files[i]);
        expect_error(NULL, ARGS("--config", path), "key 'api_keys'");
        cr_expect(strstr(err_text, need), "%s", err_text);
        unlink(path);
    }
    /* Not given at all, or null in a file (config/orthoserve.json): no
     * authentication, and no error. */
    cr_assert_eq(load(NULL, ARGS("-m", "m")), 0, "%s", err_text);
    cr_expect_eq(cfg.api_keys.n, 0);
    srv_config_free(&cfg);
    const char *unset = config_file("{\"model\": \"m\", \"api_keys\": null}");
    cr_assert_eq(load(NULL, ARGS("--config", unset)), 0, "%s", err_text);
    cr_expect_eq(cfg.api_keys.n, 0);
    srv_config_free(&cfg);
    unlink(unset);
    /* Blanks around keys in a file's array are trimmed, as everywhere else. */
    const char *path = config_file("{\"model\": \"m\", \"api_keys\": [\" k1 \", \"k2\"]}");
    cr_assert_eq(load(NULL, ARGS("--config", path)), 0, "%s", err_text);
    cr_assert_eq(cfg.api_keys.n, 2);
    cr_expect_str_eq(cfg.api_keys.v[0], "k1");
    unlink(path);
}

/* The KV cache types: f16 by default, each of K and V from any source, case
 * as given; an unknown type is an error naming the key. */
Test(config, cache_types)
{
    cr_assert_eq(load(NULL, ARGS("-m", "m")), 0, "%s", err_text);
    cr_expect_str_eq(cfg.cache_type_k, "f16");
    cr_expect_str_eq(cfg.cache_type_v, "f16");
    srv_config_free(&cfg);
    const char *path = config_file("{\"model\": \"m\", \"cache_type_k\": \"f32\", \"cache_type_v\": \"f32\"}");
    cr_assert_eq(load(ENV("ORTHOSERVE_CACHE_TYPE_V=Q8_0"), ARGS("--config", path, "--cache-type-k", "q8_0")), 0, "%s",
                 err_text);
    cr_expect_str_eq(cfg.cache_type_k, "q8_0");
    cr_expect_str_eq(cfg.cache_type_v, "Q8_0");
    srv_config_free(&cfg);
    unlink(path);
    expect_error(NULL, ARGS("-m", "m", "--cache-type-k", "q4_0"), "key 'cache_type_k': 'q4_0' is not one of");
    expect_error(ENV("ORTHOSERVE_CACHE_TYPE_V=bf16"), ARGS("-m", "m"), "key 'cache_type_v'");
}
