/*
 * orthorank.c - OrthoRank token selection (docs/ORTHORANK.md): layer plans,
 * per-sequence settings, the per-layer choice of which rows a layer updates,
 * decode thresholds, and the stats every response reports.
 *
 * The compute side lives in forward.c: at a sparsified layer it scores rows
 * (|cos| of the attention-normalized input to the sequence's sink, cached
 * per layer when position 0 passes), calls eng__or_select on thread 0, and
 * then runs the Q/O/FFN products on the compact matrix of the selected rows
 * while K/V are still computed and cached for every row. What is counted
 * here as skipped is exactly what forward.c then leaves out.
 */
#include "context.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

eng_orthorank_params eng_orthorank_default_params(void)
{
    eng_orthorank_params p = {.sparsity = 0.0f, .token_ratio = 1.0f / 3.0f, .layers = NULL,
                              .n_layers = 0, .decode = ENG_OR_DECODE_THRESHOLD,
                              .method = ENG_OR_ORTHORANK, .min_tokens = 16, .seed = 0};
    return p;
}

static const char *const method_names[] = {"orthorank", "layer_skip", "random", "inverse"};
static const char *const decode_names[] = {"threshold", "full", "off"};

const char *eng_or_method_name(eng_or_method m)
{
    return (unsigned)m < 4 ? method_names[m] : "?";
}

const char *eng_or_decode_name(eng_or_decode d)
{
    return (unsigned)d < 3 ? decode_names[d] : "?";
}

static int name_index(const char *const *names, int n, const char *s, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(names[i]) == len && !strncmp(names[i], s, len)) return i;
    return -1;
}

bool eng_or_method_from_name(const char *s, size_t len, eng_or_method *out)
{
    int i = s ? name_index(method_names, 4, s, len) : -1;
    if (i >= 0) *out = (eng_or_method)i;
    return i >= 0;
}

bool eng_or_decode_from_name(const char *s, size_t len, eng_or_decode *out)
{
    int i = s ? name_index(decode_names, 3, s, len) : -1;
    if (i >= 0) *out = (eng_or_decode)i;
    return i >= 0;
}

/* ------------------------------------------------------------------------ */
/* Plans                                                                    */
/* ------------------------------------------------------------------------ */

static bool valid_layers(const int32_t *l, int32_t n, int32_t n_layer)
{
    if (n < 0 || n > n_layer || (n > 0 && !l)) return false;
    for (int32_t i = 0; i < n; i++) {
        if (l[i] < 0 || l[i] >= n_layer) return false;
        for (int32_t j = 0; j < i; j++)
            if (l[j] == l[i]) return false;
    }
    return true;
}

static void plan_clear(eng_model *m)
{
    free(m->or_order);
    free(m->or_skip_order);
    free(m->or_thresh);
    m->or_order = m->or_skip_order = NULL;
    m->or_thresh = NULL;
    m->n_or_order = m->n_or_skip_order = 0;
}

eng_status eng_model_set_orthorank_plan(eng_model *m, const eng_orthorank_plan *p)
{
    if (!m || !p) return ENG_EINVAL;
    const int32_t L = m->n_layer;
    if (!valid_layers(p->order, p->n_order, L) || !valid_layers(p->skip_order, p->n_skip_order, L))
        return ENG_EINVAL;
    if (p->thresholds && !(p->threshold_ratio > 0 && p->threshold_ratio <= 1)) return ENG_EINVAL;
    int32_t *o = eng__malloc((size_t)(p->n_order + 1) * sizeof *o);
    int32_t *so = eng__malloc((size_t)(p->n_skip_order + 1) * sizeof *so);
    float *th = p->thresholds ? eng__malloc((size_t)L * sizeof *th) : NULL;
    if (!o || !so || (p->thresholds && !th)) {
        free(o);
        free(so);
        free(th);
        return ENG_ENOMEM;
    }
    plan_clear(m);
    if (p->n_order) memcpy(o, p->order, (size_t)p->n_order * sizeof *o);
    if (p->n_skip_order) memcpy(so, p->skip_order, (size_t)p->n_skip_order * sizeof *so);
    if (th) memcpy(th, p->thresholds, (size_t)L * sizeof *th);
    m->or_order = o;
    m->n_or_order = p->n_order;
    m->or_skip_order = so;
    m->n_or_skip_order = p->n_skip_order;
    m->or_thresh = th;
    m->or_thresh_ratio = p->threshold_ratio;
    snprintf(m->or_source, sizeof m->or_source, "%s", p->source ? p->source : "calibrated");
    return ENG_OK;
}

void eng_model_get_orthorank_plan(const eng_model *m, eng_orthorank_plan *out)
{
    out->order = m->or_order;
    out->n_order = m->n_or_order;
    out->skip_order = m->or_skip_order;
    out->n_skip_order = m->n_or_skip_order;
    out->thresholds = m->or_thresh;
    out->threshold_ratio = m->or_thresh_ratio;
    out->source = m->or_source;
}

