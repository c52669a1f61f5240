/*
 * isa.c - the kernel levels: what each needs of the CPU, and which one runs
 * (ORTHOSERVE_ISA, else the best the CPU has). Pure functions of their
 * arguments; quant.c builds the tables and asks eng__isa_choose once.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char *const level_names[ENG_KL_COUNT] = {"scalar", "avx2", "avx2vnni", "avx512"};

const char *eng__kernel_level_name(eng__kernel_level lvl)
{
    return (unsigned)lvl < ENG_KL_COUNT ? level_names[lvl] : "?";
}

/* Appends name to the comma-separated list in buf (of len bytes, kept
 * NUL-terminated and truncated when full); returns how many are listed. */
static int list_add(char *buf, size_t len, int n, const char *name)
{
    if (buf && len) {
        size_t k = strlen(buf);
        if (k < len) snprintf(buf + k, len - k, "%s%s", n ? ", " : "", name);
    }
    return n + 1;
}

bool eng__isa_has(const eng__cpu *c, eng__kernel_level lvl, char *missing, size_t len)
{
    /* Each CPU feature and the levels that need it (avx512 does not need
     * AVX-VNNI: its table starts from avx2's on a CPU without it). */
    enum { A2 = 1 << ENG_KL_AVX2, A2V = 1 << ENG_KL_AVX2VNNI, A5 = 1 << ENG_KL_AVX512 };
    const struct { const char *name; bool have; unsigned levels; } f[] = {
        {"avx2", c->avx2, A2 | A2V | A5},     {"fma", c->fma, A2 | A2V | A5},
        {"f16c", c->f16c, A2 | A2V | A5},     {"avxvnni", c->avxvnni, A2V},
        {"avx512f", c->avx512f, A5},          {"avx512bw", c->avx512bw, A5},
        {"avx512vl", c->avx512vl, A5},        {"avx512vnni", c->avx512vnni, A5},
        {"avx512bf16", c->avx512bf16, A5},
    };
    if (missing && len) missing[0] = '\0';
    int n_missing = 0;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if ((f[i].levels >> lvl & 1) && !f[i].have) n_missing = list_add(missing, len, n_missing, f[i].name);
    return (unsigned)lvl < ENG_KL_COUNT && n_missing == 0;
}

int eng__isa_choose(const char *env, const eng__cpu *c, eng__kernel_level *out, char *msg, size_t len)
{
    char have[64] = "";
    int n_have = 0;
    eng__kernel_level best = ENG_KL_SCALAR;
    for (int l = 0; l < ENG_KL_COUNT; l++)
        if (eng__isa_has(c, (eng__kernel_level)l, NULL, 0)) {
            n_have = list_add(have, sizeof have, n_have, level_names[l]);
            best = (eng__kernel_level)l;
        }
    if (msg && len) msg[0] = '\0';
    if (!env || !env[0]) {
        *out = best;
        return 0;
    }
    for (int l = 0; l < ENG_KL_COUNT; l++) {
        if (strcasecmp(env, level_names[l])) continue;
        char missing[128];
        if (eng__isa_has(c, (eng__kernel_level)l, missing, sizeof missing)) {
            *out = (eng__kernel_level)l;
            return 0;
        }
        if (msg && len)
            snprintf(msg, len, "ORTHOSERVE_ISA=%s: this CPU lacks %s, which the %s kernels need "
                     "(levels this CPU has: %s)", level_names[l], missing, level_names[l], have);
        return -1;
    }
    if (msg && len)
        snprintf(msg, len, "ORTHOSERVE_ISA=%.64s is not a kernel level (scalar, avx2, avx2vnni or avx512; "
                 "levels this CPU has: %s)", env, have);
    return -1;
}
