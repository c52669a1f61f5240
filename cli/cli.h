/*
 * cli.h - the orthoserve subcommands that run without HTTP, and the helpers
 * they share. Each command returns a process exit code (0 ok, 1 runtime
 * error, 2 usage error). serve is the server library's (serve.h).
 */
#ifndef ORTHOSERVE_CLI_H
#define ORTHOSERVE_CLI_H

#include "orthoserve/engine.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

int cli_generate(int argc, char **argv);   /* generate.c */
int cli_tokenize(int argc, char **argv);   /* inspect.c */
int cli_info(int argc, char **argv);       /* inspect.c */
int cli_perplexity(int argc, char **argv); /* perplexity.c */
int cli_calibrate(int argc, char **argv);  /* calibrate.c */
int cli_render_template(int argc, char **argv); /* render.c */

/* Helpers shared by the commands (cliutil.c). */
double cli_now(void); /* monotonic seconds */
void cli_log_stderr(eng_log_level lvl, const char *msg, void *user); /* an eng_log_fn */
/* Whole-string numbers in [lo, hi]; false on junk, overflow or range. */
bool cli_parse_long(const char *s, long lo, long hi, long *out);
bool cli_parse_double(const char *s, double lo, double hi, double *out);
/* The first len bytes of s as a number or a fraction "a/b" (token ratios: "1/3") in [lo, hi]. */
bool cli_parse_frac(const char *s, size_t len, double lo, double hi, double *out);
/* Tokenize text into a malloc'd array of *n ids (free()); NULL on failure. */
int32_t *cli_tokenize_text(const eng_vocab *v, const char *text, size_t len, bool add_special, bool parse_special,
                           size_t *n);
/* "sparsity=0.2,token_ratio=1/3,decode=threshold,method=orthorank,layers=3:1:2,
 * min_tokens=16,seed=7" on top of *p: every key is a field of the engine's
 * OrthoRank list ("k" is token_ratio), numbers may be fractions. Layers are
 * checked against a model later (eng_orthorank_check). false with a message
 * in err. */
bool cli_parse_orthorank(const char *spec, eng_orthorank_params *p, char *err, size_t errlen);

/* --cache-type-k / --cache-type-v (generate, perplexity, and bench in tools/). */
#define CLI_CACHE_TYPE_USAGE                                                                          \
    "      --cache-type-k T     KV cache type of K: f16 (default), f32 or q8_0\n"                     \
    "      --cache-type-v T     KV cache type of V: f16 (default), f32 or q8_0\n"
/* "KV cache: K f16, V f16, N tokens x B bytes = M MiB" on stderr. */
void cli_print_kv(const eng_model *m, eng_kv_type type_k, eng_kv_type type_v, int64_t tokens);

#define BAD(opt, val)                                                                   \
    do {                                                                                \
        fprintf(stderr, "orthoserve: invalid value '%s' for %s\n", val, opt);           \
        return 2;                                                                       \
    } while (0)
#endif
