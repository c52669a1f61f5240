/*
 * gguf_write.c - GGUF v3 writer (see gguf_write.h).
 *
 * Every key-value pair is kept serialized (the bytes that follow the key in
 * the file), so setters, verbatim copies from another file and the final
 * write all deal in the same representation. Tensors keep only their info and
 * a borrowed pointer or a producer callback; the data is streamed out at
 * write time, tensor by tensor, so multi-GiB files never sit in memory.
 */
#include "gguf_write.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_VERSION 3
#define DEFAULT_ALIGNMENT 32
#define MAX_ALIGNMENT 65536
#define MAX_KEY 65535
#define MAX_NAME 63 /* ggml's GGML_MAX_NAME (64) including the NUL */

/* Block geometry of every ggml type id, the same table the reader validates
 * against (gguf.c); {0,0} marks unassigned ids. */
static const struct { uint32_t blck, size; } geom[] = {
    [0] = {1, 4},     [1] = {1, 2},     [2] = {32, 18},   [3] = {32, 20},   [6] = {32, 22},
    [7] = {32, 24},   [8] = {32, 34},   [9] = {32, 36},   [10] = {256, 84}, [11] = {256, 110},
    [12] = {256, 144}, [13] = {256, 176}, [14] = {256, 210}, [15] = {256, 292}, [16] = {256, 66},
    [17] = {256, 74}, [18] = {256, 98}, [19] = {256, 50}, [20] = {32, 18},  [21] = {256, 110},
    [22] = {256, 82}, [23] = {256, 136}, [24] = {1, 1},   [25] = {1, 2},    [26] = {1, 4},
    [27] = {1, 8},    [28] = {1, 8},    [29] = {256, 56}, [30] = {1, 2},    [34] = {256, 54},
    [35] = {256, 66}, [39] = {32, 17},
};
#define N_GEOM (sizeof geom / sizeof geom[0])

static const uint8_t vt_size[GGUF_VT_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

typedef struct {
    char *key;
    size_t key_len;
    uint32_t type;  /* GGUF_VT_* */
    uint8_t *val;   /* serialized value: what follows the type field in the file */
    uint64_t val_len;
} wkv;

typedef struct {
    char name[MAX_NAME + 1];
    size_t name_len;
    uint32_t type, n_dims;
    int64_t ne[4];
    uint64_t nbytes;
    uint64_t offset; /* in the data section; set by layout() */
    const void *data;
    eng__gguf_fill_fn fill;
    void *user;
} wtensor;

struct eng__gguf_writer {
    wkv *kv;
    uint64_t n_kv, cap_kv;
    wtensor *t;
    uint64_t n_t, cap_t;
    char err[512];
};

bool eng__gguf_type_geom(uint32_t type, uint32_t *blck, uint32_t *type_size)
{
    if (type >= N_GEOM || geom[type].blck == 0) return false;
    if (blck) *blck = geom[type].blck;
    if (type_size) *type_size = geom[type].size;
    return true;
}

uint64_t eng__gguf_tensor_nbytes(uint32_t type, uint32_t n_dims, const int64_t *ne)
{
    uint32_t blck, size;
    if (!ne || n_dims < 1 || n_dims > 4 || !eng__gguf_type_geom(type, &blck, &size)) return 0;
    uint64_t nel = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] < 1 || ne[d] > (1ll << 40) || (uint64_t)ne[d] > (1ull << 42) / nel) return 0;
        nel *= (uint64_t)ne[d];
    }
    if (ne[0] % blck != 0) return 0;
    return nel / blck * size;
}

/* ------------------------------------------------------------------------ */
/* Writer and metadata                                                      */
/* ------------------------------------------------------------------------ */

eng_status eng__gguf_writer_new(eng__gguf_writer **out)
{
    if (!out) return ENG_EINVAL;
    *out = eng__calloc(1, sizeof **out);
    return *out ? ENG_OK : ENG_ENOMEM;
}

