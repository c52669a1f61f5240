/*
 * grammar_match.c - parse stacks over the grammar IR, advanced byte by byte,
 * and the per-sequence matcher (eng_matcher_*) built on them.
 *
 * A parse state is a set of stacks whose top is a byte element. A stack is
 * a chain of frames in an arena; frames are hash-consed (equal (pos,
 * parent) pairs are one frame), so equal stacks are equal indices and a set
 * never holds one twice. Expanding a rule reference pushes a return frame
 * unless the reference ends its alternative (a tail call: repetitions and
 * right recursion run in constant depth). Work is bounded: at most
 * max_stacks stacks per set, max_depth frames per stack, and a fixed
 * number of expansion steps per byte; paths beyond a bound are dropped
 * (the set says so), so what a matcher allows is always inside the grammar.
 *
 * Scratch frames (mask computation, rejected input) live above a mark and
 * are dropped by rewinding; the committed frames are compacted when they
 * grow large.
 */
#include "grammar.h"

#include <stdlib.h>
#include <string.h>

#define EXPAND_RECURSION_MAX 4096 /* nested expansion calls (C stack) */
#define EXPAND_WORK_PER_STACK 64  /* expansion steps per byte per allowed stack */

/* ------------------------------------------------------------------------ */
/* Frame arena                                                              */
/* ------------------------------------------------------------------------ */

static inline uint32_t frame_hash(int32_t pos, int32_t parent)
{
    return ((uint32_t)pos * 0x9E3779B1u) ^ ((uint32_t)parent * 0x85EBCA77u) ^ ((uint32_t)parent >> 7);
}

static bool rehash(garena *a, int32_t nb)
{
    int32_t *h = eng__malloc((size_t)nb * sizeof *h);
    if (!h) return false;
    for (int32_t i = 0; i < nb; i++) h[i] = -1;
    free(a->head);
    a->head = h;
    a->n_bucket = nb;
    for (int32_t i = 0; i < a->n; i++) {
        uint32_t b = frame_hash(a->nodes[i].pos, a->nodes[i].parent) & (uint32_t)(nb - 1);
        a->next[i] = h[b];
        h[b] = i;
    }
    return true;
}

eng_status eng__garena_init(garena *a, const gir *g, int32_t max_depth, int32_t max_stacks)
{
    memset(a, 0, sizeof *a);
    a->g = g;
    a->max_depth = max_depth;
    a->max_stacks = max_stacks;
    a->cap = 256;
    a->nodes = eng__malloc((size_t)a->cap * sizeof *a->nodes);
    a->next = eng__malloc((size_t)a->cap * sizeof *a->next);
    if (!a->nodes || !a->next || !rehash(a, 256)) {
        eng__garena_free(a);
        return ENG_ENOMEM;
    }
    return ENG_OK;
}

void eng__garena_free(garena *a)
{
    free(a->nodes);
    free(a->next);
    free(a->head);
    memset(a, 0, sizeof *a);
}

void eng__garena_rewind(garena *a, int32_t mark)
{
    for (int32_t i = a->n - 1; i >= mark; i--) {
        uint32_t b = frame_hash(a->nodes[i].pos, a->nodes[i].parent) & (uint32_t)(a->n_bucket - 1);
        ENG_ASSERT(a->head[b] == i);
        a->head[b] = a->next[i];
    }
    if (mark < a->n) a->n = mark;
}

/* The frame (pos, parent); -1 when it would be deeper than max_depth or
 * memory ran out (the path is dropped). */
int32_t eng__garena_frame(garena *a, int32_t pos, int32_t parent)
{
    uint32_t h = frame_hash(pos, parent);
    for (int32_t i = a->head[h & (uint32_t)(a->n_bucket - 1)]; i >= 0; i = a->next[i])
        if (a->nodes[i].pos == pos && a->nodes[i].parent == parent) return i;
    int32_t depth = parent >= 0 ? a->nodes[parent].depth + 1 : 1;
    if (depth > a->max_depth) return -1;
    if (a->n == a->cap) {
        int32_t nc = a->cap * 2;
        gnode *nn = eng__realloc(a->nodes, (size_t)nc * sizeof *nn);
        if (!nn) {
            a->oom = true;
            return -1;
        }
        a->nodes = nn;
        int32_t *nx = eng__realloc(a->next, (size_t)nc * sizeof *nx);
        if (!nx) {
            a->oom = true;
            return -1;
        }
        a->next = nx;
        a->cap = nc;
    }
    int32_t i = a->n++;
    a->nodes[i] = (gnode){pos, parent, depth};
    if (a->n > 2 * a->n_bucket && rehash(a, a->n_bucket * 4)) return i;
    uint32_t b = h & (uint32_t)(a->n_bucket - 1);
    a->next[i] = a->head[b];
    a->head[b] = i;
    return i;
}

