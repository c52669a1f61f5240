/*
 * tokenizer.c - vocabulary loading, tokenization and detokenization with
 * llama.cpp's behaviour:
 *
 *  - "llama" (SPM): the text (with a leading space when add_space_prefix,
 *    spaces escaped to U+2581) is split into UTF-8 units; adjacent pairs that
 *    form a token are merged best score first (ties: leftmost); leftover
 *    units that are no token fall back to <0xNN> byte tokens.
 *  - "gpt2" (byte-level BPE): the text is split by the pre-tokenizer regexes
 *    of tokenizer.ggml.pre (hand-written matchers below, one per regex), each
 *    piece is mapped through the GPT-2 byte-to-unicode table and merged by
 *    merge rank (lowest first, ties: leftmost).
 *  - special tokens: control / unknown tokens are recognised in the text only
 *    with parse_special; user-defined tokens always (as llama.cpp does). Longer
 *    token texts are matched first, over the whole text.
 *
 * Everything the vocabulary needs is copied out of the GGUF mapping.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

/* internal attribute bits beyond the public ENG_TOKEN_* ones */
#define ATTR_LSTRIP (1u << 6)
#define ATTR_RSTRIP (1u << 7)
#define ATTR_PUBLIC 0x3Fu

enum {
    PRE_DEFAULT = 0,
    PRE_LLAMA3,
    PRE_QWEN2,
    PRE_DSLLM,
    PRE_DSCODER,
    PRE_FALCON,
    PRE_STARCODER,
    PRE_GPT2
};

/* regex expressions (see match_expr) */
enum {
    RX_GPT2,        /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) */
    RX_LLAMA3,      /* (?:'[sS]|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
    RX_QWEN2,       /* same with \p{N} instead of \p{N}{1,3} */
    RX_NEWLINE,     /* [\r\n] */
    RX_SP_LETTERS,  /* \s?\p{L}+ */
    RX_SP_PUNCT,    /* \s?\p{P}+ */
    RX_CJK,         /* [一-龥ࠀ-一가-퟿]+ */
    RX_N1,          /* \p{N} */
    RX_NPLUS,       /* \p{N}+ */
    RX_DS_LETTERS,  /* \s?[A-Za-zµÀ-Ö...]+ (deepseek-llm) */
    RX_DS_PUNCT,    /* \s?[!-/:-~！-／：-～‘-‟　-。]+ */
    RX_WS_END,      /* \s+$ */
    RX_PUNCT_FALCON,/* [\p{P}\$\+<=>\^~\|`]+ */
    RX_PUNCT_DEF,   /* [\p{P}\$\+<=>\^~\|]+ */
    RX_DIGIT3       /* [0-9][0-9][0-9] */
};

static const struct {
    int pre;
    const char *name;
    int n;
    int rx[6];
} pre_exprs[] = {
    {PRE_DEFAULT, "default", 4, {RX_PUNCT_DEF, RX_GPT2, RX_NPLUS, RX_DIGIT3}},
    {PRE_LLAMA3, "llama3", 1, {RX_LLAMA3}},
    {PRE_QWEN2, "qwen2", 1, {RX_QWEN2}},
    {PRE_DSLLM, "deepseek-llm", 6,
     {RX_NEWLINE, RX_DS_LETTERS, RX_DS_PUNCT, RX_WS_END, RX_CJK, RX_NPLUS}},
    {PRE_DSCODER, "deepseek-coder", 5, {RX_NEWLINE, RX_SP_LETTERS, RX_SP_PUNCT, RX_CJK, RX_N1}},
    {PRE_FALCON, "falcon", 3, {RX_PUNCT_FALCON, RX_GPT2, RX_DIGIT3}},
    {PRE_STARCODER, "starcoder", 2, {RX_N1, RX_GPT2}},
    {PRE_GPT2, "gpt2", 1, {RX_GPT2}},
};

/* tokenizer.ggml.pre names -> pre-tokenizer and llama.cpp's per-name flags */
static const struct {
    const char *gguf;
    int pre;
    bool clean_spaces, ignore_merges, add_bos;
} pre_names[] = {
    {"default", PRE_DEFAULT, true, false, false},
    {"llama3", PRE_LLAMA3, true, true, true},
    {"llama-v3", PRE_LLAMA3, true, true, true},
    {"llama-bpe", PRE_LLAMA3, true, true, true},
    {"falcon3", PRE_LLAMA3, true, true, true},
    {"falcon-h1", PRE_LLAMA3, true, true, true},
    {"pixtral", PRE_LLAMA3, true, true, true},
    {"midm-2.0", PRE_LLAMA3, true, true, true},
    {"lfm2", PRE_LLAMA3, true, true, true},
    {"dbrx", PRE_LLAMA3, true, false, false},
    {"smaug-bpe", PRE_LLAMA3, true, false, false},
    {"deepseek-llm", PRE_DSLLM, false, false, false},
    {"deepseek-coder", PRE_DSCODER, false, false, false},
    {"falcon", PRE_FALCON, true, false, false},
    {"mpt", PRE_GPT2, true, false, false},
    {"olmo", PRE_GPT2, true, false, false},
    {"jais", PRE_GPT2, true, false, false},
    {"trillion", PRE_GPT2, true, false, false},
    {"gpt-2", PRE_GPT2, true, false, false},
    {"gpt2", PRE_GPT2, true, false, false},
    {"gpt-neox", PRE_GPT2, true, false, false},
    {"phi-2", PRE_GPT2, true, false, false},
    {"jina-es", PRE_GPT2, true, false, false},
    {"jina-de", PRE_GPT2, true, false, false},
    {"jina-v2-es", PRE_GPT2, true, false, false},
    {"jina-v2-de", PRE_GPT2, true, false, false},
    {"jina-v1-en", PRE_GPT2, true, false, false},
    {"jina-v2-code", PRE_GPT2, true, false, false},
    {"roberta-bpe", PRE_GPT2, true, false, false},
    {"gigachat", PRE_GPT2, true, false, false},
    {"a.x-4.0", PRE_GPT2, true, false, false},
    {"mellum", PRE_GPT2, true, false, false},
    {"starcoder", PRE_STARCODER, true, false, false},
    {"refact", PRE_STARCODER, true, false, false},
    {"command-r", PRE_STARCODER, false, false, false},
    {"smollm", PRE_STARCODER, false, false, false},
    {"codeshell", PRE_STARCODER, true, false, false},
    {"exaone", PRE_STARCODER, true, false, false},
    {"minerva-7b", PRE_STARCODER, true, false, false},
    {"qwen2", PRE_QWEN2, false, false, false},
    {"deepseek-r1-qwen", PRE_QWEN2, false, false, false},
    {"megrez", PRE_QWEN2, true, false, false},
    {"stablelm2", PRE_QWEN2, true, false, false},
};

struct eng_vocab {
    eng_vocab_kind kind;
    int pre;
    const char *pre_name;
    int32_t n;
    char *blob;       /* token texts, each NUL-terminated */
    size_t *off;      /* text of token i: blob + off[i], len[i] bytes */
    uint32_t *len;
    float *score;
    uint32_t *attr;
    int32_t *ht;      /* text -> id, open addressing, -1 empty */
    size_t ht_mask;
    /* BPE merges: rank r is (mblob + moff[r], mll[r]) + (…, mrl[r]) */
    int32_t n_merges;
    char *mblob;
    size_t *moff;
    uint32_t *mll, *mrl;
    int32_t *mht;
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

/* ------------------------------------------------------------------------ */
/* small helpers                                                            */
/* ------------------------------------------------------------------------ */

typedef struct {
    int32_t *d;
    size_t n, cap;
    bool oom;
} ivec;

static void iv_push(ivec *v, int32_t x)
{
    if (v->oom) return;
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 64;
        int32_t *nd = eng__realloc(v->d, nc * sizeof *nd);
        if (!nd) {
            v->oom = true;
            return;
        }
        v->d = nd;
        v->cap = nc;
    }
    v->d[v->n++] = x;
}

typedef struct {
    char *d;
    size_t n, cap;
    bool oom;
} sbuf;