void eng__gguf_writer_free(eng__gguf_writer *w)
{
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val);
    }
    free(w->kv);
    free(w->t);
    free(w);
}

const char *eng__gguf_writer_error(const eng__gguf_writer *w)
{
    return w ? w->err : "no writer";
}

uint64_t eng__gguf_writer_n_kv(const eng__gguf_writer *w) { return w ? w->n_kv : 0; }
uint64_t eng__gguf_writer_n_tensors(const eng__gguf_writer *w) { return w ? w->n_t : 0; }

static wkv *find_kv(const eng__gguf_writer *w, const char *key, size_t len)
{
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (w->kv[i].key_len == len && memcmp(w->kv[i].key, key, len) == 0) return &w->kv[i];
    return NULL;
}

/* Validate the general.alignment value a caller is about to store. ggml reads
 * it with gguf_get_val_u32, which aborts on any other type, so only UINT32. */
static bool alignment_ok(uint32_t type, const uint8_t *val, uint64_t len, uint32_t *out)
{
    if (type != GGUF_VT_UINT32 || len != 4) return false;
    uint32_t a;
    memcpy(&a, val, 4);
    if (a == 0 || (a & (a - 1)) != 0 || a > MAX_ALIGNMENT) return false;
    if (out) *out = a;
    return true;
}

/* Store key -> (type, val[0..len)) taking ownership of val (a malloc'd copy). */
static eng_status put_owned(eng__gguf_writer *w, const char *key, uint32_t type, uint8_t *val,
                            uint64_t len)
{
    size_t klen = strlen(key);
    if (klen == 0 || klen > MAX_KEY) {
        eng__errf(w->err, sizeof w->err, "metadata key length %zu is not in [1, %d]", klen, MAX_KEY);
        free(val);
        return ENG_EINVAL;
    }
    if (klen == strlen("general.alignment") && memcmp(key, "general.alignment", klen) == 0 &&
        !alignment_ok(type, val, len, NULL)) {
        eng__errf(w->err, sizeof w->err,
                  "general.alignment must be a uint32 power of two in [1, %d]", MAX_ALIGNMENT);
        free(val);
        return ENG_EINVAL;
    }
    wkv *kv = find_kv(w, key, klen);
    if (kv) {
        free(kv->val);
        kv->type = type;
        kv->val = val;
        kv->val_len = len;
        return ENG_OK;
    }
    if (w->n_kv == w->cap_kv) {
        uint64_t cap = w->cap_kv ? w->cap_kv * 2 : 32;
        wkv *nk = eng__realloc(w->kv, (size_t)cap * sizeof *nk);
        if (!nk) goto nomem;
        w->kv = nk;
        w->cap_kv = cap;
    }
    char *k = eng__strndup(key, klen);
    if (!k) goto nomem;
    w->kv[w->n_kv++] = (wkv){k, klen, type, val, len};
    return ENG_OK;
nomem:
    eng__errf(w->err, sizeof w->err, "out of memory storing key '%.64s'", key);
    free(val);
    return ENG_ENOMEM;
}

/* Store key -> (type, the serialized value built in b), taking b's bytes. */
static eng_status put_buf(eng__gguf_writer *w, const char *key, uint32_t type, eng__buf *b)
{
    if (b->oom) {
        eng__buf_free(b);
        eng__errf(w->err, sizeof w->err, "out of memory storing key '%.64s'", key);
        return ENG_ENOMEM;
    }
    size_t len = b->len;
    w->err[0] = 0;
    return put_owned(w, key, type, (uint8_t *)b->data, len);
}