/* ------------------------------------------------------------------------ */
/* Stack sets                                                               */
/* ------------------------------------------------------------------------ */

bool eng__gset_reserve(gset *s, int32_t n)
{
    if (n <= s->cap) return true;
    int32_t nc = s->cap ? s->cap : 16;
    while (nc < n) nc *= 2;
    gstack *p = eng__realloc(s->s, (size_t)nc * sizeof *p);
    if (!p) return false;
    s->s = p;
    s->cap = nc;
    return true;
}

void eng__gset_free(gset *s)
{
    free(s->s);
    memset(s, 0, sizeof *s);
}

typedef struct {
    garena *a;
    gset *out;
    int64_t work;
} xctx;

static void add_stack(xctx *x, int32_t pos, int32_t parent)
{
    gset *o = x->out;
    for (int32_t i = 0; i < o->n; i++)
        if (o->s[i].pos == pos && o->s[i].parent == parent) return;
    if (o->n >= x->a->max_stacks || !eng__gset_reserve(o, o->n + 1)) {
        o->overflow = true;
        return;
    }
    o->s[o->n++] = (gstack){pos, parent};
}

static void expand(xctx *x, int32_t pos, int32_t parent, int32_t rec)
{
    x->a->work++;
    if (rec > EXPAND_RECURSION_MAX || --x->work < 0) {
        x->out->overflow = true;
        return;
    }
    const gir *g = x->a->g;
    const gelem *e = &g->el[pos];
    if (e->kind == GE_BYTES) {
        add_stack(x, pos, parent);
    } else if (e->kind == GE_END) {
        if (parent == GSTK_ROOT) x->out->accept = true;
        else if (parent == GSTK_CUT) x->out->cut = true;
        else expand(x, x->a->nodes[parent].pos, x->a->nodes[parent].parent, rec + 1);
    } else {
        int32_t ret = parent;
        if (g->el[pos + 1].kind != GE_END) {
            ret = eng__garena_frame(x->a, pos + 1, parent);
            if (ret < 0) {
                x->out->overflow = true;
                return;
            }
        }
        for (int32_t k = g->rule_alt[e->arg]; k < g->rule_alt[e->arg + 1]; k++)
            expand(x, g->alt_start[k], ret, rec + 1);
    }
}

static void set_clear(gset *s)
{
    s->n = 0;
    s->accept = s->cut = s->overflow = false;
}

void eng__gset_expand(garena *a, gset *out, int32_t pos, int32_t parent)
{
    xctx x = {a, out, (int64_t)EXPAND_WORK_PER_STACK * a->max_stacks + 1000};
    expand(&x, pos, parent, 0);
}

void eng__gset_advance(garena *a, const gset *in, unsigned b, gset *out)
{
    set_clear(out);
    xctx x = {a, out, (int64_t)EXPAND_WORK_PER_STACK * a->max_stacks + 1000};
    const gir *g = a->g;
    for (int32_t i = 0; i < in->n; i++) {
        const gstack *s = &in->s[i];
        if (gbs_has(&g->sets[g->el[s->pos].arg], b)) expand(&x, s->pos + 1, s->parent, 0);
    }
}

/* ------------------------------------------------------------------------ */
/* Matcher                                                                  */
/* ------------------------------------------------------------------------ */

/* Keep only the frames the committed stacks reach (they are older than
 * their children, so one pass in index order renumbers them). */
static void compact(eng_matcher *m)
{
    garena *a = &m->a;
    int32_t *map = m->gc_map;
    if (!map || m->gc_cap < a->n) {
        free(map);
        map = m->gc_map = eng__malloc((size_t)a->n * sizeof *map);
        m->gc_cap = map ? a->n : 0;
        if (!map) return;
    }
    for (int32_t i = 0; i < a->n; i++) map[i] = 0;
    for (int32_t i = 0; i < m->cur.n; i++)
        for (int32_t f = m->cur.s[i].parent; f >= 0 && !map[f]; f = a->nodes[f].parent) map[f] = 1;
    int32_t k = 0;
    for (int32_t i = 0; i < a->n; i++) {
        if (!map[i]) {
            map[i] = -1;
            continue;
        }
        gnode nd = a->nodes[i];
        if (nd.parent >= 0) nd.parent = map[nd.parent];
        a->nodes[k] = nd;
        map[i] = k++;
    }
    a->n = k;
    for (int32_t i = 0; i < m->cur.n; i++)
        if (m->cur.s[i].parent >= 0) m->cur.s[i].parent = map[m->cur.s[i].parent];
    rehash(a, a->n_bucket);
}

