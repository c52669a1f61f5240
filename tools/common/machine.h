/*
 * machine.h - the machine's own limits, measured in the same run as a
 * benchmark (tools/bench.c, tools/bench-kernels.c): FP32-FMA, BF16-dot and
 * int8-VNNI peaks from tight loops of independent AVX-512 instructions, and
 * memory read bandwidth. All need AVX-512 (F, VNNI, BF16): check
 * mach_supported() first.
 */
#ifndef ORTHOSERVE_TOOLS_MACHINE_H
#define ORTHOSERVE_TOOLS_MACHINE_H
#include <stdbool.h>

bool mach_supported(void);
/* Operations per second (2 per multiply-add) over nth threads at once. */
double mach_peak_fma(int nth);
double mach_peak_bf16(int nth);
double mach_peak_vnni(int nth);
/* Bytes per second reading a 1 GiB buffer with nth threads, best of 3. */
double mach_read_bw(int nth);
#endif