static eng_status put(eng__gguf_writer *w, const char *key, uint32_t type, const void *val,
                      uint64_t len)
{
    if (!w) return ENG_EINVAL;
    w->err[0] = 0;
    if (!key) {
        eng__errf(w->err, sizeof w->err, "NULL metadata key");
        return ENG_EINVAL;
    }
    if (len > SIZE_MAX / 2) {
        eng__errf(w->err, sizeof w->err, "value of key '%.64s' is too large", key);
        return ENG_EINVAL;
    }
    eng__buf b = {0};
    eng__buf_reserve(&b, (size_t)len);
    eng__buf_append(&b, val, (size_t)len);
    return put_buf(w, key, type, &b);
}

eng_status eng__gguf_set_u8(eng__gguf_writer *w, const char *k, uint8_t v) { return put(w, k, GGUF_VT_UINT8, &v, 1); }
eng_status eng__gguf_set_i8(eng__gguf_writer *w, const char *k, int8_t v) { return put(w, k, GGUF_VT_INT8, &v, 1); }
eng_status eng__gguf_set_u16(eng__gguf_writer *w, const char *k, uint16_t v) { return put(w, k, GGUF_VT_UINT16, &v, 2); }
eng_status eng__gguf_set_i16(eng__gguf_writer *w, const char *k, int16_t v) { return put(w, k, GGUF_VT_INT16, &v, 2); }
eng_status eng__gguf_set_u32(eng__gguf_writer *w, const char *k, uint32_t v) { return put(w, k, GGUF_VT_UINT32, &v, 4); }
eng_status eng__gguf_set_i32(eng__gguf_writer *w, const char *k, int32_t v) { return put(w, k, GGUF_VT_INT32, &v, 4); }
eng_status eng__gguf_set_u64(eng__gguf_writer *w, const char *k, uint64_t v) { return put(w, k, GGUF_VT_UINT64, &v, 8); }
eng_status eng__gguf_set_i64(eng__gguf_writer *w, const char *k, int64_t v) { return put(w, k, GGUF_VT_INT64, &v, 8); }
eng_status eng__gguf_set_f32(eng__gguf_writer *w, const char *k, float v) { return put(w, k, GGUF_VT_FLOAT32, &v, 4); }
eng_status eng__gguf_set_f64(eng__gguf_writer *w, const char *k, double v) { return put(w, k, GGUF_VT_FLOAT64, &v, 8); }

eng_status eng__gguf_set_bool(eng__gguf_writer *w, const char *k, bool v)
{
    uint8_t b = v ? 1 : 0;
    return put(w, k, GGUF_VT_BOOL, &b, 1);
}

eng_status eng__gguf_set_strn(eng__gguf_writer *w, const char *key, const char *v, uint64_t len)
{
    if (!w) return ENG_EINVAL;
    if (!key || (!v && len)) {
        eng__errf(w->err, sizeof w->err, "NULL key or string value");
        return ENG_EINVAL;
    }
    if (len > (1ull << 30)) {
        eng__errf(w->err, sizeof w->err, "string value of %llu bytes is too long",
                  (unsigned long long)len);
        return ENG_EINVAL;
    }
    eng__buf b = {0};
    eng__buf_reserve(&b, (size_t)len + 8);
    eng__buf_append(&b, &len, 8);
    eng__buf_append(&b, v, (size_t)len);
    return put_buf(w, key, GGUF_VT_STRING, &b);
}

eng_status eng__gguf_set_str(eng__gguf_writer *w, const char *key, const char *v)
{
    if (!w) return ENG_EINVAL;
    if (!v) {
        eng__errf(w->err, sizeof w->err, "NULL string value");
        return ENG_EINVAL;
    }
    return eng__gguf_set_strn(w, key, v, strlen(v));
}