static bool sb_reserve(sbuf *b, size_t extra)
{
    if (b->oom) return false;
    if (extra > SIZE_MAX / 2 - b->n) {
        b->oom = true;
        return false;
    }
    if (b->n + extra <= b->cap) return true;
    size_t nc = b->cap ? b->cap : 64;
    while (nc < b->n + extra) nc *= 2;
    char *nd = eng__realloc(b->d, nc);
    if (!nd) {
        b->oom = true;
        return false;
    }
    b->d = nd;
    b->cap = nc;
    return true;
}

static void sb_add(sbuf *b, const void *p, size_t n)
{
    if (!n || !sb_reserve(b, n)) return;
    memcpy(b->d + b->n, p, n);
    b->n += n;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
#define FNV0 0xcbf29ce484222325ULL

static bool c_isspace(unsigned char c) { return c == ' ' || (c >= 9 && c <= 13); }

static const char *tok_text(const eng_vocab *v, int32_t id) { return v->blob + v->off[id]; }

/* token id of a byte string, or -1 */
static int32_t lookup(const eng_vocab *v, const char *s, size_t n)
{
    size_t i = (size_t)fnv(FNV0, s, n) & v->ht_mask;
    for (;;) {
        int32_t id = v->ht[i];
        if (id < 0) return -1;
        if (v->len[id] == n && memcmp(tok_text(v, id), s, n) == 0) return id;
        i = (i + 1) & v->ht_mask;
    }
}

static uint64_t merge_hash(const char *l, size_t ln, const char *r, size_t rn)
{
    uint64_t h = fnv(FNV0, l, ln);
    h = (h ^ 0x1FF) * 0x100000001b3ULL;
    return fnv(h, r, rn);
}

/* merge rank of the pair (l, r), or -1 */
static int32_t merge_rank(const eng_vocab *v, const char *l, size_t ln, const char *r, size_t rn)
{
    if (!v->mht) return -1;
    size_t i = (size_t)merge_hash(l, ln, r, rn) & v->mht_mask;
    for (;;) {
        int32_t k = v->mht[i];
        if (k < 0) return -1;
        if (v->mll[k] == ln && v->mrl[k] == rn && memcmp(v->mblob + v->moff[k], l, ln) == 0 &&
            memcmp(v->mblob + v->moff[k] + ln, r, rn) == 0)
            return k;
        i = (i + 1) & v->mht_mask;
    }
}

/* ------------------------------------------------------------------------ */
/* merge queue: min-heap on (key, left)                                      */
/* ------------------------------------------------------------------------ */

typedef struct {
    double key; /* BPE: rank; SPM: -score */
    int32_t left, right;
    uint32_t ln, rn; /* symbol lengths when queued (stale check) */
} bigram;

typedef struct {
    bigram *d;
    size_t n, cap;
    bool oom;
} heap;

static bool bg_less(const bigram *a, const bigram *b)
{
    return a->key < b->key || (a->key == b->key && a->left < b->left);
}

static void heap_push(heap *h, bigram b)
{
    if (h->oom) return;
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 64;
        bigram *nd = eng__realloc(h->d, nc * sizeof *nd);
        if (!nd) {
            h->oom = true;
            return;
        }
        h->d = nd;
        h->cap = nc;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bg_less(&b, &h->d[p])) break;
        h->d[i] = h->d[p];
        i = p;
    }
    h->d[i] = b;
}

static bigram heap_pop(heap *h)
{
    bigram top = h->d[0], last = h->d[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && bg_less(&h->d[c + 1], &h->d[c])) c++;
        if (!bg_less(&h->d[c], &last)) break;
        h->d[i] = h->d[c];
        i = c;
    }
    if (h->n) h->d[i] = last;
    return top;
}

typedef struct {
    int32_t prev, next;
    uint32_t start, n;
} symbol;

/* scratch shared by one eng_tokenize call */
typedef struct {
    symbol *sym;
    size_t sym_cap;
    heap q;
    uint32_t *cp;
    uint8_t *cls;   /* category | 8 if white space */
    uint32_t *wsend;
    int64_t *prevnl;
    size_t cp_cap, cls_cap, wsend_cap, prevnl_cap;
    size_t *seg, *seg2;
    size_t seg_cap, seg2_cap;
    sbuf word;
    bool oom;
} scratch;

static void scratch_free(scratch *s)
{
    free(s->sym);
    free(s->q.d);
    free(s->cp);
    free(s->cls);
    free(s->wsend);
    free(s->prevnl);
    free(s->seg);
    free(s->seg2);
    free(s->word.d);
}

static bool grow(void **p, size_t *cap, size_t need, size_t elt)
{
    if (need <= *cap) return true;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elt) return false;
        nc *= 2;
    }
    void *np = eng__realloc(*p, nc * elt);
    if (!np) return false;
    *p = np;
    *cap = nc;
    return true;
}

static bool sym_reserve(scratch *s, size_t n)
{
    void *p = s->sym;
    bool ok = grow(&p, &s->sym_cap, n, sizeof(symbol));
    s->sym = p;
    if (!ok) s->oom = true;
    return ok;
}

/* ------------------------------------------------------------------------ */
/* SPM                                                                       */
/* ------------------------------------------------------------------------ */

static void spm_try_bigram(const eng_vocab *v, scratch *s, const char *text, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) return;
    int32_t id = lookup(v, text + s->sym[l].start, (size_t)s->sym[l].n + s->sym[r].n);
    if (id < 0) return;
    bigram b = {-(double)v->score[id], l, r, s->sym[l].n, s->sym[r].n};
    heap_push(&s->q, b);
}

static void spm_byte(const eng_vocab *v, uint8_t c, ivec *out)
{
    int32_t id = v->byte_tok[c];
    if (id < 0) id = v->unk;
    if (id >= 0) iv_push(out, id);
}

static void spm_tokenize(const eng_vocab *v, scratch *s, const char *text, size_t n, ivec *out)
{
    if (n == 0) return;
    size_t nsym = 0;
    for (size_t off = 0; off < n;) {
        if (!sym_reserve(s, nsym + 1)) return;
        size_t l = (size_t)eng__utf8_len((uint8_t)text[off]);
        if (l > n - off) l = n - off;
        symbol *y = &s->sym[nsym];
        y->start = (uint32_t)off;
        y->n = (uint32_t)l;
        y->prev = (int32_t)nsym - 1;
        off += l;
        y->next = off == n ? -1 : (int32_t)nsym + 1;
        nsym++;
    }
    s->q.n = 0;
    for (size_t i = 1; i < nsym; i++) spm_try_bigram(v, s, text, (int32_t)i - 1, (int32_t)i);
    while (s->q.n) {
        bigram b = heap_pop(&s->q);
        symbol *L = &s->sym[b.left], *R = &s->sym[b.right];
        if (L->n == 0 || R->n == 0 || L->n + R->n != b.ln + b.rn) continue;
        L->n += R->n;
        R->n = 0;
        L->next = R->next;
        if (R->next >= 0) s->sym[R->next].prev = b.left;
        spm_try_bigram(v, s, text, L->prev, b.left);
        spm_try_bigram(v, s, text, b.left, L->next);
    }
    if (s->q.oom) s->oom = true;
    for (int32_t i = 0; i != -1; i = s->sym[i].next) {
        symbol *y = &s->sym[i];
        int32_t id = lookup(v, text + y->start, y->n);
        if (id >= 0) {
            iv_push(out, id);
        } else {
            for (uint32_t j = 0; j < y->n; j++) spm_byte(v, (uint8_t)text[y->start + j], out);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* byte-level BPE                                                            */
/* ------------------------------------------------------------------------ */

/* GPT-2 byte-to-unicode: the code point byte b is shown as */
static uint32_t byte_to_cp(uint8_t b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) return b;
    /* the others, in byte order, get 256, 257, ... */
    uint32_t k = 0;
    for (uint32_t c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE)) k++;
    return 256 + k;
}

static void b2u_init(eng_vocab *v)
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
}

