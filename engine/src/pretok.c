/*
 * pretok.c - the pre-tokenizers of byte-level BPE vocabularies: text is
 * decoded to code points and split into pieces by the regexes llama.cpp
 * associates with each tokenizer.ggml.pre name, before any piece is merged.
 * Each regex is a hand-written matcher (match_expr); a splitter applies its
 * regexes in turn, each one splitting every piece the previous one left.
 * Also the table of tokenizer.ggml.pre names and their per-name settings.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

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

/* each splitter's regexes, applied in this order */
static const struct {
    eng__pre pre;
    const char *name;
    int n;
    int rx[6];
} pre_exprs[] = {
    {ENG__PRE_DEFAULT, "default", 4, {RX_PUNCT_DEF, RX_GPT2, RX_NPLUS, RX_DIGIT3}},
    {ENG__PRE_LLAMA3, "llama3", 1, {RX_LLAMA3}},
    {ENG__PRE_QWEN2, "qwen2", 1, {RX_QWEN2}},
    {ENG__PRE_DSLLM, "deepseek-llm", 6,
     {RX_NEWLINE, RX_DS_LETTERS, RX_DS_PUNCT, RX_WS_END, RX_CJK, RX_NPLUS}},
    {ENG__PRE_DSCODER, "deepseek-coder", 5, {RX_NEWLINE, RX_SP_LETTERS, RX_SP_PUNCT, RX_CJK, RX_N1}},
    {ENG__PRE_FALCON, "falcon", 3, {RX_PUNCT_FALCON, RX_GPT2, RX_DIGIT3}},
    {ENG__PRE_STARCODER, "starcoder", 2, {RX_N1, RX_GPT2}},
    {ENG__PRE_GPT2, "gpt2", 1, {RX_GPT2}},
};

/* tokenizer.ggml.pre names -> splitter and llama.cpp's per-name flags */
static const eng__pre_name pre_names[] = {
    {"default", ENG__PRE_DEFAULT, true, false, false},
    {"llama3", ENG__PRE_LLAMA3, true, true, true},
    {"llama-v3", ENG__PRE_LLAMA3, true, true, true},
    {"llama-bpe", ENG__PRE_LLAMA3, true, true, true},
    {"falcon3", ENG__PRE_LLAMA3, true, true, true},
    {"falcon-h1", ENG__PRE_LLAMA3, true, true, true},
    {"pixtral", ENG__PRE_LLAMA3, true, true, true},
    {"midm-2.0", ENG__PRE_LLAMA3, true, true, true},
    {"lfm2", ENG__PRE_LLAMA3, true, true, true},
    {"dbrx", ENG__PRE_LLAMA3, true, false, false},
    {"smaug-bpe", ENG__PRE_LLAMA3, true, false, false},
    {"deepseek-llm", ENG__PRE_DSLLM, false, false, false},
    {"deepseek-coder", ENG__PRE_DSCODER, false, false, false},
    {"falcon", ENG__PRE_FALCON, true, false, false},
    {"mpt", ENG__PRE_GPT2, true, false, false},
    {"olmo", ENG__PRE_GPT2, true, false, false},
    {"jais", ENG__PRE_GPT2, true, false, false},
    {"trillion", ENG__PRE_GPT2, true, false, false},
    {"gpt-2", ENG__PRE_GPT2, true, false, false},
    {"gpt2", ENG__PRE_GPT2, true, false, false},
    {"gpt-neox", ENG__PRE_GPT2, true, false, false},
    {"phi-2", ENG__PRE_GPT2, true, false, false},
    {"jina-es", ENG__PRE_GPT2, true, false, false},
    {"jina-de", ENG__PRE_GPT2, true, false, false},
    {"jina-v2-es", ENG__PRE_GPT2, true, false, false},
    {"jina-v2-de", ENG__PRE_GPT2, true, false, false},
    {"jina-v1-en", ENG__PRE_GPT2, true, false, false},
    {"jina-v2-code", ENG__PRE_GPT2, true, false, false},
    {"roberta-bpe", ENG__PRE_GPT2, true, false, false},
    {"gigachat", ENG__PRE_GPT2, true, false, false},
    {"a.x-4.0", ENG__PRE_GPT2, true, false, false},
    {"mellum", ENG__PRE_GPT2, true, false, false},
    {"starcoder", ENG__PRE_STARCODER, true, false, false},
    {"refact", ENG__PRE_STARCODER, true, false, false},
    {"command-r", ENG__PRE_STARCODER, false, false, false},
    {"smollm", ENG__PRE_STARCODER, false, false, false},
    {"codeshell", ENG__PRE_STARCODER, true, false, false},
    {"exaone", ENG__PRE_STARCODER, true, false, false},
    {"minerva-7b", ENG__PRE_STARCODER, true, false, false},
    {"qwen2", ENG__PRE_QWEN2, false, false, false},
    {"deepseek-r1-qwen", ENG__PRE_QWEN2, false, false, false},
    {"megrez", ENG__PRE_QWEN2, true, false, false},
    {"stablelm2", ENG__PRE_QWEN2, true, false, false},
};

const eng__pre_name *eng__pre_find(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof pre_names / sizeof pre_names[0]; i++)
        if (strlen(pre_names[i].gguf) == len && memcmp(pre_names[i].gguf, name, len) == 0) return &pre_names[i];
    return NULL;
}

const char *eng__pre_label(eng__pre pre)
{
    for (size_t i = 0; i < sizeof pre_exprs / sizeof pre_exprs[0]; i++)
        if (pre_exprs[i].pre == pre) return pre_exprs[i].name;
    return "default";
}

