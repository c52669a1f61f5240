/*
 * quant_avx2vnni.c - the AVX2 packed-layout micro-kernels (quant_avx2_pk.h)
 * built a second time with AVX-VNNI (-mavxvnni): the int8 dot products are
 * vpdpbusd on ymm. quant_avx2.c's init puts them in the "avx2vnni" table.
 */
#include "gemm.h"

#include <immintrin.h>
#include <string.h>

void eng__quant_avx2vnni_install(eng__kernels *k);

#define PK_VNNI 1
#include "quant_avx2_pk.h"

void eng__quant_avx2vnni_install(eng__kernels *k)
{
    pk_install(k);
}
