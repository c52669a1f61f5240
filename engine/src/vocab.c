/*
 * vocab.c - a vocabulary from a GGUF's tokenizer.ggml.* metadata: token
 * texts, scores and types, the BPE merges, the special token ids (from the
 * file, else recognised by their text), the end-of-generation set, the
 * flags (add_bos, add_space_prefix, ...) and the pre-tokenizer, each with
 * llama.cpp's defaults and per-model exceptions. Also the vocabulary's
 * accessors and eng_vocab_load / eng_vocab_free.
 *
 * Everything is copied out of the GGUF mapping, so the file may be closed
 * once the vocabulary is built. Tokenization itself is in tokenizer.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vocab.h"

/* ------------------------------------------------------------------------ */
/* small helpers                                                            */
/* ------------------------------------------------------------------------ */

static bool str_is(eng__str s, const char *z) { return s.len == strlen(z) && memcmp(s.ptr, z, s.len) == 0; }

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

static int32_t find_z(const eng_vocab *v, const char *z) { return eng__vocab_find(v, z, strlen(z)); }

/* The array key, or NULL. A key of the wrong type sets *bad (and err). */
static const eng__gguf_kv *find_arr(const eng__gguf *g, const char *key, bool want_str, char *err,
                                    size_t errlen, bool *bad)
{
    const eng__gguf_kv *kv = eng__gguf_find(g, key);
    *bad = false;
    if (!kv) return NULL;
    bool ok = kv->type == GGUF_VT_ARRAY &&
              (want_str ? kv->arr_type == GGUF_VT_STRING
                        : (kv->arr_type != GGUF_VT_STRING && kv->arr_type != GGUF_VT_ARRAY &&
                           kv->arr_type != GGUF_VT_BOOL && kv->arr_type < GGUF_VT_COUNT));
    if (!ok) {
        eng__errf(err, errlen, "%s has type %s, expected an array of %s", key,
                  eng__gguf_vtype_name(kv->type), want_str ? "strings" : "numbers");
        *bad = true;
        return NULL;
    }
    return kv;
}

/* ------------------------------------------------------------------------ */
/* tokens                                                                    */
/* ------------------------------------------------------------------------ */

static eng_status read_model(const eng__gguf *g, eng_vocab *v, char *err, size_t errlen)
{
    eng__str model;
    if (!eng__gguf_get_str(g, "tokenizer.ggml.model", &model)) {
        eng__errf(err, errlen, "tokenizer.ggml.model is missing: the file has no tokenizer");
        return ENG_EFORMAT;
    }
    if (str_is(model, "llama")) {
        v->kind = ENG_VOCAB_SPM;
    } else if (str_is(model, "gpt2")) {
        v->kind = ENG_VOCAB_BPE;
    } else {
        eng__errf(err, errlen,
                  "tokenizer model '%.*s' is not supported (supported: 'llama' SentencePiece, 'gpt2' byte-level BPE)",
                  (int)(model.len > 64 ? 64 : model.len), model.ptr);
        return ENG_EUNSUPPORTED;
    }
    return ENG_OK;
}

/* tokenizer.ggml.token_type value -> attribute (other values: none) */
static const uint32_t type_attr[] = {0,
                                     ENG_TOKEN_NORMAL,
                                     ENG_TOKEN_UNKNOWN,
                                     ENG_TOKEN_CONTROL,
                                     ENG_TOKEN_USER_DEFINED,
                                     ENG_TOKEN_UNUSED,
                                     ENG_TOKEN_BYTE};

