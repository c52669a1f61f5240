/*
 * isa_run.c - runs a golden suite under one forced kernel level:
 *
 *   isa_run LEVEL COMMAND [ARG...]
 *
 * execs COMMAND with ORTHOSERVE_ISA=LEVEL when this CPU has the level, and
 * otherwise exits 77 (the tests' SKIP_RETURN_CODE) saying what it lacks, so
 * whether a level is tested is decided on the machine that runs the test,
 * not the one that configured the build. An unknown LEVEL is an error (2).
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SKIP_CODE 77

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: isa_run scalar|avx2|avx2vnni|avx512 COMMAND [ARG...]\n");
        return 2;
    }
    eng__kernel_level lvl;
    char msg[320];
    if (eng__isa_choose(argv[1], eng__cpu_get(), &lvl, msg, sizeof msg) != 0) {
        bool known = false;
        for (int l = 0; l < ENG_KL_COUNT; l++)
            known |= strcmp(argv[1], eng__kernel_level_name((eng__kernel_level)l)) == 0;
        fprintf(stderr, "isa_run: %s%s\n", known ? "skipped: " : "", msg);
        return known ? SKIP_CODE : 2;
    }
    if (setenv("ORTHOSERVE_ISA", argv[1], 1)) {
        perror("isa_run: setenv");
        return 2;
    }
    fprintf(stderr, "isa_run: ORTHOSERVE_ISA=%s\n", argv[1]);
    execvp(argv[2], argv + 2);
    perror("isa_run: exec");
    return 2;
}
