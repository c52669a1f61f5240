/*
 * fuzz_gguf - libFuzzer harness for the GGUF reader (engine/src/gguf.c).
 *
 * Bytes -> eng__gguf_open_mem. A file that opens must survive every query the
 * engine can make of it: every key through find and each typed getter, every
 * string (first and last byte), every element of every array (string views,
 * numeric as double and int64), every tensor through tensor_find, and the
 * first and last byte of every tensor's data. With ASan over the exact-size
 * input buffer, any view that leaves the buffer is a crash.
 */
#include "fuzz.h"
#include "internal.h"
#include "known_bugs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static volatile uint64_t sink;

/* The view [p, p+n) must lie inside the input; read its first and last byte. */
static void touch(const uint8_t *base, size_t size, const void *p, uint64_t n)
{
    const uint8_t *q = p;
    CHECK(q >= base && q <= base + size);
    CHECK(n <= (uint64_t)(base + size - q));
    if (n) sink += q[0] + q[n - 1];
}

/* NUL-terminated copy of a key or name, or NULL when it holds a NUL byte (the
 * lookups take C strings, so such keys cannot be asked for). */
static char *cstr(eng__str s)
{
    if (memchr(s.ptr, 0, (size_t)s.len)) return NULL;
    char *z = malloc((size_t)s.len + 1);
    CHECK(z);
    memcpy(z, s.ptr, (size_t)s.len);
    z[s.len] = 0;
    return z;
}

static void check_kv(const eng__gguf *g, const uint8_t *base, size_t size, const eng__gguf_kv *kv)
{
    touch(base, size, kv->key.ptr, kv->key.len);
    CHECK(kv->type < GGUF_VT_COUNT);
    CHECK(strcmp(eng__gguf_vtype_name(kv->type), "invalid") != 0);
    /* nbytes covers the whole value; an array's data starts after its
     * 12-byte header (element type, count). */
    if (kv->type == GGUF_VT_ARRAY) {
        CHECK(kv->nbytes >= 12);
        touch(base, size, kv->data - 12, kv->nbytes);
    } else {
        touch(base, size, kv->data, kv->nbytes);
    }

    char *key = cstr(kv->key);
    if (key) {
        /* Keys are unique (the reader refuses duplicates): find gives this one. */
        CHECK(eng__gguf_find(g, key) == kv);
        uint64_t u = 0;
        int64_t i = 0;
        float f = 0;
        bool b = false;
        eng__str s = {0};
        bool gu = eng__gguf_get_u64(g, key, &u), gi = eng__gguf_get_i64(g, key, &i);
        bool gf = eng__gguf_get_f32(g, key, &f), gb = eng__gguf_get_bool(g, key, &b);
        bool gs = eng__gguf_get_str(g, key, &s);
        /* u64 takes every UINT64 and the non-negative values of the other
         * integer types; i64 every integer that fits. */
        if (gu && gi) CHECK((uint64_t)i == u && i >= 0);
        if (gi && i >= 0) CHECK(gu);
        if (gu && !gi) CHECK(kv->type == GGUF_VT_UINT64 && u > INT64_MAX);
        if (gi) CHECK(gf);
        CHECK(gb == (kv->type == GGUF_VT_BOOL));
        CHECK(gs == (kv->type == GGUF_VT_STRING));
        if (kv->type == GGUF_VT_ARRAY) CHECK(!gu && !gi && !gf);
        if (gs) {
            touch(base, size, s.ptr, s.len);
            CHECK(8 + s.len == kv->nbytes);
        }
        sink += u + (uint64_t)i + (uint64_t)b + (uint64_t)(f == f);
        free(key);
    }

    if (kv->type != GGUF_VT_ARRAY) {
        /* Scalars are not arrays: the array accessors refuse them. */
        CHECK(eng__gguf_arr_strings(kv, NULL) == ENG_EINVAL);
        CHECK(eng__gguf_arr_i64(kv, 0) == 0);
        return;
    }
    CHECK(kv->arr_type < GGUF_VT_COUNT && kv->arr_type != GGUF_VT_ARRAY);
    if (kv->arr_type == GGUF_VT_STRING) {
        CHECK(kv->n <= size / 8); /* every string takes >= 8 bytes of the file */
        eng__str *v = malloc((size_t)(kv->n ? kv->n : 1) * sizeof *v);
        CHECK(v);
        CHECK(eng__gguf_arr_strings(kv, v) == ENG_OK);
        uint64_t total = 0;
        for (uint64_t j = 0; j < kv->n; j++) {
            touch(base, size, v[j].ptr, v[j].len);
            touch(base, size, kv->data, (uint64_t)((const uint8_t *)v[j].ptr - kv->data) + v[j].len);
            total += 8 + v[j].len;
        }
        CHECK(total == kv->nbytes - 12);
        free(v);
        CHECK(eng__gguf_arr_f64(kv, 0) == 0);
    } else {
        CHECK(kv->n <= size);
        for (uint64_t j = 0; j < kv->n; j++) {
            double d = eng__gguf_arr_f64(kv, j);
            int64_t x = 0;
#if KNOWN_BUG_ARR_I64_FLOAT_CAST
            if ((kv->arr_type == GGUF_VT_FLOAT32 || kv->arr_type == GGUF_VT_FLOAT64) &&
                !(d > -9.2e18 && d < 9.2e18))
                continue;
#endif
            x = eng__gguf_arr_i64(kv, j);
            sink += (uint64_t)x + (uint64_t)(d == d);
        }
        /* Past the end: 0, not a read. */
        CHECK(eng__gguf_arr_f64(kv, kv->n) == 0 && eng__gguf_arr_i64(kv, kv->n) == 0);
    }
}

