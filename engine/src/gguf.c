/*
 * gguf.c - GGUF v2/v3 reader over a read-only mmap.
 *
 * The file is treated as hostile: every count is checked against the bytes
 * that remain before anything is allocated for it, every string and array is
 * bounds-checked, tensor shapes are checked for overflow, and every tensor's
 * data must lie inside the file at the declared alignment. Errors name what
 * is wrong and where (byte offset), e.g.
 *   "tensor 3 'blk.0.attn_q.weight': data [..) runs past end of file (...)".
 * Strings stay inside the mapping (eng__str views); nothing is copied.
 */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_STRING (1ull << 30) /* no key, name or vocab entry is a GiB */

/* Block geometry of every ggml type id we know, supported or not, so that a
 * file's tensor table can be validated before the loader decides whether it
 * can run the types. {0,0} marks ids that are unassigned or were removed. */
static const struct { const char *name; uint32_t blck, size; } ggml_types[] = {
    [0] = {"F32", 1, 4},         [1] = {"F16", 1, 2},         [2] = {"Q4_0", 32, 18},
    [3] = {"Q4_1", 32, 20},      [6] = {"Q5_0", 32, 22},      [7] = {"Q5_1", 32, 24},
    [8] = {"Q8_0", 32, 34},      [9] = {"Q8_1", 32, 36},      [10] = {"Q2_K", 256, 84},
    [11] = {"Q3_K", 256, 110},   [12] = {"Q4_K", 256, 144},   [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},   [15] = {"Q8_K", 256, 292},   [16] = {"IQ2_XXS", 256, 66},
    [17] = {"IQ2_XS", 256, 74},  [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50},
    [20] = {"IQ4_NL", 32, 18},   [21] = {"IQ3_S", 256, 110},  [22] = {"IQ2_S", 256, 82},
    [23] = {"IQ4_XS", 256, 136}, [24] = {"I8", 1, 1},         [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},        [27] = {"I64", 1, 8},        [28] = {"F64", 1, 8},
    [29] = {"IQ1_M", 256, 56},   [30] = {"BF16", 1, 2},       [34] = {"TQ1_0", 256, 54},
    [35] = {"TQ2_0", 256, 66},   [39] = {"MXFP4", 32, 17},
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])

const char *eng__ggml_type_name(uint32_t t)
{
    return t < N_GGML_TYPES ? ggml_types[t].name : NULL;
}

static const char *vtype_names[GGUF_VT_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool", "string", "array", "uint64", "int64", "float64",
};
static const uint8_t vtype_size[GGUF_VT_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *eng__gguf_vtype_name(uint32_t t)
{
    return t < GGUF_VT_COUNT ? vtype_names[t] : "invalid";
}

/* ------------------------------------------------------------------------ */
/* Cursor                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *base;
    uint64_t size, pos;
    char *err;
    size_t errlen;
} cursor;

static bool need(cursor *c, uint64_t n, const char *what)
{
    if (n > c->size - c->pos) {
        eng__errf(c->err, c->errlen,
                  "truncated file: %s needs %llu bytes at offset %llu but the file has %llu",
                  what, (unsigned long long)n, (unsigned long long)c->pos,
                  (unsigned long long)c->size);
        return false;
    }
    return true;
}

static bool rd(cursor *c, void *dst, uint64_t n, const char *what)
{
    if (!need(c, n, what)) return false;
    memcpy(dst, c->base + c->pos, n); /* unaligned-safe; GGUF is little-endian like x86 */
    c->pos += n;
    return true;
}

static bool rd_u32(cursor *c, uint32_t *v, const char *what) { return rd(c, v, 4, what); }
static bool rd_u64(cursor *c, uint64_t *v, const char *what) { return rd(c, v, 8, what); }

static bool rd_str(cursor *c, eng__str *s, const char *what)
{
    uint64_t len;
    if (!rd_u64(c, &len, what)) return false;
    if (len > GGUF_MAX_STRING) {
        eng__errf(c->err, c->errlen, "%s at offset %llu: string length %llu is absurd", what,
                  (unsigned long long)(c->pos - 8), (unsigned long long)len);
        return false;
    }
    if (!need(c, len, what)) return false;
    s->ptr = (const char *)c->base + c->pos;
    s->len = len;
    c->pos += len;
    return true;
}