static void bpe_try_bigram(const eng_vocab *v, scratch *s, const char *w, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) return;
    int32_t rank = merge_rank(v, w + s->sym[l].start, s->sym[l].n, w + s->sym[r].start, s->sym[r].n);
    if (rank < 0) return;
    bigram b = {(double)rank, l, r, s->sym[l].n, s->sym[r].n};
    heap_push(&s->q, b);
}

static void bpe_word(const eng_vocab *v, scratch *s, const char *w, size_t n, ivec *out)
{
    if (n == 0) return;
    if (v->ignore_merges) {
        int32_t id = lookup(v, w, n);
        if (id >= 0) {
            iv_push(out, id);
            return;
        }
    }
    size_t nsym = 0;
    for (size_t off = 0; off < n;) {
        if (!sym_reserve(s, nsym + 1)) return;
        size_t l = (size_t)eng__utf8_len((uint8_t)w[off]);
        if (l > n - off) l = n - off;
        symbol *y = &s->sym[nsym];
        y->start = (uint32_t)off;
        y->n = (uint32_t)l;
        y->prev = (int32_t)nsym - 1;
        off += l;
        y->next = off == n ? -1 : (int32_t)nsym + 1;
        nsym++;
    }
    s->q.n = 0;
    for (size_t i = 1; i < nsym; i++) bpe_try_bigram(v, s, w, (int32_t)i - 1, (int32_t)i);
    while (s->q.n) {
        bigram b = heap_pop(&s->q);
        symbol *L = &s->sym[b.left], *R = &s->sym[b.right];
        if (L->n != b.ln || R->n != b.rn || L->n == 0 || R->n == 0) continue;
        L->n += R->n;
        R->n = 0;
        L->next = R->next;
        if (R->next >= 0) s->sym[R->next].prev = b.left;
        bpe_try_bigram(v, s, w, L->prev, b.left);
        bpe_try_bigram(v, s, w, b.left, L->next);
    }
    if (s->q.oom) s->oom = true;
    for (int32_t i = 0; i != -1; i = s->sym[i].next) {
        symbol *y = &s->sym[i];
        if (y->n == 0) continue;
        int32_t id = lookup(v, w + y->start, y->n);
        if (id >= 0) {
            iv_push(out, id);
        } else {
            /* llama.cpp: each raw byte as a one-byte token, if there is one */
            for (uint32_t j = 0; j < y->n; j++) {
                int32_t t = lookup(v, w + y->start + j, 1);
                if (t >= 0) iv_push(out, t);
            }
        }
    }
}

/* ---- pre-tokenizer regex matchers over code points ---- */

typedef struct {
    const uint32_t *cp;
    const uint8_t *cls;
    const uint32_t *wsend;  /* end of the white-space run starting at i */
    const int64_t *prevnl;  /* last \r or \n before i, or -1 */
} rxctx;

#define WSBIT 8
static inline int cat_at(const rxctx *x, size_t i) { return x->cls[i] & 7; }
static inline bool is_ws(const rxctx *x, size_t i) { return (x->cls[i] & WSBIT) != 0; }
static inline bool is_L(const rxctx *x, size_t i) { return cat_at(x, i) == ENG_UCAT_LETTER; }
static inline bool is_N(const rxctx *x, size_t i) { return cat_at(x, i) == ENG_UCAT_NUMBER; }
static inline bool is_P(const rxctx *x, size_t i) { return cat_at(x, i) == ENG_UCAT_PUNCT; }
/* [^\s\p{L}\p{N}] */
static inline bool is_other(const rxctx *x, size_t i) { return !is_ws(x, i) && !is_L(x, i) && !is_N(x, i); }
static inline bool is_nl(uint32_t c) { return c == '\r' || c == '\n'; }

static size_t run_of(const rxctx *x, size_t i, size_t end, bool (*pred)(const rxctx *, size_t))
{
    size_t j = i;
    while (j < end && pred(x, j)) j++;
    return j - i;
}

static bool p_L(const rxctx *x, size_t i) { return is_L(x, i); }
static bool p_N(const rxctx *x, size_t i) { return is_N(x, i); }
static bool p_P(const rxctx *x, size_t i) { return is_P(x, i); }
static bool p_other(const rxctx *x, size_t i) { return is_other(x, i); }
static bool p_nl(const rxctx *x, size_t i) { return is_nl(x->cp[i]); }
static bool p_cjk(const rxctx *x, size_t i)
{
    uint32_t c = x->cp[i];
    return (c >= 0x800 && c <= 0x9FA5) || (c >= 0xAC00 && c <= 0xD7FF);
}
static bool p_ds_letter(const rxctx *x, size_t i)
{
    return !is_ws(x, i) && eng__in_ranges(eng__dsllm_letters, eng__dsllm_nletters, x->cp[i]);
}
static bool p_ds_punct(const rxctx *x, size_t i)
{
    uint32_t c = x->cp[i];
    if (is_ws(x, i)) return false; /* U+3000 is seen as white space by llama.cpp */
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x7E) || (c >= 0xFF01 && c <= 0xFF0F) ||
           (c >= 0xFF1A && c <= 0xFF5E) || (c >= 0x2018 && c <= 0x201F) || (c >= 0x3000 && c <= 0x3002);
}
static bool p_punct_def(const rxctx *x, size_t i)
{
    uint32_t c = x->cp[i];
    return is_P(x, i) || c == '$' || c == '+' || c == '<' || c == '=' || c == '>' || c == '^' ||
           c == '~' || c == '|';
}
static bool p_punct_falcon(const rxctx *x, size_t i) { return p_punct_def(x, i) || x->cp[i] == '`'; }

static size_t ws_run(const rxctx *x, size_t i, size_t end)
{
    size_t e = x->wsend[i];
    return (e > end ? end : e) - i;
}