eng_status eng__gguf_set_arr(eng__gguf_writer *w, const char *key, uint32_t elem_type,
                             const void *data, uint64_t n)
{
    if (!w) return ENG_EINVAL;
    if (elem_type >= GGUF_VT_COUNT || elem_type == GGUF_VT_STRING || elem_type == GGUF_VT_ARRAY) {
        eng__errf(w->err, sizeof w->err, "array element type %u is not a numeric type", elem_type);
        return ENG_EINVAL;
    }
    if ((!data && n) || !key) {
        eng__errf(w->err, sizeof w->err, "NULL array data or key");
        return ENG_EINVAL;
    }
    uint64_t es = vt_size[elem_type];
    if (n > ((uint64_t)SIZE_MAX / 2 - 12) / es) {
        eng__errf(w->err, sizeof w->err, "array of %llu elements is too large", (unsigned long long)n);
        return ENG_EINVAL;
    }
    eng__buf b = {0};
    eng__buf_reserve(&b, (size_t)(12 + n * es));
    eng__buf_append(&b, &elem_type, 4);
    eng__buf_append(&b, &n, 8);
    eng__buf_append(&b, data, (size_t)(n * es));
    return put_buf(w, key, GGUF_VT_ARRAY, &b);
}

eng_status eng__gguf_set_arr_strn(eng__gguf_writer *w, const char *key, const eng__str *v,
                                  uint64_t n)
{
    if (!w) return ENG_EINVAL;
    if ((!v && n) || !key) {
        eng__errf(w->err, sizeof w->err, "NULL array data or key");
        return ENG_EINVAL;
    }
    uint64_t len = 12;
    for (uint64_t i = 0; i < n; i++) {
        if ((!v[i].ptr && v[i].len) || v[i].len > (1ull << 30) || len > (1ull << 40)) {
            eng__errf(w->err, sizeof w->err, "string %llu of array '%.64s' is invalid or too long",
                      (unsigned long long)i, key);
            return ENG_EINVAL;
        }
        len += 8 + v[i].len;
    }
    if (len > SIZE_MAX / 2) {
        eng__errf(w->err, sizeof w->err, "string array '%.64s' is too large", key);
        return ENG_EINVAL;
    }
    eng__buf b = {0};
    uint32_t at = GGUF_VT_STRING;
    eng__buf_reserve(&b, (size_t)len);
    eng__buf_append(&b, &at, 4);
    eng__buf_append(&b, &n, 8);
    for (uint64_t i = 0; i < n; i++) {
        eng__buf_append(&b, &v[i].len, 8);
        eng__buf_append(&b, v[i].ptr, (size_t)v[i].len);
    }
    return put_buf(w, key, GGUF_VT_ARRAY, &b);
}

eng_status eng__gguf_set_arr_str(eng__gguf_writer *w, const char *key, const char *const *v,
                                 uint64_t n)
{
    if (!w) return ENG_EINVAL;
    if ((!v && n) || n > SIZE_MAX / sizeof(eng__str)) {
        eng__errf(w->err, sizeof w->err, "NULL or oversized string array");
        return ENG_EINVAL;
    }
    eng__str *s = eng__malloc((size_t)(n ? n : 1) * sizeof *s);
    if (!s) {
        eng__errf(w->err, sizeof w->err, "out of memory");
        return ENG_ENOMEM;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (!v[i]) {
            free(s);
            eng__errf(w->err, sizeof w->err, "string %llu of the array is NULL", (unsigned long long)i);
            return ENG_EINVAL;
        }
        s[i].ptr = v[i];
        s[i].len = strlen(v[i]);
    }
    eng_status st = eng__gguf_set_arr_strn(w, key, s, n);
    free(s);
    return st;
}

eng_status eng__gguf_copy_kv(eng__gguf_writer *w, const eng__gguf *g, const char *key)
{
    if (!w) return ENG_EINVAL;
    if (!g || !key) {
        eng__errf(w->err, sizeof w->err, "NULL file or key");
        return ENG_EINVAL;
    }
    const eng__gguf_kv *kv = eng__gguf_find(g, key);
    if (!kv) {
        eng__errf(w->err, sizeof w->err, "the source file has no key '%.64s'", key);
        return ENG_EINVAL;
    }
    /* The reader points arrays' data at their first element, after the
     * 4-byte element type and the 8-byte count that nbytes includes. */
    const uint8_t *raw = kv->type == GGUF_VT_ARRAY ? kv->data - 12 : kv->data;
    return put(w, key, kv->type, raw, kv->nbytes);
}

