/*
 * kvcache.c - the KV cache's element types (F32, F16, Q8_0): their names,
 * their sizes, and the one conversion of a position's K and V into a cache
 * block, done once per token when it is written (and back, for the scalar
 * kernel and the tests). The layouts are in internal.h (eng__attn_args).
 */
#include "model.h"

#include <math.h>
#include <string.h>
#include <strings.h>

#define B ENG_KV_BLOCK

const char *eng_kv_type_name(eng_kv_type t)
{
    switch (t) {
    case ENG_KV_F32: return "f32";
    case ENG_KV_F16: return "f16";
    case ENG_KV_Q8_0: return "q8_0";
    }
    return NULL;
}

eng_status eng_kv_type_parse(const char *name, eng_kv_type *out)
{
    static const eng_kv_type all[] = {ENG_KV_F32, ENG_KV_F16, ENG_KV_Q8_0};
    for (size_t i = 0; name && i < sizeof all / sizeof all[0]; i++)
        if (!strcasecmp(name, eng_kv_type_name(all[i]))) {
            if (out) *out = all[i];
            return ENG_OK;
        }
    return ENG_EINVAL;
}

size_t eng_kv_bytes_per_token(const eng_model *m, eng_kv_type type_k, eng_kv_type type_v)
{
    if (!m) return 0;
    const size_t head = eng__kv_head_bytes((int)type_k, m->head_dim) + eng__kv_head_bytes((int)type_v, m->head_dim);
    return (size_t)m->n_layer * (size_t)m->n_head_kv * head / B;
}

/* One group of n values as Q8_0 (GGUF's rule): scale amax / 127, quants
 * round(x / scale), stored every qstride bytes; the scale as fp16. */
static void q8_group(const float *x, int n, int8_t *q, size_t qstride, uint16_t *scale)
{
    float amax = 0.0f;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    *scale = eng__fp32_to_fp16(d);
    for (int i = 0; i < n; i++) q[(size_t)i * qstride] = (int8_t)roundf(x[i] * id);
}

static int group_len(int hd, int g) { return hd - g * ENG_KV_GROUP < ENG_KV_GROUP ? hd - g * ENG_KV_GROUP : ENG_KV_GROUP; }

/* K: [hd][B] elements, then (Q8_0) scales [n_groups][B]. */
void eng__kv_put_k(int t, void *head, int hd, int slot, const float *k)
{
    if (t == ENG_TYPE_F32) {
        float *kt = head;
        for (int d = 0; d < hd; d++) kt[d * B + slot] = k[d];
    } else if (t == ENG_TYPE_F16) {
        uint16_t *kt = head;
        for (int d = 0; d < hd; d++) kt[d * B + slot] = eng__fp32_to_fp16(k[d]);
    } else {
        int8_t *kq = head;
        uint16_t *sc = (uint16_t *)(kq + (size_t)B * hd);
        for (int g = 0; g < ENG_KV_GROUPS(hd); g++)
            q8_group(k + g * ENG_KV_GROUP, group_len(hd, g), kq + (size_t)g * ENG_KV_GROUP * B + slot, B,
                     &sc[g * B + slot]);
    }
}

/* V: [B][hd] elements, then (Q8_0) scales [B][n_groups]. */
void eng__kv_put_v(int t, void *head, int hd, int slot, const float *v)
{
    if (t == ENG_TYPE_F32) {
        memcpy((float *)head + (size_t)slot * hd, v, (size_t)hd * sizeof(float));
    } else if (t == ENG_TYPE_F16) {
        uint16_t *vr = (uint16_t *)head + (size_t)slot * hd;
        for (int d = 0; d < hd; d++) vr[d] = eng__fp32_to_fp16(v[d]);
    } else {
        const int ng = ENG_KV_GROUPS(hd);
        int8_t *vq = (int8_t *)head + (size_t)slot * hd;
        uint16_t *sc = (uint16_t *)((int8_t *)head + (size_t)B * hd) + (size_t)slot * ng;
        for (int g = 0; g < ng; g++) q8_group(v + g * ENG_KV_GROUP, group_len(hd, g), vq + g * ENG_KV_GROUP, 1, &sc[g]);
    }
}

void eng__kv_read_k(int t, const void *head, int hd, int slot, float *k)
{
    if (t == ENG_TYPE_F32) {
        const float *kt = head;
        for (int d = 0; d < hd; d++) k[d] = kt[d * B + slot];
    } else if (t == ENG_TYPE_F16) {
        const uint16_t *kt = head;
        for (int d = 0; d < hd; d++) k[d] = eng__fp16_to_fp32(kt[d * B + slot]);
    } else {
        const int8_t *kq = head;
        const uint16_t *sc = (const uint16_t *)(kq + (size_t)B * hd);
        for (int d = 0; d < hd; d++)
            k[d] = eng__fp16_to_fp32(sc[(d / ENG_KV_GROUP) * B + slot]) * (float)kq[d * B + slot];
    }
}

void eng__kv_read_v(int t, const void *head, int hd, int slot, float *v)
{
    if (t == ENG_TYPE_F32) {
        memcpy(v, (const float *)head + (size_t)slot * hd, (size_t)hd * sizeof(float));
    } else if (t == ENG_TYPE_F16) {
        const uint16_t *vr = (const uint16_t *)head + (size_t)slot * hd;
        for (int d = 0; d < hd; d++) v[d] = eng__fp16_to_fp32(vr[d]);
    } else {
        const int ng = ENG_KV_GROUPS(hd);
        const int8_t *vq = (const int8_t *)head + (size_t)slot * hd;
        const uint16_t *sc = (const uint16_t *)((const int8_t *)head + (size_t)B * hd) + (size_t)slot * ng;
        for (int d = 0; d < hd; d++) v[d] = eng__fp16_to_fp32(sc[d / ENG_KV_GROUP]) * (float)vq[d];
    }
}