static uint32_t lower_ascii(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* 's|'t|'re|'ve|'m|'ll|'d (case-insensitive for llama3 / qwen2) */
static size_t m_contraction(const rxctx *x, size_t i, size_t end, bool icase)
{
    if (x->cp[i] != '\'' || i + 1 >= end) return 0;
    uint32_t a = x->cp[i + 1];
    if (icase) a = lower_ascii(a);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (i + 2 >= end) return 0;
    uint32_t b = x->cp[i + 2];
    if (icase) b = lower_ascii(b);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

static size_t m_gpt2(const rxctx *x, size_t i, size_t end)
{
    size_t m = m_contraction(x, i, end, false);
    if (m) return m;
    size_t q = (x->cp[i] == ' ' && i + 1 < end) ? i + 1 : i;
    if (is_L(x, q)) return q - i + run_of(x, q, end, p_L);
    if (is_N(x, q)) return q - i + run_of(x, q, end, p_N);
    if (is_other(x, q)) return q - i + run_of(x, q, end, p_other);
    if (!is_ws(x, i)) return 0;
    size_t n = ws_run(x, i, end);
    if (i + n == end) return n; /* \s+(?!\S) at the end */
    return n > 1 ? n - 1 : 0;
}

static size_t m_llama3(const rxctx *x, size_t i, size_t end, size_t max_n)
{
    size_t m = m_contraction(x, i, end, true);
    if (m) return m;
    uint32_t c = x->cp[i];
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (!is_nl(c) && !is_L(x, i) && !is_N(x, i) && i + 1 < end && is_L(x, i + 1))
        return 1 + run_of(x, i + 1, end, p_L);
    if (is_L(x, i)) return run_of(x, i, end, p_L);
    /* \p{N}{1,max_n} */
    if (is_N(x, i)) {
        size_t n = run_of(x, i, end, p_N);
        return n < max_n ? n : max_n;
    }
    /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
    size_t q = (c == ' ' && i + 1 < end) ? i + 1 : i;
    if (is_other(x, q)) {
        size_t j = q + run_of(x, q, end, p_other);
        return j - i + run_of(x, j, end, p_nl);
    }
    if (!is_ws(x, i)) return 0;
    size_t n = ws_run(x, i, end);
    /* \s*[\r\n]+ : up to the last newline of the white-space run */
    int64_t k = x->prevnl[i + n];
    if (k >= (int64_t)i) return (size_t)k + 1 - i;
    /* \s+(?!\S) | \s+ */
    if (i + n == end || n == 1) return n;
    return n - 1;
}

static size_t match_expr(int rx, const rxctx *x, size_t i, size_t end)
{
    switch (rx) {
    case RX_GPT2: return m_gpt2(x, i, end);
    case RX_LLAMA3: return m_llama3(x, i, end, 3);
    case RX_QWEN2: return m_llama3(x, i, end, 1);
    case RX_NEWLINE: return is_nl(x->cp[i]) ? 1 : 0;
    case RX_SP_LETTERS:
        if (is_ws(x, i) && i + 1 < end && is_L(x, i + 1)) return 1 + run_of(x, i + 1, end, p_L);
        return run_of(x, i, end, p_L);
    case RX_SP_PUNCT:
        if (is_ws(x, i) && i + 1 < end && is_P(x, i + 1)) return 1 + run_of(x, i + 1, end, p_P);
        return run_of(x, i, end, p_P);
    case RX_CJK: return run_of(x, i, end, p_cjk);
    case RX_N1: return is_N(x, i) ? 1 : 0;
    case RX_NPLUS: return run_of(x, i, end, p_N);
    case RX_DS_LETTERS:
        if (is_ws(x, i) && i + 1 < end && p_ds_letter(x, i + 1))
            return 1 + run_of(x, i + 1, end, p_ds_letter);
        return run_of(x, i, end, p_ds_letter);
    case RX_DS_PUNCT:
        if (is_ws(x, i) && i + 1 < end && p_ds_punct(x, i + 1))
            return 1 + run_of(x, i + 1, end, p_ds_punct);
        return run_of(x, i, end, p_ds_punct);
    case RX_WS_END: {
        if (!is_ws(x, i)) return 0;
        size_t n = ws_run(x, i, end);
        return i + n == end ? n : 0;
    }
    case RX_PUNCT_FALCON: return run_of(x, i, end, p_punct_falcon);
    case RX_PUNCT_DEF: return run_of(x, i, end, p_punct_def);
    case RX_DIGIT3: {
        if (i + 3 > end) return 0;
        for (size_t k = 0; k < 3; k++)
            if (x->cp[i + k] < '0' || x->cp[i + k] > '9') return 0;
        return 3;
    }
    }
    return 0;
}

/* Split every segment of *seg by regex rx into *seg2 (llama.cpp: matches and
 * the unmatched text between them are pieces). Returns the new count. */
static bool split_expr(scratch *s, const rxctx *x, int rx, size_t nseg, size_t *nout)
{
    size_t no = 0, start = 0;
    for (size_t k = 0; k < nseg; k++) {
        size_t end = start + s->seg[k], pos = start, last = start;
        while (pos < end) {
            size_t m = match_expr(rx, x, pos, end);
            if (m == 0) {
                pos++;
                continue;
            }
            void *p = s->seg2;
            if (!grow(&p, &s->seg2_cap, no + 2, sizeof(size_t))) return false;
            s->seg2 = p;
            if (pos > last) s->seg2[no++] = pos - last;
            s->seg2[no++] = m;
            pos += m;
            last = pos;
        }
        if (last < end) {
            void *p = s->seg2;
            if (!grow(&p, &s->seg2_cap, no + 1, sizeof(size_t))) return false;
            s->seg2 = p;
            s->seg2[no++] = end - last;
        }
        start = end;
    }
    *nout = no;
    return true;
}

/* Decode text into s->cp and split it with pre-tokenizer pre: piece lengths
 * (in code points) in s->seg[0 .. *nseg). false when out of memory. */
static bool pre_split(int pre, scratch *s, const char *text, size_t n, size_t *nseg_out)
{
    void *p;
    p = s->cp;
    if (!grow(&p, &s->cp_cap, n + 1, sizeof(uint32_t))) goto oom;
    s->cp = p;
    p = s->cls;
    if (!grow(&p, &s->cls_cap, n + 1, 1)) goto oom;
    s->cls = p;
    p = s->wsend;
    if (!grow(&p, &s->wsend_cap, n + 1, sizeof(uint32_t))) goto oom;
    s->wsend = p;
    p = s->prevnl;
    if (!grow(&p, &s->prevnl_cap, n + 1, sizeof(int64_t))) goto oom;
    s->prevnl = p;

    size_t nc = 0;
    for (size_t i = 0; i < n;) {
        uint32_t c = eng__utf8_next((const uint8_t *)text, n, &i);
        s->cp[nc] = c;
        s->cls[nc] = (uint8_t)(eng__ucat(c) | (eng__uisspace(c) ? WSBIT : 0));
        nc++;
    }
    s->wsend[nc] = (uint32_t)nc;
    for (size_t i = nc; i-- > 0;) s->wsend[i] = (s->cls[i] & WSBIT) ? s->wsend[i + 1] : (uint32_t)i;
    int64_t last = -1;
    for (size_t i = 0; i <= nc; i++) {
        s->prevnl[i] = last;
        if (i < nc && is_nl(s->cp[i])) last = (int64_t)i;
    }
    rxctx x = {s->cp, s->cls, s->wsend, s->prevnl};

    p = s->seg;
    if (!grow(&p, &s->seg_cap, 1, sizeof(size_t))) goto oom;
    s->seg = p;
    s->seg[0] = nc;
    size_t nseg = 1;
    const int *rx = NULL;
    int nrx = 0;
    for (size_t k = 0; k < sizeof pre_exprs / sizeof pre_exprs[0]; k++)
        if (pre_exprs[k].pre == pre) {
            rx = pre_exprs[k].rx;
            nrx = pre_exprs[k].n;
        }
    for (int r = 0; r < nrx; r++) {
        size_t no;
        if (!split_expr(s, &x, rx[r], nseg, &no)) goto oom;
        size_t *t = s->seg;
        s->seg = s->seg2;
        s->seg2 = t;
        size_t tc = s->seg_cap;
        s->seg_cap = s->seg2_cap;
        s->seg2_cap = tc;
        nseg = no;
    }
    *nseg_out = nseg;
    return true;
oom:
    return false;
}

static void bpe_tokenize(const eng_vocab *v, scratch *s, const char *text, size_t n, ivec *out)
{
    size_t nseg;
    if (n == 0) return;
    if (!pre_split(v->pre, s, text, n, &nseg)) goto oom;
    size_t start = 0;
    for (size_t k = 0; k < nseg; k++) {
        s->word.n = 0;
        for (size_t i = start; i < start + s->seg[k]; i++) {
            uint8_t u[4];
            int l = eng__utf8_put(s->cp[i], u);
            for (int j = 0; j < l; j++) sb_add(&s->word, v->b2u[u[j]], v->b2u_len[u[j]]);
        }
        if (s->word.oom) goto oom;
        start += s->seg[k];
        bpe_word(v, s, s->word.d, s->word.n, out);
        if (s->oom) return;
    }
    return;
oom:
    s->oom = true;
}

eng_status eng__pretokenize(const char *pre, const char *text, size_t len, size_t **out, size_t *n)
{
    int pt = -1;
    for (size_t i = 0; i < sizeof pre_names / sizeof pre_names[0]; i++)
        if (strcmp(pre, pre_names[i].gguf) == 0) pt = pre_names[i].pre;
    if (pt < 0 || !out || !n || (!text && len)) return ENG_EINVAL;
    scratch s = {0};
    size_t nseg = 0;
    *out = NULL;
    *n = 0;
    if (len == 0) return ENG_OK;
    if (!pre_split(pt, &s, text, len, &nseg)) {
        scratch_free(&s);
        return ENG_ENOMEM;
    }
    *out = s.seg;
    *n = nseg;
    s.seg = NULL;
    scratch_free(&s);
    return ENG_OK;
}

/* ------------------------------------------------------------------------ */
/* tokenize                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct {
    int32_t tok; /* -1: raw text */
    size_t off, len;
} frag;

typedef struct {
    frag *d;
    size_t n, cap;
} fvec;

static bool fv_push(fvec *f, int32_t tok, size_t off, size_t len)
{
    void *p = f->d;
    if (!grow(&p, &f->cap, f->n + 1, sizeof(frag))) return false;
    f->d = p;
    f->d[f->n++] = (frag){tok, off, len};
    return true;
}

/* Split raw-text fragments at special tokens (llama.cpp tokenizer_st_partition). */
static bool partition(const eng_vocab *v, const char *text, size_t len, bool parse_special, fvec *fa)
{
    fvec fb = {0};
    for (size_t k = 0; k < v->n_special; k++) {
        int32_t id = v->special[k];
        uint32_t a = v->attr[id];
        if (!parse_special && (a & (ENG_TOKEN_CONTROL | ENG_TOKEN_UNKNOWN))) continue;
        const char *t = tok_text(v, id);
        size_t tl = v->len[id];
        if (tl == 0 || tl > len || !memmem(text, len, t, tl)) continue;
        fb.n = 0;
        for (size_t f = 0; f < fa->n; f++) {
            frag fr = fa->d[f];
            if (fr.tok >= 0) {
                if (!fv_push(&fb, fr.tok, 0, 0)) goto oom;
                continue;
            }
            size_t off = fr.off, bl = fr.len;
            for (;;) {
                const char *m = bl >= tl ? memmem(text + off, bl, t, tl) : NULL;
                if (!m) {
                    if (bl > 0 && !fv_push(&fb, -1, off, bl)) goto oom;
                    break;
                }
                size_t mp = (size_t)(m - text);
                if (mp > off) {
                    size_t ll = mp - off;
                    if (a & ATTR_LSTRIP)
                        while (ll > 0 && c_isspace((unsigned char)text[off + ll - 1])) ll--;
                    if (ll > 0 && !fv_push(&fb, -1, off, ll)) goto oom;
                }
                if (!fv_push(&fb, id, 0, 0)) goto oom;
                if (mp + tl < off + bl) {
                    size_t ro = mp + tl, rl = bl - (mp - off) - tl;
                    if (a & ATTR_RSTRIP)
                        while (rl > 0 && c_isspace((unsigned char)text[ro])) ro++, rl--;
                    off = ro;
                    bl = rl;
                } else {
                    break;
                }
            }
        }
        fvec t2 = *fa;
        *fa = fb;
        fb = t2;
    }
    free(fb.d);
    return true;
oom:
    free(fb.d);
    return false;
}

static eng_status tokenize_vec(const eng_vocab *v, const char *text, size_t len, bool add_special,
                               bool parse_special, ivec *out)
{
    fvec fa = {0};
    scratch s = {0};
    sbuf esc = {0};
    eng_status st = ENG_OK;
    if (len > 0) {
        if (!fv_push(&fa, -1, 0, len) || !partition(v, text, len, parse_special, &fa)) {
            st = ENG_ENOMEM;
            goto done;
        }
    }
    if (v->kind == ENG_VOCAB_SPM) {
        bool prev_special = true;
        if (add_special && v->add_bos && v->bos >= 0) iv_push(out, v->bos);
        for (size_t f = 0; f < fa.n; f++) {
            if (fa.d[f].tok >= 0) {
                iv_push(out, fa.d[f].tok);
                prev_special = true;
                continue;
            }
            esc.n = 0;
            if (v->add_space_prefix && prev_special) sb_add(&esc, "\xE2\x96\x81", 3);
            const char *p = text + fa.d[f].off;
            size_t n = fa.d[f].len, run = 0;
            for (size_t i = 0; i < n; i++) {
                if (p[i] == ' ') {
                    sb_add(&esc, p + run, i - run);
                    sb_add(&esc, "\xE2\x96\x81", 3);
                    run = i + 1;
                }
            }
            sb_add(&esc, p + run, n - run);
            if (esc.oom || esc.n > UINT32_MAX) {
                st = esc.oom ? ENG_ENOMEM : ENG_EINVAL;
                goto done;
            }
            spm_tokenize(v, &s, esc.d, esc.n, out);
            if (s.oom) break;
            prev_special = false;
        }
        if (add_special && v->add_eos && v->eos >= 0) iv_push(out, v->eos);
    } else {
        if (add_special && v->add_bos && v->bos >= 0) iv_push(out, v->bos);
        for (size_t f = 0; f < fa.n; f++) {
            if (fa.d[f].tok >= 0) {
                iv_push(out, fa.d[f].tok);
                continue;
            }
            /* byte-encoded words can be up to 2x longer: keep offsets in 32 bits */
            if (fa.d[f].len > UINT32_MAX / 8) {
                st = ENG_EINVAL;
                goto done;
            }
            bpe_tokenize(v, &s, text + fa.d[f].off, fa.d[f].len, out);
            if (s.oom) break;
        }
        if (add_special && v->add_eos && v->eos >= 0) iv_push(out, v->eos);
    }
    if (s.oom || out->oom) st = ENG_ENOMEM;
done:
    free(fa.d);
    free(esc.d);
    scratch_free(&s);
    return st;
}

eng_status eng_tokenize(const eng_vocab *v, const char *text, size_t len, bool add_special,
                        bool parse_special, int32_t *out, size_t n_max, size_t *n_out)
{
    if (!v || (!text && len) || (!out && n_max) || !n_out) return ENG_EINVAL;
    if (len > UINT32_MAX / 4) return ENG_EINVAL; /* SPM escaping triples spaces */
    ivec r = {0};
    eng_status st = tokenize_vec(v, text ? text : "", len, add_special, parse_special, &r);
    if (st != ENG_OK) {
        free(r.d);
        return st;
    }
    *n_out = r.n;
    if (r.n > n_max) {
        free(r.d);
        return ENG_ERANGE;
    }
    if (r.n) memcpy(out, r.d, r.n * sizeof *out);
    free(r.d);
    return ENG_OK;
}

/* ------------------------------------------------------------------------ */
/* detokenize                                                                */
/* ------------------------------------------------------------------------ */

static void copy_lstrip(sbuf *b, const char *p, size_t n, bool lstrip)
{
    if (lstrip && n && *p == ' ') {
        p++;
        n--;
    }
    sb_add(b, p, n);
}

/* llama.cpp token_to_piece into b; lstrip removes one leading space. */
static void piece(const eng_vocab *v, int32_t id, bool special, bool lstrip, sbuf *b)
{
    uint32_t a = v->attr[id];
    const char *t = tok_text(v, id);
    size_t n = v->len[id];
    if (!special && (a & (ENG_TOKEN_UNKNOWN | ENG_TOKEN_CONTROL))) return;
    if (a & (ENG_TOKEN_UNKNOWN | ENG_TOKEN_CONTROL | ENG_TOKEN_USER_DEFINED)) {
        copy_lstrip(b, t, n, lstrip);
        return;
    }
    if (v->kind == ENG_VOCAB_SPM) {
        if (a & ENG_TOKEN_NORMAL) {
            size_t start = b->n;
            size_t run = 0;
            for (size_t i = 0; i + 2 < n;) {
                if ((uint8_t)t[i] == 0xE2 && (uint8_t)t[i + 1] == 0x96 && (uint8_t)t[i + 2] == 0x81) {
                    sb_add(b, t + run, i - run);
                    sb_add(b, " ", 1);
                    i += 3;
                    run = i;
                } else {
                    i++;
                }
            }
            sb_add(b, t + run, n - run);
            if (lstrip && !b->oom && b->n > start && b->d[start] == ' ') {
                memmove(b->d + start, b->d + start + 1, b->n - start - 1);
                b->n--;
            }
            return;
        }
        if (a & ENG_TOKEN_BYTE) {
            /* strtol(text + 3, 16) of "<0xNN>" */
            unsigned val = 0;
            for (size_t i = 3; i < n; i++) {
                char c = t[i];
                int d = c >= '0' && c <= '9' ? c - '0'
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                               : -1;
                if (d < 0) break;
                val = (val * 16 + (unsigned)d) & 0xFF;
            }
            char c = (char)val;
            copy_lstrip(b, &c, 1, lstrip);
        }
        return;
    }
    /* BPE */
    if (a & ENG_TOKEN_NORMAL) {
        sbuf d = {0};
        for (size_t i = 0; i < n;) {
            uint32_t cp = eng__utf8_next((const uint8_t *)t, n, &i);
            int32_t byte = cp < 324 ? v->u2b[cp] : -1;
            if (byte >= 0) {
                char c = (char)byte;
                sb_add(&d, &c, 1);
            } else {
                uint8_t u[4];
                int l = eng__utf8_put(cp, u);
                sb_add(&d, "[UNK_BYTE_0x", 12);
                for (int k = 0; k < l; k++) {
                    static const char hx[] = "0123456789abcdef";
                    char h[2] = {hx[u[k] >> 4], hx[u[k] & 15]};
                    sb_add(&d, h, 2);
                }
                sb_add(&d, t, n);
                sb_add(&d, "]", 1);
            }
        }
        if (d.oom) b->oom = true;
        else copy_lstrip(b, d.d, d.n, lstrip);
        free(d.d);
    }
}

eng_status eng_token_to_piece(const eng_vocab *v, int32_t id, bool special, char *buf, size_t cap,
                              size_t *n_out)
{
    if (!v || !n_out || (!buf && cap) || id < 0 || id >= v->n) return ENG_EINVAL;
    sbuf b = {0};
    piece(v, id, special, false, &b);
    if (b.oom) {
        free(b.d);
        return ENG_ENOMEM;
    }
    *n_out = b.n;
    if (b.n > cap) {
        free(b.d);
        return ENG_ERANGE;
    }
    if (b.n) memcpy(buf, b.d, b.n);
    free(b.d);
    return ENG_OK;
}

eng_status eng_detokenize(const eng_vocab *v, const int32_t *ids, size_t n, bool remove_special,
                          bool unparse_special, char *buf, size_t cap, size_t *n_out)
{
    if (!v || !n_out || (!ids && n) || (!buf && cap)) return ENG_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= v->n) return ENG_EINVAL;
    bool remove_space = v->add_space_prefix;
    if (remove_special && v->add_bos && n > 0 && ids[0] == v->bos) {
        remove_space = false;
        n--;
        ids++;
    }
    if (remove_special && v->add_eos && n > 0 && ids[n - 1] == v->eos) n--;
    sbuf b = {0};
    for (size_t i = 0; i < n; i++) {
        piece(v, ids[i], unparse_special, remove_space, &b);
        remove_space = false;
    }
    if (b.oom) {
        free(b.d);
        return ENG_ENOMEM;
    }
    size_t total = b.n;
    char *text = b.d;
    if (v->clean_spaces && total) {
        /* 1: " ?", " !", " .", " ," lose the space */
        size_t t1 = total;
        total = 1;
        for (size_t i = 1; i < t1; i++) {
            char x = text[i];
            if (text[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ','))
                total--;
            text[total++] = x;
        }
        /* 2: " ' " -> "'" */
        size_t t2 = total;
        total = t2 ? 1 : 0;
        for (size_t i = 1; i < t2; i++) {
            char x = text[i];
            if (x == '\'' && i + 1 < t2 && text[i - 1] == ' ' && text[i + 1] == ' ') {
                total--;
                text[++i] = '\0';
            }
            text[total++] = x;
        }
        /* 3: " 's", " 'm", " 're", " 've" lose the space */
        size_t t3 = total;
        total = t3 ? 1 : 0;
        for (size_t i = 1; i < t3; i++) {
            char x = text[i];
            if (text[i - 1] == ' ' && x == '\'' && i + 1 < t3) {
                char x1 = text[i + 1];
                if (x1 == 's' || x1 == 'm') {
                    total--;
                } else if (x1 != 't' && x1 != 'd' && i + 2 < t3) {
                    char x2 = text[i + 2];
                    if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) total--;
                }
            }
            text[total++] = x;
        }
    }
    *n_out = total;
    if (total > cap) {
        free(b.d);
        return ENG_ERANGE;
    }
    if (total) memcpy(buf, text, total);
    free(b.d);
    return ENG_OK;
}

