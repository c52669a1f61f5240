/*
 * main.c - the orthoserve binary: dispatch to a subcommand (serve is the
 * server library's, the others the cli library's).
 */
#include "cli.h"
#include "config.h"
#include "serve.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: orthoserve <command> [options]\n"
            "\n"
            "commands:\n"
            "  serve      OpenAI-compatible HTTP server (orthoserve serve --help)\n"
            "  generate   generate text from a prompt (orthoserve generate --help)\n"
            "  tokenize   print the token ids of a text\n"
            "  info       describe a GGUF model\n"
            "  perplexity llama-perplexity-style evaluation, dense or OrthoRank\n"
            "  calibrate  compute an OrthoRank layer plan (PLAN.json)\n"
            "  render-template  render a Jinja chat template with JSON variables\n"
            "\n"
            "Run 'orthoserve <command> --help' for the options of a command.\n");
}

/* --help: the commands, then every serve flag with its default. */
static void help(void)
{
    usage(stdout);
    printf("\n");
    srv_config_usage(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "serve")) return cli_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate")) return cli_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return cli_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "info")) return cli_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "perplexity")) return cli_perplexity(argc - 1, argv + 1);
    if (!strcmp(cmd, "calibrate")) return cli_calibrate(argc - 1, argv + 1);
    if (!strcmp(cmd, "render-template")) return cli_render_template(argc - 1, argv + 1);
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        help();
        return 0;
    }
    fprintf(stderr, "orthoserve: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