/* Copy texts, scores and types of the v->n tokens. */
static eng_status copy_tokens(eng_vocab *v, const eng__str *strs, const eng__gguf_kv *kscore,
                              const eng__gguf_kv *ktype, char *err, size_t errlen)
{
    size_t n = (size_t)v->n, total = 0;
    for (size_t i = 0; i < n; i++) {
        if (strs[i].len > UINT32_MAX / 2) {
            eng__errf(err, errlen, "token %zu is too long (%llu bytes)", i, (unsigned long long)strs[i].len);
            return ENG_EFORMAT;
        }
        total += (strs[i].len ? strs[i].len : 24) + 1;
    }
    v->blob = eng__malloc(total);
    if (!v->blob) return ENG_ENOMEM;
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        v->off[i] = pos;
        if (strs[i].len == 0) {
            /* llama.cpp renames empty tokens */
            int w = snprintf(v->blob + pos, 24, "[EMPTY_%zu]", i);
            v->len[i] = (uint32_t)w;
            eng__log(ENG_LOG_WARN, "tokenizer: empty token at index %zu", i);
        } else {
            memcpy(v->blob + pos, strs[i].ptr, strs[i].len);
            v->len[i] = (uint32_t)strs[i].len;
        }
        v->blob[pos + v->len[i]] = 0;
        if (v->len[i] > v->max_len) v->max_len = v->len[i];
        pos += v->len[i] + 1;
        v->score[i] = kscore ? (float)eng__gguf_arr_f64(kscore, i) : 0.0f;
        int64_t tt = ktype ? eng__gguf_arr_i64(ktype, i) : 1;
        v->attr[i] = tt >= 0 && tt < (int64_t)(sizeof type_attr / sizeof type_attr[0]) ? type_attr[tt] : 0;
    }
    return ENG_OK;
}

/* tokenizer.ggml.tokens, .scores and .token_type */
static eng_status read_tokens(const eng__gguf *g, eng_vocab *v, char *err, size_t errlen)
{
    bool bad;
    const eng__gguf_kv *ktok = find_arr(g, "tokenizer.ggml.tokens", true, err, errlen, &bad);
    if (!ktok) {
        if (!bad) eng__errf(err, errlen, "tokenizer.ggml.tokens is missing");
        return ENG_EFORMAT;
    }
    if (ktok->n == 0 || ktok->n > INT32_MAX / 2) {
        eng__errf(err, errlen, "tokenizer.ggml.tokens has an invalid count %llu", (unsigned long long)ktok->n);
        return ENG_EFORMAT;
    }
    v->n = (int32_t)ktok->n;
    size_t n = (size_t)v->n;
    const eng__gguf_kv *kscore = find_arr(g, "tokenizer.ggml.scores", false, err, errlen, &bad);
    if (bad) return ENG_EFORMAT;
    const eng__gguf_kv *ktype = find_arr(g, "tokenizer.ggml.token_type", false, err, errlen, &bad);
    if (bad) return ENG_EFORMAT;
    if (kscore && kscore->n != ktok->n) {
        eng__errf(err, errlen, "tokenizer.ggml.scores has %llu entries but there are %d tokens",
                  (unsigned long long)kscore->n, v->n);
        return ENG_EFORMAT;
    }
    if (ktype && ktype->n != ktok->n) {
        eng__errf(err, errlen, "tokenizer.ggml.token_type has %llu entries but there are %d tokens",
                  (unsigned long long)ktype->n, v->n);
        return ENG_EFORMAT;
    }

    eng_status st = ENG_ENOMEM;
    eng__str *strs = eng__malloc(n * sizeof *strs);
    v->off = eng__malloc(n * sizeof *v->off);
    v->len = eng__malloc(n * sizeof *v->len);
    v->score = eng__malloc(n * sizeof *v->score);
    v->attr = eng__malloc(n * sizeof *v->attr);
    if (strs && v->off && v->len && v->score && v->attr) {
        if (eng__gguf_arr_strings(ktok, strs) != ENG_OK) {
            eng__errf(err, errlen, "tokenizer.ggml.tokens could not be read");
            st = ENG_EFORMAT;
        } else {
            st = copy_tokens(v, strs, kscore, ktype, err, errlen);
        }
    }
    free(strs);
    return st;
}

