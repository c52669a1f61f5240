/*
 * gemm.h - the one weight-product driver (gemm.c) and the contract of the
 * micro-kernels each ISA file gives it (quant_avx2.c, quant_avx512.c).
 *
 * The driver owns every decision about the shape of a product
 * Y = W · X (nr weight rows of n elements, nx activation rows): how the rows
 * are cut into register tiles, 16-row groups or strips of groups, decode
 * (few activation rows: 16 rows at a time straight from the weights) versus
 * prefill (strips packed once per call, then tiles over the activations),
 * the packed-row and file-layout paths, scratch buffers and their fallbacks.
 * An ISA file holds only micro-kernels: block dot products, tiles, packing.
 * For each weight type it implements, it fills one eng__ukernel and turns it
 * into the type's eng__kernels entries with ENG_GEMM_ENTRIES. Adding an ISA
 * (or a packed layout to one) is one file of micro-kernels and their tables.
 *
 * CONTRACT of an eng__ukernel (all strides in bytes except ys, in floats;
 * "rows" are weight rows in the file layout unless said otherwise):
 *
 * - Every micro-kernel computes, for each (weight row r, activation row j)
 *   it covers, y[j * ys + r] with one fixed per-pair recipe, the same in
 *   every micro-kernel of the set and independent of which other rows or
 *   activations share the call. That is what makes gemm == vec_dot bit for
 *   bit and the packed layout == the file layout bit for bit, whatever the
 *   driver chooses.
 *
 * - xaux_block_bytes (0: none): per activation row and weight block
 *   (eng__type(type)->blck elements), bytes of side data the micro-kernels
 *   read (e.g. block sums, scales). xaux(n, x, xs, nx, out) fills it for nx
 *   activation rows, row j's part at j * (n / blck) * xaux_block_bytes; the
 *   driver computes it once per call and passes gemv16 / strip_tile the part
 *   of their first activation row (xa below; NULL when there is none).
 *   Register tiles get none.
 *
 * - The file layout is done by exactly one of:
 *   a) tile (tile_mr, tile_nx): tile(mr, nx, ...) with 1 <= mr <= tile_mr,
 *      1 <= nx <= tile_nx fills the mr x nx block of y from rows w (stride
 *      ws) and activations x (stride xs). Used for every nx.
 *   b) gemv16 + strips: gemv16(nv, n, w, ws, x, xa, y) fills y[0..nv) for
 *      16 rows of which the first nv (1..16) are valid, with one activation
 *      row (decode: nx < prefill_nx). For nx >= prefill_nx the driver cuts
 *      the rows into strips of up to strip_groups (<= ENG_GEMM_MAX_GROUPS)
 *      groups of 16 rows, has strip_pack put each group in the kernels'
 *      strip format, then runs strip_tile over up to strip_nx activation
 *      rows at a time:
 *        strip_bytes(n, packed): bytes of one packed group in the strip
 *          buffer (the driver allocates strip_groups of them, 64-byte
 *          aligned); 0: no buffer needed (packed groups read in place).
 *        strip_pack(v, groups, nv, packed, n, w, ws, buf): packs group v of a
 *          strip of `groups` (nv valid rows; from a packed group if packed)
 *          somewhere in buf and returns where the strip tile finds it.
 *        strip_tile(groups, nx, nv_last, n, g, x, xs, xa, y, ys): the
 *          groups x 16 rows (g[v] as returned; the last has nv_last valid
 *          rows, the others 16) times nx activation rows.
 *      With many activation rows the driver packs a panel of strips (each
 *      into its own buf) before it runs their tiles, a pass of activation
 *      rows that stays in L2 at a time (gemm.c, eng__gemm_blocking).
 *
 * - wide (optional): another eng__ukernel, used for the whole call when
 *   nx >= wide->prefill_nx (see the field).
 *
 * - The packed layout (internal.h, "Packed weights") is optional:
 *   gemv16_packed is gemv16 on one packed group (all 16 rows valid). Prefill
 *   (nx >= prefill_nx) on packed rows runs the strips with packed = true when
 *   strip_packed is set; otherwise the driver unpacks strip_groups groups at
 *   a time to the file layout (unpack16, or the portable eng__unpack16 when
 *   NULL) and runs the file-layout path on them.
 *
 * Scratch that cannot be allocated never fails a product: the driver falls
 * back to decode (gemv16) or to one activation row at a time, which give the
 * same bits.
 *
 * Plugging in: the ISA file's init (called by quant.c's tables_init on a
 * copy of the table below it) calls NAME_install(k) for each of its types;
 * tests/unit/test_quant.c then compares every entry with the scalar
 * reference, packed against file layout, gemm against vec_dot.
 */
#ifndef ORTHOSERVE_GEMM_H
#define ORTHOSERVE_GEMM_H

#include "internal.h"

/* Rows in a gemv16 call and in a strip's group (== ENG_PACK_ROWS). */
#define ENG_GEMM_GROUP 16
/* Most groups per strip. */
#define ENG_GEMM_MAX_GROUPS 4

