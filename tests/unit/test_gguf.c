/*
 * test_gguf.c - the GGUF reader (gguf.c) on every shipped file, the writer
 * (gguf_write.c) round trip, hostile files built from a small valid GGUF
 * (truncations, patched fields, random byte flips) and eng_model_load on
 * corrupt models. Meant to run clean under AddressSanitizer + UBSan.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gguf_write.h"
#include "orthoserve/engine.h"
#include "testutil.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static eng__gguf *open_ok(const char *path)
{
    eng__gguf *g = NULL;
    char err[512] = "";
    eng_status st = eng__gguf_open(path, &g, err, sizeof err);
    cr_assert_eq(st, ENG_OK, "open %s: %s (%s)", path, eng_strerror(st), err);
    return g;
}

static eng__gguf *open_mem_ok(const void *b, size_t n)
{
    eng__gguf *g = NULL;
    char err[512] = "";
    eng_status st = eng__gguf_open_mem(b, n, &g, err, sizeof err);
    cr_assert_eq(st, ENG_OK, "open_mem: %s (%s)", eng_strerror(st), err);
    return g;
}

static bool str_is(eng__str s, const char *z)
{
    return s.len == strlen(z) && memcmp(s.ptr, z, s.len) == 0;
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* A fresh private directory under /tmp; the path stays valid (static). */
static const char *tmpdir(void)
{
    static char d[256];
    snprintf(d, sizeof d, "/tmp/test_gguf.XXXXXX");
    cr_assert(mkdtemp(d) != NULL);
    return d;
}

static int count_dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    cr_assert(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* End of the header (the byte after the last tensor info, or after the last
 * key-value pair when there are no tensors). */
static uint64_t header_end(const eng__gguf *g)
{
    if (g->n_tensors) {
        const eng__gguf_tensor *t = &g->tensors[g->n_tensors - 1];
        return (uint64_t)((const uint8_t *)t->name.ptr - g->base) + t->name.len + 4 +
               8ull * t->n_dims + 4 + 8;
    }
    if (g->n_kv) {
        const eng__gguf_kv *kv = &g->kv[g->n_kv - 1];
        const uint8_t *start = kv->type == GGUF_VT_ARRAY ? kv->data - 12 : kv->data;
        return (uint64_t)(start - g->base) + kv->nbytes;
    }
    return 24;
}

/* Every byte of the file that is neither header nor tensor data must be 0,
 * every tensor must start at an aligned offset, and the file must end with
 * the last tensor padded to the alignment. */
static void check_layout(const eng__gguf *g, uint64_t alignment)
{
    cr_assert_eq(g->alignment, alignment);
    cr_assert_eq(g->data_offset % alignment, 0);
    uint64_t he = header_end(g);
    for (uint64_t i = he; i < g->data_offset; i++)
        cr_assert_eq(g->base[i], 0, "header padding byte %llu is not zero", (unsigned long long)i);
    uint64_t pos = g->data_offset;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const eng__gguf_tensor *t = &g->tensors[i];
        cr_assert_eq(t->offset % alignment, 0);
        uint64_t start = g->data_offset + t->offset;
        cr_assert_geq(start, pos, "tensors out of order");
        for (uint64_t k = pos; k < start; k++)
            cr_assert_eq(g->base[k], 0, "data padding byte %llu is not zero", (unsigned long long)k);
        pos = start + t->nbytes;
    }
    for (uint64_t k = pos; k < g->size; k++)
        cr_assert_eq(g->base[k], 0, "tail padding byte %llu is not zero", (unsigned long long)k);
    if (g->n_tensors) cr_assert_eq(g->size, align_up(pos, alignment));
}

/* ------------------------------------------------------------------------ */
/* (a) The reader on the shipped files                                      */
/* ------------------------------------------------------------------------ */

/* Compare one golden metadata value (scalar or {"array_of", "length"}). */
static void check_golden_kv(const eng__gguf *g, const char *file, const char *key, json_t *v)
{
    const eng__gguf_kv *kv = eng__gguf_find(g, key);
    cr_assert(kv, "%s: key %s missing", file, key);
    if (json_is_object(v)) {
        const char *of = json_string_value(json_object_get(v, "array_of"));
        json_int_t len = json_integer_value(json_object_get(v, "length"));
        cr_assert_eq(kv->type, GGUF_VT_ARRAY, "%s: %s is not an array", file, key);
        cr_assert_eq((json_int_t)kv->n, len, "%s: %s has %llu elements", file, key,
                     (unsigned long long)kv->n);
        char up[32];
        const char *vt = eng__gguf_vtype_name(kv->arr_type);
        size_t i = 0;
        for (; vt[i] && i < sizeof up - 1; i++) up[i] = (char)(vt[i] >= 'a' && vt[i] <= 'z' ? vt[i] - 32 : vt[i]);
        up[i] = 0;
        cr_assert_str_eq(up, of, "%s: %s element type", file, key);
        if (kv->arr_type == GGUF_VT_STRING) {
            eng__str *s = malloc((size_t)kv->n * sizeof *s + 1);
            cr_assert_eq(eng__gguf_arr_strings(kv, s), ENG_OK);
            for (uint64_t k = 0; k < kv->n; k++) {
                const uint8_t *p = (const uint8_t *)s[k].ptr;
                cr_assert(p >= g->base && p + s[k].len <= g->base + g->size);
            }
            free(s);
        }
    } else if (json_is_string(v)) {
        eng__str s;
        cr_assert(eng__gguf_get_str(g, key, &s), "%s: %s is not a string", file, key);
        cr_assert(str_is(s, json_string_value(v)), "%s: %s = '%.*s'", file, key, (int)s.len, s.ptr);
    } else if (json_is_boolean(v)) {
        bool b;
        cr_assert(eng__gguf_get_bool(g, key, &b), "%s: %s is not a bool", file, key);
        cr_assert_eq(b, json_is_true(v));
    } else if (json_is_integer(v)) {
        int64_t i;
        cr_assert(eng__gguf_get_i64(g, key, &i), "%s: %s is not an integer", file, key);
        cr_assert_eq(i, (int64_t)json_integer_value(v), "%s: %s = %lld", file, key, (long long)i);
    } else if (json_is_real(v)) {
        float f;
        cr_assert(eng__gguf_get_f32(g, key, &f), "%s: %s is not a number", file, key);
        cr_assert_eq(f, (float)json_real_value(v), "%s: %s = %g", file, key, (double)f);
    } else {
        cr_assert_fail("%s: unexpected golden value for %s", file, key);
    }
}

Test(gguf, reader_models_match_goldens, .timeout = 120)
{
    json_t *models = td_json("models/MODELS.json");
    json_t *files = json_object_get(models, "files");
    cr_assert(json_object_size(files) >= 13);
    const char *fname;
    json_t *info;
    int n_checked = 0;
    json_object_foreach(files, fname, info) {
        char rel[256], grel[256];
        snprintf(rel, sizeof rel, "models/%s", fname);
        snprintf(grel, sizeof grel, "golden/%.*s.json", (int)(strlen(fname) - 5), fname);
        eng__gguf *g = open_ok(td_path(rel));
        cr_assert_eq((json_int_t)g->size, json_integer_value(json_object_get(info, "bytes")), "%s size", fname);
        cr_assert_eq(g->version, 3);
        cr_assert_eq(g->alignment, 32);
        json_t *gold = td_json(grel);
        json_t *md = json_object_get(gold, "metadata");
        json_t *kvs = json_object_get(md, "kv");
        json_t *tensors = json_object_get(md, "tensors");
        cr_assert_eq(g->n_kv, json_object_size(kvs), "%s: %llu keys", fname, (unsigned long long)g->n_kv);
        cr_assert_eq(g->n_tensors, json_array_size(tensors), "%s: %llu tensors", fname,
                     (unsigned long long)g->n_tensors);
        const char *key;
        json_t *v;
        json_object_foreach(kvs, key, v) check_golden_kv(g, fname, key, v);
        size_t i;
        json_array_foreach(tensors, i, v) {
            const char *name = json_string_value(json_array_get(v, 0));
            const eng__gguf_tensor *t = eng__gguf_tensor_find(g, name);
            cr_assert(t, "%s: tensor %s missing", fname, name);
            cr_assert_eq(t, &g->tensors[i], "%s: tensor order", fname);
            json_t *ne = json_array_get(v, 1);
            cr_assert_eq(t->n_dims, json_array_size(ne));
            for (uint32_t d = 0; d < 4; d++)
                cr_assert_eq(t->ne[d], d < t->n_dims ? json_integer_value(json_array_get(ne, d)) : 1);
            cr_assert_str_eq(eng__ggml_type_name(t->type), json_string_value(json_array_get(v, 2)));
            cr_assert_eq((json_int_t)t->nbytes, json_integer_value(json_array_get(v, 3)));
            cr_assert_eq(t->offset % 32, 0);
            cr_assert((const uint8_t *)t->data + t->nbytes <= g->base + g->size);
        }
        check_layout(g, 32);
        json_decref(gold);
        eng__gguf_close(g);
        n_checked++;
    }
    cr_assert_geq(n_checked, 13);
    json_decref(models);

    /* The benchmark model: 12 layers x 9 tensors + 3, 32000-token vocab. */
    eng__gguf *g = open_ok(td_path("bench/small-Q4_K_M.gguf"));
    cr_assert_eq(g->n_tensors, 111);
    uint64_t u;
    cr_assert(eng__gguf_get_u64(g, "llama.embedding_length", &u) && u == 768);
    cr_assert(eng__gguf_get_u64(g, "llama.block_count", &u) && u == 12);
    cr_assert_eq(eng__gguf_find(g, "tokenizer.ggml.tokens")->n, 32000);
    cr_assert_eq(eng__gguf_tensor_find(g, "blk.0.ffn_down.weight")->ne[0], 2048);
    eng__gguf_close(g);
}