/* The text -> id table (a duplicate text maps to its last id, as in llama.cpp). */
static eng_status index_tokens(eng_vocab *v)
{
    size_t n = (size_t)v->n, cap = pow2_at_least(n * 2);
    v->ht = eng__malloc(cap * sizeof *v->ht);
    if (!v->ht) return ENG_ENOMEM;
    memset(v->ht, 0xFF, cap * sizeof *v->ht);
    v->ht_mask = cap - 1;
    for (size_t i = 0; i < n; i++) {
        const char *t = eng__vocab_text(v, (int32_t)i);
        size_t h = (size_t)eng__fnv(ENG__FNV0, t, v->len[i]) & v->ht_mask;
        for (;;) {
            int32_t id = v->ht[h];
            if (id < 0 || (v->len[id] == v->len[i] && memcmp(eng__vocab_text(v, id), t, v->len[i]) == 0)) {
                v->ht[h] = (int32_t)i;
                break;
            }
            h = (h + 1) & v->ht_mask;
        }
    }
    return ENG_OK;
}

/* ------------------------------------------------------------------------ */
/* merges                                                                    */
/* ------------------------------------------------------------------------ */

/* Add merge i ("left right") at v->mblob + *mp and index it. */
static eng_status add_merge(eng_vocab *v, size_t i, eng__str m, size_t *mp, char *err, size_t errlen)
{
    const char *s = m.ptr;
    size_t sl = (size_t)m.len, sp;
    /* llama.cpp splits at the first space after the first byte */
    for (sp = 1; sp < sl && s[sp] != ' '; sp++) {
    }
    if (sl < 3 || sp >= sl - 1) {
        eng__errf(err, errlen, "merge %zu ('%.*s') is not of the form 'left right'", i, (int)(sl > 64 ? 64 : sl), s);
        return ENG_EFORMAT;
    }
    const char *l = s, *r = s + sp + 1;
    size_t ll = sp, rl = sl - sp - 1;
    if (eng__vocab_find(v, l, ll) < 0 || eng__vocab_find(v, r, rl) < 0) {
        eng__errf(err, errlen, "merge %zu ('%.*s') names a token that is not in the vocabulary", i,
                  (int)(sl > 64 ? 64 : sl), s);
        return ENG_EFORMAT;
    }
    char *pair = v->mblob + *mp;
    v->moff[i] = *mp;
    v->mll[i] = (uint32_t)ll;
    v->mrl[i] = (uint32_t)rl;
    memcpy(pair, l, ll);
    memcpy(pair + ll, r, rl);
    *mp += ll + rl;
    size_t h = (size_t)eng__merge_hash(pair, ll, rl) & v->mht_mask;
    for (;;) {
        int32_t k = v->mht[h];
        if (k < 0) {
            v->mht[h] = (int32_t)i;
            break;
        }
        if (v->mll[k] == ll && v->mrl[k] == rl && memcmp(v->mblob + v->moff[k], pair, ll + rl) == 0)
            break; /* duplicate: the first rank stays */
        h = (h + 1) & v->mht_mask;
    }
    return ENG_OK;
}

