/*
 * attn_sgemm.h - prefill attention as OpenBLAS sgemm (attn_sgemm.c), the
 * reference tools/bench-blas measures the engine's attention kernels against.
 */
#ifndef ORTHOSERVE_TOOLS_ATTN_SGEMM_H
#define ORTHOSERVE_TOOLS_ATTN_SGEMM_H

#include "internal.h"

/* a->kernel's result (eng__attn_args, internal.h) within float rounding;
 * false (nothing done) without memory. */
bool bench_attn_sgemm(const eng__attn_args *a);

#endif
