/*
 * cpu.c - x86 CPU feature detection (cpuid + xgetbv), done once.
 *
 * A feature counts only when both the CPU reports it and the OS saves the
 * register state it needs (XCR0: YMM for AVX/AVX2, opmask + ZMM for AVX-512).
 */
#include "internal.h"

#include <pthread.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t read_xcr0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

static eng__cpu cpu_info;
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

static void cpu_detect(void)
{
    eng__cpu c = {0};
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, cx, d;
    if (!__get_cpuid(1, &a, &b, &cx, &d)) {
        cpu_info = c;
        return;
    }
    bool osxsave = (cx >> 27) & 1;
    bool avx = (cx >> 28) & 1;
    bool fma = (cx >> 12) & 1;
    bool f16c = (cx >> 29) & 1;
    uint64_t xcr0 = osxsave ? read_xcr0() : 0;
    bool ymm_os = (xcr0 & 0x6) == 0x6;
    bool zmm_os = ymm_os && (xcr0 & 0xe0) == 0xe0;

    unsigned max_leaf = __get_cpuid_max(0, NULL);
    unsigned b7 = 0, c7 = 0, a71 = 0;
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b7, c7, d);
        unsigned sub_max = a;
        if (sub_max >= 1) {
            unsigned b1, c1, d1;
            __cpuid_count(7, 1, a71, b1, c1, d1);
            (void)b1; (void)c1; (void)d1;
        }
    }
    bool avx_ok = avx && ymm_os;
    c.avx2 = avx_ok && ((b7 >> 5) & 1);
    c.fma = avx_ok && fma;
    c.f16c = avx_ok && f16c;
    c.avxvnni = avx_ok && ((a71 >> 4) & 1);
    c.avx512f = zmm_os && ((b7 >> 16) & 1);
    c.avx512bw = c.avx512f && ((b7 >> 30) & 1);
    c.avx512vl = c.avx512f && ((b7 >> 31) & 1);
    c.avx512vnni = c.avx512f && ((c7 >> 11) & 1);
    c.avx512bf16 = c.avx512f && ((a71 >> 5) & 1);
    /* The avx2 / avx512 kernel files are also built with -mbmi2 and
     * -mavx512dq: without those, do not claim the levels that need them. */
    bool bmi2 = (b7 >> 8) & 1;
    bool dq = (b7 >> 17) & 1;
    if (!bmi2) c.avx2 = false;
    if (!dq) c.avx512f = false;
#endif
    cpu_info = c;
}

const eng__cpu *eng__cpu_get(void)
{
    pthread_once(&cpu_once, cpu_detect);
    return &cpu_info;
}