/* tokenizer.ggml.merges (BPE only): their texts and the pair -> rank table. */
static eng_status read_merges(const eng__gguf *g, eng_vocab *v, char *err, size_t errlen)
{
    if (v->kind != ENG_VOCAB_BPE) return ENG_OK;
    bool bad;
    const eng__gguf_kv *km = find_arr(g, "tokenizer.ggml.merges", true, err, errlen, &bad);
    if (!km) {
        if (!bad) eng__errf(err, errlen, "tokenizer.ggml.merges is missing (required by the 'gpt2' tokenizer)");
        return ENG_EFORMAT;
    }
    if (km->n > INT32_MAX / 4) {
        eng__errf(err, errlen, "tokenizer.ggml.merges has too many entries");
        return ENG_EFORMAT;
    }
    size_t nm = (size_t)km->n, n1 = nm ? nm : 1;
    eng__str *strs = eng__malloc(n1 * sizeof *strs);
    if (!strs) return ENG_ENOMEM;
    eng_status st = ENG_EFORMAT;
    if (eng__gguf_arr_strings(km, strs) != ENG_OK) {
        eng__errf(err, errlen, "tokenizer.ggml.merges could not be read");
        goto done;
    }
    size_t mt = 1;
    for (size_t i = 0; i < nm; i++) {
        if (strs[i].len > UINT32_MAX / 2) {
            eng__errf(err, errlen, "merge %zu is too long", i);
            goto done;
        }
        mt += strs[i].len;
    }
    v->mblob = eng__malloc(mt);
    v->moff = eng__malloc(n1 * sizeof *v->moff);
    v->mll = eng__malloc(n1 * sizeof *v->mll);
    v->mrl = eng__malloc(n1 * sizeof *v->mrl);
    size_t mcap = pow2_at_least(nm * 2);
    v->mht = eng__malloc(mcap * sizeof *v->mht);
    if (!v->mblob || !v->moff || !v->mll || !v->mrl || !v->mht) {
        st = ENG_ENOMEM;
        goto done;
    }
    memset(v->mht, 0xFF, mcap * sizeof *v->mht);
    v->mht_mask = mcap - 1;
    size_t mp = 0;
    for (size_t i = 0; i < nm; i++)
        if ((st = add_merge(v, i, strs[i], &mp, err, errlen)) != ENG_OK) goto done;
    v->n_merges = (int32_t)nm;
    st = ENG_OK;
done:
    free(strs);
    return st;
}

/* ------------------------------------------------------------------------ */
/* defaults, special ids and flags                                          */
/* ------------------------------------------------------------------------ */

/* The tokenizer.ggml.pre row; 'default' (with a warning) when missing or unknown. */
static const eng__pre_name *read_pre(const eng__gguf *g)
{
    eng__str pre;
    if (!eng__gguf_get_str(g, "tokenizer.ggml.pre", &pre)) {
        eng__log(ENG_LOG_WARN, "tokenizer: tokenizer.ggml.pre is missing, using 'default'");
        return eng__pre_find("default", 7);
    }
    const eng__pre_name *pn = eng__pre_find(pre.ptr, (size_t)pre.len);
    if (!pn) {
        eng__log(ENG_LOG_WARN,
                 "tokenizer: unknown pre-tokenizer '%.*s', using the 'default' pre-tokenizer "
                 "(tokenization may differ from the model's)",
                 (int)(pre.len > 64 ? 64 : pre.len), pre.ptr);
        pn = eng__pre_find("default", 7);
    }
    return pn;
}

/* llama.cpp's defaults per tokenizer model; BPE's depend on the pre-tokenizer. */
static void set_defaults(const eng__gguf *g, eng_vocab *v)
{
    v->eot = v->eom = v->pad = v->sep = v->mask = -1;
    v->fim_pre = v->fim_suf = v->fim_mid = v->fim_pad = v->fim_rep = v->fim_sep = -1;
    v->add_eos = false;
    if (v->kind == ENG_VOCAB_SPM) {
        v->bos = 1;
        v->eos = 2;
        v->unk = 0;
        v->add_space_prefix = true;
        v->clean_spaces = false;
        v->add_bos = true;
        v->pre = ENG__PRE_DEFAULT;
    } else {
        const eng__pre_name *pn = read_pre(g);
        v->bos = 11;
        v->eos = 11;
        v->unk = -1;
        v->add_space_prefix = false;
        v->pre = pn->pre;
        v->clean_spaces = pn->clean_spaces;
        v->ignore_merges = pn->ignore_merges;
        v->add_bos = pn->add_bos;
    }
    v->pre_name = eng__pre_label(v->pre);
    if (v->bos >= v->n) v->bos = -1;
    if (v->eos >= v->n) v->eos = -1;
    if (v->unk >= v->n) v->unk = -1;
}