/* The documented fallback: deepest layers first, layer 0 excluded, for both
 * OrthoRank and layer skipping; no decode thresholds. */
void eng__or_plan_fallback(eng_model *m)
{
    int32_t L = m->n_layer, n = L - 1 > 0 ? L - 1 : 0;
    int32_t order[1024];
    for (int32_t i = 0; i < n; i++) order[i] = L - 1 - i;
    eng_orthorank_plan p = {.order = order, .n_order = n, .skip_order = order, .n_skip_order = n,
                            .thresholds = NULL, .threshold_ratio = 0, .source = "fallback"};
    if (eng_model_set_orthorank_plan(m, &p) != ENG_OK) {
        /* Out of memory: no plan at all; sparsified requests then run dense. */
        plan_clear(m);
        snprintf(m->or_source, sizeof m->or_source, "fallback");
    }
}

/* ------------------------------------------------------------------------ */
/* Per-context state                                                        */
/* ------------------------------------------------------------------------ */

eng_status eng__or_ctx_init(eng_context *c)
{
    const eng_model *m = c->m;
    const int32_t L = m->n_layer, S = c->n_seq_max, T = c->n_batch_max;
    c->sor = eng__calloc((size_t)S, sizeof *c->sor);
    c->scores = eng__malloc((size_t)T * sizeof(float));
    c->rec_scores = eng__malloc((size_t)T * L * sizeof(float));
    c->act = eng__malloc((size_t)T * sizeof(int32_t));
    c->kvr = eng__malloc((size_t)T * sizeof(int32_t));
    c->sel_tmp = eng__malloc((size_t)T * 3 * sizeof(int32_t)); /* ranked pairs + marks */
    if (!c->sor || !c->scores || !c->rec_scores || !c->act || !c->kvr || !c->sel_tmp) return ENG_ENOMEM;
    for (int32_t s = 0; s < S; s++) {
        seq_or *so = &c->sor[s];
        so->layer_on = eng__calloc((size_t)L, 1);
        so->layers = eng__malloc((size_t)L * sizeof(int32_t));
        so->self_thresh = eng__malloc((size_t)L * sizeof(float));
        so->sink = eng__calloc((size_t)L * m->n_embd, sizeof(float));
        if (!so->layer_on || !so->layers || !so->self_thresh || !so->sink) return ENG_ENOMEM;
        so->n_prompt = INT32_MAX;
        so->ratio = 1.0f;
    }
    /* Weight-product FLOPs of one token through one layer (mean over layers). */
    double all = 0, kv = 0;
    for (int32_t il = 0; il < L; il++) {
        const eng__layer *l = &m->layers[il];
        const eng__mat *ms[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
        for (int i = 0; i < 7; i++) all += 2.0 * (double)ms[i]->n_in * (double)ms[i]->n_out;
        kv += 2.0 * ((double)l->wk.n_in * l->wk.n_out + (double)l->wv.n_in * l->wv.n_out);
    }
    c->fl_layer = all / L;
    c->fl_kv = kv / L;
    return ENG_OK;
}

void eng__or_ctx_free(eng_context *c)
{
    if (c->sor)
        for (int32_t s = 0; s < c->n_seq_max; s++) {
            free(c->sor[s].layer_on);
            free(c->sor[s].layers);
            free(c->sor[s].self_thresh);
            free(c->sor[s].sink);
        }
    free(c->sor);
    free(c->scores);
    free(c->rec_scores);
    free(c->act);
    free(c->kvr);
    free(c->sel_tmp);
}

eng_status eng__or_params_check(const eng_model *m, const eng_orthorank_params *p)
{
    if (!(p->sparsity >= 0 && p->sparsity <= 0.9f) || !(p->token_ratio > 0 && p->token_ratio <= 1) ||
        (unsigned)p->decode > ENG_OR_DECODE_OFF || (unsigned)p->method > ENG_OR_INVERSE ||
        p->min_tokens < 0 || !valid_layers(p->layers, p->n_layers, m->n_layer))
        return ENG_EINVAL;
    if (p->n_layers == 0 && p->sparsity > 0 && p->method != ENG_OR_LAYER_SKIP && p->token_ratio >= 1)
        return ENG_EINVAL; /* k = 1 updates every token: no sparsity to be had */
    return ENG_OK;
}

eng_status eng_seq_set_orthorank(eng_context *c, int32_t seq, const eng_orthorank_params *p,
                                 int32_t n_prompt)
{
    if (!c || seq < 0 || seq >= c->n_seq_max || n_prompt < 0) return ENG_EINVAL;
    const eng_model *m = c->m;
    const int32_t L = m->n_layer;
    eng_orthorank_params d = eng_orthorank_default_params();
    if (p) {
        if (eng__or_params_check(m, p) != ENG_OK) return ENG_EINVAL;
        d = *p;
    }
    seq_or *so = &c->sor[seq];
    bool record = so->record;
    uint8_t *lo = so->layer_on;
    int32_t *ls = so->layers;
    float *th = so->self_thresh, *sink = so->sink;
    memset(so, 0, sizeof *so);
    so->layer_on = lo;
    so->layers = ls;
    so->self_thresh = th;
    so->sink = sink;
    so->record = record;
    so->method = d.method;
    so->decode = d.decode;
    so->sparsity = d.sparsity;
    so->ratio = d.token_ratio;
    so->min_tokens = d.min_tokens;
    so->n_prompt = n_prompt;
    so->rng = d.seed ^ 0x9e3779b97f4a7c15ull;
    memset(lo, 0, (size_t)L);
    for (int32_t i = 0; i < L; i++) th[i] = NAN;
    if (d.decode == ENG_OR_DECODE_OFF) return ENG_OK;
    const int32_t *src;
    int32_t n;
    if (d.n_layers > 0) {
        src = d.layers;
        n = d.n_layers;
    } else if (d.sparsity > 0) {
        bool skip = d.method == ENG_OR_LAYER_SKIP;
        src = skip ? m->or_skip_order : m->or_order;
        int32_t avail = skip ? m->n_or_skip_order : m->n_or_order;
        double want = skip ? d.sparsity * L : d.sparsity * L / (1.0 - d.token_ratio);
        n = (int32_t)floor(want + 0.5 + 1e-6); /* round half up, immune to 1/3 in float */
        if (n > avail) n = avail;
    } else {
        return ENG_OK;
    }
    for (int32_t i = 0; i < n; i++) {
        ls[i] = src[i];
        lo[src[i]] = 1;
    }
    so->n_layers = n;
    so->on = n > 0;
    return ENG_OK;
}

eng_status eng_seq_get_orthorank_stats(const eng_context *c, int32_t seq, eng_orthorank_stats *o)
{
    if (!c || !o || seq < 0 || seq >= c->n_seq_max) return ENG_EINVAL;
    const seq_or *so = &c->sor[seq];
    memset(o, 0, sizeof *o);
    o->method = so->method;
    o->decode = so->decode;
    o->sparsity_requested = so->sparsity;
    o->token_ratio = so->ratio;
    o->layers = so->layers;
    o->n_layers = so->n_layers;
    o->layer_order_source = c->m->or_source;
    o->prefill_tokens = so->pf_tok;
    o->prefill_total = so->pf_tot;
    o->prefill_skipped = so->pf_skip;
    o->decode_tokens = so->dc_tok;
    o->decode_total = so->dc_tot;
    o->decode_skipped = so->dc_skip;
    o->flops_total = so->fl_tot;
    o->flops_saved = so->fl_saved;
    return ENG_OK;
}

void eng_seq_record_scores(eng_context *c, int32_t seq, bool on)
{
    if (c && seq >= 0 && seq < c->n_seq_max) c->sor[seq].record = on;
}

const float *eng_get_scores(const eng_context *c, int32_t i)
{
    if (!c || i < 0 || i >= c->n_tokens) return NULL;
    /* the row's sequence must be recording */
    for (int32_t g = 0; g < c->n_groups; g++) {
        const seq_group *gr = &c->groups[g];
        if (i >= gr->row0 && i < gr->row0 + gr->n)
            return c->sor[gr->seq].record ? c->rec_scores + (size_t)i * c->m->n_layer : NULL;
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Selection                                                                */
/* ------------------------------------------------------------------------ */

bool eng__or_scored(const eng_context *c, const seq_group *g, int il)
{
    const seq_or *so = &c->sor[g->seq];
    if (so->record) return true;
    return so->on && so->layer_on[il] &&
           (so->method == ENG_OR_ORTHORANK || so->method == ENG_OR_INVERSE);
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct {
    float key;
    int32_t row;
} ranked;

static int cmp_ranked(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x->row < y->row ? -1 : x->row > y->row;
}

/* Choose the rows of a prompt chunk a sparsified layer updates: round(k*n)
 * rows, namely the sink (position 0, when in the chunk: it is the reference
 * every score is taken against, so it is always computed) and the best-ranked
 * other rows, plus the last prompt token, which the first generated token
 * depends on. With k = 1 that is every row: the dense layer. Marks chosen
 * rows in `mark` (indexed row - g->row0). */
static void select_prompt(eng_context *c, const seq_group *g, seq_or *so, int il, uint8_t *mark)
{
    const eng_batch *b = c->batch;
    ranked *cand = (ranked *)c->sel_tmp; /* 2 int32 per row fit one ranked */
    int32_t nc = 0, budget = (int32_t)lround((double)so->ratio * g->n);
    for (int32_t i = 0; i < g->n; i++) {
        int32_t t = g->row0 + i;
        if (b->pos[t] == 0) { /* the sink */
            mark[i] = 1;
            budget--;
            continue;
        }
        float key;
        switch (so->method) {
        case ENG_OR_INVERSE: key = -c->scores[t]; break;
        case ENG_OR_RANDOM: key = (float)(rng_next(&so->rng) >> 40); break;
        default: key = c->scores[t]; break;
        }
        if (isnan(key)) key = INFINITY;
        cand[nc++] = (ranked){key, t};
    }
    if (budget > nc) budget = nc;
    if (budget < 0) budget = 0;
    qsort(cand, (size_t)nc, sizeof *cand, cmp_ranked);
    for (int32_t i = 0; i < budget; i++) mark[cand[i].row - g->row0] = 1;
    /* The cut is the decode threshold: orthorank updates scores below it,
     * inverse (ranked by -score) scores at or above it. */
    if (budget > 0 && so->method == ENG_OR_ORTHORANK) so->self_thresh[il] = cand[budget - 1].key;
    if (budget > 0 && so->method == ENG_OR_INVERSE) so->self_thresh[il] = -cand[budget - 1].key;
    int32_t last = so->n_prompt - 1 - g->pos0;
    if (last >= 0 && last < g->n) mark[last] = 1;
}

/* Whether a decode row is updated at a sparsified layer. */
static bool decode_keeps(const eng_context *c, seq_or *so, int il, int32_t t)
{
    if (so->decode == ENG_OR_DECODE_FULL) return true;
    if (so->method == ENG_OR_RANDOM)
        return (double)(rng_next(&so->rng) >> 11) * (1.0 / 9007199254740992.0) < so->ratio;
    const eng_model *m = c->m;
    float thr = NAN;
    /* Calibrated thresholds are the k-quantile of the scores: they decide
     * for orthorank; inverse needs the (1-k)-quantile, its own prompt cut. */
    if (so->method == ENG_OR_ORTHORANK && m->or_thresh && fabsf(m->or_thresh_ratio - so->ratio) < 1e-3f)
        thr = m->or_thresh[il];
    if (isnan(thr)) thr = so->self_thresh[il];
    float s = c->scores[t];
    if (isnan(thr) || isnan(s)) return true; /* nothing to decide with: dense */
    return so->method == ENG_OR_INVERSE ? s >= thr : s < thr;
}

void eng__or_select(eng_context *c, int il)
{
    const eng_batch *b = c->batch;
    const int32_t T = c->n_tokens;
    uint8_t *mark = (uint8_t *)(c->sel_tmp + 2 * (size_t)T); /* after the ranked pairs */
    c->n_act = c->n_kvr = 0;
    for (int32_t gi = 0; gi < c->n_groups; gi++) {
        seq_group *g = &c->groups[gi];
        seq_or *so = &c->sor[g->seq];
        g->act0 = c->n_act;
        int32_t np = 0;
        for (int32_t i = 0; i < g->n; i++) np += b->pos[g->row0 + i] < so->n_prompt;
        if (il == 0) {
            so->pf_tok += (uint64_t)np;
            so->dc_tok += (uint64_t)(g->n - np);
        }
        so->pf_tot += (uint64_t)np;
        so->dc_tot += (uint64_t)(g->n - np);
        so->fl_tot += (double)g->n * c->fl_layer;
        bool sparse = so->on && so->layer_on[il];
        bool skip_layer = sparse && so->method == ENG_OR_LAYER_SKIP;
        memset(mark, 0, (size_t)g->n);
        if (!sparse) {
            memset(mark, 1, (size_t)g->n);
        } else if (!skip_layer) {
            if (np == g->n) {
                if (g->n < so->min_tokens) memset(mark, 1, (size_t)g->n);
                else select_prompt(c, g, so, il, mark);
            } else {
                for (int32_t i = 0; i < g->n; i++) {
                    int32_t t = g->row0 + i;
                    mark[i] = b->pos[t] < so->n_prompt ? 1 : decode_keeps(c, so, il, t);
                }
            }
        }
        for (int32_t i = 0; i < g->n; i++) {
            int32_t t = g->row0 + i;
            bool prompt = b->pos[t] < so->n_prompt;
            if (mark[i]) {
                c->act[c->n_act++] = t;
            } else {
                if (prompt) so->pf_skip++;
                else so->dc_skip++;
                so->fl_saved += skip_layer ? c->fl_layer : c->fl_layer - c->fl_kv;
            }
            if (!skip_layer) c->kvr[c->n_kvr++] = t;
        }
        g->act_n = c->n_act - g->act0;
    }
    c->act_all = c->n_act == T;
    c->kvr_all = c->n_kvr == T;
}
