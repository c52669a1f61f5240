/*
 * main.c - the orthoserve binary: dispatch to a subcommand.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: orthoserve <command> [options]\n"
            "\n"
            "commands:\n"
            "  generate   generate text from a prompt (orthoserve generate --help)\n"
            "  tokenize   print the token ids of a text\n"
            "  info       describe a GGUF model\n"
            "\n"
            "Run 'orthoserve <command> --help' for the options of a command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "generate")) return cli_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return cli_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "info")) return cli_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "orthoserve: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
