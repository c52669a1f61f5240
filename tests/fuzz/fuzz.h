/*
 * fuzz.h - what every harness shares: the libFuzzer entry points (also
 * driven by regress_main.c), the test data default, and CHECK(), which
 * turns a broken invariant into a crash like any memory error.
 */
#ifndef ORTHOSERVE_FUZZ_H
#define ORTHOSERVE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef ORTHOSERVE_TESTDATA
#define ORTHOSERVE_TESTDATA "../shared/testdata"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                            \
    do {                                                                                    \
        if (!(c)) {                                                                         \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #c, __FILE__, __LINE__);      \
            abort();                                                                        \
        }                                                                                   \
    } while (0)

#endif
