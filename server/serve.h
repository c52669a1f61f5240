/* serve.h - orthoserve serve: the OpenAI-compatible HTTP server (serve.c).
 * Returns a process exit code (0 ok, 1 runtime error, 2 usage error). */
#ifndef ORTHOSERVE_SERVE_H
#define ORTHOSERVE_SERVE_H
int cli_serve(int argc, char **argv);
#endif