static bool str_eq(eng__str s, const char *z)
{
    size_t n = strlen(z);
    return s.len == n && memcmp(s.ptr, z, n) == 0;
}

/* Print at most 64 bytes of a key or name, replacing non-printables. */
static const char *show(eng__str s, char buf[72])
{
    size_t n = s.len < 64 ? (size_t)s.len : 64, j = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        buf[j++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    if (s.len > 64) { buf[j++] = '.'; buf[j++] = '.'; buf[j++] = '.'; }
    buf[j] = 0;
    return buf;
}

/* Skip one value of type t (not an array), checking bounds. */
static bool skip_scalar(cursor *c, uint32_t t, const char *what)
{
    if (t == GGUF_VT_STRING) {
        eng__str s;
        return rd_str(c, &s, what);
    }
    if (!need(c, vtype_size[t], what)) return false;
    c->pos += vtype_size[t];
    return true;
}

static bool parse_value(cursor *c, eng__gguf_kv *kv, const char *key)
{
    char what[128];
    snprintf(what, sizeof what, "value of key '%s'", key);
    if (kv->type >= GGUF_VT_COUNT) {
        eng__errf(c->err, c->errlen, "key '%s': invalid value type %u", key, kv->type);
        return false;
    }
    uint64_t start = c->pos;
    if (kv->type != GGUF_VT_ARRAY) {
        kv->n = 1;
        kv->data = c->base + c->pos;
        if (!skip_scalar(c, kv->type, what)) return false;
        kv->nbytes = c->pos - start;
        return true;
    }
    uint32_t at;
    uint64_t n;
    if (!rd_u32(c, &at, what) || !rd_u64(c, &n, what)) return false;
    if (at >= GGUF_VT_COUNT || at == GGUF_VT_ARRAY) {
        eng__errf(c->err, c->errlen, "key '%s': array of %s is not supported", key,
                  at == GGUF_VT_ARRAY ? "arrays" : "an invalid type");
        return false;
    }
    kv->arr_type = at;
    kv->n = n;
    kv->data = c->base + c->pos;
    uint64_t remaining = c->size - c->pos;
    if (at == GGUF_VT_STRING) {
        if (n > remaining / 8) {
            eng__errf(c->err, c->errlen,
                      "key '%s': array of %llu strings cannot fit in the %llu bytes left", key,
                      (unsigned long long)n, (unsigned long long)remaining);
            return false;
        }
        for (uint64_t i = 0; i < n; i++)
            if (!skip_scalar(c, at, what)) return false;
    } else {
        if (n > remaining / vtype_size[at]) {
            eng__errf(c->err, c->errlen,
                      "key '%s': array of %llu %s values cannot fit in the %llu bytes left", key,
                      (unsigned long long)n, vtype_names[at], (unsigned long long)remaining);
            return false;
        }
        c->pos += n * vtype_size[at];
    }
    kv->nbytes = c->pos - start;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Open                                                                     */
/* ------------------------------------------------------------------------ */

static int cmp_str(const void *a, const void *b)
{
    const eng__str *x = *(const eng__str *const *)a, *y = *(const eng__str *const *)b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return memcmp(x->ptr, y->ptr, x->len);
}

/* Error if two of the n records (stride bytes apart, an eng__str at off)
 * share a name. */
static eng_status find_duplicate(uint64_t n, const void *base, size_t stride, size_t off, const char *what,
                                 char *err, size_t errlen)
{
    if (n < 2) return ENG_OK;
    const eng__str **v = eng__malloc(n * sizeof *v);
    if (!v) {
        eng__errf(err, errlen, "out of memory for the GGUF tables");
        return ENG_ENOMEM;
    }
    for (uint64_t i = 0; i < n; i++) v[i] = (const eng__str *)((const char *)base + i * stride + off);
    qsort(v, n, sizeof *v, cmp_str);
    eng_status st = ENG_OK;
    for (uint64_t i = 1; i < n && st == ENG_OK; i++)
        if (cmp_str(&v[i - 1], &v[i]) == 0) {
            char kb[72];
            eng__errf(err, errlen, "duplicate %s '%s'", what, show(*v[i], kb));
            st = ENG_EFORMAT;
        }
    free(v);
    return st;
}

static eng_status parse(eng__gguf *g, char *err, size_t errlen)
{
    cursor c = {g->base, g->size, 0, err, errlen};
    char magic[4], kb[72];
    if (!rd(&c, magic, 4, "magic")) return ENG_EFORMAT;
    if (memcmp(magic, GGUF_MAGIC, 4) != 0) {
        eng__errf(err, errlen, "not a GGUF file (magic is not 'GGUF')");
        return ENG_EFORMAT;
    }
    if (!rd_u32(&c, &g->version, "version")) return ENG_EFORMAT;
    if (g->version != 2 && g->version != 3) {
        eng__errf(err, errlen, "GGUF version %u is not supported (only 2 and 3)", g->version);
        return ENG_EFORMAT;
    }
    if (!rd_u64(&c, &g->n_tensors, "tensor count") || !rd_u64(&c, &g->n_kv, "metadata count"))
        return ENG_EFORMAT;
    /* A key-value pair takes >= 12 bytes (key length + type), a tensor info
     * >= 24 (name length, n_dims, type, offset): bound the counts by the file
     * before allocating for them. */
    uint64_t rem = g->size - c.pos;
    if (g->n_kv > rem / 12) {
        eng__errf(err, errlen, "metadata count %llu cannot fit in a %llu-byte file",
                  (unsigned long long)g->n_kv, (unsigned long long)g->size);
        return ENG_EFORMAT;
    }
    if (g->n_tensors > rem / 24) {
        eng__errf(err, errlen, "tensor count %llu cannot fit in a %llu-byte file",
                  (unsigned long long)g->n_tensors, (unsigned long long)g->size);
        return ENG_EFORMAT;
    }
    g->kv = eng__calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
    g->tensors = eng__calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) {
        eng__errf(err, errlen, "out of memory for the GGUF tables");
        return ENG_ENOMEM;
    }

    for (uint64_t i = 0; i < g->n_kv; i++) {
        eng__gguf_kv *kv = &g->kv[i];
        char what[64];
        snprintf(what, sizeof what, "key %llu", (unsigned long long)i);
        if (!rd_str(&c, &kv->key, what) || !rd_u32(&c, &kv->type, what)) return ENG_EFORMAT;
        if (!parse_value(&c, kv, show(kv->key, kb))) return ENG_EFORMAT;
    }

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const eng__gguf_kv *al = eng__gguf_find(g, "general.alignment");
    if (al) {
        uint64_t a;
        if (!eng__gguf_get_u64(g, "general.alignment", &a) || a == 0 || (a & (a - 1)) != 0 ||
            a > 65536) {
            eng__errf(err, errlen, "general.alignment must be a power of two up to 65536");
            return ENG_EFORMAT;
        }
        g->alignment = a;
    }

    for (uint64_t i = 0; i < g->n_tensors; i++) {
        eng__gguf_tensor *t = &g->tensors[i];
        char what[64];
        snprintf(what, sizeof what, "tensor info %llu", (unsigned long long)i);
        if (!rd_str(&c, &t->name, what) || !rd_u32(&c, &t->n_dims, what)) return ENG_EFORMAT;
        const char *nm = show(t->name, kb);
        if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS) {
            eng__errf(err, errlen, "tensor '%s': %u dimensions (1 to %d allowed)", nm,
                      t->n_dims, GGUF_MAX_DIMS);
            return ENG_EFORMAT;
        }
        uint64_t nel = 1;
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
            uint64_t ne = 1;
            if (d < t->n_dims && !rd_u64(&c, &ne, what)) return ENG_EFORMAT;
            if (ne == 0 || ne > (1ull << 40) || nel > UINT64_MAX / ne || nel * ne > (1ull << 42)) {
                eng__errf(err, errlen, "tensor '%s': dimension %u of size %llu is invalid",
                          nm, d, (unsigned long long)ne);
                return ENG_EFORMAT;
            }
            nel *= ne;
            t->ne[d] = (int64_t)ne;
        }
        if (!rd_u32(&c, &t->type, what) || !rd_u64(&c, &t->offset, what)) return ENG_EFORMAT;
        if (t->type >= N_GGML_TYPES || ggml_types[t->type].blck == 0) {
            eng__errf(err, errlen, "tensor '%s': unknown ggml type %u", nm, t->type);
            return ENG_EFORMAT;
        }
        uint32_t blck = ggml_types[t->type].blck;
        if (t->ne[0] % blck != 0) {
            eng__errf(err, errlen, "tensor '%s': row length %lld is not a multiple of the %s block size %u",
                      nm, (long long)t->ne[0], ggml_types[t->type].name, blck);
            return ENG_EFORMAT;
        }
        t->nbytes = nel / blck * ggml_types[t->type].size;
        if (t->offset % g->alignment != 0) {
            eng__errf(err, errlen, "tensor '%s': data offset %llu is not aligned to %llu", nm,
                      (unsigned long long)t->offset, (unsigned long long)g->alignment);
            return ENG_EFORMAT;
        }
    }
    /* Duplicates, in O(n log n): a hostile file may hold millions of keys. */
    eng_status st = find_duplicate(g->n_kv, g->kv, sizeof *g->kv, offsetof(eng__gguf_kv, key), "metadata key",
                                   err, errlen);
    if (st == ENG_OK)
        st = find_duplicate(g->n_tensors, g->tensors, sizeof *g->tensors, offsetof(eng__gguf_tensor, name),
                            "tensor name", err, errlen);
    if (st != ENG_OK) return st;

    uint64_t data = (c.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (g->n_tensors > 0 && data > g->size) {
        eng__errf(err, errlen, "truncated file: the tensor data section would start at %llu, past the end (%llu)",
                  (unsigned long long)data, (unsigned long long)g->size);
        return ENG_EFORMAT;
    }
    g->data_offset = data;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        eng__gguf_tensor *t = &g->tensors[i];
        uint64_t avail = g->size - data;
        if (t->offset > avail || t->nbytes > avail - t->offset) {
            eng__errf(err, errlen,
                      "tensor '%s': data [%llu, %llu) runs past the end of the file (%llu bytes of data)",
                      show(t->name, kb), (unsigned long long)t->offset,
                      (unsigned long long)(t->offset + t->nbytes), (unsigned long long)avail);
            return ENG_EFORMAT;
        }
        t->data = g->base + data + t->offset;
    }
    return ENG_OK;
}