Test(gguf, reader_vocab_files, .timeout = 120)
{
    json_t *idx = td_json("vocab/vocab-index.json");
    json_t *suites = json_object_get(idx, "suites");
    size_t i;
    json_t *s;
    int n = 0;
    json_array_foreach(suites, i, s) {
        char rel[300], file[256];
        snprintf(file, sizeof file, "%s", json_string_value(json_object_get(s, "gguf")));
        char *sp = strchr(file, ' ');
        if (sp) *sp = 0;
        snprintf(rel, sizeof rel, "vocab/%s", file);
        eng__gguf *g = open_ok(td_path(rel));
        bool full_model = strstr(file, "models/") != NULL;
        if (!full_model) cr_assert_eq(g->n_tensors, 0, "%s has tensors", file);
        eng__str str;
        cr_assert(eng__gguf_get_str(g, "general.architecture", &str));
        cr_assert(str_is(str, json_string_value(json_object_get(s, "architecture"))), "%s arch", file);
        cr_assert(eng__gguf_get_str(g, "tokenizer.ggml.model", &str));
        cr_assert(str_is(str, json_string_value(json_object_get(s, "tokenizer_model"))), "%s model", file);
        const eng__gguf_kv *tok = eng__gguf_find(g, "tokenizer.ggml.tokens");
        cr_assert(tok && tok->type == GGUF_VT_ARRAY && tok->arr_type == GGUF_VT_STRING);
        cr_assert_eq((json_int_t)tok->n, json_integer_value(json_object_get(s, "n_tokens")), "%s tokens", file);
        json_int_t n_merges = json_integer_value(json_object_get(s, "n_merges"));
        const eng__gguf_kv *mg = eng__gguf_find(g, "tokenizer.ggml.merges");
        if (n_merges) cr_assert(mg && (json_int_t)mg->n == n_merges, "%s merges", file);
        else cr_assert(!mg || mg->n == 0);
        const char *key;
        json_t *v;
        json_object_foreach(json_object_get(s, "tokenizer_keys"), key, v) check_golden_kv(g, file, key, v);
        /* every token string lies inside the file */
        eng__str *strs = malloc((size_t)tok->n * sizeof *strs);
        cr_assert_eq(eng__gguf_arr_strings(tok, strs), ENG_OK);
        for (uint64_t k = 0; k < tok->n; k++)
            cr_assert((const uint8_t *)strs[k].ptr + strs[k].len <= g->base + g->size);
        free(strs);
        const eng__gguf_kv *tt = eng__gguf_find(g, "tokenizer.ggml.token_type");
        if (tt) {
            cr_assert_eq(tt->n, tok->n);
            for (uint64_t k = 0; k < tt->n; k++) {
                int64_t ty = eng__gguf_arr_i64(tt, k);
                cr_assert(ty >= 0 && ty <= 6, "%s token %llu type %lld", file, (unsigned long long)k, (long long)ty);
            }
        }
        eng__gguf_close(g);
        n++;
    }
    cr_assert_geq(n, 11);
    json_decref(idx);
}

Test(gguf, typed_getters)
{
    eng__gguf *g = open_ok(td_path("models/stories260K.gguf"));
    uint64_t u;
    int64_t i;
    float f;
    bool b;
    eng__str s;
    cr_assert(eng__gguf_get_u64(g, "llama.context_length", &u) && u == 128);
    cr_assert(eng__gguf_get_i64(g, "llama.embedding_length", &i) && i == 64);
    /* an integer converts to float; a float does not convert to an integer */
    cr_assert(eng__gguf_get_f32(g, "llama.block_count", &f) && f == 5.0f);
    cr_assert(eng__gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f) && f == 1e-5f);
    cr_assert(!eng__gguf_get_i64(g, "llama.attention.layer_norm_rms_epsilon", &i));
    /* 0xFFFFFFFF stored as uint32 */
    cr_assert(eng__gguf_get_u64(g, "tokenizer.ggml.seperator_token_id", &u) && u == 4294967295u);
    cr_assert(eng__gguf_get_str(g, "general.architecture", &s) && str_is(s, "llama"));
    /* wrong types and missing keys */
    cr_assert(!eng__gguf_get_str(g, "llama.context_length", &s));
    cr_assert(!eng__gguf_get_u64(g, "general.architecture", &u));
    cr_assert(!eng__gguf_get_bool(g, "llama.context_length", &b));
    cr_assert(!eng__gguf_get_u64(g, "tokenizer.ggml.tokens", &u));
    cr_assert(!eng__gguf_get_f32(g, "no.such.key", &f));
    cr_assert(!eng__gguf_find(g, "llama.rope.freq_base"));
    cr_assert(!eng__gguf_tensor_find(g, "blk.5.attn_q.weight"));
    cr_assert(eng__gguf_tensor_find(g, "blk.4.attn_q.weight"));
    /* arrays */
    const eng__gguf_kv *tok = eng__gguf_find(g, "tokenizer.ggml.tokens");
    eng__str strs[512];
    cr_assert_eq(eng__gguf_arr_strings(tok, strs), ENG_OK);
    cr_assert(str_is(strs[0], "<unk>") && str_is(strs[1], "<s>") && str_is(strs[2], "</s>"));
    cr_assert(str_is(strs[3], "<0x00>"));
    cr_assert_eq(eng__gguf_arr_strings(eng__gguf_find(g, "tokenizer.ggml.scores"), strs), ENG_EINVAL);
    const eng__gguf_kv *tt = eng__gguf_find(g, "tokenizer.ggml.token_type");
    cr_assert_eq(eng__gguf_arr_i64(tt, 0), 2); /* unknown */
    cr_assert_eq(eng__gguf_arr_i64(tt, 1), 3); /* control */
    cr_assert_eq(eng__gguf_arr_i64(tt, 3), 6); /* byte */
    cr_assert_eq(eng__gguf_arr_i64(tt, 512), 0); /* out of range */
    const eng__gguf_kv *sc = eng__gguf_find(g, "tokenizer.ggml.scores");
    cr_assert_eq(sc->arr_type, GGUF_VT_FLOAT32);
    cr_assert(isfinite(eng__gguf_arr_f64(sc, 300)));
    cr_assert_eq(eng__gguf_arr_f64(sc, 100000), 0);
    cr_assert_str_eq(eng__gguf_vtype_name(GGUF_VT_FLOAT64), "float64");
    cr_assert_str_eq(eng__gguf_vtype_name(99), "invalid");
    cr_assert_str_eq(eng__ggml_type_name(ENG_TYPE_Q4_K), "Q4_K");
    cr_assert_null(eng__ggml_type_name(4));
    cr_assert_null(eng__ggml_type_name(1000));
    eng__gguf_close(g);
}

Test(gguf, open_errors)
{
    eng__gguf *g = (eng__gguf *)1;
    char err[512] = "";
    cr_assert_eq(eng__gguf_open("/nonexistent/x.gguf", &g, err, sizeof err), ENG_EIO);
    cr_assert_null(g);
    cr_assert(strstr(err, "/nonexistent/x.gguf"), "%s", err);
    err[0] = 0;
    cr_assert_eq(eng__gguf_open("/tmp", &g, err, sizeof err), ENG_EIO);
    cr_assert(err[0]);
    err[0] = 0;
    cr_assert_eq(eng__gguf_open(td_path("README.md"), &g, err, sizeof err), ENG_EFORMAT);
    cr_assert(strstr(err, "not a GGUF"), "%s", err);
    cr_assert_eq(eng__gguf_open(NULL, &g, err, sizeof err), ENG_EINVAL);
    cr_assert_eq(eng__gguf_open_mem(NULL, 10, &g, err, sizeof err), ENG_EINVAL);
    err[0] = 0;
    cr_assert_eq(eng__gguf_open_mem(NULL, 0, &g, err, sizeof err), ENG_EFORMAT);
    cr_assert(err[0]);
    eng__gguf_close(NULL);
}

/* A FIFO as the model path (issue 15, D13): open() would wait for a writer
 * forever; it is refused before it is opened, in both load modes. The
 * criterion timeout is the hang detector. */
