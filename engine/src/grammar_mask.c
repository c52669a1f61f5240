/*
 * grammar_mask.c - compiled grammars (eng_grammar_*), the vocabulary's token
 * trie (eng_grammar_vocab_*), and token masks (eng_matcher_mask).
 *
 * Tokens are byte strings (what eng_token_to_piece renders; control tokens
 * render nothing and are never allowed; end-of-generation tokens are allowed
 * only where the grammar accepts). Their bytes, sorted, form a trie stored
 * in preorder, so a depth-first walk is a loop over an array that skips a
 * subtree by jumping to its end.
 *
 * Masks use a per-position table, as XGrammar does: for each byte element
 * p that can be a stack's top, one walk of the trie from the rule-local
 * stack (p, CUT) sorts every token into "accepted" (its bytes are matched
 * inside the rule, whatever lies below), "rejected" (they fail inside the
 * rule before it could end) and "uncertain" (the rule could end before the
 * token does, so the frames below decide). A step's mask is then the union
 * of the accepted sets of its stacks' tops plus the uncertain tokens that a
 * run of their bytes over the real stack admits. The tables are built on
 * a position's first use and shared by every matcher of the grammar.
 */
#include "grammar.h"

#include <stdlib.h>
#include <string.h>

#define MAX_TOKEN_BYTES 1024 /* longer tokens are never allowed under a grammar */
/* Context tables a grammar keeps; past it they are built per step and
 * dropped (memory stays bounded). A variable so that tests can lower it. */
int32_t eng__grammar_max_tables = 4096;

/* Expansion steps one table build may take, and the checks of one mask's
 * uncertain tokens (each about two seconds of work at most; a JSON Schema's
 * tables take a few million at a 100k vocabulary): a grammar ambiguous
 * enough to need more fails its request instead of stalling every sequence
 * of the scheduler. */
int64_t eng__grammar_mask_work_max = 20000000; /* a variable so that the fuzzer can lower it */
#define MASK_WORK_MAX eng__grammar_mask_work_max

/* ------------------------------------------------------------------------ */
/* Token trie                                                               */
/* ------------------------------------------------------------------------ */

void eng_grammar_vocab_free(eng_grammar_vocab *gv)
{
    if (!gv) return;
    for (int32_t i = 0; gv->bytes && i < gv->n_vocab; i++) free(gv->bytes[i]);
    free(gv->bytes);
    free(gv->len);
    free(gv->eog);
    free(gv->eog_ids);
    free(gv->trie);
    free(gv->ids);
    free(gv);
}

static int cmp_tokens(const void *x, const void *y, void *ctx)
{
    const eng_grammar_vocab *gv = ctx;
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    size_t la = gv->len[a], lb = gv->len[b], n = la < lb ? la : lb;
    int c = memcmp(gv->bytes[a], gv->bytes[b], n);
    if (c) return c;
    if (la != lb) return la < lb ? -1 : 1;
    return a < b ? -1 : a > b;
}

/* Each token's bytes and its end-of-generation flag. */
static eng_status token_bytes(eng_grammar_vocab *gv)
{
    char buf[MAX_TOKEN_BYTES];
    for (int32_t t = 0; t < gv->n_vocab; t++) {
        gv->eog[t] = eng_vocab_is_eog(gv->v, t);
        if (gv->eog[t]) {
            gv->eog_ids[gv->n_eog++] = t;
            continue;
        }
        size_t n = 0;
        if (eng_token_to_piece(gv->v, t, false, buf, sizeof buf, &n) != ENG_OK || n == 0) continue;
        gv->bytes[t] = eng__malloc(n);
        if (!gv->bytes[t]) return ENG_ENOMEM;
        memcpy(gv->bytes[t], buf, n);
        gv->len[t] = (uint16_t)n;
        if ((int32_t)n > gv->max_len) gv->max_len = (int32_t)n;
    }
    return ENG_OK;
}

