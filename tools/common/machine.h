/*
 * machine.h - the machine's own limits, measured in the same run as a
 * benchmark (tools/bench.c, tools/bench-kernels.c): the CPU's name and SIMD
 * features, the arithmetic peaks of the instructions it has (tight loops of
 * independent instructions, each compiled for its ISA and run only on a CPU
 * that has it) and memory read bandwidth. Runs on any CPU: a peak the CPU
 * lacks (every one off x86-64) is reported as not available.
 */
#ifndef ORTHOSERVE_TOOLS_MACHINE_H
#define ORTHOSERVE_TOOLS_MACHINE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "internal.h"

typedef enum {
    MACH_FMA_YMM,   /* FP32 vfmadd on ymm (AVX2 + FMA) */
    MACH_FMA_ZMM,   /* FP32 vfmadd on zmm (AVX-512F) */
    MACH_INT8_YMM,  /* int8 vpmaddubsw + vpmaddwd + vpaddd on ymm (AVX2) */
    MACH_VNNI_YMM,  /* int8 vpdpbusd on ymm (AVX-VNNI) */
    MACH_VNNI_ZMM,  /* int8 vpdpbusd on zmm (AVX512-VNNI) */
    MACH_BF16_ZMM,  /* BF16 vdpbf16ps on zmm (AVX512-BF16) */
    MACH_N_PEAKS,
    MACH_NO_PEAK = -1
} mach_peak;

/* The CPU's model name (/proc/cpuinfo), or "unknown". */
void mach_cpu_name(char *buf, size_t len);
/* Its SIMD features as the engine sees them (eng__cpu), space-separated,
 * or "none". */
void mach_cpu_flags(char *buf, size_t len);
/* The kernel level in use (ORTHOSERVE_ISA, else the best level); false with
 * the reason in err when ORTHOSERVE_ISA cannot be honoured. */
bool mach_level(eng__kernel_level *lvl, char *err, size_t len);
/* "cpu: ...", "simd: ...", "kernels: ... (levels this CPU has: ...)" lines. */
void mach_print_cpu(FILE *f, eng__kernel_level lvl);

bool mach_peak_available(mach_peak p);
const char *mach_peak_name(mach_peak p); /* "int8 VNNI ymm (vpdpbusd)" */
/* Operations per second (2 per multiply-add) over nth threads at once; 0
 * when the CPU lacks the instructions. */
double mach_peak_ops(mach_peak p, int nth);
/* The peak a level's products with weights of type t (ENG_TYPE_*) are
 * judged against: the level's int8 instruction for quantized weights (int8
 * activations), vdpbf16ps for BF16 on avx512, else FP32 FMA of the level's
 * width. MACH_NO_PEAK for the scalar level. */
mach_peak mach_level_peak(eng__kernel_level lvl, int t);

/* The median of v[0..n) (sorts v in place); n >= 1. */
double mach_median(double *v, int n);

/* Bytes per second reading a 1 GiB buffer with nth threads, best of 3. */
double mach_read_bw(int nth);
#endif
