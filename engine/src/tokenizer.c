/*
 * tokenizer.c - tokenization and detokenization with llama.cpp's behaviour,
 * over a vocabulary built by vocab.c:
 *
 *  - special tokens: control / unknown tokens are recognised in the text only
 *    with parse_special; user-defined tokens always (as llama.cpp does). Longer
 *    token texts are matched first, over the whole text.
 *  - "llama" (SPM): each stretch of text between special tokens (with a
 *    leading space when add_space_prefix, spaces escaped to U+2581) is merged
 *    as one word, a pair ranked by the score of the token it forms; leftover
 *    units that are no token fall back to <0xNN> byte tokens.
 *  - "gpt2" (byte-level BPE): the text is split by the pre-tokenizer
 *    (pretok.c), each piece is mapped through the GPT-2 byte-to-unicode table
 *    and merged, a pair ranked by its merge rank.
 *
 * Both merge with one loop (merge_word): the word starts as its UTF-8 units,
 * and the best-ranked adjacent pair is merged until none is left (ties: the
 * leftmost). A merge_rules value says how a pair is ranked and which tokens
 * stand for the bytes of a final unit that is no token.
 */
#include <stdlib.h>
#include <string.h>

#include "vocab.h"

/* ------------------------------------------------------------------------ */
/* growable buffers                                                         */
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

static bool c_isspace(unsigned char c) { return c == ' ' || (c >= 9 && c <= 13); }

/* U+2581, SentencePiece's escaped space */
static const char SPM_SPACE[] = "\xE2\x96\x81";

/* ------------------------------------------------------------------------ */
/* merge queue: min-heap on (key, left)                                      */
/* ------------------------------------------------------------------------ */

