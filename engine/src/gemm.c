/*
 * gemm.c - the weight-product driver: cuts Y = W · X into calls of one ISA
 * level's micro-kernels (the eng__ukernel contract is in gemm.h). Portable
 * C: it never touches a vector register, so every ISA shares it.
 */
#include "gemm.h"

#include <stdlib.h>
#include <string.h>

/* Activation rows per pass of the register tiles over the weight rows: the
 * pass's activations stay in L2 while every row block streams past them. */
#define XCHUNK 64
/* Side data that fits here needs no allocation (Q8_0 rows of 4096: 64 rows). */
#define XAUX_STACK 8192

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* 64-byte aligned scratch, or NULL; free with free(). */
static uint8_t *scratch(size_t bytes)
{
    return aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

/* Where one call's activation side data is: xa (NULL if none), xar bytes per row. */
typedef struct {
    const uint8_t *xa;
    size_t xar;
} xside;

static const void *xa_row(xside s, int64_t j) { return s.xa ? s.xa + (size_t)j * s.xar : NULL; }

/* File layout a): register tiles, XCHUNK activation rows at a time. */
static void run_tiles(const eng__ukernel *uk, int64_t n, const uint8_t *w, size_t ws, int64_t nr,
                      const uint8_t *x, size_t xs, int64_t nx, float *y, size_t ys)
{
    for (int64_t jc = 0; jc < nx; jc += XCHUNK) {
        int64_t je = min64(jc + XCHUNK, nx);
        for (int64_t r = 0; r < nr; r += uk->tile_mr) {
            int mr = (int)min64(nr - r, uk->tile_mr);
            for (int64_t j = jc; j < je; j += uk->tile_nx)
                uk->tile(mr, (int)min64(je - j, uk->tile_nx), n, w + (size_t)r * ws, ws,
                         x + (size_t)j * xs, xs, y + (size_t)j * ys + (size_t)r, ys);
        }
    }
}

/* Decode: 16 rows at a time, one activation row at a time. */
static void run_gemv(const eng__ukernel *uk, bool packed, int64_t n, const uint8_t *w, size_t ws,
                     int64_t nr, const uint8_t *x, size_t xs, xside xa, int64_t nx, float *y,
                     size_t ys)
{
    for (int64_t r = 0; r < nr; r += ENG_GEMM_GROUP) {
        int nv = (int)min64(nr - r, ENG_GEMM_GROUP);
        const uint8_t *g = w + (size_t)r * ws;
        for (int64_t j = 0; j < nx; j++) {
            float *yr = y + (size_t)j * ys + (size_t)r;
            if (packed) uk->gemv16_packed(ENG_GEMM_GROUP, n, g, ws, x + (size_t)j * xs, xa_row(xa, j), yr);
            else uk->gemv16(nv, n, g, ws, x + (size_t)j * xs, xa_row(xa, j), yr);
        }
    }
}

/* Prefill strips with many activation rows are blocked for the L2: the
 * activation rows (with their side data) of one pass, PASS_BYTES, stay
 * there while every strip of a panel (PANEL_BYTES of packed strips, or of
 * the weight rows they read in place) runs over them; then the next pass.
 * Without it every strip streamed all activation rows from L3 (2,048 rows
 * of Q8_K for n = 768 are 1.8 MB) and touched one output page per row: at
 * avx512, 1 thread, the small Q4_K_M model's products cost ~25 % more CPU
 * time per token at a 2,048-token prompt than at 256 tokens. */
#define PASS_BYTES (256 * 1024)
#define PANEL_BYTES (512 * 1024)
#define PANEL_MAX 64 /* strips */
static size_t pass_bytes = PASS_BYTES, panel_bytes = PANEL_BYTES;

void eng__gemm_blocking(size_t pass, size_t panel)
{
    pass_bytes = pass ? pass : PASS_BYTES;
    panel_bytes = panel ? panel : PANEL_BYTES;
}

/* One panel's strips, packed (or found in place) once. */
typedef struct {
    int np;                                   /* strips in the panel */
    int groups[PANEL_MAX], nv_last[PANEL_MAX];
    const uint8_t *g[PANEL_MAX][ENG_GEMM_MAX_GROUPS];
} panel;

static void pack_panel(const eng__ukernel *uk, bool packed, int64_t n, const uint8_t *w, size_t ws,
                       int64_t nr, int64_t r0, uint8_t *buf, size_t sb, panel *pn)
{
    const int64_t rows = (int64_t)uk->strip_groups * ENG_GEMM_GROUP;
    for (int p = 0; p < pn->np; p++) {
        int64_t r = r0 + rows * p;
        int left = (int)min64(nr - r, rows);
        int groups = (left + ENG_GEMM_GROUP - 1) / ENG_GEMM_GROUP, nv = ENG_GEMM_GROUP;
        for (int v = 0; v < groups; v++) {
            if (v == groups - 1) nv = left - ENG_GEMM_GROUP * v;
            pn->g[p][v] = uk->strip_pack(v, groups, nv, packed, n, w + (size_t)(r + ENG_GEMM_GROUP * v) * ws,
                                         ws, buf ? buf + (size_t)p * sb : NULL);
        }
        pn->groups[p] = groups;
        pn->nv_last[p] = nv;
    }
}

/* Prefill, file layout b) or packed strips: the rows are cut into strips of
 * up to strip_groups groups and the strips into panels; each panel is
 * packed once, then runs over the activation rows one pass at a time, every
 * strip of the panel over a pass before the next pass. When all activation
 * rows make one pass, a panel is one strip (the least scratch). False
 * (nothing done) without memory for one strip. */
static bool run_strips(const eng__ukernel *uk, bool packed, int64_t n, const uint8_t *w, size_t ws,
                       int64_t nr, const uint8_t *x, size_t xs, xside xa, int64_t nx, float *y,
                       size_t ys)
{
    const int64_t rows = (int64_t)uk->strip_groups * ENG_GEMM_GROUP, nstrips = (nr + rows - 1) / rows;
    const size_t gb = uk->strip_bytes(n, packed), sb = (gb * (size_t)uk->strip_groups + 63) & ~(size_t)63;
    int64_t pass = (int64_t)(pass_bytes / (xs + xa.xar)) / uk->strip_nx * uk->strip_nx;
    if (pass < uk->strip_nx) pass = uk->strip_nx;
    /* strips per panel: as many as panel_bytes holds (packed, or read in place) */
    int64_t np = nx <= pass ? 1 : (int64_t)(panel_bytes / (gb ? sb : (size_t)rows * ws));
    np = np < 1 ? 1 : min64(min64(np, PANEL_MAX), nstrips);
    uint8_t *buf = gb ? scratch(sb * (size_t)np) : NULL;
    if (gb && !buf && np > 1) buf = scratch(sb * (size_t)(np = 1));
    if (gb && !buf) return false;
    panel pn;
    for (int64_t s0 = 0; s0 < nstrips; s0 += np) {
        const int64_t r0 = s0 * rows;
        pn.np = (int)min64(np, nstrips - s0);
        pack_panel(uk, packed, n, w, ws, nr, r0, buf, sb, &pn);
        for (int64_t jc = 0; jc < nx; jc += pass) {
            const int64_t je = min64(jc + pass, nx);
            for (int p = 0; p < pn.np; p++) {
                const int64_t r = r0 + rows * p;
                for (int64_t j = jc; j < je; j += uk->strip_nx)
                    uk->strip_tile(pn.groups[p], (int)min64(je - j, uk->strip_nx), pn.nv_last[p], n,
                                   pn.g[p], x + (size_t)j * xs, xs, xa_row(xa, j),
                                   y + (size_t)j * ys + (size_t)r, ys);
            }
        }
    }
    free(buf);
    return true;
}

static void run_file(const eng__ukernel *uk, int64_t n, const uint8_t *w, size_t ws, int64_t nr,
                     const uint8_t *x, size_t xs, xside xa, int64_t nx, float *y, size_t ys)
{
    if (uk->tile) run_tiles(uk, n, w, ws, nr, x, xs, nx, y, ys);
    else if (nx < uk->prefill_nx || !run_strips(uk, false, n, w, ws, nr, x, xs, xa, nx, y, ys))
        run_gemv(uk, false, n, w, ws, nr, x, xs, xa, nx, y, ys);
}

/* Prefill on packed rows without packed strips: strip_groups groups at a
 * time back to the file layout (in a buffer the L2 holds), then the file
 * path on them. False without memory for the buffer. */
static bool run_unpacked(const eng__ukernel *uk, int64_t n, const uint8_t *w, size_t ws, int64_t nr,
                         const uint8_t *x, size_t xs, xside xa, int64_t nx, float *y, size_t ys)
{
    const int64_t step = (int64_t)uk->strip_groups * ENG_GEMM_GROUP;
    uint8_t *rows = scratch((size_t)step * ws);
    if (!rows) return false;
    for (int64_t r = 0; r < nr; r += step) {
        int64_t m = min64(nr - r, step);
        for (int64_t g = 0; g < m; g += ENG_GEMM_GROUP) {
            const uint8_t *src = w + (size_t)(r + g) * ws;
            if (uk->unpack16) uk->unpack16(n, src, ws, rows + (size_t)g * ws);
            else eng__unpack16(uk->type, src, ws, rows + (size_t)g * ws);
        }
        run_file(uk, n, rows, ws, m, x, xs, xa, nx, y + r, ys);
    }
    free(rows);
    return true;
}

static void run(const eng__ukernel *uk, bool packed, int64_t n, const uint8_t *w, size_t ws, int64_t nr,
                const uint8_t *x, size_t xs, xside xa, int64_t nx, float *y, size_t ys)
{
    if (!packed) {
        run_file(uk, n, w, ws, nr, x, xs, xa, nx, y, ys);
        return;
    }
    bool done = false;
    if (nx >= uk->prefill_nx)
        done = uk->strip_packed ? run_strips(uk, true, n, w, ws, nr, x, xs, xa, nx, y, ys)
                                : run_unpacked(uk, n, w, ws, nr, x, xs, xa, nx, y, ys);
    if (!done) run_gemv(uk, true, n, w, ws, nr, x, xs, xa, nx, y, ys);
}

void eng__gemm(const eng__ukernel *uk, bool packed, int64_t n, const void *wv, size_t ws,
               int64_t nr, const void *xv, size_t xs, int64_t nx, float *y, size_t ys)
{
    const uint8_t *w = wv, *x = xv;
    if (uk->wide && nx >= uk->wide->prefill_nx) uk = uk->wide;
    ENG_ASSERT(!packed || (uk->gemv16_packed && nr % ENG_GEMM_GROUP == 0));
    if (nr <= 0 || nx <= 0) return;
    if (n <= 0) {
        for (int64_t j = 0; j < nx; j++) memset(y + (size_t)j * ys, 0, (size_t)nr * sizeof *y);
        return;
    }
    xside xa = {NULL, 0};
    _Alignas(64) uint8_t sbuf[XAUX_STACK];
    uint8_t *xbuf = NULL;
    if (uk->xaux_block_bytes) {
        xa.xar = (size_t)(n / eng__type(uk->type)->blck) * uk->xaux_block_bytes;
        xbuf = xa.xar * (size_t)nx <= sizeof sbuf ? sbuf : malloc(xa.xar * (size_t)nx);
        if (!xbuf) {
            /* one activation row at a time fits the stack: the same bits */
            ENG_ASSERT(xa.xar <= sizeof sbuf);
            for (int64_t j = 0; j < nx; j++)
                eng__gemm(uk, packed, n, w, ws, nr, x + (size_t)j * xs, xs, 1, y + (size_t)j * ys, ys);
            return;
        }
        uk->xaux(n, x, xs, nx, xbuf);
        xa.xa = xbuf;
    }
    run(uk, packed, n, w, ws, nr, x, xs, xa, nx, y, ys);
    if (xbuf != sbuf) free(xbuf);
}
