/*
 * regress_main - run a libFuzzer harness without libFuzzer: every file named
 * on the command line, and every regular file inside every directory named,
 * goes through LLVMFuzzerTestOneInput once (from an exact-size heap copy, so
 * ASan builds catch over-reads like libFuzzer does). This is how the crash
 * regressions (tests/fuzz/regressions/<harness>/) and the seed corpus run in
 * every build, sanitized or not, with gcc or clang.
 *
 * A path that does not exist is skipped with a note (a corpus that was not
 * generated); one that cannot be read is an error. Exit status: 0, or 1
 * when an input could not be read or none was found at all (a crashing
 * input aborts the process).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "fuzz.h"
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int run_file(const char *path, size_t *count)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "regress: cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            fprintf(stderr, "regress: out of memory reading %s\n", path);
            return 1;
        }
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        cap *= 2;
        buf = realloc(buf, cap);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        fprintf(stderr, "regress: read error on %s\n", path);
        return 1;
    }
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact) {
        free(buf);
        return 1;
    }
    memcpy(exact, buf, n);
    free(buf);
    if (getenv("REGRESS_VERBOSE")) fprintf(stderr, "regress: %s (%zu bytes)\n", path, n);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    (*count)++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_dir(const char *dir, size_t *count)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof *names);
            if (!nn) break;
            names = nn;
        }
        if (asprintf(&names[n], "%s/%s", dir, e->d_name) < 0) break;
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        struct stat sb;
        if (stat(names[i], &sb) == 0 && S_ISREG(sb.st_mode)) rc |= run_file(names[i], count);
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    size_t count = 0;
    int rc = 0;
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        bool ok = stat(argv[i], &sb) == 0;
        if (!ok && errno == ENOENT)
            fprintf(stderr, "regress: %s does not exist, skipped\n", argv[i]);
        else if (ok && S_ISDIR(sb.st_mode))
            rc |= run_dir(argv[i], &count);
        else
            rc |= run_file(argv[i], &count);
    }
    printf("regress: %zu inputs passed\n", count);
    if (count == 0) {
        /* Nothing ran: the regression inputs went missing, which must not pass quietly. */
        fprintf(stderr, "regress: no input found\n");
        return 1;
    }
    return rc;
}