/* ------------------------------------------------------------------------ */
/* accessors                                                                 */
/* ------------------------------------------------------------------------ */

eng_vocab_kind eng_vocab_type(const eng_vocab *v) { return v ? v->kind : ENG_VOCAB_SPM; }
int32_t eng_vocab_n_tokens(const eng_vocab *v) { return v ? v->n : 0; }
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
    return v->attr[id] & ATTR_PUBLIC;
}

const char *eng_vocab_text(const eng_vocab *v, int32_t id)
{
    if (!v || id < 0 || id >= v->n) return NULL;
    return tok_text(v, id);
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
/* loading                                                                   */
/* ------------------------------------------------------------------------ */

static bool str_is(eng__str s, const char *z) { return s.len == strlen(z) && memcmp(s.ptr, z, s.len) == 0; }

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

static void set_special(const eng__gguf *g, const eng_vocab *v, const char *key, int32_t *id)
{
    const eng__gguf_kv *kv = eng__gguf_find(g, key);
    if (!kv) return;
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

/* first token among texts[] (in list order) present in the vocab, or -1 */
static int32_t find_first(const eng_vocab *v, const char *const *texts)
{
    for (size_t i = 0; texts[i]; i++) {
        int32_t id = lookup(v, texts[i], strlen(texts[i]));
        if (id >= 0) return id;
    }
    return -1;
}

static void autodetect(eng_vocab *v, int32_t *slot, const char *const *texts)
{
    if (*slot >= 0) return;
    int32_t id = find_first(v, texts);
    if (id < 0) return;
    *slot = id;
    if (!(v->attr[id] & ENG_TOKEN_CONTROL)) {
        eng__log(ENG_LOG_DEBUG, "tokenizer: token %d '%s' treated as a control token", id, tok_text(v, id));
        v->attr[id] |= ENG_TOKEN_CONTROL;
    }
}

eng_status eng__vocab_from_gguf(const eng__gguf *g, eng_vocab **out, char *err, size_t errlen)
{
    if (!g || !out) return ENG_EINVAL;
    *out = NULL;
    if (err && errlen) err[0] = 0;
    eng_status st = ENG_EFORMAT;
    eng__str *strs = NULL;
    eng_vocab *v = eng__calloc(1, sizeof *v);
    if (!v) goto nomem;

    eng__str model;
    if (!eng__gguf_get_str(g, "tokenizer.ggml.model", &model)) {
        eng__errf(err, errlen, "tokenizer.ggml.model is missing: the file has no tokenizer");
        goto fail;
    }
    if (str_is(model, "llama")) {
        v->kind = ENG_VOCAB_SPM;
    } else if (str_is(model, "gpt2")) {
        v->kind = ENG_VOCAB_BPE;
    } else {
        eng__errf(err, errlen,
                  "tokenizer model '%.*s' is not supported (supported: 'llama' SentencePiece, 'gpt2' byte-level BPE)",
                  (int)(model.len > 64 ? 64 : model.len), model.ptr);
        st = ENG_EUNSUPPORTED;
        goto fail;
    }

    bool bad;
    const eng__gguf_kv *ktok = find_arr(g, "tokenizer.ggml.tokens", true, err, errlen, &bad);
    if (!ktok) {
        if (!bad) eng__errf(err, errlen, "tokenizer.ggml.tokens is missing");
        goto fail;
    }
    if (ktok->n == 0 || ktok->n > INT32_MAX / 2) {
        eng__errf(err, errlen, "tokenizer.ggml.tokens has an invalid count %llu", (unsigned long long)ktok->n);
        goto fail;
    }
    v->n = (int32_t)ktok->n;
    size_t n = (size_t)v->n;
    const eng__gguf_kv *kscore = find_arr(g, "tokenizer.ggml.scores", false, err, errlen, &bad);
    if (bad) goto fail;
    const eng__gguf_kv *ktype = find_arr(g, "tokenizer.ggml.token_type", false, err, errlen, &bad);
    if (bad) goto fail;
    if (kscore && kscore->n != ktok->n) {
        eng__errf(err, errlen, "tokenizer.ggml.scores has %llu entries but there are %d tokens",
                  (unsigned long long)kscore->n, v->n);
        goto fail;
    }
    if (ktype && ktype->n != ktok->n) {
        eng__errf(err, errlen, "tokenizer.ggml.token_type has %llu entries but there are %d tokens",
                  (unsigned long long)ktype->n, v->n);
        goto fail;
    }

    strs = eng__malloc(n * sizeof *strs);
    v->off = eng__malloc(n * sizeof *v->off);
    v->len = eng__malloc(n * sizeof *v->len);
    v->score = eng__malloc(n * sizeof *v->score);
    v->attr = eng__malloc(n * sizeof *v->attr);
    if (!strs || !v->off || !v->len || !v->score || !v->attr) goto nomem;
    if (eng__gguf_arr_strings(ktok, strs) != ENG_OK) {
        eng__errf(err, errlen, "tokenizer.ggml.tokens could not be read");
        goto fail;
    }
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (strs[i].len > UINT32_MAX / 2) {
            eng__errf(err, errlen, "token %zu is too long (%llu bytes)", i, (unsigned long long)strs[i].len);
            goto fail;
        }
        total += (strs[i].len ? strs[i].len : 24) + 1;
    }
    v->blob = eng__malloc(total);
    if (!v->blob) goto nomem;
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
        pos += v->len[i] + 1;
        v->score[i] = kscore ? (float)eng__gguf_arr_f64(kscore, i) : 0.0f;
        int64_t tt = ktype ? eng__gguf_arr_i64(ktype, i) : 1;
        switch (tt) {
        case 1: v->attr[i] = ENG_TOKEN_NORMAL; break;
        case 2: v->attr[i] = ENG_TOKEN_UNKNOWN; break;
        case 3: v->attr[i] = ENG_TOKEN_CONTROL; break;
        case 4: v->attr[i] = ENG_TOKEN_USER_DEFINED; break;
        case 5: v->attr[i] = ENG_TOKEN_UNUSED; break;
        case 6: v->attr[i] = ENG_TOKEN_BYTE; break;
        default: v->attr[i] = 0; break;
        }
    }
    free(strs);
    strs = NULL;

    /* text -> id (a duplicate text maps to its last id, as in llama.cpp) */
    size_t cap = pow2_at_least(n * 2);
    v->ht = eng__malloc(cap * sizeof *v->ht);
    if (!v->ht) goto nomem;
    memset(v->ht, 0xFF, cap * sizeof *v->ht);
    v->ht_mask = cap - 1;
    for (size_t i = 0; i < n; i++) {
        const char *t = tok_text(v, (int32_t)i);
        size_t h = (size_t)fnv(FNV0, t, v->len[i]) & v->ht_mask;
        for (;;) {
            int32_t id = v->ht[h];
            if (id < 0) {
                v->ht[h] = (int32_t)i;
                break;
            }
            if (v->len[id] == v->len[i] && memcmp(tok_text(v, id), t, v->len[i]) == 0) {
                v->ht[h] = (int32_t)i;
                break;
            }
            h = (h + 1) & v->ht_mask;
        }
    }

    /* merges */
    if (v->kind == ENG_VOCAB_BPE) {
        const eng__gguf_kv *km = find_arr(g, "tokenizer.ggml.merges", true, err, errlen, &bad);
        if (!km) {
            if (!bad) eng__errf(err, errlen, "tokenizer.ggml.merges is missing (required by the 'gpt2' tokenizer)");
            goto fail;
        }
        if (km->n > INT32_MAX / 4) {
            eng__errf(err, errlen, "tokenizer.ggml.merges has too many entries");
            goto fail;
        }
        size_t nm = (size_t)km->n;
        strs = eng__malloc((nm ? nm : 1) * sizeof *strs);
        if (!strs) goto nomem;
        if (eng__gguf_arr_strings(km, strs) != ENG_OK) {
            eng__errf(err, errlen, "tokenizer.ggml.merges could not be read");
            goto fail;
        }
        size_t mt = 1;
        for (size_t i = 0; i < nm; i++) {
            if (strs[i].len > UINT32_MAX / 2) {
                eng__errf(err, errlen, "merge %zu is too long", i);
                goto fail;
            }
            mt += strs[i].len;
        }
        v->mblob = eng__malloc(mt);
        v->moff = eng__malloc((nm ? nm : 1) * sizeof *v->moff);
        v->mll = eng__malloc((nm ? nm : 1) * sizeof *v->mll);
        v->mrl = eng__malloc((nm ? nm : 1) * sizeof *v->mrl);
        size_t mcap = pow2_at_least(nm * 2);
        v->mht = eng__malloc(mcap * sizeof *v->mht);
        if (!v->mblob || !v->moff || !v->mll || !v->mrl || !v->mht) goto nomem;
        memset(v->mht, 0xFF, mcap * sizeof *v->mht);
        v->mht_mask = mcap - 1;
        size_t mp = 0;
        for (size_t i = 0; i < nm; i++) {
            const char *s = strs[i].ptr;
            size_t sl = (size_t)strs[i].len, sp = 0;
            /* llama.cpp splits at the first space after the first byte */
            for (sp = 1; sp < sl && s[sp] != ' '; sp++) {
            }
            if (sl < 3 || sp >= sl - 1) {
                eng__errf(err, errlen, "merge %zu ('%.*s') is not of the form 'left right'", i,
                          (int)(sl > 64 ? 64 : sl), s);
                goto fail;
            }
            const char *l = s, *r = s + sp + 1;
            size_t ll = sp, rl = sl - sp - 1;
            if (lookup(v, l, ll) < 0 || lookup(v, r, rl) < 0) {
                eng__errf(err, errlen, "merge %zu ('%.*s') names a token that is not in the vocabulary", i,
                          (int)(sl > 64 ? 64 : sl), s);
                goto fail;
            }
            v->moff[i] = mp;
            v->mll[i] = (uint32_t)ll;
            v->mrl[i] = (uint32_t)rl;
            memcpy(v->mblob + mp, l, ll);
            memcpy(v->mblob + mp + ll, r, rl);
            mp += ll + rl;
            size_t h = (size_t)merge_hash(l, ll, r, rl) & v->mht_mask;
            for (;;) {
                int32_t k = v->mht[h];
                if (k < 0) {
                    v->mht[h] = (int32_t)i;
                    break;
                }
                if (v->mll[k] == ll && v->mrl[k] == rl &&
                    memcmp(v->mblob + v->moff[k], v->mblob + v->moff[i], ll + rl) == 0)
                    break; /* duplicate: the first rank stays */
                h = (h + 1) & v->mht_mask;
            }
        }
        v->n_merges = (int32_t)nm;
        free(strs);
        strs = NULL;
    }

    /* defaults, then the file's special ids */
    v->eot = v->eom = v->pad = v->sep = v->mask = -1;
    v->fim_pre = v->fim_suf = v->fim_mid = v->fim_pad = v->fim_rep = v->fim_sep = -1;
    if (v->kind == ENG_VOCAB_SPM) {
        v->bos = 1;
        v->eos = 2;
        v->unk = 0;
        v->add_space_prefix = true;
        v->clean_spaces = false;
        v->add_bos = true;
        v->add_eos = false;
        v->pre = PRE_DEFAULT;
        v->pre_name = "default";
    } else {
        v->bos = 11;
        v->eos = 11;
        v->unk = -1;
        v->add_space_prefix = false;
        v->clean_spaces = true;
        v->add_bos = false;
        v->add_eos = false;
        eng__str pre;
        int found = -1;
        if (!eng__gguf_get_str(g, "tokenizer.ggml.pre", &pre)) {
            eng__log(ENG_LOG_WARN, "tokenizer: tokenizer.ggml.pre is missing, using 'default'");
            found = 0;
        } else {
            for (size_t i = 0; i < sizeof pre_names / sizeof pre_names[0]; i++)
                if (str_is(pre, pre_names[i].gguf)) found = (int)i;
            if (found < 0) {
                eng__log(ENG_LOG_WARN,
                         "tokenizer: unknown pre-tokenizer '%.*s', using the 'default' pre-tokenizer "
                         "(tokenization may differ from the model's)",
                         (int)(pre.len > 64 ? 64 : pre.len), pre.ptr);
                found = 0;
            }
        }
        v->pre = pre_names[found].pre;
        v->clean_spaces = pre_names[found].clean_spaces;
        v->ignore_merges = pre_names[found].ignore_merges;
        v->add_bos = pre_names[found].add_bos;
        for (size_t i = 0; i < sizeof pre_exprs / sizeof pre_exprs[0]; i++)
            if (pre_exprs[i].pre == v->pre) v->pre_name = pre_exprs[i].name;
    }
    if (v->bos >= v->n) v->bos = -1;
    if (v->eos >= v->n) v->eos = -1;
    if (v->unk >= v->n) v->unk = -1;
    set_special(g, v, "tokenizer.ggml.bos_token_id", &v->bos);
    set_special(g, v, "tokenizer.ggml.eos_token_id", &v->eos);
    set_special(g, v, "tokenizer.ggml.eot_token_id", &v->eot);
    set_special(g, v, "tokenizer.ggml.eom_token_id", &v->eom);
    set_special(g, v, "tokenizer.ggml.unknown_token_id", &v->unk);
    set_special(g, v, "tokenizer.ggml.seperator_token_id", &v->sep);
    set_special(g, v, "tokenizer.ggml.padding_token_id", &v->pad);
    set_special(g, v, "tokenizer.ggml.mask_token_id", &v->mask);
    set_special(g, v, "tokenizer.ggml.fim_pre_token_id", &v->fim_pre);
    set_special(g, v, "tokenizer.ggml.fim_suf_token_id", &v->fim_suf);
    set_special(g, v, "tokenizer.ggml.fim_mid_token_id", &v->fim_mid);
    set_special(g, v, "tokenizer.ggml.fim_pad_token_id", &v->fim_pad);
    set_special(g, v, "tokenizer.ggml.fim_rep_token_id", &v->fim_rep);
    set_special(g, v, "tokenizer.ggml.fim_sep_token_id", &v->fim_sep);
    bool bv;
    if (eng__gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &bv)) v->add_bos = bv;
    if (eng__gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &bv)) v->add_eos = bv;
    if (eng__gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &bv)) v->add_space_prefix = bv;

    /* special tokens recognised by their text (llama.cpp does the same) */
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
        static const char *const frep[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>",
                                            "<reponame>", NULL};
        static const char *const fsep[] = {"<|file_sep|>", NULL};
        static const char *const eogt[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
                                            "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>",
                                            "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
                                            "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
                                            "<|tool_response>", NULL};
        autodetect(v, &v->eot, eot);
        autodetect(v, &v->eom, eom);
        autodetect(v, &v->fim_pre, fpre);
        autodetect(v, &v->fim_suf, fsuf);
        autodetect(v, &v->fim_mid, fmid);
        autodetect(v, &v->fim_pad, fpad);
        autodetect(v, &v->fim_rep, frep);
        autodetect(v, &v->fim_sep, fsep);

        /* control tokens named "...unused..." are unused */
        for (size_t i = 0; i < n; i++)
            if ((v->attr[i] & ENG_TOKEN_CONTROL) && strstr(tok_text(v, (int32_t)i), "unused"))
                v->attr[i] |= ENG_TOKEN_UNUSED;

        int32_t cand[40];
        size_t nc = 0;
        for (size_t i = 0; eogt[i]; i++) {
            int32_t id = lookup(v, eogt[i], strlen(eogt[i]));
            if (id < 0) continue;
            cand[nc++] = id;
            v->attr[id] |= ENG_TOKEN_CONTROL;
        }
        /* gpt-oss: these always render */
        static const char *const ud[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL};
        for (size_t i = 0; ud[i]; i++) {
            int32_t id = lookup(v, ud[i], strlen(ud[i]));
            if (id >= 0) v->attr[id] = ENG_TOKEN_USER_DEFINED;
        }
        const int32_t more[] = {v->eos, v->eot, v->eom, v->fim_pad, v->fim_rep, v->fim_sep};
        for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
            if (more[i] >= 0) cand[nc++] = more[i];
        /* o200k_harmony / solar-open: <|end|> is not end-of-generation there;
         * gemma4 / paddleocr: neither is </s> */