Test(gguf, fifo_is_refused_without_blocking, .timeout = 10)
{
    char dir[] = "/tmp/orthoserve-fifo-XXXXXX", path[64];
    cr_assert(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    cr_assert_eq(mkfifo(path, 0600), 0);
    eng__gguf *g = (eng__gguf *)1;
    char err[512] = "";
    cr_expect_eq(eng__gguf_open(path, &g, err, sizeof err), ENG_EIO);
    cr_expect_null(g);
    cr_expect(strstr(err, "not a regular file (it is a FIFO)"), "%s", err);
    err[0] = 0;
    cr_expect_eq(eng__gguf_open_read(path, &g, err, sizeof err), ENG_EIO);
    cr_expect(strstr(err, "FIFO"), "%s", err);
    unlink(path);
    rmdir(dir);
}

/* ------------------------------------------------------------------------ */
/* (b) Writer round trip                                                    */
/* ------------------------------------------------------------------------ */

static void check_raw(const eng__gguf *g, const char *key, uint32_t type, const void *v, size_t n)
{
    const eng__gguf_kv *kv = eng__gguf_find(g, key);
    cr_assert(kv, "key %s missing", key);
    cr_assert_eq(kv->type, type, "key %s type %u", key, kv->type);
    cr_assert_eq(kv->nbytes, n);
    cr_assert_eq(memcmp(kv->data, v, n), 0, "key %s bytes differ", key);
}

static void check_arr(const eng__gguf *g, const char *key, uint32_t at, const void *v, uint64_t n,
                      size_t es)
{
    const eng__gguf_kv *kv = eng__gguf_find(g, key);
    cr_assert(kv, "key %s missing", key);
    cr_assert_eq(kv->type, GGUF_VT_ARRAY);
    cr_assert_eq(kv->arr_type, at);
    cr_assert_eq(kv->n, n);
    cr_assert_eq(kv->nbytes, 12 + n * es);
    if (n) cr_assert_eq(memcmp(kv->data, v, (size_t)(n * es)), 0, "key %s bytes differ", key);
}

typedef struct {
    const char *name;
    uint32_t type, n_dims;
    int64_t ne[4];
    uint8_t *data;
    uint64_t nbytes;
    bool use_fill;
} ttest;

static eng_status fill_from(void *user, const char *name, void *dst, uint64_t nbytes)
{
    const ttest *t = user;
    cr_assert_str_eq(name, t->name);
    cr_assert_eq(nbytes, t->nbytes);
    memcpy(dst, t->data, (size_t)nbytes);
    return ENG_OK;
}

static void roundtrip(uint32_t alignment)
{
    eng__gguf_writer *w;
    cr_assert_eq(eng__gguf_writer_new(&w), ENG_OK);
    if (alignment != 32) cr_assert_eq(eng__gguf_set_u32(w, "general.alignment", alignment), ENG_OK);
    const uint8_t u8 = 0xab;
    const int8_t i8 = -128;
    const uint16_t u16 = 65535;
    const int16_t i16 = -32768;
    const uint32_t u32 = 0xdeadbeef;
    const int32_t i32 = INT32_MIN;
    const uint64_t u64 = UINT64_MAX;
    const int64_t i64 = INT64_MIN;
    uint32_t nanbits = 0x7fc01234;
    float f32;
    memcpy(&f32, &nanbits, 4);
    const float fneg0 = -0.0f;
    const double f64 = 3.141592653589793;
    cr_assert_eq(eng__gguf_set_u8(w, "t.u8", u8), ENG_OK);
    cr_assert_eq(eng__gguf_set_i8(w, "t.i8", i8), ENG_OK);
    cr_assert_eq(eng__gguf_set_u16(w, "t.u16", u16), ENG_OK);
    cr_assert_eq(eng__gguf_set_i16(w, "t.i16", i16), ENG_OK);
    cr_assert_eq(eng__gguf_set_u32(w, "t.u32", u32), ENG_OK);
    cr_assert_eq(eng__gguf_set_i32(w, "t.i32", i32), ENG_OK);
    cr_assert_eq(eng__gguf_set_u64(w, "t.u64", u64), ENG_OK);
    cr_assert_eq(eng__gguf_set_i64(w, "t.i64", i64), ENG_OK);
    cr_assert_eq(eng__gguf_set_f32(w, "t.f32nan", f32), ENG_OK);
    cr_assert_eq(eng__gguf_set_f32(w, "t.f32neg0", fneg0), ENG_OK);
    cr_assert_eq(eng__gguf_set_f64(w, "t.f64", f64), ENG_OK);
    cr_assert_eq(eng__gguf_set_bool(w, "t.true", true), ENG_OK);
    cr_assert_eq(eng__gguf_set_bool(w, "t.false", false), ENG_OK);
    cr_assert_eq(eng__gguf_set_str(w, "t.str", "hello \xe2\x96\x81world"), ENG_OK);
    cr_assert_eq(eng__gguf_set_str(w, "t.empty", ""), ENG_OK);
    cr_assert_eq(eng__gguf_set_strn(w, "t.nul", "a\0b", 3), ENG_OK);
    /* replacing a value keeps the key's position */
    cr_assert_eq(eng__gguf_set_u32(w, "t.replaced", 1), ENG_OK);
    cr_assert_eq(eng__gguf_set_u32(w, "t.after", 2), ENG_OK);
    cr_assert_eq(eng__gguf_set_str(w, "t.replaced", "now a string"), ENG_OK);
    cr_assert_eq(eng__gguf_set_u8(w, "t.removed", 7), ENG_OK);
    cr_assert_eq(eng__gguf_remove_kv(w, "t.removed"), ENG_OK);
    cr_assert_eq(eng__gguf_remove_kv(w, "t.removed"), ENG_EINVAL);

    /* arrays of every numeric type */
    const uint8_t a_u8[] = {0, 1, 255};
    const int8_t a_i8[] = {-128, 0, 127};
    const uint16_t a_u16[] = {0, 65535};
    const int16_t a_i16[] = {-32768, 32767, 5};
    const uint32_t a_u32[] = {0, 4294967295u, 17};
    const int32_t a_i32[] = {INT32_MIN, -1, INT32_MAX, 6};
    const uint64_t a_u64[] = {UINT64_MAX, 0};
    const int64_t a_i64[] = {INT64_MIN, INT64_MAX, -5};
    const float a_f32[] = {1.5f, -2.25f, INFINITY, 1e-40f};
    const double a_f64[] = {-1e300, 0.1, 2};
    const uint8_t a_bool[] = {1, 0, 1, 1};
#define SETA(key, vt, a) \
    cr_assert_eq(eng__gguf_set_arr(w, key, vt, a, sizeof a / sizeof a[0]), ENG_OK)
    SETA("a.u8", GGUF_VT_UINT8, a_u8);
    SETA("a.i8", GGUF_VT_INT8, a_i8);
    SETA("a.u16", GGUF_VT_UINT16, a_u16);
    SETA("a.i16", GGUF_VT_INT16, a_i16);
    SETA("a.u32", GGUF_VT_UINT32, a_u32);
    SETA("a.i32", GGUF_VT_INT32, a_i32);
    SETA("a.u64", GGUF_VT_UINT64, a_u64);
    SETA("a.i64", GGUF_VT_INT64, a_i64);
    SETA("a.f32", GGUF_VT_FLOAT32, a_f32);
    SETA("a.f64", GGUF_VT_FLOAT64, a_f64);
    SETA("a.bool", GGUF_VT_BOOL, a_bool);
#undef SETA
    cr_assert_eq(eng__gguf_set_arr(w, "a.empty", GGUF_VT_INT32, NULL, 0), ENG_OK);
    const char *strs[] = {"", "x", "\xe2\x96\x81the", "<0x0A>"};
    cr_assert_eq(eng__gguf_set_arr_str(w, "a.str", strs, 4), ENG_OK);
    eng__str sn[] = {{"a\0b", 3}, {"", 0}, {"zz", 2}};
    cr_assert_eq(eng__gguf_set_arr_strn(w, "a.strn", sn, 3), ENG_OK);
    cr_assert_eq(eng__gguf_set_arr_str(w, "a.str_empty", NULL, 0), ENG_OK);

    /* tensors: several types and ranks, random contents, one from a callback */
    ttest ts[] = {
        {"f32.vec", ENG_TYPE_F32, 1, {7}, NULL, 0, false},
        {"f16.mat", ENG_TYPE_F16, 2, {3, 5}, NULL, 0, false},
        {"q8_0.mat", ENG_TYPE_Q8_0, 2, {64, 3}, NULL, 0, true},
        {"q4_0.3d", ENG_TYPE_Q4_0, 3, {32, 2, 2}, NULL, 0, false},
        {"q2_k.4d", ENG_TYPE_Q2_K, 4, {256, 1, 1, 2}, NULL, 0, false},
        {"bf16.4d", ENG_TYPE_BF16, 4, {5, 1, 1, 1}, NULL, 0, true},
        {"i8.vec", 24, 1, {3}, NULL, 0, false},
        {"zeros", ENG_TYPE_F32, 1, {9}, NULL, 0, false},
    };
    const int nt = (int)(sizeof ts / sizeof ts[0]);
    uint64_t rng = 42 + alignment;
    for (int i = 0; i < nt; i++) {
        ttest *t = &ts[i];
        t->nbytes = eng__gguf_tensor_nbytes(t->type, t->n_dims, t->ne);
        cr_assert_gt(t->nbytes, 0);
        t->data = malloc((size_t)t->nbytes);
        for (uint64_t k = 0; k < t->nbytes; k++) t->data[k] = (uint8_t)td_rand(&rng);
        if (!strcmp(t->name, "zeros")) {
            memset(t->data, 0, (size_t)t->nbytes);
            cr_assert_eq(eng__gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, NULL, t->nbytes), ENG_OK);
        } else if (t->use_fill) {
            cr_assert_eq(eng__gguf_add_tensor_fill(w, t->name, t->type, t->n_dims, t->ne, fill_from, t), ENG_OK);
        } else {
            cr_assert_eq(eng__gguf_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, t->nbytes),
                         ENG_OK, "%s", eng__gguf_writer_error(w));
        }
    }
    cr_assert_eq(eng__gguf_writer_n_tensors(w), (uint64_t)nt);

    void *buf;
    size_t size;
    cr_assert_eq(eng__gguf_writer_write_mem(w, &buf, &size), ENG_OK, "%s", eng__gguf_writer_error(w));
    uint64_t want;
    cr_assert_eq(eng__gguf_writer_size(w, &want), ENG_OK);
    cr_assert_eq(size, want);

    eng__gguf *g = open_mem_ok(buf, size);
    cr_assert_eq(g->version, 3);
    cr_assert_eq(g->n_kv, eng__gguf_writer_n_kv(w));
    check_raw(g, "t.u8", GGUF_VT_UINT8, &u8, 1);
    check_raw(g, "t.i8", GGUF_VT_INT8, &i8, 1);
    check_raw(g, "t.u16", GGUF_VT_UINT16, &u16, 2);
    check_raw(g, "t.i16", GGUF_VT_INT16, &i16, 2);
    check_raw(g, "t.u32", GGUF_VT_UINT32, &u32, 4);
    check_raw(g, "t.i32", GGUF_VT_INT32, &i32, 4);
    check_raw(g, "t.u64", GGUF_VT_UINT64, &u64, 8);
    check_raw(g, "t.i64", GGUF_VT_INT64, &i64, 8);
    check_raw(g, "t.f32nan", GGUF_VT_FLOAT32, &f32, 4);
    check_raw(g, "t.f32neg0", GGUF_VT_FLOAT32, &fneg0, 4);
    check_raw(g, "t.f64", GGUF_VT_FLOAT64, &f64, 8);
    const uint8_t one = 1, zero = 0;
    check_raw(g, "t.true", GGUF_VT_BOOL, &one, 1);
    check_raw(g, "t.false", GGUF_VT_BOOL, &zero, 1);
    /* typed getters over the written values */
    uint64_t u;
    int64_t i;
    float f;
    bool b;
    eng__str s;
    cr_assert(eng__gguf_get_u64(g, "t.u8", &u) && u == 0xab);
    cr_assert(eng__gguf_get_i64(g, "t.i8", &i) && i == -128);
    cr_assert(eng__gguf_get_u64(g, "t.u16", &u) && u == 65535);
    cr_assert(eng__gguf_get_i64(g, "t.i16", &i) && i == -32768);
    cr_assert(eng__gguf_get_u64(g, "t.u32", &u) && u == 0xdeadbeef);
    cr_assert(eng__gguf_get_i64(g, "t.i32", &i) && i == INT32_MIN);
    cr_assert(!eng__gguf_get_u64(g, "t.i32", &u)); /* negative */
    cr_assert(eng__gguf_get_i64(g, "t.i64", &i) && i == INT64_MIN);
    cr_assert(eng__gguf_get_f32(g, "t.f64", &f) && f == (float)f64);
    cr_assert(eng__gguf_get_f32(g, "t.f32nan", &f) && isnan(f));
    cr_assert(eng__gguf_get_bool(g, "t.true", &b) && b);
    cr_assert(eng__gguf_get_bool(g, "t.false", &b) && !b);
    cr_assert(eng__gguf_get_str(g, "t.str", &s) && str_is(s, "hello \xe2\x96\x81world"));
    cr_assert(eng__gguf_get_str(g, "t.empty", &s) && s.len == 0);
    cr_assert(eng__gguf_get_str(g, "t.nul", &s) && s.len == 3 && !memcmp(s.ptr, "a\0b", 3));
    cr_assert(eng__gguf_get_str(g, "t.replaced", &s) && str_is(s, "now a string"));
    cr_assert(!eng__gguf_find(g, "t.removed"));
    cr_assert_lt(eng__gguf_find(g, "t.replaced"), eng__gguf_find(g, "t.after"));

    check_arr(g, "a.u8", GGUF_VT_UINT8, a_u8, 3, 1);
    check_arr(g, "a.i8", GGUF_VT_INT8, a_i8, 3, 1);
    check_arr(g, "a.u16", GGUF_VT_UINT16, a_u16, 2, 2);
    check_arr(g, "a.i16", GGUF_VT_INT16, a_i16, 3, 2);
    check_arr(g, "a.u32", GGUF_VT_UINT32, a_u32, 3, 4);
    check_arr(g, "a.i32", GGUF_VT_INT32, a_i32, 4, 4);
    check_arr(g, "a.u64", GGUF_VT_UINT64, a_u64, 2, 8);
    check_arr(g, "a.i64", GGUF_VT_INT64, a_i64, 3, 8);
    check_arr(g, "a.f32", GGUF_VT_FLOAT32, a_f32, 4, 4);
    check_arr(g, "a.f64", GGUF_VT_FLOAT64, a_f64, 3, 8);
    check_arr(g, "a.bool", GGUF_VT_BOOL, a_bool, 4, 1);
    check_arr(g, "a.empty", GGUF_VT_INT32, NULL, 0, 4);
    const eng__gguf_kv *kv = eng__gguf_find(g, "a.i32");
    for (int k = 0; k < 4; k++) cr_assert_eq(eng__gguf_arr_i64(kv, (uint64_t)k), a_i32[k]);
    kv = eng__gguf_find(g, "a.f64");
    for (int k = 0; k < 3; k++) cr_assert_eq(eng__gguf_arr_f64(kv, (uint64_t)k), a_f64[k]);
    kv = eng__gguf_find(g, "a.u16");
    cr_assert_eq(eng__gguf_arr_i64(kv, 1), 65535);
    kv = eng__gguf_find(g, "a.str");
    cr_assert(kv && kv->arr_type == GGUF_VT_STRING && kv->n == 4);
    eng__str got[4];
    cr_assert_eq(eng__gguf_arr_strings(kv, got), ENG_OK);
    for (int k = 0; k < 4; k++) cr_assert(str_is(got[k], strs[k]), "string %d", k);
    kv = eng__gguf_find(g, "a.strn");
    cr_assert_eq(eng__gguf_arr_strings(kv, got), ENG_OK);
    for (int k = 0; k < 3; k++)
        cr_assert(got[k].len == sn[k].len && !memcmp(got[k].ptr, sn[k].ptr, sn[k].len));
    kv = eng__gguf_find(g, "a.str_empty");
    cr_assert(kv && kv->arr_type == GGUF_VT_STRING && kv->n == 0);

    cr_assert_eq(g->n_tensors, (uint64_t)nt);
    for (int k = 0; k < nt; k++) {
        const eng__gguf_tensor *t = &g->tensors[k];
        cr_assert(str_is(t->name, ts[k].name));
        cr_assert_eq(t->type, ts[k].type);
        cr_assert_eq(t->n_dims, ts[k].n_dims);
        for (uint32_t d = 0; d < 4; d++) cr_assert_eq(t->ne[d], d < t->n_dims ? ts[k].ne[d] : 1);
        cr_assert_eq(t->nbytes, ts[k].nbytes);
        cr_assert_eq(memcmp(t->data, ts[k].data, (size_t)t->nbytes), 0, "tensor %s data", ts[k].name);
        cr_assert_eq(((uintptr_t)t->data - (uintptr_t)g->base) % alignment, 0);
    }
    check_layout(g, alignment);
    eng__gguf_close(g);

    /* the file write gives the same bytes, and can be repeated */
    const char *dir = tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/rt.gguf", dir);
    for (int rep = 0; rep < 2; rep++) {
        cr_assert_eq(eng__gguf_writer_write_file(w, path), ENG_OK, "%s", eng__gguf_writer_error(w));
        size_t fsz;
        char *fb = td_read(path, &fsz);
        cr_assert(fb);
        cr_assert_eq(fsz, size);
        cr_assert_eq(memcmp(fb, buf, size), 0);
        free(fb);
        struct stat sb;
        cr_assert_eq(stat(path, &sb), 0);
        cr_assert_eq(sb.st_mode & 0444, 0444, "the file should be readable");
    }
    g = open_ok(path);
    eng__gguf_close(g);
    cr_assert_eq(count_dir_entries(dir), 1, "temporary files left behind");
    rm_dir(dir);

    free(buf);
    for (int k = 0; k < nt; k++) free(ts[k].data);
    eng__gguf_writer_free(w);
}