/* The preorder trie of the sorted tokens, with subtree ends. */
static eng_status build_trie(eng_grammar_vocab *gv)
{
    int32_t n = 0;
    size_t total = 0;
    for (int32_t t = 0; t < gv->n_vocab; t++)
        if (gv->bytes[t]) {
            gv->ids[n++] = t;
            total += gv->len[t];
        }
    qsort_r(gv->ids, (size_t)n, sizeof *gv->ids, cmp_tokens, gv);
    gv->trie = eng__malloc((total + 1) * sizeof *gv->trie);
    int32_t *path = eng__malloc(((size_t)gv->max_len + 2) * sizeof *path);
    if (!gv->trie || !path) {
        free(path);
        return ENG_ENOMEM;
    }
    int32_t nn = 0, prev = -1;
    for (int32_t k = 0; k < n; k++) {
        int32_t t = gv->ids[k];
        size_t c = 0;
        if (prev >= 0)
            while (c < gv->len[prev] && c < gv->len[t] && gv->bytes[prev][c] == gv->bytes[t][c]) c++;
        for (size_t d = c + 1; d <= gv->len[t]; d++) {
            gv->trie[nn] = (gtrie_node){gv->bytes[t][d - 1], (uint16_t)d, -1, -1, 0};
            path[d] = nn++;
        }
        gtrie_node *end = &gv->trie[path[gv->len[t]]];
        if (end->ntok++ == 0) end->tok0 = k;
        prev = t;
    }
    /* subtree ends: a node's subtree ends at the next node no deeper than it */
    int32_t sp = 0;
    for (int32_t i = 0; i < nn; i++) {
        while (sp > 0 && gv->trie[path[sp - 1]].depth >= gv->trie[i].depth) gv->trie[path[--sp]].skip = i;
        path[sp++] = i;
    }
    while (sp > 0) gv->trie[path[--sp]].skip = nn;
    gv->n_trie = nn;
    free(path);
    return ENG_OK;
}

eng_status eng_grammar_vocab_new(const eng_vocab *v, eng_grammar_vocab **out)
{
    if (!v || !out) return ENG_EINVAL;
    *out = NULL;
    eng_grammar_vocab *gv = eng__calloc(1, sizeof *gv);
    if (!gv) return ENG_ENOMEM;
    gv->v = v;
    gv->n_vocab = eng_vocab_n_tokens(v);
    size_t nv = (size_t)gv->n_vocab;
    gv->bytes = eng__calloc(nv, sizeof *gv->bytes);
    gv->len = eng__calloc(nv, sizeof *gv->len);
    gv->eog = eng__calloc(nv, sizeof *gv->eog);
    gv->eog_ids = eng__malloc(nv * sizeof *gv->eog_ids);
    gv->ids = eng__malloc(nv * sizeof *gv->ids);
    eng_status st = ENG_ENOMEM;
    if (gv->bytes && gv->len && gv->eog && gv->eog_ids && gv->ids) st = token_bytes(gv);
    if (st == ENG_OK) st = build_trie(gv);
    if (st != ENG_OK) {
        eng_grammar_vocab_free(gv);
        return st;
    }
    *out = gv;
    return ENG_OK;
}

/* ------------------------------------------------------------------------ */
/* Grammars                                                                 */
/* ------------------------------------------------------------------------ */

eng_grammar_limits eng_grammar_default_limits(void)
{
    return (eng_grammar_limits){.max_bytes = 1u << 20, .max_rules = 20000, .max_elements = 200000,
                                .max_stacks = 1024, .max_depth = 256, .max_compile_ms = 2000.0};
}

eng_status eng_grammar_new(const eng_grammar_vocab *gv, const char *gbnf, size_t len, const char *root,
                           const eng_grammar_limits *lim, eng_grammar **out, char *err, size_t errlen)
{
    if (out) *out = NULL;
    if (!gv || (!gbnf && len) || !out) return ENG_EINVAL;
    eng_grammar_limits L = lim ? *lim : eng_grammar_default_limits();
    if (L.max_stacks < 1 || L.max_depth < GTAB_K + 1 || L.max_rules < 1 || L.max_elements < 1) return ENG_EINVAL;
    eng_grammar *g = eng__calloc(1, sizeof *g);
    if (!g) return ENG_ENOMEM;
    eng_status st = eng__gir_parse(gbnf ? gbnf : "", len, root, &L, &g->ir, err, errlen);
    if (st != ENG_OK) {
        free(g);
        return st;
    }
    g->n_tab_cap = 64;
    g->tab = eng__calloc(g->n_tab_cap, sizeof *g->tab);
    if (!g->tab || pthread_mutex_init(&g->mu, NULL) != 0) {
        eng__gir_free(&g->ir);
        free(g->tab);
        free(g);
        return ENG_ENOMEM;
    }
    g->gv = gv;
    g->lim = L;
    atomic_init(&g->refs, 1);
    *out = g;
    return ENG_OK;
}

void eng_grammar_retain(eng_grammar *g)
{
    if (g) atomic_fetch_add(&g->refs, 1);
}

void eng_grammar_release(eng_grammar *g)
{
    if (!g || atomic_fetch_sub(&g->refs, 1) != 1) return;
    for (uint32_t i = 0; i < g->n_tab_cap; i++) {
        free(g->tab[i].acc_bits);
        free(g->tab[i].acc);
        free(g->tab[i].unc);
    }
    free(g->tab);
    pthread_mutex_destroy(&g->mu);
    eng__gir_free(&g->ir);
    free(g);
}