static eng_status open_common(eng__gguf *g, eng__gguf **out, char *err, size_t errlen)
{
    eng_status st = parse(g, err, errlen);
    if (st != ENG_OK) {
        eng__gguf_close(g);
        return st;
    }
    *out = g;
    return ENG_OK;
}

eng_status eng__gguf_open_mem(const void *buf, size_t size, eng__gguf **out, char *err,
                              size_t errlen)
{
    if (!out || (!buf && size)) return ENG_EINVAL;
    *out = NULL;
    eng__gguf *g = eng__calloc(1, sizeof *g);
    if (!g) return ENG_ENOMEM;
    g->base = buf;
    g->size = size;
    return open_common(g, out, err, errlen);
}

/* Read all of fd into a page-aligned heap buffer (the --no-mmap path: the
 * weights then no longer depend on the file, which may be truncated or
 * rewritten while the server runs). */
static eng_status read_all(int fd, size_t size, const char *path, void **out, char *err, size_t errlen)
{
    uint8_t *buf = eng__huge_alloc(size);
    if (!buf) {
        eng__errf(err, errlen, "out of memory reading '%s' (%zu bytes)", path, size);
        return ENG_ENOMEM;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, buf + got, size - got, (off_t)got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            eng__errf(err, errlen, "cannot read '%s': %s", path,
                      n < 0 ? strerror(errno) : "the file shrank while it was read");
            eng__huge_free(buf, size);
            return ENG_EIO;
        }
        got += (size_t)n;
    }
    *out = buf;
    return ENG_OK;
}