Test(gguf, writer_roundtrip_align32) { roundtrip(32); }
Test(gguf, writer_roundtrip_align64) { roundtrip(64); }
Test(gguf, writer_roundtrip_align1) { roundtrip(1); }
Test(gguf, writer_roundtrip_align4096) { roundtrip(4096); }

Test(gguf, writer_empty_file)
{
    eng__gguf_writer *w;
    cr_assert_eq(eng__gguf_writer_new(&w), ENG_OK);
    void *buf;
    size_t size;
    cr_assert_eq(eng__gguf_writer_write_mem(w, &buf, &size), ENG_OK);
    cr_assert_eq(size, 32); /* the 24-byte header padded to the alignment, as ggml does */
    eng__gguf *g = open_mem_ok(buf, size);
    cr_assert_eq(g->n_kv, 0);
    cr_assert_eq(g->n_tensors, 0);
    eng__gguf_close(g);
    free(buf);
    eng__gguf_writer_free(w);
    eng__gguf_writer_free(NULL);
}

Test(gguf, writer_copy_kv_verbatim)
{
    eng__gguf *src = open_ok(td_path("models/tiny256-F32.gguf"));
    eng__gguf_writer *w;
    cr_assert_eq(eng__gguf_writer_new(&w), ENG_OK);
    int n = 0;
    for (uint64_t i = 0; i < src->n_kv; i++) {
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)src->kv[i].key.len, src->kv[i].key.ptr);
        cr_assert_eq(eng__gguf_copy_kv(w, src, key), ENG_OK, "%s", eng__gguf_writer_error(w));
        n++;
    }
    cr_assert_eq(eng__gguf_copy_kv(w, src, "no.such.key"), ENG_EINVAL);
    cr_assert(strstr(eng__gguf_writer_error(w), "no.such.key"));
    void *buf;
    size_t size;
    cr_assert_eq(eng__gguf_writer_write_mem(w, &buf, &size), ENG_OK);
    eng__gguf *g = open_mem_ok(buf, size);
    cr_assert_eq(g->n_kv, (uint64_t)n);
    for (uint64_t i = 0; i < src->n_kv; i++) {
        const eng__gguf_kv *a = &src->kv[i], *b = &g->kv[i];
        cr_assert(a->key.len == b->key.len && !memcmp(a->key.ptr, b->key.ptr, a->key.len));
        cr_assert_eq(a->type, b->type);
        cr_assert_eq(a->arr_type, b->arr_type);
        cr_assert_eq(a->n, b->n);
        cr_assert_eq(a->nbytes, b->nbytes);
        cr_assert_eq(memcmp(a->data, b->data, (size_t)(a->nbytes - (a->type == GGUF_VT_ARRAY ? 12 : 0))), 0);
    }
    /* the whole metadata section is byte-identical to the source's */
    uint64_t src_kv_end = 24, g_kv_end = 24;
    {
        const eng__gguf_kv *a = &src->kv[src->n_kv - 1], *b = &g->kv[g->n_kv - 1];
        src_kv_end = (uint64_t)((a->type == GGUF_VT_ARRAY ? a->data - 12 : a->data) - src->base) + a->nbytes;
        g_kv_end = (uint64_t)((b->type == GGUF_VT_ARRAY ? b->data - 12 : b->data) - g->base) + b->nbytes;
    }
    cr_assert_eq(src_kv_end, g_kv_end);
    cr_assert_eq(memcmp(src->base + 24, g->base + 24, (size_t)(src_kv_end - 24)), 0);
    eng__gguf_close(g);
    free(buf);
    eng__gguf_close(src);
    eng__gguf_writer_free(w);
}