eng_status eng__gguf_remove_kv(eng__gguf_writer *w, const char *key)
{
    if (!w || !key) return ENG_EINVAL;
    w->err[0] = 0;
    wkv *kv = find_kv(w, key, strlen(key));
    if (!kv) {
        eng__errf(w->err, sizeof w->err, "no key '%.64s' to remove", key);
        return ENG_EINVAL;
    }
    free(kv->key);
    free(kv->val);
    uint64_t i = (uint64_t)(kv - w->kv);
    memmove(kv, kv + 1, (size_t)(w->n_kv - i - 1) * sizeof *kv);
    w->n_kv--;
    return ENG_OK;
}

/* ------------------------------------------------------------------------ */
/* Tensors                                                                  */
/* ------------------------------------------------------------------------ */

static eng_status add_tensor(eng__gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                             const int64_t *ne, const void *data, const uint64_t *nbytes,
                             eng__gguf_fill_fn fill, void *user)
{
    if (!w) return ENG_EINVAL;
    w->err[0] = 0;
    if (!name || !ne) {
        eng__errf(w->err, sizeof w->err, "NULL tensor name or shape");
        return ENG_EINVAL;
    }
    size_t nl = strlen(name);
    if (nl == 0 || nl > MAX_NAME) {
        eng__errf(w->err, sizeof w->err, "tensor name '%.64s' must be 1 to %d bytes", name, MAX_NAME);
        return ENG_EINVAL;
    }
    for (uint64_t i = 0; i < w->n_t; i++)
        if (w->t[i].name_len == nl && memcmp(w->t[i].name, name, nl) == 0) {
            eng__errf(w->err, sizeof w->err, "duplicate tensor name '%s'", name);
            return ENG_EINVAL;
        }
    uint32_t blck, tsize;
    if (!eng__gguf_type_geom(type, &blck, &tsize)) {
        eng__errf(w->err, sizeof w->err, "tensor '%s': unknown ggml type %u", name, type);
        return ENG_EINVAL;
    }
    if (n_dims < 1 || n_dims > 4) {
        eng__errf(w->err, sizeof w->err, "tensor '%s': %u dimensions (1 to 4 allowed)", name, n_dims);
        return ENG_EINVAL;
    }
    for (uint32_t d = 0; d < n_dims; d++)
        if (ne[d] < 1) {
            eng__errf(w->err, sizeof w->err, "tensor '%s': dimension %u is %lld", name, d,
                      (long long)ne[d]);
            return ENG_EINVAL;
        }
    if (ne[0] % blck != 0) {
        eng__errf(w->err, sizeof w->err,
                  "tensor '%s': row length %lld is not a multiple of the %s block size %u", name,
                  (long long)ne[0], eng__ggml_type_name(type), blck);
        return ENG_EINVAL;
    }
    uint64_t nb = eng__gguf_tensor_nbytes(type, n_dims, ne);
    if (nb == 0) {
        eng__errf(w->err, sizeof w->err, "tensor '%s': too many elements", name);
        return ENG_EINVAL;
    }
    if (nbytes && *nbytes != nb) {
        eng__errf(w->err, sizeof w->err, "tensor '%s': %llu bytes given, %s [%lld ...] takes %llu",
                  name, (unsigned long long)*nbytes, eng__ggml_type_name(type), (long long)ne[0],
                  (unsigned long long)nb);
        return ENG_EINVAL;
    }
    if (w->n_t == w->cap_t) {
        uint64_t cap = w->cap_t ? w->cap_t * 2 : 64;
        wtensor *nt = eng__realloc(w->t, (size_t)cap * sizeof *nt);
        if (!nt) {
            eng__errf(w->err, sizeof w->err, "out of memory");
            return ENG_ENOMEM;
        }
        w->t = nt;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    memcpy(t->name, name, nl);
    t->name_len = nl;
    t->type = type;
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < 4; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->nbytes = nb;
    t->data = data;
    t->fill = fill;
    t->user = user;
    return ENG_OK;
}

eng_status eng__gguf_add_tensor(eng__gguf_writer *w, const char *name, uint32_t type,
                                uint32_t n_dims, const int64_t *ne, const void *data,
                                uint64_t nbytes)
{
    return add_tensor(w, name, type, n_dims, ne, data, &nbytes, NULL, NULL);
}

eng_status eng__gguf_add_tensor_fill(eng__gguf_writer *w, const char *name, uint32_t type,
                                     uint32_t n_dims, const int64_t *ne, eng__gguf_fill_fn fill,
                                     void *user)
{
    if (w && !fill) {
        eng__errf(w->err, sizeof w->err, "NULL fill callback");
        return ENG_EINVAL;
    }
    return add_tensor(w, name, type, n_dims, ne, NULL, NULL, fill, user);
}

/* ------------------------------------------------------------------------ */
/* Layout and output                                                        */
/* ------------------------------------------------------------------------ */

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static uint64_t alignment_of(const eng__gguf_writer *w)
{
    wkv *kv = find_kv(w, "general.alignment", strlen("general.alignment"));
    uint32_t a;
    if (kv && alignment_ok(kv->type, kv->val, kv->val_len, &a)) return a;
    return DEFAULT_ALIGNMENT;
}

/* Assign tensor offsets; returns the header size (before padding) and the
 * total file size. */
static void layout(eng__gguf_writer *w, uint64_t *header, uint64_t *total)
{
    uint64_t a = alignment_of(w);
    uint64_t h = 4 + 4 + 8 + 8;
    for (uint64_t i = 0; i < w->n_kv; i++) h += 8 + w->kv[i].key_len + 4 + w->kv[i].val_len;
    uint64_t off = 0;
    for (uint64_t i = 0; i < w->n_t; i++) {
        wtensor *t = &w->t[i];
        h += 8 + t->name_len + 4 + 8ull * t->n_dims + 4 + 8;
        t->offset = off;
        off = align_up(off + t->nbytes, a);
    }
    *header = h;
    *total = align_up(h, a) + off;
}

eng_status eng__gguf_writer_size(const eng__gguf_writer *w, uint64_t *size)
{
    if (!w || !size) return ENG_EINVAL;
    uint64_t h;
    layout((eng__gguf_writer *)w, &h, size);
    return ENG_OK;
}

/* Output: either a memory buffer (mem != NULL) or a file descriptor with a
 * small staging buffer for the header. */
typedef struct {
    uint8_t *mem;
    int fd;
    uint64_t pos;
    uint8_t buf[1 << 16];
    size_t used;
    eng__gguf_writer *w;
} sink;

static eng_status fd_write(sink *s, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t k = write(s->fd, b, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0) {
            if (errno == EINTR) continue;
            eng__errf(s->w->err, sizeof s->w->err, "write failed: %s", strerror(errno));
            return ENG_EIO;
        }
        b += k;
        n -= (size_t)k;
    }
    return ENG_OK;
}

