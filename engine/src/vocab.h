/*
 * vocab.h - the layout of a loaded vocabulary and its two hash lookups
 * (token text -> id, merge pair -> rank). vocab.c builds an eng_vocab from
 * GGUF metadata; tokenizer.c only reads it. No other file includes this:
 * the rest of the engine sees eng_vocab through engine.h and tokenizer.h.
 *
 * The lookups are inline because the merge loop calls them for every
 * candidate pair.
 */
#ifndef ORTHOSERVE_VOCAB_H
#define ORTHOSERVE_VOCAB_H

#include <string.h>

#include "tokenizer.h"

/* Attribute bits beyond the public ENG_TOKEN_* ones (eng_vocab_attr hides them). */
#define ENG__TOKEN_LSTRIP (1u << 6) /* swallow white space left of the token in the text */
#define ENG__TOKEN_RSTRIP (1u << 7) /* ... and right of it */
#define ENG__TOKEN_PUBLIC 0x3Fu

struct eng_vocab {
    eng_vocab_kind kind;
    eng__pre pre;
    const char *pre_name; /* static: eng__pre_label(pre) */
    int32_t n;
    char *blob;       /* token texts, each NUL-terminated */
    size_t *off;      /* text of token i: blob + off[i], len[i] bytes */
    uint32_t *len;
    uint32_t max_len; /* the longest text */
    float *score;
    uint32_t *attr;   /* ENG_TOKEN_* | ENG__TOKEN_* */
    int32_t *ht;      /* text -> id, open addressing, -1 empty */
    size_t ht_mask;
    /* BPE merges: rank r is the pair mblob + moff[r]: mll[r] bytes of the
     * left symbol followed by mrl[r] bytes of the right one */
    int32_t n_merges;
    char *mblob;
    size_t *moff;
    uint32_t *mll, *mrl;
    int32_t *mht;     /* pair -> rank, open addressing, -1 empty; NULL for SPM */
    size_t mht_mask;

    int32_t bos, eos, eot, eom, unk, pad, sep, mask;
    int32_t fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;
    bool add_bos, add_eos, add_space_prefix, clean_spaces, ignore_merges;
    int32_t *special; /* control / user-defined / unknown ids, longest text first */
    size_t n_special;
    int32_t *eog;     /* sorted */
    size_t n_eog;
    int32_t byte_tok[256]; /* SPM byte fallback ids (-1: none) */
    uint8_t b2u[256][2];   /* GPT-2 byte-to-unicode, UTF-8 */
    uint8_t b2u_len[256];
    int16_t u2b[324];      /* code point (< 324) -> byte, -1: not a byte char */
};

#define ENG__FNV0 0xcbf29ce484222325ULL

static inline uint64_t eng__fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Hash of a merge pair: ln bytes of the left symbol, then rn of the right. */
static inline uint64_t eng__merge_hash(const char *pair, size_t ln, size_t rn)
{
    uint64_t h = eng__fnv(ENG__FNV0, pair, ln);
    h = (h ^ 0x1FF) * 0x100000001b3ULL;
    return eng__fnv(h, pair + ln, rn);
}

static inline const char *eng__vocab_text(const eng_vocab *v, int32_t id) { return v->blob + v->off[id]; }

/* The id of the token whose text is s (n bytes), or -1. */
static inline int32_t eng__vocab_find(const eng_vocab *v, const char *s, size_t n)
{
    size_t i = (size_t)eng__fnv(ENG__FNV0, s, n) & v->ht_mask;
    for (;;) {
        int32_t id = v->ht[i];
        if (id < 0) return -1;
        if (v->len[id] == n && memcmp(eng__vocab_text(v, id), s, n) == 0) return id;
        i = (i + 1) & v->ht_mask;
    }
}

/* The rank of merging the pair at pair (ln bytes left, rn bytes right), or -1. */
static inline int32_t eng__vocab_merge_rank(const eng_vocab *v, const char *pair, size_t ln, size_t rn)
{
    if (!v->mht) return -1;
    size_t i = (size_t)eng__merge_hash(pair, ln, rn) & v->mht_mask;
    for (;;) {
        int32_t k = v->mht[i];
        if (k < 0) return -1;
        if (v->mll[k] == ln && v->mrl[k] == rn && memcmp(v->mblob + v->moff[k], pair, ln + rn) == 0) return k;
        i = (i + 1) & v->mht_mask;
    }
}

#endif /* ORTHOSERVE_VOCAB_H */