Test(gguf, writer_rejects_bad_input)
{
    eng__gguf_writer *w;
    cr_assert_eq(eng__gguf_writer_new(&w), ENG_OK);
    int64_t ne[4] = {32, 2, 1, 1};
    uint8_t data[256] = {0};
    /* alignment */
    cr_assert_eq(eng__gguf_set_u32(w, "general.alignment", 0), ENG_EINVAL);
    cr_assert(strstr(eng__gguf_writer_error(w), "general.alignment"));
    cr_assert_eq(eng__gguf_set_u32(w, "general.alignment", 3), ENG_EINVAL);
    cr_assert_eq(eng__gguf_set_u32(w, "general.alignment", 1u << 20), ENG_EINVAL);
    cr_assert_eq(eng__gguf_set_u64(w, "general.alignment", 32), ENG_EINVAL); /* ggml reads a uint32 */
    cr_assert_eq(eng__gguf_set_str(w, "general.alignment", "32"), ENG_EINVAL);
    cr_assert_eq(eng__gguf_writer_n_kv(w), 0);
    cr_assert_eq(eng__gguf_set_u32(w, "general.alignment", 65536), ENG_OK);
    /* keys and values */
    cr_assert_eq(eng__gguf_set_u32(w, "", 1), ENG_EINVAL);
    cr_assert_eq(eng__gguf_set_u32(w, NULL, 1), ENG_EINVAL);
    cr_assert_eq(eng__gguf_set_str(w, "k", NULL), ENG_EINVAL);
    cr_assert_eq(eng__gguf_set_arr(w, "k", GGUF_VT_STRING, data, 1), ENG_EINVAL);
    cr_assert_eq(eng__gguf_set_arr(w, "k", GGUF_VT_ARRAY, data, 1), ENG_EINVAL);
    cr_assert_eq(eng__gguf_set_arr(w, "k", 13, data, 1), ENG_EINVAL);
    cr_assert_eq(eng__gguf_set_arr(w, "k", GGUF_VT_INT32, NULL, 3), ENG_EINVAL);
    const char *bad[] = {"a", NULL};
    cr_assert_eq(eng__gguf_set_arr_str(w, "k", bad, 2), ENG_EINVAL);
    cr_assert_eq(eng__gguf_set_u32(NULL, "k", 1), ENG_EINVAL);
    /* tensors */
    cr_assert_eq(eng__gguf_add_tensor(w, "t", ENG_TYPE_Q8_0, 2, ne, data, 68), ENG_OK);
    cr_assert_eq(eng__gguf_add_tensor(w, "t", ENG_TYPE_Q8_0, 2, ne, data, 68), ENG_EINVAL);
    cr_assert(strstr(eng__gguf_writer_error(w), "duplicate"));
    cr_assert_eq(eng__gguf_add_tensor(w, "u", ENG_TYPE_Q8_0, 2, ne, data, 64), ENG_EINVAL);
    cr_assert(strstr(eng__gguf_writer_error(w), "68"), "%s", eng__gguf_writer_error(w));
    int64_t ne33[2] = {33, 2};
    cr_assert_eq(eng__gguf_add_tensor(w, "u", ENG_TYPE_Q8_0, 2, ne33, data, 68), ENG_EINVAL);
    cr_assert(strstr(eng__gguf_writer_error(w), "block"), "%s", eng__gguf_writer_error(w));
    cr_assert_eq(eng__gguf_add_tensor(w, "u", ENG_TYPE_F32, 0, ne, data, 4), ENG_EINVAL);
    cr_assert_eq(eng__gguf_add_tensor(w, "u", ENG_TYPE_F32, 5, ne, data, 4), ENG_EINVAL);
    int64_t ne0[2] = {0, 2};
    cr_assert_eq(eng__gguf_add_tensor(w, "u", ENG_TYPE_F32, 2, ne0, data, 0), ENG_EINVAL);
    int64_t huge[2] = {1ll << 32, 1ll << 32};
    cr_assert_eq(eng__gguf_add_tensor(w, "u", ENG_TYPE_F32, 2, huge, data, 0), ENG_EINVAL);
    cr_assert_eq(eng__gguf_add_tensor(w, "u", 4, 1, ne, data, 0), ENG_EINVAL); /* removed Q4_2 */
    cr_assert_eq(eng__gguf_add_tensor(w, "u", 1000, 1, ne, data, 0), ENG_EINVAL);
    char longname[80];
    memset(longname, 'n', 64);
    longname[64] = 0;
    cr_assert_eq(eng__gguf_add_tensor(w, longname, ENG_TYPE_F32, 1, ne, data, 128), ENG_EINVAL);
    longname[63] = 0;
    cr_assert_eq(eng__gguf_add_tensor(w, longname, ENG_TYPE_F32, 1, ne, data, 128), ENG_OK);
    cr_assert_eq(eng__gguf_add_tensor(w, "", ENG_TYPE_F32, 1, ne, data, 128), ENG_EINVAL);
    cr_assert_eq(eng__gguf_add_tensor_fill(w, "v", ENG_TYPE_F32, 1, ne, NULL, NULL), ENG_EINVAL);
    cr_assert_eq(eng__gguf_writer_n_tensors(w), 2);
    void *buf;
    size_t size;
    cr_assert_eq(eng__gguf_writer_write_mem(w, &buf, &size), ENG_OK);
    eng__gguf *g = open_mem_ok(buf, size);
    check_layout(g, 65536);
    eng__gguf_close(g);
    free(buf);
    /* geometry table agrees with the engine's type table for every type it runs */
    for (int t = 0; t < ENG_TYPE_COUNT; t++) {
        const eng__type_info *ti = eng__type(t);
        uint32_t blck, tsz;
        if (!ti) continue;
        cr_assert(eng__gguf_type_geom((uint32_t)t, &blck, &tsz), "type %d", t);
        cr_assert_eq(blck, (uint32_t)ti->blck);
        cr_assert_eq(tsz, (uint32_t)ti->type_size);
        cr_assert_eq(eng__gguf_tensor_nbytes((uint32_t)t, 2, (int64_t[]){ti->blck * 4, 3}),
                     eng__row_size(t, ti->blck * 4) * 3);
    }
    /* and with the reader's names for every id */
    for (uint32_t t = 0; t < 64; t++)
        cr_assert_eq(eng__gguf_type_geom(t, NULL, NULL), eng__ggml_type_name(t) != NULL, "type %u", t);
    eng__gguf_writer_free(w);
}

static eng_status fill_fail(void *user, const char *name, void *dst, uint64_t nbytes)
{
    (void)user, (void)name;
    memset(dst, 0x55, (size_t)nbytes);
    return ENG_ECANCELED;
}

Test(gguf, writer_atomic_file)
{
    const char *dir = tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    eng__gguf_writer *w;
    cr_assert_eq(eng__gguf_writer_new(&w), ENG_OK);
    cr_assert_eq(eng__gguf_set_str(w, "general.architecture", "llama"), ENG_OK);
    cr_assert_eq(eng__gguf_writer_write_file(w, path), ENG_OK);
    size_t n0;
    char *orig = td_read(path, &n0);
    cr_assert(orig);
    /* a failing producer leaves the old file and no temporary behind */
    int64_t ne[1] = {1 << 16};
    cr_assert_eq(eng__gguf_add_tensor_fill(w, "x", ENG_TYPE_F32, 1, ne, fill_fail, NULL), ENG_OK);
    cr_assert_eq(eng__gguf_writer_write_file(w, path), ENG_ECANCELED);
    cr_assert(strstr(eng__gguf_writer_error(w), "'x'"), "%s", eng__gguf_writer_error(w));
    size_t n1;
    char *now = td_read(path, &n1);
    cr_assert(now && n1 == n0 && !memcmp(now, orig, n0));
    cr_assert_eq(count_dir_entries(dir), 1);
    void *buf;
    size_t size;
    cr_assert_eq(eng__gguf_writer_write_mem(w, &buf, &size), ENG_ECANCELED);
    cr_assert_null(buf);
    /* an unwritable place */
    cr_assert_eq(eng__gguf_writer_write_file(w, "/nonexistent-dir/x.gguf"), ENG_EIO);
    cr_assert(strstr(eng__gguf_writer_error(w), "nonexistent-dir"), "%s", eng__gguf_writer_error(w));
    cr_assert_eq(eng__gguf_writer_write_file(w, ""), ENG_EINVAL);
    free(orig);
    free(now);
    eng__gguf_writer_free(w);
    rm_dir(dir);
}

/* ------------------------------------------------------------------------ */
/* (c) Hostile files                                                        */
/* ------------------------------------------------------------------------ */

/* A small valid GGUF: keys of several kinds (two same-length key names and
 * three same-length tensor names, so duplicates can be patched in), three
 * tensors, the last one ending exactly at the end of the file (so every
 * truncation must fail). */
static uint8_t *make_base(size_t *size)
{
    eng__gguf_writer *w;
    cr_assert_eq(eng__gguf_writer_new(&w), ENG_OK);
    cr_assert_eq(eng__gguf_set_str(w, "general.architecture", "llama"), ENG_OK);
    cr_assert_eq(eng__gguf_set_u32(w, "general.alignment", 32), ENG_OK);
    cr_assert_eq(eng__gguf_set_u32(w, "test.key_a", 7), ENG_OK);
    cr_assert_eq(eng__gguf_set_u32(w, "test.key_b", 8), ENG_OK);
    const char *strs[] = {"alpha", "", "gamma"};
    cr_assert_eq(eng__gguf_set_arr_str(w, "test.strs", strs, 3), ENG_OK);
    const float fs[] = {1, 2, 3, 4};
    cr_assert_eq(eng__gguf_set_arr(w, "test.f32s", GGUF_VT_FLOAT32, fs, 4), ENG_OK);
    cr_assert_eq(eng__gguf_set_bool(w, "test.flag", true), ENG_OK);
    static uint8_t d[128];
    for (int i = 0; i < 128; i++) d[i] = (uint8_t)(i * 7 + 1);
    cr_assert_eq(eng__gguf_add_tensor(w, "t.aaaa", ENG_TYPE_F32, 1, (int64_t[]){8}, d, 32), ENG_OK);
    cr_assert_eq(eng__gguf_add_tensor(w, "t.bbbb", ENG_TYPE_Q8_0, 2, (int64_t[]){32, 2}, d, 68), ENG_OK);
    cr_assert_eq(eng__gguf_add_tensor(w, "t.cccc", ENG_TYPE_F16, 2, (int64_t[]){16, 2}, d, 64), ENG_OK);
    void *buf;
    cr_assert_eq(eng__gguf_writer_write_mem(w, &buf, size), ENG_OK);
    eng__gguf_writer_free(w);
    eng__gguf *g = open_mem_ok(buf, *size);
    const eng__gguf_tensor *t = &g->tensors[2];
    cr_assert_eq(g->data_offset + t->offset + t->nbytes, *size, "the last tensor must end the file");
    eng__gguf_close(g);
    return buf;
}