static void read_flags(const eng__gguf *g, eng_vocab *v)
{
    const struct {
        const char *key;
        bool *flag;
    } flags[] = {{"tokenizer.ggml.add_bos_token", &v->add_bos},
                 {"tokenizer.ggml.add_eos_token", &v->add_eos},
                 {"tokenizer.ggml.add_space_prefix", &v->add_space_prefix}};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        bool b;
        if (eng__gguf_get_bool(g, flags[i].key, &b)) *flags[i].flag = b;
    }
}

/* *id from the file's key, when present and valid; -1 (or 0xFFFFFFFF) means none. */
static void read_special_id(const eng__gguf *g, const eng_vocab *v, const char *key, int32_t *id)
{
    if (!eng__gguf_find(g, key)) return;
    int64_t x;
    if (!eng__gguf_get_i64(g, key, &x)) {
        eng__log(ENG_LOG_WARN, "tokenizer: %s is not an integer, ignored", key);
        return;
    }
    if (x == 0xFFFFFFFFLL || x == -1) {
        *id = -1; /* explicit "none" */
        return;
    }
    if (x < 0 || x >= v->n) {
        eng__log(ENG_LOG_WARN, "tokenizer: %s = %lld is out of range (n_tokens %d), ignored", key,
                 (long long)x, v->n);
        return;
    }
    *id = (int32_t)x;
}

/* When *id is unset, the first of texts[] (in list order) in the vocabulary,
 * which becomes a control token. */
static void detect_special_id(eng_vocab *v, int32_t *id, const char *const *texts)
{
    if (*id >= 0) return;
    for (size_t i = 0; texts[i]; i++) {
        int32_t t = find_z(v, texts[i]);
        if (t < 0) continue;
        *id = t;
        if (!(v->attr[t] & ENG_TOKEN_CONTROL)) {
            eng__log(ENG_LOG_DEBUG, "tokenizer: token %d '%s' treated as a control token", t,
                     eng__vocab_text(v, t));
            v->attr[t] |= ENG_TOKEN_CONTROL;
        }
        return;
    }
}

/* The special ids from the file's keys, then the unset ones that llama.cpp
 * recognises by their text. */