static void check_tensor(const eng__gguf *g, const uint8_t *base, size_t size,
                         const eng__gguf_tensor *t)
{
    touch(base, size, t->name.ptr, t->name.len);
    CHECK(t->n_dims >= 1 && t->n_dims <= 4);
    CHECK(eng__ggml_type_name(t->type) != NULL);
    uint64_t nel = 1;
    for (int d = 0; d < 4; d++) {
        CHECK(t->ne[d] >= 1);
        if ((uint32_t)d >= t->n_dims) CHECK(t->ne[d] == 1);
        nel *= (uint64_t)t->ne[d];
    }
    CHECK(nel > 0 && t->nbytes > 0);
    CHECK(t->offset % g->alignment == 0);
    CHECK((const uint8_t *)t->data == base + g->data_offset + t->offset);
    touch(base, size, t->data, t->nbytes);
    char *name = cstr(t->name);
    if (name) {
        CHECK(eng__gguf_tensor_find(g, name) == t);
        free(name);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eng__gguf *g = NULL;
    char err[256];
    err[0] = 0;
    eng_status st = eng__gguf_open_mem(data, size, &g, err, sizeof err);
    if (st != ENG_OK) {
        CHECK(g == NULL);
        CHECK(st == ENG_EFORMAT || st == ENG_ENOMEM || st == ENG_EINVAL);
        CHECK(memchr(err, 0, sizeof err) != NULL);
        return 0;
    }
    CHECK(g && g->base == data && g->size == size);
    CHECK(g->version == 2 || g->version == 3);
    CHECK(g->alignment >= 1 && (g->alignment & (g->alignment - 1)) == 0);
    CHECK(g->n_kv <= size / 12 && g->n_tensors <= size / 24);
    for (uint64_t i = 0; i < g->n_kv; i++) check_kv(g, data, size, &g->kv[i]);
    for (uint64_t i = 0; i < g->n_tensors; i++) check_tensor(g, data, size, &g->tensors[i]);
    /* Lookups of names that are not there. */
    sink += eng__gguf_find(g, "no such key \x01") != NULL;
    sink += eng__gguf_tensor_find(g, "no such tensor \x01") != NULL;
    eng__gguf_close(g);
    return 0;
}