/* Field offsets in a valid file, found through the reader. */
typedef struct {
    size_t key_len, key_type, val; /* val: value bytes, or an array's element type field */
} kvoff;
typedef struct {
    size_t name_len, n_dims, ne, type, offset;
} toff;

static kvoff kv_off(const uint8_t *b, size_t n, const char *key)
{
    eng__gguf *g = open_mem_ok(b, n);
    const eng__gguf_kv *kv = eng__gguf_find(g, key);
    cr_assert(kv, "no key %s", key);
    kvoff o;
    o.key_len = (size_t)((const uint8_t *)kv->key.ptr - b) - 8;
    o.key_type = o.key_len + 8 + (size_t)kv->key.len;
    o.val = o.key_type + 4;
    eng__gguf_close(g);
    return o;
}

static toff t_off(const uint8_t *b, size_t n, const char *name)
{
    eng__gguf *g = open_mem_ok(b, n);
    const eng__gguf_tensor *t = eng__gguf_tensor_find(g, name);
    cr_assert(t, "no tensor %s", name);
    toff o;
    o.name_len = (size_t)((const uint8_t *)t->name.ptr - b) - 8;
    o.n_dims = o.name_len + 8 + (size_t)t->name.len;
    o.ne = o.n_dims + 4;
    o.type = o.ne + 8 * t->n_dims;
    o.offset = o.type + 4;
    eng__gguf_close(g);
    return o;
}

/* Open an exact-size copy of b (so ASan sees any over-read); the result must
 * be an error with a message containing want (when not NULL). */
static void expect_fail(const uint8_t *b, size_t n, const char *want, const char *what)
{
    uint8_t *c = malloc(n ? n : 1);
    memcpy(c, b, n);
    eng__gguf *g = (eng__gguf *)1;
    char err[512] = "";
    eng_status st = eng__gguf_open_mem(c, n, &g, err, sizeof err);
    cr_assert_neq(st, ENG_OK, "%s: a corrupt file was accepted", what);
    cr_assert(st == ENG_EFORMAT || st == ENG_ENOMEM, "%s: status %s", what, eng_strerror(st));
    cr_assert_null(g, "%s", what);
    cr_assert(err[0], "%s: no error message", what);
    if (want) cr_assert(strstr(err, want), "%s: message '%s' does not mention '%s'", what, err, want);
    free(c);
}

/* Open a copy; either outcome is fine, but a loaded file must be usable:
 * touch every key, string and tensor byte (ASan checks the bounds). */
static bool open_any(const uint8_t *b, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    memcpy(c, b, n);
    eng__gguf *g = NULL;
    char err[512] = "";
    eng_status st = eng__gguf_open_mem(c, n, &g, err, sizeof err);
    if (st != ENG_OK) {
        cr_assert(err[0], "failure without a message");
        cr_assert_null(g);
        free(c);
        return false;
    }
    volatile uint64_t sink = 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const eng__gguf_kv *kv = &g->kv[i];
        char key[128];
        if (kv->key.len >= sizeof key || memchr(kv->key.ptr, 0, kv->key.len)) continue;
        memcpy(key, kv->key.ptr, kv->key.len);
        key[kv->key.len] = 0;
        uint64_t u;
        int64_t iv;
        float f;
        bool bo;
        eng__str s;
        sink += eng__gguf_get_u64(g, key, &u) + eng__gguf_get_i64(g, key, &iv) +
                eng__gguf_get_f32(g, key, &f) + eng__gguf_get_bool(g, key, &bo);
        if (eng__gguf_get_str(g, key, &s) && s.len) sink += (uint8_t)s.ptr[s.len - 1];
        if (kv->type == GGUF_VT_ARRAY && kv->arr_type == GGUF_VT_STRING) {
            eng__str *ss = malloc((size_t)kv->n * sizeof *ss + 1);
            cr_assert_eq(eng__gguf_arr_strings(kv, ss), ENG_OK);
            for (uint64_t k = 0; k < kv->n; k++)
                if (ss[k].len) sink += (uint8_t)ss[k].ptr[ss[k].len - 1];
            free(ss);
        } else if (kv->type == GGUF_VT_ARRAY) {
            for (uint64_t k = 0; k < kv->n; k++) sink += (uint64_t)eng__gguf_arr_i64(kv, k);
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const eng__gguf_tensor *t = &g->tensors[i];
        const uint8_t *p = t->data;
        for (uint64_t k = 0; k < t->nbytes; k++) sink += p[k];
    }
    (void)sink;
    eng__gguf_close(g);
    free(c);
    return true;
}

static void put32(uint8_t *b, size_t off, uint32_t v) { memcpy(b + off, &v, 4); }
static void put64(uint8_t *b, size_t off, uint64_t v) { memcpy(b + off, &v, 8); }

/* Patch a copy of base with a 32/64-bit value and expect failure. */
static void fail32(const uint8_t *base, size_t n, size_t off, uint32_t v, const char *want, const char *what)
{
    uint8_t *c = malloc(n);
    memcpy(c, base, n);
    put32(c, off, v);
    expect_fail(c, n, want, what);
    free(c);
}

static void fail64(const uint8_t *base, size_t n, size_t off, uint64_t v, const char *want, const char *what)
{
    uint8_t *c = malloc(n);
    memcpy(c, base, n);
    put64(c, off, v);
    expect_fail(c, n, want, what);
    free(c);
}

static bool any64(const uint8_t *base, size_t n, size_t off, uint64_t v)
{
    uint8_t *c = malloc(n);
    memcpy(c, base, n);
    put64(c, off, v);
    bool ok = open_any(c, n);
    free(c);
    return ok;
}

Test(gguf, hostile_truncated_everywhere, .timeout = 120)
{
    size_t n;
    uint8_t *b = make_base(&n);
    cr_assert(open_any(b, n));
    for (size_t len = 0; len < n; len++) {
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu of %zu bytes", len, n);
        expect_fail(b, len, NULL, what);
    }
    /* the same through files (mmap path, including the small-file check) */
    const char *dir = tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/t.gguf", dir);
    for (size_t len = 0; len < n; len += (len < 64 ? 1 : 37)) {
        FILE *f = fopen(path, "wb");
        cr_assert(f);
        cr_assert_eq(fwrite(b, 1, len, f), len);
        fclose(f);
        eng__gguf *g = NULL;
        char err[512] = "";
        eng_status st = eng__gguf_open(path, &g, err, sizeof err);
        cr_assert_eq(st, ENG_EFORMAT, "file truncated to %zu: %s", len, eng_strerror(st));
        cr_assert(err[0]);
    }
    unlink(path);
    rm_dir(dir);
    free(b);
}

Test(gguf, hostile_magic_version_counts)
{
    size_t n;
    uint8_t *b = make_base(&n);
    uint8_t *c = malloc(n);
    /* magic */
    const char *magics[] = {"GGUf", "FUGG", "\0\0\0\0", "GGML"};
    for (int i = 0; i < 4; i++) {
        memcpy(c, b, n);
        memcpy(c, magics[i], 4);
        expect_fail(c, n, "not a GGUF", "magic");
    }
    /* version: 2 has the same layout and is accepted */
    const uint32_t versions[] = {0, 1, 4, 0x03000000, 0xffffffff};
    for (int i = 0; i < 5; i++) fail32(b, n, 4, versions[i], "version", "version");
    memcpy(c, b, n);
    put32(c, 4, 2);
    cr_assert(open_any(c, n));
    /* absurd counts */
    const uint64_t absurd[] = {1ull << 63, UINT64_MAX, 1ull << 32, 1ull << 40, 100000};
    for (int i = 0; i < 5; i++) {
        fail64(b, n, 8, absurd[i], NULL, "n_tensors");
        fail64(b, n, 16, absurd[i], NULL, "n_kv");
    }
    fail64(b, n, 8, UINT64_MAX, "tensor count", "n_tensors");
    fail64(b, n, 16, UINT64_MAX, "metadata count", "n_kv");
    /* one too many: the parser runs into the next section */
    fail64(b, n, 8, 4, NULL, "n_tensors + 1");
    fail64(b, n, 16, 8, NULL, "n_kv + 1");
    /* one too few: whatever happens, no crash */
    (void)any64(b, n, 8, 2);
    (void)any64(b, n, 16, 6);
    (void)any64(b, n, 8, 0);
    (void)any64(b, n, 16, 0);
    free(c);
    free(b);
}