static const char *file_kind(mode_t m)
{
    return S_ISDIR(m) ? "directory" : S_ISFIFO(m) ? "FIFO" : S_ISCHR(m) ? "character device" : S_ISBLK(m) ? "block device"
           : S_ISSOCK(m) ? "socket" : "special file";
}

static eng_status open_file(const char *path, bool use_mmap, eng__gguf **out, char *err, size_t errlen)
{
    if (!path || !out) return ENG_EINVAL;
    *out = NULL;
    /* Before open(): opening a FIFO blocks until a writer comes, and a
     * device or directory is no model either (fstat below re-checks what
     * was opened). */
    struct stat pre;
    if (stat(path, &pre) == 0 && !S_ISREG(pre.st_mode)) {
        eng__errf(err, errlen, "'%s' is not a regular file (it is a %s)", path, file_kind(pre.st_mode));
        return ENG_EIO;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        eng__errf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return ENG_EIO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        eng__errf(err, errlen, "'%s' is not a regular file", path);
        close(fd);
        return ENG_EIO;
    }
    if (sb.st_size < 24) {
        close(fd);
        eng__errf(err, errlen, "'%s' is too small to be a GGUF file (%lld bytes)", path,
                  (long long)sb.st_size);
        return ENG_EFORMAT;
    }
    void *map = NULL;
    if (use_mmap) {
        map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd); /* the mapping keeps the file */
        if (map == MAP_FAILED) {
            eng__errf(err, errlen, "cannot map '%s': %s", path, strerror(errno));
            return ENG_EIO;
        }
    } else {
        eng_status st = read_all(fd, (size_t)sb.st_size, path, &map, err, errlen);
        close(fd);
        if (st != ENG_OK) return st;
    }
    eng__gguf *g = eng__calloc(1, sizeof *g);
    if (!g) {
        if (use_mmap) munmap(map, (size_t)sb.st_size);
        else eng__huge_free(map, (size_t)sb.st_size);
        eng__errf(err, errlen, "out of memory");
        return ENG_ENOMEM;
    }
    g->base = map;
    g->size = (size_t)sb.st_size;
    g->mapped = use_mmap;
    g->owned = !use_mmap;
    return open_common(g, out, err, errlen);
}

