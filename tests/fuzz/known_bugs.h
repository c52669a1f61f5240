/*
 * known_bugs.h - bugs the fuzzers found that are reported but not fixed yet.
 *
 * While a bug is open, the harnesses step around the inputs that trigger it
 * so that fuzzing can go on finding new ones. Each entry names the
 * regression input that reproduces it. When the fix lands, set the entry
 * to 0 (or delete it and its guard): the regression input then runs in
 * ctest (fuzz-regress.*) in every build and keeps the bug fixed.
 */
#ifndef ORTHOSERVE_FUZZ_KNOWN_BUGS_H
#define ORTHOSERVE_FUZZ_KNOWN_BUGS_H

/* engine/src/gguf.c eng__gguf_arr_i64: `(int64_t)fv` of a FLOAT32/FLOAT64
 * array element that is NaN, infinite or outside the int64 range is
 * undefined behaviour (UBSan float-cast-overflow). Reachable from any model
 * file through tokenizer.ggml.token_type stored as a float array.
 * Regressions: regressions/fuzz_gguf/arr-i64-nan.gguf,
 *              regressions/fuzz_model/token-type-f32-nan.gguf */
#ifndef KNOWN_BUG_ARR_I64_FLOAT_CAST
#define KNOWN_BUG_ARR_I64_FLOAT_CAST 0 /* fixed in 82dc022 */
#endif

/* engine/src/model.c bind_mat: a 2-D F32 weight matrix is not checked for
 * 4-byte alignment (1-D tensors are). With general.alignment 1 or 2 and an
 * odd tensor offset, the scalar kernels (quant.c dot_f32, gemm) load
 * misaligned `const float *` (UBSan alignment; a vectorizing compiler may
 * emit aligned SIMD loads that fault). Reproduce with ORTHOSERVE_ISA=scalar.
 * Regression: regressions/fuzz_model/f32-matrix-misaligned.gguf */
#ifndef KNOWN_BUG_F32_MAT_MISALIGNED
#define KNOWN_BUG_F32_MAT_MISALIGNED 0 /* fixed: bind_mat checks element alignment */
#endif

/* engine/src/quant.c round_even (scalar Q8_0/Q8_1/Q8_K activation
 * quantization): `(int)nearbyintf(v)` of NaN or of +-inf (x * id with
 * amax = inf gives NaN) is undefined behaviour (UBSan float-cast-overflow).
 * Any model whose weights produce a NaN/inf activation hits it on the
 * scalar kernels (ORTHOSERVE_ISA=scalar, or a CPU without AVX2).
 * While open, the scalar-kernel run of fuzz_model only runs models whose
 * products all take F32 activations.
 * Regression: regressions/fuzz_model/q8-act-nan.gguf */
#ifndef KNOWN_BUG_SCALAR_Q8_NAN
#define KNOWN_BUG_SCALAR_Q8_NAN 0 /* fixed: round_even clamps first */
#endif

#endif