/* ------------------------------------------------------------------------ */
/* Per-position tables                                                      */
/* ------------------------------------------------------------------------ */

typedef struct {
    int32_t *v;
    int32_t n, cap;
    bool oom;
} ilist;

static void ilist_add(ilist *l, int32_t x)
{
    if (l->n == l->cap) {
        int32_t nc = l->cap ? l->cap * 2 : 64;
        int32_t *p = eng__realloc(l->v, (size_t)nc * sizeof *p);
        if (!p) {
            l->oom = true;
            return;
        }
        l->v = p;
        l->cap = nc;
    }
    l->v[l->n++] = x;
}

static void add_range(ilist *l, const eng_grammar_vocab *gv, int32_t from, int32_t to)
{
    for (int32_t j = from; j < to; j++)
        for (int32_t k = 0; k < gv->trie[j].ntok; k++) ilist_add(l, gv->ids[gv->trie[j].tok0 + k]);
}

/* One walk of the trie from the stack the key describes (its frames, then
 * GSTK_CUT where the key does not reach the stack's end). */
static void walk_position(eng_matcher *m, const int32_t *key, ilist *acc, ilist *unc)
{
    const eng_grammar_vocab *gv = m->g->gv;
    garena *a = &m->a;
    const int32_t base = a->n;
    gset *L = m->lvl;
    bool esc[MAX_TOKEN_BYTES + 2];
    int32_t below = GSTK_CUT;
    int32_t k = GTAB_K - 1;
    while (k > 0 && key[k] < 0) below = key[k--];
    for (; k > 0 && below >= GSTK_CUT; k--) below = key[k] >= 0 ? eng__garena_frame(a, key[k], below) : key[k];
    L[0].n = 0;
    L[0].accept = L[0].cut = L[0].overflow = false;
    eng__gset_reserve(&L[0], 1);
    L[0].s[0] = (gstack){key[0], below < GSTK_CUT ? GSTK_CUT : below};
    L[0].n = 1;
    m->lvl_mark[0] = a->n;
    esc[0] = false;
    const int64_t work0 = a->work;
    for (int32_t i = 0; i < gv->n_trie;) {
        if (a->work - work0 > MASK_WORK_MAX) {
            acc->oom = true; /* fails the table */
            break;
        }
        const gtrie_node *nd = &gv->trie[i];
        int32_t d = nd->depth;
        eng__garena_rewind(a, m->lvl_mark[d - 1]);
        eng__gset_advance(a, &L[d - 1], nd->byte, &L[d]);
        m->lvl_mark[d] = a->n;
        esc[d] = esc[d - 1] || L[d].cut;
        bool alive = L[d].n > 0;
        if (nd->ntok) {
            if (alive || L[d].cut || L[d].accept) add_range(acc, gv, i, i + 1);
            else if (esc[d - 1]) add_range(unc, gv, i, i + 1);
        }
        if (!alive) {
            if (esc[d]) add_range(unc, gv, i + 1, nd->skip);
            i = nd->skip;
            continue;
        }
        i++;
    }
    eng__garena_rewind(a, base);
}

static bool fill_position(eng_matcher *m, gpos_cache *c)
{
    ilist acc = {0}, unc = {0};
    walk_position(m, c->key, &acc, &unc);
    int32_t nv = m->g->gv->n_vocab;
    if (!acc.oom && !unc.oom && acc.n > nv / 32) {
        c->acc_bits = eng__calloc(((size_t)nv + 31) / 32, sizeof *c->acc_bits);
        if (c->acc_bits)
            for (int32_t i = 0; i < acc.n; i++) c->acc_bits[acc.v[i] >> 5] |= 1u << (acc.v[i] & 31);
        free(acc.v);
        acc.v = NULL;
        if (!c->acc_bits) acc.oom = true;
    }
    if (acc.oom || unc.oom) {
        free(acc.v);
        free(unc.v);
        free(c->acc_bits);
        c->acc_bits = NULL;
        return false;
    }
    c->acc = acc.v;
    c->n_acc = acc.n;
    c->unc = unc.v;
    c->n_unc = unc.n;
    c->ready = true;
    return true;
}

static uint32_t key_hash(const int32_t *k)
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < GTAB_K; i++) h = (h ^ (uint32_t)k[i]) * 16777619u;
    return h;
}

/* The slot of key in the table (under the lock): its entry, or the empty
 * one where it goes; NULL when the table cannot grow. */