static void read_special_ids(const eng__gguf *g, eng_vocab *v)
{
    static const char *const eot[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                       "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<end_of_utterance>", NULL};
    static const char *const eom[] = {"<|eom_id|>", NULL};
    static const char *const fpre[] = {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>",
                                        "<|code_prefix|>", "<|prefix|>", NULL};
    static const char *const fsuf[] = {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>",
                                        "<|code_suffix|>", "<|suffix|>", NULL};
    static const char *const fmid[] = {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>",
                                        "<|code_middle|>", "<|middle|>", NULL};
    static const char *const fpad[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
    static const char *const frep[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL};
    static const char *const fsep[] = {"<|file_sep|>", NULL};
    const struct {
        const char *key;
        int32_t *id;
        const char *const *texts; /* NULL: never recognised by text */
    } ids[] = {
        {"tokenizer.ggml.bos_token_id", &v->bos, NULL},
        {"tokenizer.ggml.eos_token_id", &v->eos, NULL},
        {"tokenizer.ggml.eot_token_id", &v->eot, eot},
        {"tokenizer.ggml.eom_token_id", &v->eom, eom},
        {"tokenizer.ggml.unknown_token_id", &v->unk, NULL},
        {"tokenizer.ggml.seperator_token_id", &v->sep, NULL},
        {"tokenizer.ggml.padding_token_id", &v->pad, NULL},
        {"tokenizer.ggml.mask_token_id", &v->mask, NULL},
        {"tokenizer.ggml.fim_pre_token_id", &v->fim_pre, fpre},
        {"tokenizer.ggml.fim_suf_token_id", &v->fim_suf, fsuf},
        {"tokenizer.ggml.fim_mid_token_id", &v->fim_mid, fmid},
        {"tokenizer.ggml.fim_pad_token_id", &v->fim_pad, fpad},
        {"tokenizer.ggml.fim_rep_token_id", &v->fim_rep, frep},
        {"tokenizer.ggml.fim_sep_token_id", &v->fim_sep, fsep},
    };
    const size_t n = sizeof ids / sizeof ids[0];
    for (size_t i = 0; i < n; i++) read_special_id(g, v, ids[i].key, ids[i].id);
    for (size_t i = 0; i < n; i++)
        if (ids[i].texts) detect_special_id(v, ids[i].id, ids[i].texts);
}

/* ------------------------------------------------------------------------ */
/* token attributes and the derived sets                                    */
/* ------------------------------------------------------------------------ */

/* Control tokens named "...unused..." are unused. */
static void mark_unused(eng_vocab *v)
{
    for (int32_t i = 0; i < v->n; i++)
        if ((v->attr[i] & ENG_TOKEN_CONTROL) && strstr(eng__vocab_text(v, i), "unused"))
            v->attr[i] |= ENG_TOKEN_UNUSED;
}

/* The end-of-generation set: tokens with llama.cpp's end-of-generation
 * texts (made control tokens) and the eos / eot / eom / fim ids, less the
 * per-family exceptions below. */
static eng_status build_eog(eng_vocab *v)
{
    static const char *const eogt[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
                                        "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>",
                                        "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
                                        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
                                        "<|tool_response>", NULL};
    /* gpt-oss: these always render */
    static const char *const ud[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL};
    int32_t cand[40];
    size_t nc = 0;
    for (size_t i = 0; eogt[i]; i++) {
        int32_t id = find_z(v, eogt[i]);
        if (id < 0) continue;
        cand[nc++] = id;
        v->attr[id] |= ENG_TOKEN_CONTROL;
    }
    for (size_t i = 0; ud[i]; i++) {
        int32_t id = find_z(v, ud[i]);
        if (id >= 0) v->attr[id] = ENG_TOKEN_USER_DEFINED;
    }
    const int32_t more[] = {v->eos, v->eot, v->eom, v->fim_pad, v->fim_rep, v->fim_sep};
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
        if (more[i] >= 0) cand[nc++] = more[i];
    /* o200k_harmony / solar-open: <|end|> is not end-of-generation there
     * (and renders); gemma4 / paddleocr: neither is </s> (a normal token) */
    int32_t end = find_z(v, "<|end|>"), close_s = find_z(v, "</s>");
    int32_t drop = -1;
    uint32_t drop_attr = 0;
    if (end >= 0 && ((find_z(v, "<|return|>") >= 0 && find_z(v, "<|call|>") >= 0) ||
                     (find_z(v, "<|calls|>") >= 0 && find_z(v, "<|flush|>") >= 0))) {
        drop = end;
        drop_attr = ENG_TOKEN_USER_DEFINED;
    }
    if (find_z(v, "<|tool_response>") >= 0 && close_s >= 0) {
        v->attr[close_s] = ENG_TOKEN_NORMAL;
        for (size_t i = 0; i < nc; i++)
            if (cand[i] == close_s) cand[i] = -1;
    }
    if (drop >= 0) {
        v->attr[drop] = drop_attr;
        for (size_t i = 0; i < nc; i++)
            if (cand[i] == drop) cand[i] = -1;
    }
    qsort(cand, nc, sizeof cand[0], cmp_i32);
    v->eog = eng__malloc((nc ? nc : 1) * sizeof *v->eog);
    if (!v->eog) return ENG_ENOMEM;
    for (size_t i = 0; i < nc; i++)
        if (cand[i] >= 0 && (v->n_eog == 0 || v->eog[v->n_eog - 1] != cand[i])) v->eog[v->n_eog++] = cand[i];
    return ENG_OK;
}

/* The special tokens partition() looks for in text, longest text first. */
static eng_status build_special_list(eng_vocab *v)
{
    const uint32_t special = ENG_TOKEN_CONTROL | ENG_TOKEN_USER_DEFINED | ENG_TOKEN_UNKNOWN;
    size_t ns = 0;
    for (int32_t i = 0; i < v->n; i++)
        if (v->attr[i] & special) ns++;
    v->special = eng__malloc((ns ? ns : 1) * sizeof *v->special);
    uint64_t *keys = eng__malloc((ns ? ns : 1) * sizeof *keys);
    if (!v->special || !keys) {
        free(keys);
        return ENG_ENOMEM;
    }
    for (int32_t i = 0; i < v->n; i++)
        if (v->attr[i] & special) keys[v->n_special++] = ((uint64_t)(UINT32_MAX - v->len[i]) << 32) | (uint64_t)i;
    qsort(keys, v->n_special, sizeof *keys, cmp_u64);
    for (size_t i = 0; i < v->n_special; i++) v->special[i] = (int32_t)(keys[i] & 0xFFFFFFFFu);
    free(keys);
    return ENG_OK;
}

/* Per-model token attributes (llama.cpp: Phi-3 strips spaces right of special tokens). */
static void model_attrs(const eng__gguf *g, eng_vocab *v)
{
    eng__str name;
    char lname[256] = {0};
    if (eng__gguf_get_str(g, "general.name", &name)) {
        size_t l = name.len < sizeof lname - 1 ? (size_t)name.len : sizeof lname - 1;
        for (size_t i = 0; i < l; i++) {
            char c = name.ptr[i];
            lname[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
        }
    }
    if (!strstr(lname, "phi-3") && !strstr(lname, "phi3")) return;
    for (size_t i = 0; i < v->n_special; i++) v->attr[v->special[i]] |= ENG__TOKEN_RSTRIP;
    int32_t id = find_z(v, "</s>");
    if (id >= 0) v->attr[id] |= ENG__TOKEN_RSTRIP;
    static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
    for (size_t i = 0; i < 3; i++) {
        id = find_z(v, keep[i]);
        if (id >= 0) v->attr[id] &= ~ENG__TOKEN_RSTRIP;
    }
}

/* ------------------------------------------------------------------------ */
/* byte tables                                                               */
/* ------------------------------------------------------------------------ */

/* GPT-2 byte-to-unicode: bytes that are printable stand for themselves */
static bool byte_is_printable(uint32_t b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE; }

/* ... the others, in byte order, get code points 256, 257, ... */
static uint32_t byte_to_cp(uint8_t b)
{
    if (byte_is_printable(b)) return b;
    uint32_t k = 0;
    for (uint32_t c = 0; c < b; c++)
        if (!byte_is_printable(c)) k++;
    return 256 + k;
}

/* The GPT-2 byte <-> code point tables and the SPM byte-fallback tokens. */
static void init_byte_tables(eng_vocab *v)
{
    for (int c = 0; c < 324; c++) v->u2b[c] = -1;
    for (int b = 0; b < 256; b++) {
        uint8_t buf[4];
        uint32_t cp = byte_to_cp((uint8_t)b);
        int l = eng__utf8_put(cp, buf);
        v->b2u_len[b] = (uint8_t)l;
        v->b2u[b][0] = buf[0];
        v->b2u[b][1] = l > 1 ? buf[1] : 0;
        v->u2b[cp] = (int16_t)b;
    }
    /* SPM byte fallback: <0xNN>, else the byte itself */
    for (int b = 0; b < 256; b++) {
        char buf[8];
        snprintf(buf, sizeof buf, "<0x%02X>", b);
        int32_t id = eng__vocab_find(v, buf, 6);
        if (id < 0) {
            char c = (char)b;
            id = eng__vocab_find(v, &c, 1);
        }
        v->byte_tok[b] = id;
    }
    if (v->kind == ENG_VOCAB_SPM && v->byte_tok[0x41] < 0 && v->unk < 0)
        eng__log(ENG_LOG_WARN, "tokenizer: no byte-fallback tokens and no unknown token");
}

/* ------------------------------------------------------------------------ */
/* loading                                                                   */
/* ------------------------------------------------------------------------ */

eng_status eng__vocab_from_gguf(const eng__gguf *g, eng_vocab **out, char *err, size_t errlen)
{
    if (!g || !out) return ENG_EINVAL;
    *out = NULL;
    if (err && errlen) err[0] = 0;
    eng_status st = ENG_ENOMEM;
    eng_vocab *v = eng__calloc(1, sizeof *v);
    if (!v) goto fail;
    if ((st = read_model(g, v, err, errlen)) != ENG_OK || (st = read_tokens(g, v, err, errlen)) != ENG_OK ||
        (st = index_tokens(v)) != ENG_OK || (st = read_merges(g, v, err, errlen)) != ENG_OK)
        goto fail;
    set_defaults(g, v);
    read_flags(g, v);
    read_special_ids(g, v);
    mark_unused(v);
    if ((st = build_eog(v)) != ENG_OK || (st = build_special_list(v)) != ENG_OK) goto fail;
    model_attrs(g, v);
    init_byte_tables(v);
    *out = v;
    return ENG_OK;
fail:
    if (st == ENG_ENOMEM) eng__errf(err, errlen, "out of memory loading the tokenizer");
    eng_vocab_free(v);
    return st;
}

eng_status eng_vocab_load(const char *path, eng_vocab **out, char *err, size_t errlen)
{
    if (!path || !out) return ENG_EINVAL;
    *out = NULL;
    eng__gguf *g = NULL;
    eng_status st = eng__gguf_open(path, &g, err, errlen);
    if (st != ENG_OK) return st;
    st = eng__vocab_from_gguf(g, out, err, errlen);
    eng__gguf_close(g);
    return st;
}

void eng_vocab_free(eng_vocab *v)
{
    if (!v) return;
    free(v->blob);
    free(v->off);
    free(v->len);
    free(v->score);
    free(v->attr);
    free(v->ht);
    free(v->mblob);
    free(v->moff);
    free(v->mll);
    free(v->mrl);
    free(v->mht);
    free(v->special);
    free(v->eog);
    free(v);
}

/* ------------------------------------------------------------------------ */
/* accessors                                                                 */
/* ------------------------------------------------------------------------ */

eng_vocab_kind eng_vocab_type(const eng_vocab *v) { return v ? v->kind : ENG_VOCAB_SPM; }
int32_t eng_vocab_n_tokens(const eng_vocab *v) { return v ? v->n : 0; }

/* A token's text is at least as long as the input it stands for (SPM writes
 * a space as the 3-byte U+2581, byte-level BPE a byte as a 1- or 2-byte code
 * point, a byte token is "<0xNN>"); an unknown character (at most 4 bytes)
 * becomes one <unk>, hence the floor of 4. */
int32_t eng_vocab_max_token_bytes(const eng_vocab *v)
{
    if (!v) return 0;
    return v->max_len > 4 ? (int32_t)v->max_len : 4;
}
int32_t eng_vocab_bos(const eng_vocab *v) { return v ? v->bos : -1; }
int32_t eng_vocab_eos(const eng_vocab *v) { return v ? v->eos : -1; }
int32_t eng_vocab_eot(const eng_vocab *v) { return v ? v->eot : -1; }
bool eng_vocab_add_bos(const eng_vocab *v) { return v && v->add_bos && v->bos >= 0; }
bool eng_vocab_add_eos(const eng_vocab *v) { return v && v->add_eos && v->eos >= 0; }
const char *eng_vocab_pre(const eng_vocab *v) { return v ? v->pre_name : "default"; }

bool eng_vocab_is_eog(const eng_vocab *v, int32_t id)
{
    if (!v || id < 0 || id >= v->n) return false;
    size_t lo = 0, hi = v->n_eog;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (v->eog[mid] == id) return true;
        if (v->eog[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

uint32_t eng_vocab_attr(const eng_vocab *v, int32_t id)
{
    if (!v || id < 0 || id >= v->n) return 0;
    return v->attr[id] & ENG__TOKEN_PUBLIC;
}

const char *eng_vocab_text(const eng_vocab *v, int32_t id)
{
    if (!v || id < 0 || id >= v->n) return NULL;
    return eng__vocab_text(v, id);
}