eng_status eng__gguf_open(const char *path, eng__gguf **out, char *err, size_t errlen)
{
    return open_file(path, true, out, err, errlen);
}

eng_status eng__gguf_open_read(const char *path, eng__gguf **out, char *err, size_t errlen)
{
    return open_file(path, false, out, err, errlen);
}

void eng__gguf_close(eng__gguf *g)
{
    if (!g) return;
    if (g->mapped) munmap((void *)g->base, g->size);
    if (g->owned) eng__huge_free((void *)g->base, g->size);
    free(g->kv);
    free(g->tensors);
    free(g);
}

/* ------------------------------------------------------------------------ */
/* Lookups                                                                  */
/* ------------------------------------------------------------------------ */

const eng__gguf_kv *eng__gguf_find(const eng__gguf *g, const char *key)
{
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (str_eq(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

const eng__gguf_tensor *eng__gguf_tensor_find(const eng__gguf *g, const char *name)
{
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (str_eq(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

/* Read element i of a numeric value at p with type t. */
static bool num_at(uint32_t t, const uint8_t *p, int64_t *iv, double *fv, bool *is_int)
{
    *is_int = true;
    switch (t) {
    case GGUF_VT_UINT8: *iv = p[0]; break;
    case GGUF_VT_INT8: *iv = (int8_t)p[0]; break;
    case GGUF_VT_BOOL: *iv = p[0] != 0; break;
    case GGUF_VT_UINT16: { uint16_t v; memcpy(&v, p, 2); *iv = v; break; }
    case GGUF_VT_INT16: { int16_t v; memcpy(&v, p, 2); *iv = v; break; }
    case GGUF_VT_UINT32: { uint32_t v; memcpy(&v, p, 4); *iv = v; break; }
    case GGUF_VT_INT32: { int32_t v; memcpy(&v, p, 4); *iv = v; break; }
    case GGUF_VT_UINT64: {
        uint64_t v;
        memcpy(&v, p, 8);
        if (v > INT64_MAX) return false;
        *iv = (int64_t)v;
        break;
    }
    case GGUF_VT_INT64: { int64_t v; memcpy(&v, p, 8); *iv = v; break; }
    case GGUF_VT_FLOAT32: { float v; memcpy(&v, p, 4); *fv = v; *is_int = false; break; }
    case GGUF_VT_FLOAT64: { double v; memcpy(&v, p, 8); *fv = v; *is_int = false; break; }
    default: return false;
    }
    if (*is_int) *fv = (double)*iv;
    return true;
}

bool eng__gguf_get_i64(const eng__gguf *g, const char *key, int64_t *v)
{
    const eng__gguf_kv *kv = eng__gguf_find(g, key);
    int64_t iv;
    double fv;
    bool is_int;
    if (!kv || kv->type == GGUF_VT_ARRAY || !num_at(kv->type, kv->data, &iv, &fv, &is_int) ||
        !is_int || kv->type == GGUF_VT_BOOL)
        return false;
    *v = iv;
    return true;
}

bool eng__gguf_get_u64(const eng__gguf *g, const char *key, uint64_t *v)
{
    const eng__gguf_kv *kv = eng__gguf_find(g, key);
    if (kv && kv->type == GGUF_VT_UINT64) {
        memcpy(v, kv->data, 8);
        return true;
    }
    int64_t iv;
    if (!eng__gguf_get_i64(g, key, &iv) || iv < 0) return false;
    *v = (uint64_t)iv;
    return true;
}

bool eng__gguf_get_f32(const eng__gguf *g, const char *key, float *v)
{
    const eng__gguf_kv *kv = eng__gguf_find(g, key);
    int64_t iv;
    double fv;
    bool is_int;
    if (!kv || kv->type == GGUF_VT_ARRAY || kv->type == GGUF_VT_BOOL ||
        !num_at(kv->type, kv->data, &iv, &fv, &is_int))
        return false;
    *v = (float)fv;
    return true;
}

bool eng__gguf_get_bool(const eng__gguf *g, const char *key, bool *v)
{
    const eng__gguf_kv *kv = eng__gguf_find(g, key);
    if (!kv || kv->type != GGUF_VT_BOOL) return false;
    *v = kv->data[0] != 0;
    return true;
}

bool eng__gguf_get_str(const eng__gguf *g, const char *key, eng__str *v)
{
    const eng__gguf_kv *kv = eng__gguf_find(g, key);
    if (!kv || kv->type != GGUF_VT_STRING) return false;
    uint64_t len;
    memcpy(&len, kv->data, 8); /* validated by the parser */
    v->ptr = (const char *)kv->data + 8;
    v->len = len;
    return true;
}

eng_status eng__gguf_arr_strings(const eng__gguf_kv *kv, eng__str *out)
{
    if (!kv || kv->type != GGUF_VT_ARRAY || kv->arr_type != GGUF_VT_STRING) return ENG_EINVAL;
    const uint8_t *p = kv->data;
    for (uint64_t i = 0; i < kv->n; i++) {
        uint64_t len;
        memcpy(&len, p, 8); /* the parser walked these bounds already */
        out[i].ptr = (const char *)p + 8;
        out[i].len = len;
        p += 8 + len;
    }
    return ENG_OK;
}

double eng__gguf_arr_f64(const eng__gguf_kv *kv, uint64_t i)
{
    int64_t iv = 0;
    double fv = 0;
    bool is_int;
    if (kv->type != GGUF_VT_ARRAY || i >= kv->n || kv->arr_type == GGUF_VT_STRING) return 0;
    if (!num_at(kv->arr_type, kv->data + i * vtype_size[kv->arr_type], &iv, &fv, &is_int)) return 0;
    return fv;
}

int64_t eng__gguf_arr_i64(const eng__gguf_kv *kv, uint64_t i)
{
    int64_t iv = 0;
    double fv = 0;
    bool is_int;
    if (kv->type != GGUF_VT_ARRAY || i >= kv->n || kv->arr_type == GGUF_VT_STRING) return 0;
    if (!num_at(kv->arr_type, kv->data + i * vtype_size[kv->arr_type], &iv, &fv, &is_int)) return 0;
    if (is_int) return iv;
    return isfinite(fv) && fabs(fv) < 9.2e18 ? (int64_t)fv : 0; /* no UB on NaN/inf/huge */
}