static gpos_cache *table_slot(eng_grammar *g, const int32_t *key)
{
    if (2 * (g->n_tab + 1) > g->n_tab_cap) {
        uint32_t nc = g->n_tab_cap * 2;
        gpos_cache *nt = eng__calloc(nc, sizeof *nt);
        if (!nt) return NULL;
        for (uint32_t i = 0; i < g->n_tab_cap; i++) {
            if (!g->tab[i].ready) continue;
            uint32_t j = key_hash(g->tab[i].key) & (nc - 1);
            while (nt[j].ready) j = (j + 1) & (nc - 1);
            nt[j] = g->tab[i];
        }
        free(g->tab);
        g->tab = nt;
        g->n_tab_cap = nc;
    }
    uint32_t j = key_hash(key) & (g->n_tab_cap - 1);
    while (g->tab[j].ready && memcmp(g->tab[j].key, key, sizeof g->tab[j].key))
        j = (j + 1) & (g->n_tab_cap - 1);
    return &g->tab[j];
}

/* The table of a stack's context, built on first use (under the grammar's
 * lock). The table holds copies: a pointer into it stays valid only while
 * the lock is held, so the caller gets the entry copied. */
static bool context_table(eng_matcher *m, const gstack *st, gpos_cache *out)
{
    int32_t key[GTAB_K];
    key[0] = st->pos;
    int32_t f = st->parent;
    for (int i = 1; i < GTAB_K; i++) {
        key[i] = f >= 0 ? m->a.nodes[f].pos : f;
        if (f >= 0) f = m->a.nodes[f].parent;
    }
    eng_grammar *g = m->g;
    pthread_mutex_lock(&g->mu);
    gpos_cache *c = table_slot(g, key);
    bool ok = c != NULL, keep = true;
    if (ok && !c->ready) {
        if ((int32_t)g->n_tab >= eng__grammar_max_tables) {
            /* a grammar with this many contexts gets no more tables kept (memory stays bounded):
             * this one is built for the step and dropped by the caller */
            memset(out, 0, sizeof *out);
            memcpy(out->key, key, sizeof key);
            ok = fill_position(m, out);
            keep = false;
        } else {
            memcpy(c->key, key, sizeof key);
            ok = fill_position(m, c);
            if (ok) g->n_tab++;
        }
    }
    if (ok && keep) *out = *c;
    out->ready = keep; /* false: the caller owns and frees out's arrays */
    pthread_mutex_unlock(&g->mu);
    return ok;
}

static void table_drop(gpos_cache *t)
{
    if (t->ready) return;
    free(t->acc_bits);
    free(t->acc);
    free(t->unc);
}

/* ------------------------------------------------------------------------ */
/* Masks                                                                    */
/* ------------------------------------------------------------------------ */

/* Add to bits what one stack allows: its context's accepted tokens, and
 * the uncertain ones that a run of their bytes over the whole stack admits. */
static void mask_stack(eng_matcher *m, const gpos_cache *c, const gstack *top, uint32_t *bits, size_t nw)
{
    const eng_grammar_vocab *gv = m->g->gv;
    if (c->acc_bits) {
        for (size_t w = 0; w < nw; w++) bits[w] |= c->acc_bits[w];
    } else {
        for (int32_t k = 0; k < c->n_acc; k++) bits[c->acc[k] >> 5] |= 1u << (c->acc[k] & 31);
    }
    gstack st = *top;
    gset one = {.s = &st, .n = 1, .cap = 1};
    for (int32_t k = 0; k < c->n_unc; k++) {
        int32_t t = c->unc[k];
        if ((bits[t >> 5] >> (t & 31)) & 1u) continue;
        if (eng__matcher_run(m, &one, gv->bytes[t], gv->len[t])) bits[t >> 5] |= 1u << (t & 31);
        eng__garena_rewind(&m->a, m->mark);
    }
}

int32_t eng_matcher_mask(eng_matcher *m, uint32_t *bits)
{
    if (!m || !bits) return -1;
    const eng_grammar_vocab *gv = m->g->gv;
    const size_t nw = ((size_t)gv->n_vocab + 31) / 32;
    memset(bits, 0, nw * sizeof *bits);
    int64_t checks = 0; /* work of the uncertain tokens' runs */
    for (int32_t i = 0; i < m->cur.n; i++) {
        gpos_cache tc;
        int64_t w0 = m->a.work;
        if (!context_table(m, &m->cur.s[i], &tc)) return m->a.work - w0 > MASK_WORK_MAX ? -2 : -1;
        w0 = m->a.work;
        mask_stack(m, &tc, &m->cur.s[i], bits, nw);
        table_drop(&tc);
        checks += m->a.work - w0;
        if (checks > MASK_WORK_MAX) return -2;
    }
    if (m->cur.accept)
        for (int32_t k = 0; k < gv->n_eog; k++) bits[gv->eog_ids[k] >> 5] |= 1u << (gv->eog_ids[k] & 31);
    int32_t n = 0;
    for (size_t w = 0; w < nw; w++) n += __builtin_popcount(bits[w]);
    return n;
}
