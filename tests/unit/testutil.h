/* testutil.h - helpers shared by the Criterion suites: test data paths,
 * whole-file reads, golden JSON. */
#ifndef ORTHOSERVE_TESTUTIL_H
#define ORTHOSERVE_TESTUTIL_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

/* ORTHOSERVE_TESTDATA "/" rel, in a static buffer (valid until the next call). */
const char *td_path(const char *rel);
/* Whole file into a malloc'd buffer (NUL added, not counted in *len); NULL on error. */
char *td_read(const char *path, size_t *len);
/* json_load_file or a Criterion failure. json_decref the result. */
json_t *td_json(const char *rel);
/* Deterministic pseudo-random numbers for tests (splitmix64). */
uint64_t td_rand(uint64_t *state);
float td_randf(uint64_t *state); /* uniform in [-1, 1) */
#endif