static eng_status sink_flush(sink *s)
{
    if (s->mem || !s->used) return ENG_OK;
    eng_status st = fd_write(s, s->buf, s->used);
    s->used = 0;
    return st;
}

static eng_status sink_put(sink *s, const void *p, uint64_t n)
{
    if (s->mem) {
        memcpy(s->mem + s->pos, p, (size_t)n);
        s->pos += n;
        return ENG_OK;
    }
    s->pos += n;
    if (n > sizeof s->buf - s->used) {
        eng_status st = sink_flush(s);
        if (st != ENG_OK) return st;
        if (n > sizeof s->buf) return fd_write(s, p, (size_t)n);
    }
    memcpy(s->buf + s->used, p, (size_t)n);
    s->used += (size_t)n;
    return ENG_OK;
}

static eng_status sink_zeros(sink *s, uint64_t n)
{
    static const uint8_t z[256];
    while (n) {
        uint64_t k = n < sizeof z ? n : sizeof z;
        eng_status st = sink_put(s, z, k);
        if (st != ENG_OK) return st;
        n -= k;
    }
    return ENG_OK;
}

static eng_status put_u32(sink *s, uint32_t v) { return sink_put(s, &v, 4); }
static eng_status put_u64(sink *s, uint64_t v) { return sink_put(s, &v, 8); }