typedef void (*eng__tile_fn)(int mr, int nx, int64_t n, const uint8_t *w, size_t ws,
                             const uint8_t *x, size_t xs, float *y, size_t ys);
typedef void (*eng__gemv16_fn)(int nv, int64_t n, const uint8_t *w, size_t ws, const uint8_t *x,
                               const void *xa, float *y);
typedef size_t (*eng__strip_bytes_fn)(int64_t n, bool packed);
typedef const uint8_t *(*eng__strip_pack_fn)(int v, int groups, int nv, bool packed, int64_t n,
                                             const uint8_t *w, size_t ws, uint8_t *buf);
typedef void (*eng__strip_tile_fn)(int groups, int nx, int nv_last, int64_t n,
                                   const uint8_t *const *g, const uint8_t *x, size_t xs,
                                   const void *xa, float *y, size_t ys);
typedef void (*eng__unpack16_fn)(int64_t n, const uint8_t *src, size_t ws, uint8_t *dst);
typedef void (*eng__xaux_fn)(int64_t n, const uint8_t *x, size_t xs, int64_t nx, void *out);

/* One weight type's micro-kernels at one ISA level (contract above). */
typedef struct eng__ukernel eng__ukernel;
struct eng__ukernel {
    int type;                 /* ENG_TYPE_* of the weights */
    size_t xaux_block_bytes;  /* activation side data per row and block, or 0 */
    eng__xaux_fn xaux;
    /* file layout, a) */
    eng__tile_fn tile;
    int tile_mr, tile_nx;
    /* file layout, b) */
    eng__gemv16_fn gemv16;
    int prefill_nx;           /* activation rows from which strips (or unpacking) pay */
    eng__strip_bytes_fn strip_bytes;
    eng__strip_pack_fn strip_pack;
    eng__strip_tile_fn strip_tile;
    int strip_groups, strip_nx;
    /* packed layout (optional) */
    eng__gemv16_fn gemv16_packed;
    bool strip_packed;
    eng__unpack16_fn unpack16;
    /* optional: a second set of kernels the driver uses instead, whole, when
     * nx >= wide->prefill_nx (e.g. prefill strips on weights expanded once
     * per strip, which pay only over many activation rows). It keeps the
     * per-pair recipe of this set and has its own xaux; its gemv16 /
     * gemv16_packed are the decode fallbacks of its products. */
    const eng__ukernel *wide;
};

/* One packed F16 group back to its 16 file-layout rows (row k at dst + k * ds),
 * an eng__unpack16_fn in AVX2 (quant_avx2.c); the AVX-512 F16 kernels use it too. */
void eng__f16_unpack16_avx2(int64_t n, const uint8_t *g, size_t ds, uint8_t *dst);

/* Y = W · X with uk's kernels, as eng__gemm_fn (internal.h); packed: the
 * rows are whole packed groups (nr % 16 == 0) and uk has gemv16_packed. */
void eng__gemm(const eng__ukernel *uk, bool packed, int64_t n, const void *w, size_t ws,
               int64_t nr, const void *x, size_t xs, int64_t nx, float *y, size_t ys);

/* The prefill blocking of the strips (gemm.c): bytes of activation rows per
 * pass and of strips per panel; 0 restores a default. Tests shrink them to
 * reach every path with small shapes; it changes no result bit. */
void eng__gemm_blocking(size_t pass_bytes, size_t panel_bytes);

/* NAME_dot, NAME_gemm, NAME_gemm_packed (table entries over eng__gemm with
 * the eng__ukernel UK) and NAME_install(k), which puts them in table k
 * (gemm_packed only when UK has packed kernels, else NULL). */
#define ENG_GEMM_ENTRIES(NAME, UK)                                                           \
    static float NAME##_dot(int64_t n, const void *w, const void *x)                         \
    {                                                                                        \
        float r;                                                                             \
        eng__gemm(&(UK), false, n, w, 0, 1, x, 0, 1, &r, 1);                                 \
        return r;                                                                            \
    }                                                                                        \
    static void NAME##_gemm(int64_t n, const void *w, size_t ws, int64_t nr, const void *x,  \
                            size_t xs, int64_t nx, float *y, size_t ys)                      \
    {                                                                                        \
        eng__gemm(&(UK), false, n, w, ws, nr, x, xs, nx, y, ys);                             \
    }                                                                                        \
    static void NAME##_gemm_packed(int64_t n, const void *w, size_t ws, int64_t nr,          \
                                   const void *x, size_t xs, int64_t nx, float *y, size_t ys) \
    {                                                                                        \
        eng__gemm(&(UK), true, n, w, ws, nr, x, xs, nx, y, ys);                              \
    }                                                                                        \
    static void NAME##_install(eng__kernels *k)                                              \
    {                                                                                        \
        k->vec_dot[(UK).type] = NAME##_dot;                                                  \
        k->gemm[(UK).type] = NAME##_gemm;                                                    \
        k->gemm_packed[(UK).type] = (UK).gemv16_packed ? NAME##_gemm_packed : NULL;          \
    }

#endif /* ORTHOSERVE_GEMM_H */
