/*
 * internal.h - declarations shared by the engine's source files (never
 * installed, never included by server/). Everything here carries the
 * eng__ prefix; file-local helpers are static and unprefixed.
 *
 * Modules: gguf (file reader), quant (block formats and kernels), pool
 * (compute threads), tokenizer, sampler, chat, model, forward.
 */
#ifndef ORTHOSERVE_INTERNAL_H
#define ORTHOSERVE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "orthoserve/engine.h"

#define ENG_ASSERT(c)                                                        \
    do {                                                                     \
        if (!(c)) eng__assert_fail(#c, __FILE__, __LINE__);                  \
    } while (0)
_Noreturn void eng__assert_fail(const char *expr, const char *file, int line);

/* printf-style message into a fixed buffer; never overflows, always NUL-terminated. */
void eng__errf(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Log through the callback installed with eng_log_set(); the engine never prints. */
void eng__log(eng_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Allocation wrappers: every engine allocation goes through these so a fault
 * injection knob (ORTHOSERVE_FAIL_ALLOC_AT) can make the N-th call fail. */
void *eng__malloc(size_t n);
/* n bytes of zeroed anonymous memory on 2 MiB huge pages where the kernel
 * allows (MADV_HUGEPAGE); free with eng__huge_free(p, n). */
void *eng__huge_alloc(size_t n);
void eng__huge_free(void *p, size_t n);
/* Drop this process's pages of a read-only file mapping inside [p, p + n)
 * (they stay in the page cache and fault back in if touched). */
void eng__drop_pages(const void *p, size_t n);
void *eng__calloc(size_t n, size_t sz);
void *eng__realloc(void *p, size_t n);
void *eng__aligned_alloc(size_t align, size_t n); /* free with eng__aligned_free */
void eng__aligned_free(void *p);
char *eng__strndup(const char *s, size_t n);

/* ------------------------------------------------------------------------ */
/* Byte buffer and clock (util.c)                                           */
/* ------------------------------------------------------------------------ */

/* A growable byte buffer. Start from {0}; appends grow it through
 * eng__realloc (at least doubling, never below 256 bytes) and keep data
 * NUL-terminated once anything was appended. A failed allocation sets oom
 * and turns every later append into a no-op, so a builder checks once, at
 * the end. Release with eng__buf_free() or eng__buf_take(). */
typedef struct {
    char *data;  /* len bytes (+ NUL), or NULL before the first append */
    size_t len, cap;
    bool oom;
} eng__buf;
/* Room for n more bytes (and the NUL); false (and oom) if it cannot be had. */
bool eng__buf_reserve(eng__buf *b, size_t n);
void eng__buf_append(eng__buf *b, const void *p, size_t n);
void eng__buf_puts(eng__buf *b, const char *s);
void eng__buf_printf(eng__buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The contents as a NUL-terminated string the caller frees with free() ("" if
 * nothing was appended); NULL after an allocation failure. b is emptied either way. */
char *eng__buf_take(eng__buf *b);
void eng__buf_free(eng__buf *b);

/* Monotonic clock in seconds (CLOCK_MONOTONIC): for intervals only. */
double eng__now(void);

/* ------------------------------------------------------------------------ */
/* GGUF reader (gguf.c)                                                     */
/* ------------------------------------------------------------------------ */

/* A byte string inside the mapping: not NUL-terminated. */
typedef struct {
    const char *ptr;
    uint64_t len;
} eng__str;

enum {
    GGUF_VT_UINT8 = 0, GGUF_VT_INT8 = 1, GGUF_VT_UINT16 = 2, GGUF_VT_INT16 = 3,
    GGUF_VT_UINT32 = 4, GGUF_VT_INT32 = 5, GGUF_VT_FLOAT32 = 6, GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8, GGUF_VT_ARRAY = 9, GGUF_VT_UINT64 = 10, GGUF_VT_INT64 = 11,
    GGUF_VT_FLOAT64 = 12, GGUF_VT_COUNT
};

typedef struct {
    eng__str key;
    uint32_t type;       /* GGUF_VT_* */
    uint32_t arr_type;   /* element type when type == GGUF_VT_ARRAY */
    uint64_t n;          /* element count for arrays, 1 otherwise */
    const uint8_t *data; /* value bytes (scalar), or first element (array) */
    uint64_t nbytes;     /* bytes the value occupies in the file */
} eng__gguf_kv;

typedef struct {
    eng__str name;
    uint32_t n_dims;
    int64_t ne[4];       /* ne[0] is the fastest-varying (row length) */
    uint32_t type;       /* ENG_TYPE_* (ggml type id) */
    uint64_t offset;     /* relative to the data section */
    const void *data;    /* inside the mapping */
    uint64_t nbytes;
} eng__gguf_tensor;

typedef struct eng__gguf {
    const uint8_t *base; /* mapping (or caller's buffer) */
    size_t size;
    bool mapped;         /* munmap on close */
    bool owned;          /* read into memory (eng__gguf_open_read): free on close */
    uint32_t version;
    uint64_t n_kv;
    eng__gguf_kv *kv;
    uint64_t n_tensors;
    eng__gguf_tensor *tensors;
    uint64_t alignment;
    uint64_t data_offset;
} eng__gguf;

/* Open and validate. On failure returns ENG_EIO / ENG_EFORMAT / ENG_ENOMEM and
 * writes a message naming the problem into err. Free with eng__gguf_close(). */
eng_status eng__gguf_open(const char *path, eng__gguf **out, char *err, size_t errlen);
/* Same, but the whole file is read into memory instead of mapped: nothing
 * done to the file afterwards (truncation, rewriting) can affect the handle. */
eng_status eng__gguf_open_read(const char *path, eng__gguf **out, char *err, size_t errlen);
/* Same over a caller-owned buffer that must outlive the handle (fuzzing, tests). */
eng_status eng__gguf_open_mem(const void *buf, size_t size, eng__gguf **out, char *err,
                              size_t errlen);
void eng__gguf_close(eng__gguf *g);

const eng__gguf_kv *eng__gguf_find(const eng__gguf *g, const char *key);
const eng__gguf_tensor *eng__gguf_tensor_find(const eng__gguf *g, const char *name);
/* Typed getters: true when the key exists and converts losslessly to the type
 * (any integer type that fits; FLOAT32/FLOAT64 for floats). */
bool eng__gguf_get_u64(const eng__gguf *g, const char *key, uint64_t *v);
bool eng__gguf_get_i64(const eng__gguf *g, const char *key, int64_t *v);
bool eng__gguf_get_f32(const eng__gguf *g, const char *key, float *v);
bool eng__gguf_get_bool(const eng__gguf *g, const char *key, bool *v);
bool eng__gguf_get_str(const eng__gguf *g, const char *key, eng__str *v);
/* String array: fills out[0..kv->n) with views into the mapping. */
eng_status eng__gguf_arr_strings(const eng__gguf_kv *kv, eng__str *out);
/* Numeric array element i as double / int64 (bounds are the caller's job: i < kv->n). */
double eng__gguf_arr_f64(const eng__gguf_kv *kv, uint64_t i);
int64_t eng__gguf_arr_i64(const eng__gguf_kv *kv, uint64_t i);
const char *eng__gguf_vtype_name(uint32_t t);
/* Name of any ggml type id the reader knows ("Q2_K", "IQ4_XS", ...), or NULL. */
const char *eng__ggml_type_name(uint32_t t);

/* ------------------------------------------------------------------------ */
/* Weight types and kernels (quant.c, quant_avx*.c; driver: gemm.c/gemm.h)  */
/* ------------------------------------------------------------------------ */

/* ggml type ids as stored in GGUF files. */
enum {
    ENG_TYPE_F32 = 0, ENG_TYPE_F16 = 1, ENG_TYPE_Q4_0 = 2, ENG_TYPE_Q4_1 = 3,
    ENG_TYPE_Q5_0 = 6, ENG_TYPE_Q5_1 = 7, ENG_TYPE_Q8_0 = 8, ENG_TYPE_Q8_1 = 9,
    ENG_TYPE_Q2_K = 10, ENG_TYPE_Q3_K = 11, ENG_TYPE_Q4_K = 12, ENG_TYPE_Q5_K = 13,
    ENG_TYPE_Q6_K = 14, ENG_TYPE_Q8_K = 15, ENG_TYPE_BF16 = 30, ENG_TYPE_COUNT = 64
};

/* CPU features, detected once (cpuid + xgetbv). */
typedef struct {
    bool avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512vnni, avx512bf16, avxvnni;
} eng__cpu;
const eng__cpu *eng__cpu_get(void);

/*
 * Kernel levels, each a superset of the one before in what the CPU needs:
 *   scalar    portable C, any CPU;
 *   avx2      AVX2 + FMA + F16C (+ BMI2);
 *   avx2vnni  avx2 + AVX-VNNI (vpdpbusd on ymm);
 *   avx512    avx2 + AVX-512 F/BW/VL/DQ + AVX512-VNNI + AVX512-BF16.
 * eng__kernels_get(level) returns that level's table (NULL if the CPU lacks
 * it); eng__kernels_best() the level in use: ORTHOSERVE_ISA=scalar|avx2|
 * avx2vnni|avx512 when set (and not empty), else the best the CPU has.
 */
typedef enum {
    ENG_KL_SCALAR = 0, ENG_KL_AVX2 = 1, ENG_KL_AVX2VNNI = 2, ENG_KL_AVX512 = 3
} eng__kernel_level;
#define ENG_KL_COUNT 4
const char *eng__kernel_level_name(eng__kernel_level lvl); /* "scalar", "avx2", ... */
/* Whether the CPU c has everything level lvl needs; when not and missing is
 * non-NULL, the missing features ("avx512bf16, avx512vnni") go there. */
bool eng__isa_has(const eng__cpu *c, eng__kernel_level lvl, char *missing, size_t len);
/*
 * The level to use on CPU c given the ORTHOSERVE_ISA value env (NULL or ""
 * for the default: the best level c has). Returns 0 and sets *out, or -1
 * with a message in msg naming ORTHOSERVE_ISA, the level asked for, what the
 * CPU lacks and the levels it has (an unknown name or a level the CPU lacks
 * is an error, never a silent fallback). Pure: depends on its arguments only.
 */
int eng__isa_choose(const char *env, const eng__cpu *c, eng__kernel_level *out, char *msg, size_t len);

/*
 * One weight type. A matrix row of n elements (n % blck == 0) takes
 * n / blck * type_size bytes. Products W·x quantize the activation row x
 * once into vec_type (Q8_0, Q8_1, Q8_K, BF16 or F32, as ggml does) and then
 * take the dot product of each weight row with it.
 */
typedef struct {
    const char *name;
    int blck;                /* elements per block */
    size_t type_size;        /* bytes per block */
    int vec_type;            /* ENG_TYPE_* the activations are converted to */
    /* Dequantize n elements (n % blck == 0). */
    void (*to_float)(const void *src, float *dst, int64_t n);
    /* Quantize / convert n floats into this type (n % blck == 0); only
     * required for activation types (F32, F16, BF16, Q8_0, Q8_1, Q8_K) and the
     * types the model writer emits (F16, BF16, Q8_0, Q4_0). NULL otherwise. */
    void (*from_float)(const float *src, void *dst, int64_t n);
} eng__type_info;

const eng__type_info *eng__type(int type); /* NULL for unknown/unsupported ids */
size_t eng__row_size(int type, int64_t n); /* bytes for one row of n elements */

/*
 * Kernel table for one ISA level. All pointers non-NULL for supported types.
 *
 * vec_dot[t](n, w, x) = sum_i W[i] * X[i] where W is one row of type t and
 *   X is the same-length activation row already converted to eng__type(t)->vec_type.
 *
 * gemm[t](n, W, w_stride, nr, X, x_stride, nx, Y, y_stride):
 *   for r < nr, j < nx: Y[j * y_stride + r] = vec_dot(n, W + r*w_stride, X + j*x_stride)
 *   strides in bytes for W and X, in floats for Y. Must give bit-identical
 *   results to calling vec_dot for each pair (so batch composition never
 *   changes a sequence's arithmetic).
 *
 * quantize_act[t] converts n floats into type t's vec_type (same as
 *   eng__type(vec_type)->from_float but possibly SIMD; bit-identical to it).
 */
typedef float (*eng__vec_dot_fn)(int64_t n, const void *w, const void *x);
typedef void (*eng__gemm_fn)(int64_t n, const void *w, size_t w_stride, int64_t nr,
                             const void *x, size_t x_stride, int64_t nx, float *y,
                             size_t y_stride);
typedef void (*eng__quant_fn)(const float *src, void *dst, int64_t n);

/*
 * Attention over the block KV cache (attn.c, attn_avx2.c, attn_avx512.c). The cache holds
 * ENG_KV_BLOCK positions per block; within a block, each kv head's keys are
 * stored transposed, [head_dim][ENG_KV_BLOCK], and its values as
 * [ENG_KV_BLOCK][head_dim], in the element type of K and of V (kvcache.c
 * writes them):
 *   F32, F16: those arrays of floats / fp16 values;
 *   Q8_0: the array of int8 quants, then the fp16 scales of the groups of
 *         ENG_KV_GROUP dims of each position (the last group shorter when
 *         head_dim is not a multiple): K [n_groups][ENG_KV_BLOCK] (the 16
 *         keys' scales of a group together), V [ENG_KV_BLOCK][n_groups].
 *         A value is scale * quant.
 *
 * attn(a): for every query row i < nq and head r < n_rep (the query heads of
 *   one kv head), out = softmax(q . K^T * scale) . V over keys 0..last[i] of
 *   one sequence, whose block b starts at k + blk[b] * k_stride bytes (and
 *   v + blk[b] * v_stride). With first set, row i sees keys first[i]..last[i]
 *   only (a sliding-window layer); the blocks before first[i] / ENG_KV_BLOCK
 *   are not read for it. Each query's arithmetic is independent of the other
 *   queries in the call.
 */
#define ENG_KV_BLOCK 16
#define ENG_KV_GROUP 32 /* Q8_0: dims per scale */
#define ENG_KV_GROUPS(hd) (((hd) + ENG_KV_GROUP - 1) / ENG_KV_GROUP)
/* The index of a cache type in the SIMD attention files' tables of
 * instances: 0 F32, 1 F16, 2 Q8_0. */
static inline int eng__kv_index(int type) { return type == ENG_TYPE_F32 ? 0 : type == ENG_TYPE_F16 ? 1 : 2; }

typedef struct {
    int hd, n_rep;
    int32_t nq;
    const float *q;     /* row i, head r at q + i * q_stride + r * hd */
    float *out;         /* same layout as q */
    size_t q_stride;
    const int32_t *last; /* (nq) last key position each row sees */
    const int32_t *first; /* (nq) first key position each row sees, or NULL: 0 */
    const void *k, *v;   /* this layer's block 0, at this kv head */
    int type_k, type_v;  /* ENG_TYPE_F32, ENG_TYPE_F16 or ENG_TYPE_Q8_0 */
    const int32_t *blk;  /* the sequence's block ids */
    size_t k_stride, v_stride; /* bytes from one block to the next */
    float scale;
    float *scratch;      /* ENG_ATTN_SCRATCH(hd) floats */
} eng__attn_args;
/* sums of a tile of up to 8 queries, and (scalar kernel) one block's K and V as floats */
#define ENG_ATTN_SCRATCH(hd) ((size_t)(8 + 2 * ENG_KV_BLOCK) * (size_t)(hd))
/* Bytes of one kv head's K (or V) in one block, in element type t. */
static inline size_t eng__kv_head_bytes(int t, int hd)
{
    const size_t n = (size_t)ENG_KV_BLOCK * (size_t)hd;
    return t == ENG_TYPE_F32   ? n * 4
           : t == ENG_TYPE_F16 ? n * 2
           : t == ENG_TYPE_Q8_0 ? n + (size_t)ENG_KV_BLOCK * ENG_KV_GROUPS(hd) * 2
                               : 0;
}
/* Position slot of one kv head's block (head: its K or V bytes) from / to floats. */
void eng__kv_put_k(int t, void *head, int hd, int slot, const float *k);
void eng__kv_put_v(int t, void *head, int hd, int slot, const float *v);
void eng__kv_read_k(int t, const void *head, int hd, int slot, float *k);
void eng__kv_read_v(int t, const void *head, int hd, int slot, float *v);
typedef void (*eng__attn_fn)(const eng__attn_args *a);
void eng__attn_scalar(const eng__attn_args *a);
void eng__attn_avx2(const eng__attn_args *a);
/* The SIMD attention kernels' 2^f on |f| <= 1/2: a degree-6 polynomial
 * interpolating 2^f at the Chebyshev nodes of [-1/2, 1/2], highest degree
 * first (c0 = 1, so 2^0 = 1 exactly); error in attn_avx2.c. */
#define ENG_EXP2_POLY 1.54614449e-4f, 1.34004280e-3f, 9.61805694e-3f, 5.55032715e-2f, \
                      2.40226507e-1f, 6.93147182e-1f, 1.0f
void eng__attn_avx512(const eng__attn_args *a);

typedef struct {
    const char *name; /* eng__kernel_level_name() of its level */
    eng__vec_dot_fn vec_dot[ENG_TYPE_COUNT];
    eng__gemm_fn gemm[ENG_TYPE_COUNT];
    eng__gemm_fn gemm_packed[ENG_TYPE_COUNT]; /* packed rows (below), or NULL */
    eng__quant_fn quantize_act[ENG_TYPE_COUNT];
    eng__attn_fn attn; /* attn.c, attn_avx2.c, attn_avx512.c */
} eng__kernels;

/*
 * Packed weights (repacked at load, model.c). Decode streams 16 weight rows
 * at a time; read from the file layout those are 16 interleaved streams,
 * which the hardware prefetchers follow badly, and every block's bytes must
 * be shuffled in registers before the dot products. For F16 (rows of a
 * multiple of 16 elements), Q8_0, Q4_K and Q6_K a matrix's rows can instead
 * be stored in groups of ENG_PACK_ROWS:
 * group g takes exactly the bytes of its 16 rows in the file layout
 * (16 * row_bytes from g * 16 * row_bytes), reordered so that one linear
 * stream feeds 16 output rows, lanes = rows ("[x][row]" below: 4-byte unit x
 * of each of the 16 rows, row-minor):
 *   F16, per 16 elements (512 B): [element 0..15][row], 2-byte units;
 *   Q8_0, per block (544 B): quants [dword 0..7][row] as unsigned bytes
 *         (q ^ 0x80, the vpdpbusd operand), then the rows' 16 fp16 scales;
 *   Q4_K, per superblock (2304 B): the 16-byte headers [dword 0..3][row]
 *         (d|dmin, scales 0..3, 4..7, 8..11), then the quants of each of the
 *         4 32-byte groups as [dword 0..7][row] (nibbles left packed);
 *   Q6_K, per superblock (3360 B): scales [dword 0..3][row], then for each
 *         half h and dword t of its 32-byte groups, in the order decode reads
 *         them: [ql dword t of bytes 64h..][ql of 64h + 32..][qh of 128 + 32h..]
 *         (each [row], 192 B), then the 16 fp16 d.
 * Rows past the last whole group keep the file layout.
 *
 * eng__pack16 / eng__unpack16 convert one group (portable C, any CPU).
 * gemm_packed[t] is gemm over nr % 16 == 0 packed rows (w_stride is still
 * the file's row size), bit-identical to gemm on the unpacked rows; NULL
 * where the level has none, and then the model keeps the file layout.
 * eng__gemm_packed_ref is its scalar reference (unpack, then vec_dot).
 */
#define ENG_PACK_ROWS 16
bool eng__packable(int type, int64_t n); /* rows of n elements of this type */
void eng__pack16(int type, const uint8_t *src, size_t row_bytes, uint8_t *dst);
void eng__unpack16(int type, const uint8_t *src, size_t row_bytes, uint8_t *dst);
void eng__gemm_packed_ref(int type, int64_t n, const void *w, size_t w_stride, int64_t nr,
                          const void *x, size_t x_stride, int64_t nx, float *y, size_t y_stride);


/*
 * Opt-in OpenBLAS path for wide F32/F16/BF16 products (gemm_blas.c). NOT
 * bit-identical to gemm[] (within float rounding of it), so off by default:
 * eng__blas_min_nx() is ORTHOSERVE_BLAS_NX (activation rows from which
 * forward.c uses it), 0 when unset. eng__gemm_blas has gemm[type]'s
 * arguments (x in the type's vec_type; packed: whole packed groups) and
 * returns false, doing nothing, when it cannot run (type, sizes, memory).
 */
int64_t eng__blas_min_nx(void);
bool eng__blas_type(int type);
bool eng__gemm_blas(int type, bool packed, int64_t n, const void *w, size_t w_stride, int64_t nr,
                    const void *x, size_t x_stride, int64_t nx, float *y, size_t y_stride);

const eng__kernels *eng__kernels_get(eng__kernel_level lvl); /* NULL if CPU lacks it */
/* The level in use, or NULL when ORTHOSERVE_ISA cannot be honoured; then
 * eng__kernels_error() says why (eng_kernels_check() in the public API). */
const eng__kernels *eng__kernels_best(void);
const char *eng__kernels_error(void);

float eng__fp16_to_fp32(uint16_t h);
uint16_t eng__fp32_to_fp16(float f);   /* round to nearest even, like F16C */
float eng__bf16_to_fp32(uint16_t h);
uint16_t eng__fp32_to_bf16(float f);   /* round to nearest even, NaN kept quiet */

/* ------------------------------------------------------------------------ */
/* Compute pool (pool.c)                                                    */
/* ------------------------------------------------------------------------ */

typedef struct eng__pool eng__pool;
/* fn(ith, nth, arg) runs on nth threads (the caller is thread 0). */
typedef void (*eng__pool_fn)(int ith, int nth, void *arg);
eng_status eng__pool_new(int n_threads, eng__pool **out);
void eng__pool_free(eng__pool *p);
int eng__pool_size(const eng__pool *p);
/* Runs fn on every thread and returns when all are done. Not reentrant:
 * one caller at a time. */
void eng__pool_run(eng__pool *p, eng__pool_fn fn, void *arg);
/* The same on the caller alone when n <= 1 (work too small to share), else
 * on all threads. */
void eng__pool_run_n(eng__pool *p, int n, eng__pool_fn fn, void *arg);
/* Inside a job: wait until every thread of the pool has reached the barrier. */
void eng__pool_barrier(eng__pool *p);
/* Rows [*r0, *r1) of n for thread ith of nth, in chunks that are multiples of align. */
void eng__split(int64_t n, int ith, int nth, int64_t align, int64_t *r0, int64_t *r1);

/* ------------------------------------------------------------------------ */
/* Context internals the scheduler needs (forward.c)                        */
/* ------------------------------------------------------------------------ */

/* KV blocks a sequence of n_pos positions occupies, and the pool's size. */
int32_t eng__kv_blocks_for(int32_t n_pos);
int32_t eng__kv_blocks_total(const eng_context *c);
int32_t eng__ctx_n_seq(const eng_context *c);
int32_t eng__ctx_n_batch(const eng_context *c);
const eng_model *eng__ctx_model(const eng_context *c);
/* Shared-prefix forks (forward.c): dst (empty) gets src's first n_pos
 * positions, full blocks shared by reference, a partial last block copied
 * (one free block needed: ENG_ECTXFULL). Blocks in use over all sequences. */
eng_status eng__seq_fork(eng_context *c, int32_t src, int32_t dst, int32_t n_pos);
int32_t eng__kv_blocks_used(const eng_context *c);
/* Pooled outputs (pooling.c): the final-norm hidden state of batch row i of
 * the last eng_decode (n_embd floats), and the model's pooling type
 * (<arch>.pooling_type; ENG_POOLING_NONE when the file has none). */
void eng__hidden_row(const eng_context *c, int32_t i, float *out);
/* The checks eng_sampler_new makes, without allocating (sampler.c). */
bool eng__sampler_params_ok(const eng_sampler_params *p, int32_t n_vocab);

#endif /* ORTHOSERVE_INTERNAL_H */