typedef struct {
    double key; /* see merge_rules.pair_key */
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

/* ------------------------------------------------------------------------ */
/* the merge loop                                                            */
/* ------------------------------------------------------------------------ */

/* A run of the word: bytes [start, start + n), in a list of live symbols.
 * A symbol absorbed by its left neighbour has n == 0. */
typedef struct {
    int32_t prev, next;
    uint32_t start, n;
} symbol;

/* scratch shared by one eng_tokenize call */
typedef struct {
    symbol *sym;
    size_t sym_cap;
    heap q;
    eng__pretok pt;
    eng__buf word; /* the word being merged: SPM-escaped text or BPE byte-mapped piece */
    bool oom;
} scratch;

static void scratch_free(scratch *s)
{
    free(s->sym);
    free(s->q.d);
    eng__pretok_free(&s->pt);
    eng__buf_free(&s->word);
}

typedef struct {
    /* The queue key of merging the adjacent symbols at pair (ln bytes, then
     * rn): lower keys merge first. false when the pair does not merge. */
    bool (*pair_key)(const eng_vocab *v, const char *pair, uint32_t ln, uint32_t rn, double *key);
    /* The token for one byte of a final symbol that is no token, or -1 (the
     * byte is dropped). */
    int32_t (*byte_token)(const eng_vocab *v, uint8_t c);
} merge_rules;

static void queue_pair(const eng_vocab *v, const merge_rules *r, scratch *s, const char *w, int32_t l, int32_t rt)
{
    if (l < 0 || rt < 0) return;
    const symbol *L = &s->sym[l], *R = &s->sym[rt];
    double key;
    if (r->pair_key(v, w + L->start, L->n, R->n, &key)) heap_push(&s->q, (bigram){key, l, rt, L->n, R->n});
}

/* Split w (n bytes) into UTF-8 units; returns false when out of memory. */
static bool init_symbols(scratch *s, const char *w, size_t n)
{
    size_t nsym = 0;
    for (size_t off = 0; off < n;) {
        void *p = s->sym;
        bool ok = eng__grow(&p, &s->sym_cap, nsym + 1, sizeof(symbol));
        s->sym = p;
        if (!ok) return false;
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
    return true;
}

/* Merge the word w (n bytes, n < 2^32) under rules r and append the tokens
 * of its final symbols to out. Sets s->oom when out of memory. */
static void merge_word(const eng_vocab *v, const merge_rules *r, scratch *s, const char *w, size_t n, ivec *out)
{
    if (n == 0) return;
    if (!init_symbols(s, w, n)) {
        s->oom = true;
        return;
    }
    s->q.n = 0;
    for (int32_t i = 0; s->sym[i].next >= 0; i++) queue_pair(v, r, s, w, i, i + 1);
    while (s->q.n) {
        bigram b = heap_pop(&s->q);
        symbol *L = &s->sym[b.left], *R = &s->sym[b.right];
        /* Symbols only grow until absorbed (n = 0), so a pair whose sides
         * still have their queued lengths is still adjacent and current. */
        if (L->n != b.ln || R->n != b.rn) continue;
        L->n += R->n;
        R->n = 0;
        L->next = R->next;
        if (R->next >= 0) s->sym[R->next].prev = b.left;
        queue_pair(v, r, s, w, L->prev, b.left);
        queue_pair(v, r, s, w, b.left, L->next);
    }
    if (s->q.oom) s->oom = true;
    for (int32_t i = 0; i != -1; i = s->sym[i].next) {
        const symbol *y = &s->sym[i];
        int32_t id = eng__vocab_find(v, w + y->start, y->n);
        if (id >= 0) {
            iv_push(out, id);
            continue;
        }
        for (uint32_t j = 0; j < y->n; j++) {
            int32_t t = r->byte_token(v, (uint8_t)w[y->start + j]);
            if (t >= 0) iv_push(out, t);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* SPM                                                                       */
/* ------------------------------------------------------------------------ */

/* a pair merges when it forms a token; the best score first */
static bool spm_pair_key(const eng_vocab *v, const char *pair, uint32_t ln, uint32_t rn, double *key)
{
    int32_t id = eng__vocab_find(v, pair, (size_t)ln + rn);
    if (id < 0) return false;
    *key = -(double)v->score[id];
    return true;
}

/* byte fallback: <0xNN>, else the unknown token */
static int32_t spm_byte_token(const eng_vocab *v, uint8_t c) { return v->byte_tok[c] >= 0 ? v->byte_tok[c] : v->unk; }

static const merge_rules spm_rules = {spm_pair_key, spm_byte_token};

/* A stretch of text between special tokens: spaces escaped (and one
 * prepended when prefix), then merged as one word. */
static eng_status spm_fragment(const eng_vocab *v, scratch *s, const char *p, size_t n, bool prefix, ivec *out)
{
    eng__buf *e = &s->word;
    e->len = 0;
    if (prefix) eng__buf_append(e, SPM_SPACE, 3);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == ' ') {
            eng__buf_append(e, p + run, i - run);
            eng__buf_append(e, SPM_SPACE, 3);
            run = i + 1;
        }
    }
    eng__buf_append(e, p + run, n - run);
    if (e->oom) return ENG_ENOMEM;
    if (e->len > UINT32_MAX) return ENG_EINVAL;
    merge_word(v, &spm_rules, s, e->data, e->len, out);
    return ENG_OK;
}

/* ------------------------------------------------------------------------ */
/* byte-level BPE                                                            */
/* ------------------------------------------------------------------------ */

/* a pair merges when it is in the merge list; the lowest rank first */
static bool bpe_pair_key(const eng_vocab *v, const char *pair, uint32_t ln, uint32_t rn, double *key)
{
    int32_t rank = eng__vocab_merge_rank(v, pair, ln, rn);
    if (rank < 0) return false;
    *key = (double)rank;
    return true;
}

/* llama.cpp: each raw byte as a one-byte token, if there is one */
static int32_t bpe_byte_token(const eng_vocab *v, uint8_t c)
{
    char b = (char)c;
    return eng__vocab_find(v, &b, 1);
}

static const merge_rules bpe_rules = {bpe_pair_key, bpe_byte_token};

/* A stretch of text between special tokens: split by the pre-tokenizer,
 * each piece byte-mapped and merged (or, with ignore_merges, taken whole
 * when it is a token). */
static eng_status bpe_fragment(const eng_vocab *v, scratch *s, const char *text, size_t n, ivec *out)
{
    /* byte-mapped words can be up to 2x longer: keep offsets in 32 bits */
    if (n > UINT32_MAX / 8) return ENG_EINVAL;
    size_t nseg;
    if (n == 0) return ENG_OK;
    if (!eng__pretok_split(&s->pt, v->pre, text, n, &nseg)) return ENG_ENOMEM;
    const uint32_t *cp = s->pt.cp;
    for (size_t k = 0, start = 0; k < nseg; start += s->pt.seg[k], k++) {
        eng__buf *w = &s->word;
        w->len = 0;
        for (size_t i = start; i < start + s->pt.seg[k]; i++) {
            uint8_t u[4];
            int l = eng__utf8_put(cp[i], u);
            for (int j = 0; j < l; j++) eng__buf_append(w, v->b2u[u[j]], v->b2u_len[u[j]]);
        }
        if (w->oom) return ENG_ENOMEM;
        int32_t id = v->ignore_merges ? eng__vocab_find(v, w->data, w->len) : -1;
        if (id >= 0)
            iv_push(out, id);
        else
            merge_word(v, &bpe_rules, s, w->data, w->len, out);
        if (s->oom) return ENG_ENOMEM;
    }
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
    if (!eng__grow(&p, &f->cap, f->n + 1, sizeof(frag))) return false;
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
        const char *t = eng__vocab_text(v, id);
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
                    if (a & ENG__TOKEN_LSTRIP)
                        while (ll > 0 && c_isspace((unsigned char)text[off + ll - 1])) ll--;
                    if (ll > 0 && !fv_push(&fb, -1, off, ll)) goto oom;
                }
                if (!fv_push(&fb, id, 0, 0)) goto oom;
                if (mp + tl < off + bl) {
                    size_t ro = mp + tl, rl = bl - (mp - off) - tl;
                    if (a & ENG__TOKEN_RSTRIP)
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
    eng_status st = ENG_OK;
    if (len > 0 && (!fv_push(&fa, -1, 0, len) || !partition(v, text, len, parse_special, &fa))) {
        st = ENG_ENOMEM;
        goto done;
    }
    if (add_special && v->add_bos && v->bos >= 0) iv_push(out, v->bos);
    /* SPM: text at the start or right after a special token gets the space prefix */
    bool after_special = true;
    for (size_t f = 0; f < fa.n; f++) {
        const frag *fr = &fa.d[f];
        if (fr->tok >= 0) {
            iv_push(out, fr->tok);
            after_special = true;
            continue;
        }
        if (v->kind == ENG_VOCAB_SPM)
            st = spm_fragment(v, &s, text + fr->off, fr->len, v->add_space_prefix && after_special, out);
        else
            st = bpe_fragment(v, &s, text + fr->off, fr->len, out);
        if (st == ENG_OK && s.oom) st = ENG_ENOMEM;
        if (st != ENG_OK) goto done;
        after_special = false;
    }
    if (add_special && v->add_eos && v->eos >= 0) iv_push(out, v->eos);
    if (out->oom) st = ENG_ENOMEM;
done:
    free(fa.d);
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

static void copy_lstrip(eng__buf *b, const char *p, size_t n, bool lstrip)
{
    if (lstrip && n && *p == ' ') {
        p++;
        n--;
    }
    eng__buf_append(b, p, n);
}

/* an SPM normal token: U+2581 back to spaces */
static void spm_text_piece(const char *t, size_t n, bool lstrip, eng__buf *b)
{
    size_t start = b->len, run = 0;
    for (size_t i = 0; i + 2 < n;) {
        if (memcmp(t + i, SPM_SPACE, 3) == 0) {
            eng__buf_append(b, t + run, i - run);
            eng__buf_append(b, " ", 1);
            i += 3;
            run = i;
        } else {
            i++;
        }
    }
    eng__buf_append(b, t + run, n - run);
    if (lstrip && !b->oom && b->len > start && b->data[start] == ' ') {
        memmove(b->data + start, b->data + start + 1, b->len - start - 1);
        b->data[--b->len] = 0;
    }
}

/* an SPM byte token: strtol(text + 3, 16) of "<0xNN>" */
static void spm_byte_piece(const char *t, size_t n, bool lstrip, eng__buf *b)
{
    unsigned val = 0;
    for (size_t i = 3; i < n; i++) {
        char c = t[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) break;
        val = (val * 16 + (unsigned)d) & 0xFF;
    }
    char c = (char)val;
    copy_lstrip(b, &c, 1, lstrip);
}

/* a BPE normal token: code points back to bytes through the GPT-2 table */
static void bpe_text_piece(const eng_vocab *v, const char *t, size_t n, bool lstrip, eng__buf *b)
{
    eng__buf d = {0};
    for (size_t i = 0; i < n;) {
        uint32_t cp = eng__utf8_next((const uint8_t *)t, n, &i);
        int32_t byte = cp < 324 ? v->u2b[cp] : -1;
        if (byte >= 0) {
            char c = (char)byte;
            eng__buf_append(&d, &c, 1);
        } else {
            uint8_t u[4];
            int l = eng__utf8_put(cp, u);
            eng__buf_append(&d, "[UNK_BYTE_0x", 12);
            for (int k = 0; k < l; k++) {
                static const char hx[] = "0123456789abcdef";
                char h[2] = {hx[u[k] >> 4], hx[u[k] & 15]};
                eng__buf_append(&d, h, 2);
            }
            eng__buf_append(&d, t, n);
            eng__buf_append(&d, "]", 1);
        }
    }
    if (d.oom)
        b->oom = true;
    else
        copy_lstrip(b, d.data, d.len, lstrip);
    eng__buf_free(&d);
}

/* llama.cpp token_to_piece into b; lstrip removes one leading space. */
static void piece(const eng_vocab *v, int32_t id, bool special, bool lstrip, eng__buf *b)
{
    uint32_t a = v->attr[id];
    const char *t = eng__vocab_text(v, id);
    size_t n = v->len[id];
    if (!special && (a & (ENG_TOKEN_UNKNOWN | ENG_TOKEN_CONTROL))) return;
    if (a & (ENG_TOKEN_UNKNOWN | ENG_TOKEN_CONTROL | ENG_TOKEN_USER_DEFINED))
        copy_lstrip(b, t, n, lstrip);
    else if (v->kind == ENG_VOCAB_SPM && (a & ENG_TOKEN_NORMAL))
        spm_text_piece(t, n, lstrip, b);
    else if (v->kind == ENG_VOCAB_SPM && (a & ENG_TOKEN_BYTE))
        spm_byte_piece(t, n, lstrip, b);
    else if (v->kind == ENG_VOCAB_BPE && (a & ENG_TOKEN_NORMAL))
        bpe_text_piece(v, t, n, lstrip, b);
}

eng_status eng_token_to_piece(const eng_vocab *v, int32_t id, bool special, char *buf, size_t cap,
                              size_t *n_out)
{
    if (!v || !n_out || (!buf && cap) || id < 0 || id >= v->n) return ENG_EINVAL;
    eng__buf b = {0};
    piece(v, id, special, false, &b);
    if (b.oom) {
        eng__buf_free(&b);
        return ENG_ENOMEM;
    }
    *n_out = b.len;
    if (b.len > cap) {
        eng__buf_free(&b);
        return ENG_ERANGE;
    }
    if (b.len) memcpy(buf, b.data, b.len);
    eng__buf_free(&b);
    return ENG_OK;
}

/* llama.cpp's clean_up_tokenization_spaces over text[0 .. total), in place;
 * returns the new length. */
static size_t clean_spaces(char *text, size_t total)
{
    /* 1: " ?", " !", " .", " ," lose the space */
    size_t t1 = total;
    total = 1;
    for (size_t i = 1; i < t1; i++) {
        char x = text[i];
        if (text[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) total--;
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
    return total;
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
    eng__buf b = {0};
    for (size_t i = 0; i < n; i++) {
        piece(v, ids[i], unparse_special, remove_space, &b);
        remove_space = false;
    }
    if (b.oom) {
        eng__buf_free(&b);
        return ENG_ENOMEM;
    }
    size_t total = b.len;
    if (v->clean_spaces && total) total = clean_spaces(b.data, total);
    *n_out = total;
    if (total > cap) {
        eng__buf_free(&b);
        return ENG_ERANGE;
    }
    if (total) memcpy(buf, b.data, total);
    eng__buf_free(&b);
    return ENG_OK;
}