static eng_status emit(eng__gguf_writer *w, sink *s)
{
    uint64_t header, total, a = alignment_of(w);
    layout(w, &header, &total);
    eng_status st;
#define TRY(x) do { if ((st = (x)) != ENG_OK) return st; } while (0)
    TRY(sink_put(s, "GGUF", 4));
    TRY(put_u32(s, GGUF_VERSION));
    TRY(put_u64(s, w->n_t));
    TRY(put_u64(s, w->n_kv));
    for (uint64_t i = 0; i < w->n_kv; i++) {
        const wkv *kv = &w->kv[i];
        TRY(put_u64(s, kv->key_len));
        TRY(sink_put(s, kv->key, kv->key_len));
        TRY(put_u32(s, kv->type));
        TRY(sink_put(s, kv->val, kv->val_len));
    }
    for (uint64_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        TRY(put_u64(s, t->name_len));
        TRY(sink_put(s, t->name, t->name_len));
        TRY(put_u32(s, t->n_dims));
        for (uint32_t d = 0; d < t->n_dims; d++) TRY(put_u64(s, (uint64_t)t->ne[d]));
        TRY(put_u32(s, t->type));
        TRY(put_u64(s, t->offset));
    }
    ENG_ASSERT(s->pos == header);
    TRY(sink_zeros(s, align_up(header, a) - header));
    TRY(sink_flush(s));

    /* Callback tensors in a file need a staging buffer: one, sized for the
     * largest of them, reused. */
    uint8_t *scratch = NULL;
    if (!s->mem) {
        uint64_t need = 0;
        for (uint64_t i = 0; i < w->n_t; i++)
            if (w->t[i].fill && w->t[i].nbytes > need) need = w->t[i].nbytes;
        if (need) {
            if (need > SIZE_MAX / 2 || !(scratch = eng__malloc((size_t)need))) {
                eng__errf(w->err, sizeof w->err, "out of memory for a %llu-byte tensor buffer",
                          (unsigned long long)need);
                return ENG_ENOMEM;
            }
        }
    }
    uint64_t data0 = s->pos;
    for (uint64_t i = 0; i < w->n_t && st == ENG_OK; i++) {
        const wtensor *t = &w->t[i];
        ENG_ASSERT(s->pos == data0 + t->offset);
        if (t->fill) {
            uint8_t *dst = s->mem ? s->mem + s->pos : scratch;
            st = t->fill(t->user, t->name, dst, t->nbytes);
            if (st != ENG_OK) {
                if (!w->err[0])
                    eng__errf(w->err, sizeof w->err, "producing tensor '%s' failed: %s", t->name,
                              eng_strerror(st));
                break;
            }
            if (s->mem) s->pos += t->nbytes;
            else st = sink_put(s, scratch, t->nbytes);
        } else if (t->data) {
            st = sink_put(s, t->data, t->nbytes);
        } else {
            st = sink_zeros(s, t->nbytes);
        }
        if (st == ENG_OK) st = sink_zeros(s, align_up(t->nbytes, a) - t->nbytes);
    }
    free(scratch);
    if (st == ENG_OK) st = sink_flush(s);
    if (st == ENG_OK) ENG_ASSERT(s->pos == total);
    return st;
#undef TRY
}