/* ------------------------------------------------------------------------ */
/* regex matchers over code points                                          */
/* ------------------------------------------------------------------------ */

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


/* ------------------------------------------------------------------------ */
/* splitting                                                                 */
/* ------------------------------------------------------------------------ */

/* Split every piece of p->seg[0 .. nseg) by regex rx into p->seg2
 * (llama.cpp: matches and the unmatched text between them are pieces);
 * *nout receives the new count. false when out of memory. */
static bool split_expr(eng__pretok *p, const rxctx *x, int rx, size_t nseg, size_t *nout)
{
    size_t no = 0, start = 0;
    for (size_t k = 0; k < nseg; k++) {
        size_t end = start + p->seg[k], pos = start, last = start;
        while (pos < end) {
            size_t m = match_expr(rx, x, pos, end);
            if (m == 0) {
                pos++;
                continue;
            }
            void *q = p->seg2;
            if (!eng__grow(&q, &p->seg2_cap, no + 2, sizeof(size_t))) return false;
            p->seg2 = q;
            if (pos > last) p->seg2[no++] = pos - last;
            p->seg2[no++] = m;
            pos += m;
            last = pos;
        }
        if (last < end) {
            void *q = p->seg2;
            if (!eng__grow(&q, &p->seg2_cap, no + 1, sizeof(size_t))) return false;
            p->seg2 = q;
            p->seg2[no++] = end - last;
        }
        start = end;
    }
    *nout = no;
    return true;
}

/* Room for n code points (and one past the end) in the per-code-point arrays. */
static bool reserve_text(eng__pretok *p, size_t n)
{
    void *q = p->cp;
    if (!eng__grow(&q, &p->cp_cap, n + 1, sizeof(uint32_t))) return false;
    p->cp = q;
    q = p->cls;
    if (!eng__grow(&q, &p->cls_cap, n + 1, 1)) return false;
    p->cls = q;
    q = p->wsend;
    if (!eng__grow(&q, &p->wsend_cap, n + 1, sizeof(uint32_t))) return false;
    p->wsend = q;
    q = p->prevnl;
    if (!eng__grow(&q, &p->prevnl_cap, n + 1, sizeof(int64_t))) return false;
    p->prevnl = q;
    q = p->seg;
    if (!eng__grow(&q, &p->seg_cap, 1, sizeof(size_t))) return false;
    p->seg = q;
    return true;
}

/* Decode text into p->cp / p->cls and precompute the white-space run ends
 * and the last newline before each position; returns the code point count. */
static size_t decode(eng__pretok *p, const char *text, size_t n)
{
    size_t nc = 0;
    for (size_t i = 0; i < n;) {
        uint32_t c = eng__utf8_next((const uint8_t *)text, n, &i);
        p->cp[nc] = c;
        p->cls[nc] = (uint8_t)(eng__ucat(c) | (eng__uisspace(c) ? WSBIT : 0));
        nc++;
    }
    p->wsend[nc] = (uint32_t)nc;
    for (size_t i = nc; i-- > 0;) p->wsend[i] = (p->cls[i] & WSBIT) ? p->wsend[i + 1] : (uint32_t)i;
    int64_t last = -1;
    for (size_t i = 0; i <= nc; i++) {
        p->prevnl[i] = last;
        if (i < nc && is_nl(p->cp[i])) last = (int64_t)i;
    }
    return nc;
}

bool eng__pretok_split(eng__pretok *p, eng__pre pre, const char *text, size_t n, size_t *nseg_out)
{
    if (!reserve_text(p, n)) return false;
    p->seg[0] = decode(p, text, n);
    size_t nseg = 1;
    rxctx x = {p->cp, p->cls, p->wsend, p->prevnl};
    const int *rx = NULL;
    int nrx = 0;
    for (size_t k = 0; k < sizeof pre_exprs / sizeof pre_exprs[0]; k++)
        if (pre_exprs[k].pre == pre) {
            rx = pre_exprs[k].rx;
            nrx = pre_exprs[k].n;
        }
    for (int r = 0; r < nrx; r++) {
        size_t no;
        if (!split_expr(p, &x, rx[r], nseg, &no)) return false;
        size_t *t = p->seg;
        p->seg = p->seg2;
        p->seg2 = t;
        size_t tc = p->seg_cap;
        p->seg_cap = p->seg2_cap;
        p->seg2_cap = tc;
        nseg = no;
    }
    *nseg_out = nseg;
    return true;
}

void eng__pretok_free(eng__pretok *p)
{
    free(p->cp);
    free(p->cls);
    free(p->wsend);
    free(p->prevnl);
    free(p->seg);
    free(p->seg2);
}

eng_status eng__pretokenize(const char *pre, const char *text, size_t len, size_t **out, size_t *n)
{
    const eng__pre_name *pn = pre ? eng__pre_find(pre, strlen(pre)) : NULL;
    if (!pn || !out || !n || (!text && len)) return ENG_EINVAL;
    *out = NULL;
    *n = 0;
    if (len == 0) return ENG_OK;
    eng__pretok p = {0};
    size_t nseg = 0;
    if (!eng__pretok_split(&p, pn->pre, text, len, &nseg)) {
        eng__pretok_free(&p);
        return ENG_ENOMEM;
    }
    *out = p.seg;
    *n = nseg;
    p.seg = NULL;
    eng__pretok_free(&p);
    return ENG_OK;
}