Test(gguf, hostile_strings_and_arrays)
{
    size_t n;
    uint8_t *b = make_base(&n);
    const uint64_t lens[] = {1ull << 63, UINT64_MAX, (1ull << 30) + 1, 1ull << 30, 100000, 1ull << 62};
    kvoff arch = kv_off(b, n, "general.architecture");
    kvoff strs = kv_off(b, n, "test.strs");
    kvoff f32s = kv_off(b, n, "test.f32s");
    toff ta = t_off(b, n, "t.aaaa");
    for (int i = 0; i < 6; i++) {
        fail64(b, n, arch.key_len, lens[i], NULL, "key length");
        fail64(b, n, arch.val, lens[i], NULL, "string value length");
        fail64(b, n, ta.name_len, lens[i], NULL, "tensor name length");
        fail64(b, n, strs.val + 4, lens[i], NULL, "string array count");
        fail64(b, n, strs.val + 12, lens[i], NULL, "first string of an array");
        fail64(b, n, f32s.val + 4, lens[i], NULL, "f32 array count");
    }
    fail64(b, n, arch.key_len, 1ull << 62, "absurd", "key length message");
    fail64(b, n, f32s.val + 4, (1ull << 62) + 1, "cannot fit", "array count that overflows n * 4");
    fail64(b, n, f32s.val + 4, 1ull << 61, "cannot fit", "array count 2^61");
    fail64(b, n, strs.val + 4, 1ull << 60, "cannot fit", "string array count 2^60");
    /* bad value types, arrays of arrays, arrays of invalid types */
    const uint32_t vts[] = {13, 14, 255, 0x80000000u, UINT32_MAX};
    for (int i = 0; i < 5; i++) {
        fail32(b, n, arch.key_type, vts[i], "invalid value type", "value type");
        fail32(b, n, strs.val, vts[i], "not supported", "array element type");
    }
    fail32(b, n, strs.val, GGUF_VT_ARRAY, "arrays", "nested array");
    fail32(b, n, f32s.val, GGUF_VT_ARRAY, "arrays", "nested array");
    /* retyping a value misparses the rest: fail cleanly or load, never crash */
    for (uint32_t t = 0; t < GGUF_VT_COUNT; t++) {
        uint8_t *c = malloc(n);
        memcpy(c, b, n);
        put32(c, arch.key_type, t);
        (void)open_any(c, n);
        memcpy(c, b, n);
        put32(c, f32s.val, t);
        (void)open_any(c, n);
        free(c);
    }
    /* duplicate key */
    uint8_t *c = malloc(n);
    memcpy(c, b, n);
    kvoff kb = kv_off(b, n, "test.key_b");
    memcpy(c + kb.key_len + 8, "test.key_a", 10);
    expect_fail(c, n, "duplicate metadata key 'test.key_a'", "duplicate key");
    free(c);
    free(b);
}

Test(gguf, hostile_tensor_infos)
{
    size_t n;
    uint8_t *b = make_base(&n);
    toff ta = t_off(b, n, "t.aaaa"), tb = t_off(b, n, "t.bbbb"), tc = t_off(b, n, "t.cccc");
    /* n_dims */
    fail32(b, n, ta.n_dims, 0, "dimensions", "n_dims 0");
    fail32(b, n, ta.n_dims, 5, "dimensions", "n_dims 5");
    fail32(b, n, tb.n_dims, UINT32_MAX, "dimensions", "n_dims 2^32-1");
    /* dims: zero, absurd, overflowing products, not a multiple of the block */
    fail64(b, n, tb.ne, 0, "dimension", "ne[0] = 0");
    fail64(b, n, tb.ne + 8, 0, "dimension", "ne[1] = 0");
    fail64(b, n, tb.ne, 1ull << 63, "dimension", "ne[0] = 2^63");
    fail64(b, n, tb.ne + 8, UINT64_MAX, "dimension", "ne[1] = 2^64-1");
    fail64(b, n, tb.ne + 8, (1ull << 40) + 1, "dimension", "ne[1] = 2^40+1");
    uint8_t *c = malloc(n);
    memcpy(c, b, n);
    put64(c, tb.ne, 1ull << 32);
    put64(c, tb.ne + 8, 1ull << 32);
    expect_fail(c, n, "dimension", "ne = 2^32 x 2^32 (product 2^64)");
    memcpy(c, b, n);
    put64(c, tb.ne, 1ull << 31);
    put64(c, tb.ne + 8, 1ull << 31);
    expect_fail(c, n, "dimension", "ne = 2^31 x 2^31 (product > 2^42)");
    memcpy(c, b, n);
    put64(c, tb.ne, 1ull << 21);
    put64(c, tb.ne + 8, 1ull << 21);
    expect_fail(c, n, "past the end", "ne = 2^21 x 2^21 (valid shape, no data)");
    fail64(b, n, tb.ne, 33, "block size", "Q8_0 row of 33");
    fail64(b, n, tb.ne, 48, "block size", "Q8_0 row of 48");
    fail64(b, n, tb.ne + 8, 1000, "past the end", "more rows than data");
    /* types: removed ids, unassigned ids, huge */
    const uint32_t types[] = {4, 5, 31, 32, 33, 36, 40, 64, 1000, UINT32_MAX};
    for (int i = 0; i < 10; i++) fail32(b, n, tb.type, types[i], "unknown ggml type", "tensor type");
    /* a known but bigger type: data runs past the end */
    fail32(b, n, tc.type, ENG_TYPE_F32, "past the end", "F16 -> F32 on the last tensor");
    /* a block type whose block does not divide the row */
    fail32(b, n, ta.type, ENG_TYPE_Q4_K, "block size", "F32 -> Q4_K with a row of 8");
    /* offsets: misaligned, past the end, overflowing */
    uint64_t ob;
    memcpy(&ob, b + tb.offset, 8);
    fail64(b, n, tb.offset, ob + 1, "not aligned", "offset + 1");
    fail64(b, n, tb.offset, ob + 16, "not aligned", "offset + 16");
    fail64(b, n, tc.offset, UINT64_MAX, NULL, "offset 2^64-1");
    fail64(b, n, tc.offset, UINT64_MAX - 31, "past the end", "offset 2^64-32 (offset + size overflows)");
    fail64(b, n, tc.offset, 1ull << 63, "past the end", "offset 2^63");
    uint64_t oc;
    memcpy(&oc, b + tc.offset, 8);
    fail64(b, n, tc.offset, oc + 32, "past the end", "last tensor shifted by one alignment unit");
    fail64(b, n, tc.offset, oc + 4096, "past the end", "offset past the end");
    /* overlapping tensors are in bounds: loading is fine */
    memcpy(c, b, n);
    put64(c, tc.offset, 0);
    cr_assert(open_any(c, n));
    /* duplicate tensor names */
    memcpy(c, b, n);
    memcpy(c + tc.name_len + 8, "t.aaaa", 6);
    expect_fail(c, n, "duplicate tensor name 't.aaaa'", "duplicate tensor");
    free(c);
    free(b);
}

Test(gguf, hostile_alignment)
{
    size_t n;
    uint8_t *b = make_base(&n);
    kvoff al = kv_off(b, n, "general.alignment");
    const uint32_t bad[] = {0, 3, 6, 48, 100, 131072, 1u << 31, UINT32_MAX};
    for (int i = 0; i < 8; i++) fail32(b, n, al.val, bad[i], "general.alignment", "bad alignment");
    /* not an integer */
    fail32(b, n, al.key_type, GGUF_VT_FLOAT32, "general.alignment", "float alignment");
    fail32(b, n, al.key_type, GGUF_VT_BOOL, NULL, "bool alignment");
    /* a larger valid alignment makes the 32-aligned offsets invalid */
    fail32(b, n, al.val, 64, "not aligned", "alignment 64 over a 32-aligned file");
    /* a smaller one moves the data section: loads, but reads other bytes */
    uint8_t *c = malloc(n);
    for (uint32_t a = 1; a <= 16; a *= 2) {
        memcpy(c, b, n);
        put32(c, al.val, a);
        (void)open_any(c, n);
    }
    free(c);
    free(b);
}

/* Flip 1-4 random bytes, mostly in the header, a few thousand times. */
static void flip_fuzz(const uint8_t *b, size_t n, size_t header, int iters, uint64_t seed)
{
    uint8_t *c = malloc(n);
    int loaded = 0;
    for (int it = 0; it < iters; it++) {
        memcpy(c, b, n);
        int nf = 1 + (int)(td_rand(&seed) % 4);
        for (int k = 0; k < nf; k++) {
            uint64_t r = td_rand(&seed);
            size_t pos = (r & 7) ? (size_t)((r >> 8) % header) : (size_t)((r >> 8) % n);
            uint64_t mode = td_rand(&seed) % 4;
            if (mode == 0) c[pos] ^= (uint8_t)(1u << (td_rand(&seed) % 8));
            else if (mode == 1) c[pos] = 0xff;
            else if (mode == 2) c[pos] = 0;
            else c[pos] = (uint8_t)td_rand(&seed);
        }
        loaded += open_any(c, n);
    }
    cr_log_info("flip fuzz: %d of %d mutated files loaded", loaded, iters);
    free(c);
}

Test(gguf, hostile_random_flips, .timeout = 300)
{
    size_t n;
    uint8_t *b = make_base(&n);
    eng__gguf *g = open_mem_ok(b, n);
    size_t header = (size_t)g->data_offset;
    eng__gguf_close(g);
    flip_fuzz(b, n, header, 20000, 12345);
    free(b);
}

Test(gguf, hostile_random_flips_real_file, .timeout = 300)
{
    size_t n;
    uint8_t *b = (uint8_t *)td_read(td_path("models/stories260K.gguf"), &n);
    cr_assert(b);
    eng__gguf *g = open_mem_ok(b, n);
    size_t header = (size_t)g->data_offset;
    eng__gguf_close(g);
    flip_fuzz(b, n, header, 1000, 777);
    free(b);
}

/* ------------------------------------------------------------------------ */
/* (d) eng_model_load on corrupt models                                     */
/* ------------------------------------------------------------------------ */

typedef struct {
    const char *arch;      /* general.architecture */
    const char *skip;      /* tensor to leave out */
    const char *retype;    /* tensor to store as `type` */
    uint32_t type;
    const char *reshape;   /* tensor to give shape {n0, n1} */
    int64_t n0, n1;
    const char *skip_key;  /* metadata key to leave out */
    const char *rope_scaling;
} model_opts;

/* A llama model with n_embd 256 (so a Q2_K row fits), 1 layer, 8 heads / 4 KV
 * heads, n_ff 256 and the 512-token vocabulary of stories260K; zero weights,
 * unit norms. */