eng_status eng__gguf_writer_write_mem(eng__gguf_writer *w, void **buf, size_t *size)
{
    if (!w) return ENG_EINVAL;
    w->err[0] = 0;
    if (!buf || !size) {
        eng__errf(w->err, sizeof w->err, "NULL output pointer");
        return ENG_EINVAL;
    }
    *buf = NULL;
    *size = 0;
    uint64_t header, total;
    layout(w, &header, &total);
    if (total > SIZE_MAX / 2) {
        eng__errf(w->err, sizeof w->err, "a %llu-byte file does not fit in memory",
                  (unsigned long long)total);
        return ENG_ENOMEM;
    }
    sink *s = eng__calloc(1, sizeof *s);
    uint8_t *mem = eng__malloc((size_t)total);
    if (!s || !mem) {
        free(s);
        free(mem);
        eng__errf(w->err, sizeof w->err, "out of memory for a %llu-byte file",
                  (unsigned long long)total);
        return ENG_ENOMEM;
    }
    s->mem = mem;
    s->fd = -1;
    s->w = w;
    eng_status st = emit(w, s);
    free(s);
    if (st != ENG_OK) {
        free(mem);
        return st;
    }
    *buf = mem;
    *size = (size_t)total;
    return ENG_OK;
}

/* Close the temp file fd (written with status st) and move it over path,
 * durably; on any failure remove it, keeping the first error's message. */
static eng_status publish(eng__gguf_writer *w, int fd, const char *tmp, const char *path,
                          eng_status st)
{
    if (st == ENG_OK && fsync(fd) != 0) {
        eng__errf(w->err, sizeof w->err, "fsync '%s': %s", tmp, strerror(errno));
        st = ENG_EIO;
    }
    if (close(fd) != 0 && st == ENG_OK) {
        eng__errf(w->err, sizeof w->err, "close '%s': %s", tmp, strerror(errno));
        st = ENG_EIO;
    }
    if (st == ENG_OK && rename(tmp, path) != 0) {
        eng__errf(w->err, sizeof w->err, "cannot rename '%s' to '%s': %s", tmp, path,
                  strerror(errno));
        st = ENG_EIO;
    }
    if (st != ENG_OK) {
        char keep[512];
        snprintf(keep, sizeof keep, "%s", w->err);
        unlink(tmp);
        snprintf(w->err, sizeof w->err, "%s", keep);
        return st;
    }
    /* Make the rename itself durable (best effort). */
    char *dir = eng__strndup(path, strlen(path));
    if (dir) {
        int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
    return ENG_OK;
}

eng_status eng__gguf_writer_write_file(eng__gguf_writer *w, const char *path)
{
    if (!w) return ENG_EINVAL;
    w->err[0] = 0;
    if (!path || !*path) {
        eng__errf(w->err, sizeof w->err, "no output path");
        return ENG_EINVAL;
    }
    eng__buf tmp = {0};
    eng__buf_printf(&tmp, "%s.XXXXXX", path);
    sink *s = tmp.oom ? NULL : eng__calloc(1, sizeof *s);
    if (!s) {
        eng__buf_free(&tmp);
        eng__errf(w->err, sizeof w->err, "out of memory");
        return ENG_ENOMEM;
    }
    int fd = mkstemp(tmp.data);
    if (fd < 0) {
        eng__errf(w->err, sizeof w->err, "cannot create '%s': %s", tmp.data, strerror(errno));
        eng__buf_free(&tmp);
        free(s);
        return ENG_EIO;
    }
    /* mkstemp makes the file 0600; a model file is an ordinary readable file.
     * (Reading the umask would mean setting it, which races with other
     * threads, so the common 0644.) */
    (void)fchmod(fd, 0644);
    s->fd = fd;
    s->w = w;
    eng_status st = publish(w, fd, tmp.data, path, emit(w, s));
    eng__buf_free(&tmp);
    free(s);
    return st;
}
