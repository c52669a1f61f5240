/* cli.h - the orthoserve subcommands that run without HTTP. Each returns a
 * process exit code (0 ok, 1 runtime error, 2 usage error). */
#ifndef ORTHOSERVE_CLI_H
#define ORTHOSERVE_CLI_H
int cli_generate(int argc, char **argv);
int cli_tokenize(int argc, char **argv);
int cli_info(int argc, char **argv);

/* Helpers shared by the commands (cliutil.c). */
#include "orthoserve/engine.h"
double cli_now(void); /* monotonic seconds */
void cli_log_stderr(eng_log_level lvl, const char *msg, void *user); /* an eng_log_fn */
/* Whole-string numbers in [lo, hi]; false on junk, overflow or range. */
bool cli_parse_long(const char *s, long lo, long hi, long *out);
bool cli_parse_double(const char *s, double lo, double hi, double *out);
/* "sparsity=0.2,token_ratio=1/3,decode=threshold,method=orthorank,layers=3:1:2,
 * min_tokens=16,seed=7" on top of *p (layers stored in layers_buf, room for
 * 1024). false with a message in err. (cli_orthorank.c) */
bool cli_parse_orthorank(const char *spec, eng_orthorank_params *p, int32_t *layers_buf, char *err,
                         size_t errlen);
#define BAD(opt, val)                                                                   \
    do {                                                                                \
        fprintf(stderr, "orthoserve: invalid value '%s' for %s\n", val, opt);           \
        return 2;                                                                       \
    } while (0)
#endif
