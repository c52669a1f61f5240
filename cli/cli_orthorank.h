/* cli_orthorank.h - orthoserve perplexity / calibrate (the OrthoRank study
 * tools). Each returns a process exit code (0 ok, 1 runtime error, 2 usage). */
#ifndef ORTHOSERVE_CLI_ORTHORANK_H
#define ORTHOSERVE_CLI_ORTHORANK_H
int cli_perplexity(int argc, char **argv);
int cli_calibrate(int argc, char **argv);
#endif