static void write_model(const char *path, const model_opts *o)
{
    eng__gguf_writer *w;
    cr_assert_eq(eng__gguf_writer_new(&w), ENG_OK);
    const char *arch = o->arch ? o->arch : "llama";
    cr_assert_eq(eng__gguf_set_str(w, "general.architecture", arch), ENG_OK);
    struct { const char *k; uint32_t v; } keys[] = {
        {"context_length", 512}, {"embedding_length", 256}, {"block_count", 1},
        {"feed_forward_length", 256}, {"attention.head_count", 8}, {"attention.head_count_kv", 4},
    };
    char key[128];
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        snprintf(key, sizeof key, "%s.%s", arch, keys[i].k);
        if (o->skip_key && !strcmp(o->skip_key, key)) continue;
        cr_assert_eq(eng__gguf_set_u32(w, key, keys[i].v), ENG_OK);
    }
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    cr_assert_eq(eng__gguf_set_f32(w, key, 1e-5f), ENG_OK);
    if (o->rope_scaling) {
        snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
        cr_assert_eq(eng__gguf_set_str(w, key, o->rope_scaling), ENG_OK);
    }
    eng__gguf *voc = open_ok(td_path("models/stories260K.gguf"));
    for (uint64_t i = 0; i < voc->n_kv; i++) {
        eng__str k = voc->kv[i].key;
        if (k.len < 10 || memcmp(k.ptr, "tokenizer.", 10)) continue;
        snprintf(key, sizeof key, "%.*s", (int)k.len, k.ptr);
        cr_assert_eq(eng__gguf_copy_kv(w, voc, key), ENG_OK);
    }
    eng__gguf_close(voc);

    static float ones[256];
    for (int i = 0; i < 256; i++) ones[i] = 1.0f;
    struct { const char *name; int64_t n0, n1; } ts[] = {
        {"token_embd.weight", 256, 512}, {"output_norm.weight", 256, 0}, {"output.weight", 256, 512},
        {"blk.0.attn_norm.weight", 256, 0}, {"blk.0.attn_q.weight", 256, 256},
        {"blk.0.attn_k.weight", 256, 128}, {"blk.0.attn_v.weight", 256, 128},
        {"blk.0.attn_output.weight", 256, 256}, {"blk.0.ffn_norm.weight", 256, 0},
        {"blk.0.ffn_gate.weight", 256, 256}, {"blk.0.ffn_up.weight", 256, 256},
        {"blk.0.ffn_down.weight", 256, 256},
    };
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        if (o->skip && !strcmp(o->skip, ts[i].name)) continue;
        int64_t ne[2] = {ts[i].n0, ts[i].n1};
        uint32_t nd = ts[i].n1 ? 2 : 1;
        uint32_t type = ENG_TYPE_F32;
        if (o->reshape && !strcmp(o->reshape, ts[i].name)) {
            ne[0] = o->n0;
            ne[1] = o->n1;
            nd = 2;
        }
        if (o->retype && !strcmp(o->retype, ts[i].name)) type = o->type;
        const void *data = nd == 1 && type == ENG_TYPE_F32 ? (const void *)ones : NULL;
        uint64_t nb = eng__gguf_tensor_nbytes(type, nd, ne);
        cr_assert_eq(eng__gguf_add_tensor(w, ts[i].name, type, nd, ne, data, nb), ENG_OK, "%s",
                     eng__gguf_writer_error(w));
    }
    cr_assert_eq(eng__gguf_writer_write_file(w, path), ENG_OK, "%s", eng__gguf_writer_error(w));
    eng__gguf_writer_free(w);
}

static void load_expect(const model_opts *o, eng_status want1, eng_status want2, const char *const *words)
{
    const char *dir = tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    write_model(path, o);
    eng_model *m = NULL;
    char err[512] = "";
    eng_status st = eng_model_load(path, NULL, &m, err, sizeof err);
    if (want1 == ENG_OK) {
        cr_assert_eq(st, ENG_OK, "valid model: %s (%s)", eng_strerror(st), err);
        eng_model_info info;
        eng_model_get_info(m, &info);
        cr_assert_eq(info.n_embd, 256);
        cr_assert_eq(info.n_vocab, 512);
        cr_assert_str_eq(info.arch, "llama");
        eng_model_free(m);
    } else {
        cr_log_info("model load: %s: %s", eng_strerror(st), err);
        cr_assert(st == want1 || st == want2, "status %s (%s)", eng_strerror(st), err);
        cr_assert_null(m);
        for (int i = 0; words && words[i]; i++)
            cr_assert(strstr(err, words[i]), "message '%s' does not mention '%s'", err, words[i]);
    }
    unlink(path);
    rm_dir(dir);
}

Test(gguf, model_valid_baseline, .timeout = 60)
{
    model_opts o = {0};
    load_expect(&o, ENG_OK, ENG_OK, NULL);
}

Test(gguf, model_unsupported_arch, .timeout = 60)
{
    model_opts o = {.arch = "gpt2"};
    load_expect(&o, ENG_EUNSUPPORTED, ENG_EUNSUPPORTED, (const char *[]){"gpt2", "llama", NULL});
}

Test(gguf, model_unsupported_type, .timeout = 60)
{
    /* The public header promises ENG_EUNSUPPORTED for unsupported weight types. */
    model_opts o = {.retype = "blk.0.attn_q.weight", .type = ENG_TYPE_Q2_K};
    load_expect(&o, ENG_EUNSUPPORTED, ENG_EUNSUPPORTED, (const char *[]){"Q2_K", "blk.0.attn_q.weight", NULL});
    model_opts o2 = {.retype = "blk.0.ffn_down.weight", .type = ENG_TYPE_Q8_1};
    load_expect(&o2, ENG_EUNSUPPORTED, ENG_EUNSUPPORTED, (const char *[]){"Q8_1", NULL});
    model_opts o3 = {.retype = "blk.0.ffn_down.weight", .type = 23 /* IQ4_XS */};
    load_expect(&o3, ENG_EUNSUPPORTED, ENG_EUNSUPPORTED, (const char *[]){"IQ4_XS", NULL});
    /* 1-D tensors must be F32 */
    model_opts o4 = {.retype = "blk.0.ffn_norm.weight", .type = ENG_TYPE_F16};
    load_expect(&o4, ENG_EFORMAT, ENG_EUNSUPPORTED, (const char *[]){"blk.0.ffn_norm.weight", "F16", NULL});
}

Test(gguf, model_missing_tensor, .timeout = 60)
{
    model_opts o = {.skip = "blk.0.ffn_up.weight"};
    load_expect(&o, ENG_EFORMAT, ENG_EFORMAT, (const char *[]){"missing", "blk.0.ffn_up.weight", NULL});
    model_opts o2 = {.skip = "token_embd.weight"};
    load_expect(&o2, ENG_EFORMAT, ENG_EFORMAT, (const char *[]){"token_embd.weight", NULL});
    model_opts o3 = {.skip = "output_norm.weight"};
    load_expect(&o3, ENG_EFORMAT, ENG_EFORMAT, (const char *[]){"output_norm.weight", NULL});
}

Test(gguf, model_wrong_shape, .timeout = 60)
{
    model_opts o = {.reshape = "blk.0.attn_k.weight", .n0 = 256, .n1 = 256};
    load_expect(&o, ENG_EFORMAT, ENG_EFORMAT, (const char *[]){"blk.0.attn_k.weight", "shape", "128", NULL});
    model_opts o2 = {.reshape = "blk.0.ffn_down.weight", .n0 = 128, .n1 = 256};
    load_expect(&o2, ENG_EFORMAT, ENG_EFORMAT, (const char *[]){"blk.0.ffn_down.weight", NULL});
    model_opts o3 = {.reshape = "blk.0.attn_norm.weight", .n0 = 128, .n1 = 2};
    load_expect(&o3, ENG_EFORMAT, ENG_EFORMAT, (const char *[]){"blk.0.attn_norm.weight", NULL});
}

Test(gguf, model_bad_metadata, .timeout = 60)
{
    model_opts o = {.skip_key = "llama.block_count"};
    load_expect(&o, ENG_EFORMAT, ENG_EFORMAT, (const char *[]){"llama.block_count", NULL});
    model_opts o2 = {.rope_scaling = "yarn"};
    load_expect(&o2, ENG_EUNSUPPORTED, ENG_EUNSUPPORTED, (const char *[]){"yarn", NULL});
}

/* ------------------------------------------------------------------------ */
/* Scaling                                                                  */
/* ------------------------------------------------------------------------ */

/* 400000 keys of equal length (9 MB), then the same with one duplicate:
 * a pairwise duplicate check would take minutes here and trip the timeout;
 * the reader's sorted check takes well under a second. */
Test(gguf, many_keys_open_fast, .timeout = 30)
{
    const uint64_t n = 400000;
    size_t size = 24 + (size_t)n * (8 + 10 + 4 + 1);
    uint8_t *b = malloc(size), *p = b + 24;
    memcpy(b, "GGUF", 4);
    put32(b, 4, 3);
    put64(b, 8, 0);
    put64(b, 16, n);
    for (uint64_t i = 0; i < n; i++) {
        put64(p, 0, 10);
        snprintf((char *)p + 8, 11, "k.%08llu", (unsigned long long)i);
        put32(p, 18, GGUF_VT_UINT8);
        p[22] = 1;
        p += 23;
    }
    eng__gguf *g = open_mem_ok(b, size);
    cr_assert_eq(g->n_kv, n);
    eng__gguf_close(g);
    /* a duplicate far apart in the file is still found */
    memcpy(b + 24 + (size_t)(n - 1) * 23 + 8, "k.00000007", 10);
    char err[256] = "";
    eng__gguf *g2 = NULL;
    cr_assert_eq(eng__gguf_open_mem(b, size, &g2, err, sizeof err), ENG_EFORMAT);
    cr_assert(strstr(err, "duplicate metadata key 'k.00000007'"), "%s", err);
    free(b);
}