#define IN_EOG(z) (lookup(v, z, strlen(z)) >= 0)
        int32_t drop = -1;
        uint32_t drop_attr = 0;
        if (IN_EOG("<|end|>") && ((IN_EOG("<|return|>") && IN_EOG("<|call|>")) ||
                                  (IN_EOG("<|calls|>") && IN_EOG("<|flush|>")))) {
            drop = lookup(v, "<|end|>", 7);
            drop_attr = ENG_TOKEN_USER_DEFINED;
        }
        if (IN_EOG("<|tool_response>") && IN_EOG("</s>")) {
            int32_t id = lookup(v, "</s>", 4);
            v->attr[id] = ENG_TOKEN_NORMAL;
            for (size_t i = 0; i < nc; i++)
                if (cand[i] == id) cand[i] = -1;
        }
#undef IN_EOG
        if (drop >= 0) {
            v->attr[drop] = drop_attr;
            for (size_t i = 0; i < nc; i++)
                if (cand[i] == drop) cand[i] = -1;
        }
        qsort(cand, nc, sizeof cand[0], cmp_i32);
        v->eog = eng__malloc((nc ? nc : 1) * sizeof *v->eog);
        if (!v->eog) goto nomem;
        for (size_t i = 0; i < nc; i++)
            if (cand[i] >= 0 && (v->n_eog == 0 || v->eog[v->n_eog - 1] != cand[i])) v->eog[v->n_eog++] = cand[i];
    }

    /* special-token cache: longest text first */
    {
        size_t ns = 0;
        for (size_t i = 0; i < n; i++)
            if (v->attr[i] & (ENG_TOKEN_CONTROL | ENG_TOKEN_USER_DEFINED | ENG_TOKEN_UNKNOWN)) ns++;
        v->special = eng__malloc((ns ? ns : 1) * sizeof *v->special);
        uint64_t *keys = eng__malloc((ns ? ns : 1) * sizeof *keys);
        if (!v->special || !keys) {
            free(keys);
            goto nomem;
        }
        for (size_t i = 0; i < n; i++)
            if (v->attr[i] & (ENG_TOKEN_CONTROL | ENG_TOKEN_USER_DEFINED | ENG_TOKEN_UNKNOWN))
                keys[v->n_special++] = ((uint64_t)(UINT32_MAX - v->len[i]) << 32) | (uint64_t)i;
        qsort(keys, v->n_special, sizeof *keys, cmp_u64);
        for (size_t i = 0; i < v->n_special; i++) v->special[i] = (int32_t)(keys[i] & 0xFFFFFFFFu);
        free(keys);
    }

    /* per-model token attributes (llama.cpp: Phi-3 strips spaces right of special tokens) */
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
        if (strstr(lname, "phi-3") || strstr(lname, "phi3")) {
            for (size_t i = 0; i < v->n_special; i++) v->attr[v->special[i]] |= ATTR_RSTRIP;
            int32_t id = lookup(v, "</s>", 4);
            if (id >= 0) v->attr[id] |= ATTR_RSTRIP;
            static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
            for (size_t i = 0; i < 3; i++) {
                id = lookup(v, keep[i], strlen(keep[i]));
                if (id >= 0) v->attr[id] &= ~ATTR_RSTRIP;
            }
        }
    }

    b2u_init(v);
    /* SPM byte fallback: <0xNN>, else the byte itself */
    for (int b = 0; b < 256; b++) {
        char buf[8];
        snprintf(buf, sizeof buf, "<0x%02X>", b);
        int32_t id = lookup(v, buf, 6);
        if (id < 0) {
            char c = (char)b;
            id = lookup(v, &c, 1);
        }
        v->byte_tok[b] = id;
    }
    if (v->kind == ENG_VOCAB_SPM && v->byte_tok[0x41] < 0 && v->unk < 0)
        eng__log(ENG_LOG_WARN, "tokenizer: no byte-fallback tokens and no unknown token");

    *out = v;
    return ENG_OK;
nomem:
    st = ENG_ENOMEM;
    eng__errf(err, errlen, "out of memory loading the tokenizer");
fail:
    free(strs);
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
