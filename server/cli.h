/* cli.h - the orthoserve subcommands that run without HTTP. Each returns a
 * process exit code (0 ok, 1 runtime error, 2 usage error). */
#ifndef ORTHOSERVE_CLI_H
#define ORTHOSERVE_CLI_H
int cli_generate(int argc, char **argv);
int cli_tokenize(int argc, char **argv);
int cli_info(int argc, char **argv);
#endif