eng_status eng_matcher_new(eng_grammar *g, eng_matcher **out)
{
    if (!g || !out) return ENG_EINVAL;
    *out = NULL;
    eng_matcher *m = eng__calloc(1, sizeof *m);
    if (!m) return ENG_ENOMEM;
    m->g = g;
    eng_grammar_retain(g);
    const gir *ir = &g->ir;
    if (eng__garena_init(&m->a, ir, g->lim.max_depth, g->lim.max_stacks) != ENG_OK) goto oom;
    int32_t r = ir->root;
    for (int32_t k = ir->rule_alt[r]; k < ir->rule_alt[r + 1]; k++)
        eng__gset_expand(&m->a, &m->cur, ir->alt_start[k], GSTK_ROOT);
    if (m->a.oom) goto oom;
    m->mark = m->a.n;
    int32_t n_sets = g->gv->max_len + 2;
    m->lvl = eng__calloc((size_t)n_sets, sizeof *m->lvl);
    m->lvl_mark = eng__calloc((size_t)n_sets, sizeof *m->lvl_mark);
    m->n_lvl = n_sets;
    if (!m->lvl || !m->lvl_mark) goto oom;
    *out = m;
    return ENG_OK;
oom:
    eng_matcher_free(m);
    return ENG_ENOMEM;
}

void eng_matcher_free(eng_matcher *m)
{
    if (!m) return;
    eng__garena_free(&m->a);
    eng__gset_free(&m->cur);
    eng__gset_free(&m->run[0]);
    eng__gset_free(&m->run[1]);
    for (int32_t i = 0; m->lvl && i < m->n_lvl; i++) eng__gset_free(&m->lvl[i]);
    free(m->lvl);
    free(m->lvl_mark);
    free(m->gc_map);
    eng_grammar_release(m->g);
    free(m);
}

bool eng_matcher_is_accepting(const eng_matcher *m) { return m && m->cur.accept; }
bool eng_matcher_can_continue(const eng_matcher *m) { return m && m->cur.n > 0; }

/* Run bytes from a set into run[0]/run[1]; the set reached, or
 * NULL when they leave the grammar. Scratch frames stay above the mark. */
const gset *eng__matcher_run(eng_matcher *m, const gset *from, const uint8_t *s, size_t n)
{
    const gset *cur = from;
    for (size_t i = 0; i < n; i++) {
        gset *nx = &m->run[i & 1];
        eng__gset_advance(&m->a, cur, s[i], nx);
        if (nx->n == 0 && !(nx->accept && i + 1 == n)) return NULL;
        cur = nx;
    }
    return cur;
}

eng_status eng_matcher_accept_bytes(eng_matcher *m, const char *s, size_t n)
{
    if (!m || (!s && n)) return ENG_EINVAL;
    if (n == 0) return ENG_OK;
    const gset *r = eng__matcher_run(m, &m->cur, (const uint8_t *)s, n);
    if (!r) {
        eng__garena_rewind(&m->a, m->mark);
        return ENG_EINVAL;
    }
    if (!eng__gset_reserve(&m->cur, r->n)) {
        eng__garena_rewind(&m->a, m->mark);
        return ENG_ENOMEM;
    }
    if (r->n) memcpy(m->cur.s, r->s, (size_t)r->n * sizeof *r->s);
    m->cur.n = r->n;
    m->cur.accept = r->accept;
    m->cur.overflow = r->overflow;
    if (m->a.n > 4096 && m->a.n > 4 * m->live) {
        compact(m);
        m->live = m->a.n;
    }
    m->mark = m->a.n;
    return ENG_OK;
}

eng_status eng_matcher_accept(eng_matcher *m, int32_t token)
{
    if (!m || token < 0 || token >= m->g->gv->n_vocab) return ENG_EINVAL;
    const eng_grammar_vocab *gv = m->g->gv;
    if (gv->eog[token]) return m->cur.accept ? ENG_OK : ENG_EINVAL;
    if (!gv->bytes[token]) return ENG_EINVAL;
    return eng_matcher_accept_bytes(m, (const char *)gv->bytes[token], gv->len[token]);
}
