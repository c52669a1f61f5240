/*
 * orthorank.c - OrthoRank token selection (docs/ORTHORANK.md): the settings
 * (their one field list, setters and checks), layer plans, the target a
 * sparsity resolves to (layers and k), per-sequence state, the per-layer
 * work of the forward pass (sink scores, the choice of which rows a layer
 * updates and which write K/V: top-k for prompt chunks, the running rule
 * held at rate k for decode rows and short chunks, or taken together by
 * the step's cohort of rows that opted into batched decode grouping) and
 * the stats every response reports.
 *
 * forward.c calls eng__orthorank_step once per eng_decode and
 * eng__orthorank_layer once per layer, then runs the Q/O/FFN products on the
 * compact matrix of the rows in c->act while K/V are computed and cached for
 * the rows in c->kvr. What is counted here as skipped is exactly what
 * forward.c then leaves out.
 */
#include "context.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Settings: the field list, setters, checks                                */
/* ------------------------------------------------------------------------ */

eng_orthorank_params eng_orthorank_default_params(void)
{
    eng_orthorank_params p;
    memset(&p, 0, sizeof p);
    p.sparsity = 0.0;
    p.token_ratio = 1.0 / 3.0;
    p.decode = ENG_ORTHORANK_DECODE_THRESHOLD;
    p.method = ENG_ORTHORANK_METHOD_ORTHORANK;
    p.min_tokens = 16;
    return p;
}

static const char *const method_names[] = {"orthorank", "layer_skip", "random", "inverse", NULL};
static const char *const decode_names[] = {"threshold", "full", "off", NULL};
static const char *const grouping_names[] = {"none", "batch", NULL};

const char *eng_orthorank_method_name(eng_orthorank_method m)
{
    return (unsigned)m <= ENG_ORTHORANK_METHOD_INVERSE ? method_names[m] : "?";
}

const char *eng_orthorank_decode_name(eng_orthorank_decode d)
{
    return (unsigned)d <= ENG_ORTHORANK_DECODE_OFF ? decode_names[d] : "?";
}

const char *eng_orthorank_grouping_name(eng_orthorank_grouping g)
{
    return (unsigned)g <= ENG_ORTHORANK_GROUPING_BATCH ? grouping_names[g] : "?";
}

/* The list, in the order of F_* (which says where each field is stored). */
enum { F_SPARSITY, F_TOKEN_RATIO, F_LAYERS, F_DECODE, F_METHOD, F_MIN_TOKENS, F_SEED, F_GROUPING, N_FIELDS };
static const eng_orthorank_field fields[N_FIELDS] = {
    {"sparsity", ENG_ORTHORANK_FIELD_NUMBER, 0, 0.9, false, NULL, "a number", true},
    {"token_ratio", ENG_ORTHORANK_FIELD_NUMBER, 0, 1, true, NULL, "a number", true},
    {"layers", ENG_ORTHORANK_FIELD_LAYERS, 0, 0, false, NULL, "an array of layer indices", true},
    {"decode", ENG_ORTHORANK_FIELD_NAME, 0, 0, false, decode_names, "one of \"threshold\", \"full\", \"off\"", true},
    {"method", ENG_ORTHORANK_FIELD_NAME, 0, 0, false, method_names,
     "one of \"orthorank\", \"layer_skip\", \"random\", \"inverse\"", true},
    {"min_tokens", ENG_ORTHORANK_FIELD_INTEGER, 0, 1 << 20, false, NULL, "an integer", false},
    {"seed", ENG_ORTHORANK_FIELD_INTEGER, 0, 1e18, false, NULL, "an integer", false},
    {"decode_grouping", ENG_ORTHORANK_FIELD_NAME, 0, 0, false, grouping_names, "one of \"none\", \"batch\"", true},
};

const eng_orthorank_field *eng_orthorank_fields(size_t *n)
{
    *n = N_FIELDS;
    return fields;
}

const eng_orthorank_field *eng_orthorank_field_find(const char *name, size_t len)
{
    for (int i = 0; name && i < N_FIELDS; i++)
        if (strlen(fields[i].name) == len && !strncmp(fields[i].name, name, len)) return &fields[i];
    return NULL;
}

static eng_status fail(char *msg, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static eng_status fail(char *msg, size_t len, const char *fmt, ...)
{
    if (msg && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, len, fmt, ap);
        va_end(ap);
    }
    return ENG_EINVAL;
}

/* A NUMBER or INTEGER field's value alone. NUMBER fields are used as floats,
 * so the float must be in range too (1e-50 is a double in (0, 1], not a float). */
static eng_status number_ok(const eng_orthorank_field *f, double v, char *msg, size_t len)
{
    bool whole = f->kind == ENG_ORTHORANK_FIELD_INTEGER;
    if (f->kind != ENG_ORTHORANK_FIELD_NUMBER && !whole) return fail(msg, len, "must be %s", f->expect);
    bool ok = (f->lo_open ? v > f->lo : v >= f->lo) && v <= f->hi && (!whole || v == floor(v));
    if (!ok && whole) return fail(msg, len, "must be an integer in [%.0f, %.0f]", f->lo, f->hi);
    if (!ok) return fail(msg, len, "must be in %c%g, %g]", f->lo_open ? '(' : '[', f->lo, f->hi);
    float x = (float)v;
    if (!whole && !((f->lo_open ? x > f->lo : x >= f->lo) && x <= f->hi))
        return fail(msg, len, "must be in %c%g, %g], got %g (%g as a 32-bit float)", f->lo_open ? '(' : '[', f->lo,
                    f->hi, v, (double)x);
    return ENG_OK;
}

eng_status eng_orthorank_set_number(eng_orthorank_params *p, const eng_orthorank_field *f, double v, char *msg,
                                    size_t len)
{
    if (!p || !f) return ENG_EINVAL;
    eng_status st = number_ok(f, v, msg, len);
    if (st != ENG_OK) return st;
    switch (f - fields) {
    case F_SPARSITY: p->sparsity = v; break;
    case F_TOKEN_RATIO: p->token_ratio = v; break;
    case F_MIN_TOKENS: p->min_tokens = (int32_t)v; break;
    case F_SEED: p->seed = (uint64_t)v; break;
    default: return ENG_EINVAL;
    }
    return ENG_OK;
}

static int name_index(const char *const *names, const char *s, size_t n)
{
    for (int i = 0; s && names[i]; i++)
        if (strlen(names[i]) == n && !strncmp(names[i], s, n)) return i;
    return -1;
}

eng_status eng_orthorank_set_name(eng_orthorank_params *p, const eng_orthorank_field *f, const char *s, size_t n,
                                  char *msg, size_t len)
{
    if (!p || !f) return ENG_EINVAL;
    int i = f->kind == ENG_ORTHORANK_FIELD_NAME ? name_index(f->names, s, n) : -1;
    if (i < 0) return fail(msg, len, "must be %s", f->expect);
    if (f - fields == F_DECODE) p->decode = (eng_orthorank_decode)i;
    else if (f - fields == F_GROUPING) p->decode_grouping = (eng_orthorank_grouping)i;
    else p->method = (eng_orthorank_method)i;
    return ENG_OK;
}

/* n layers (doubles: JSON numbers and parsed text alike) of a model with
 * n_layer layers: at most n_layer, each an integer in range, no repeats. */
static eng_status layers_ok(const double *v, size_t n, int32_t n_layer, bool model, char *msg, size_t len)
{
    if (n > (size_t)n_layer)
        return model ? fail(msg, len, "lists more layers than the model has (%d)", n_layer)
                     : fail(msg, len, "lists more layers than a model may have (%d)", n_layer);
    bool seen[ENG_MAX_LAYERS] = {false};
    for (size_t i = 0; i < n; i++) {
        if (!(v[i] >= 0 && v[i] < n_layer && v[i] == floor(v[i])))
            return fail(msg, len, "must hold integers in [0, %d)", n_layer);
        if (seen[(int32_t)v[i]]) return fail(msg, len, "lists layer %d twice", (int32_t)v[i]);
        seen[(int32_t)v[i]] = true;
    }
    return ENG_OK;
}

eng_status eng_orthorank_set_layers(eng_orthorank_params *p, const eng_model *m, const double *v, size_t n,
                                    char *msg, size_t len)
{
    if (!p || (n && !v)) return ENG_EINVAL;
    eng_status st = layers_ok(v, n, m ? m->n_layer : ENG_MAX_LAYERS, m != NULL, msg, len);
    if (st != ENG_OK) return st;
    for (size_t i = 0; i < n; i++) p->layers[i] = (int32_t)v[i];
    p->n_layers = (int32_t)n;
    return ENG_OK;
}

/* Field i of p as it stands. */
static eng_status field_ok(const eng_model *m, const eng_orthorank_params *p, int i, char *msg, size_t len)
{
    const eng_orthorank_field *f = &fields[i];
    const int32_t max = m ? m->n_layer : ENG_MAX_LAYERS;
    double v[ENG_MAX_LAYERS];
    switch (i) {
    case F_SPARSITY: return number_ok(f, p->sparsity, msg, len);
    case F_TOKEN_RATIO: return number_ok(f, p->token_ratio, msg, len);
    case F_MIN_TOKENS: return number_ok(f, p->min_tokens, msg, len);
    case F_DECODE:
        if ((unsigned)p->decode > ENG_ORTHORANK_DECODE_OFF) return fail(msg, len, "must be %s", f->expect);
        return ENG_OK;
    case F_METHOD:
        if ((unsigned)p->method > ENG_ORTHORANK_METHOD_INVERSE) return fail(msg, len, "must be %s", f->expect);
        return ENG_OK;
    case F_GROUPING:
        if ((unsigned)p->decode_grouping > ENG_ORTHORANK_GROUPING_BATCH) return fail(msg, len, "must be %s", f->expect);
        return ENG_OK;
    case F_LAYERS:
        if (p->n_layers < 0 || p->n_layers > max) /* refused before any is read */
            return layers_ok(NULL, p->n_layers < 0 ? SIZE_MAX : (size_t)p->n_layers, max, m != NULL, msg, len);
        for (int32_t j = 0; j < p->n_layers; j++) v[j] = p->layers[j];
        return layers_ok(v, (size_t)p->n_layers, max, m != NULL, msg, len);
    default: return ENG_OK; /* the seed: every value is valid */
    }
}

bool eng_orthorank_params_equal(const eng_orthorank_params *a, const eng_orthorank_params *b)
{
    if (a->sparsity != b->sparsity || a->token_ratio != b->token_ratio || a->n_layers != b->n_layers ||
        a->decode != b->decode || a->method != b->method || a->min_tokens != b->min_tokens || a->seed != b->seed ||
        a->decode_grouping != b->decode_grouping)
        return false;
    return a->n_layers <= 0 || !memcmp(a->layers, b->layers, (size_t)a->n_layers * sizeof *a->layers);
}

eng_status eng_orthorank_check(const eng_model *m, const eng_orthorank_params *p, const char **field, char *msg,
                               size_t len)
{
    const char *unused;
    if (!field) field = &unused;
    *field = NULL;
    if (!p) return ENG_EINVAL;
    for (int i = 0; i < N_FIELDS; i++) {
        *field = fields[i].name;
        eng_status st = field_ok(m, p, i, msg, len);
        if (st != ENG_OK) return st;
    }
    /* Any sparsity above 0 asks for some (even one that is 0 as a float). */
    *field = fields[F_TOKEN_RATIO].name;
    if (p->n_layers == 0 && p->sparsity > 0 && p->method != ENG_ORTHORANK_METHOD_LAYER_SKIP &&
        (float)p->token_ratio >= 1)
        return fail(msg, len, "1 updates every token, so no sparsity above 0 can be reached");
    *field = NULL;
    return ENG_OK;
}

/* ------------------------------------------------------------------------ */
/* Plans                                                                    */
/* ------------------------------------------------------------------------ */

static bool valid_layers(const int32_t *l, int32_t n, int32_t n_layer)
{
    if (n < 0 || n > n_layer || (n > 0 && !l)) return false;
    bool seen[ENG_MAX_LAYERS] = {false};
    for (int32_t i = 0; i < n; i++) {
        if (l[i] < 0 || l[i] >= n_layer || seen[l[i]]) return false;
        seen[l[i]] = true;
    }
    return true;
}

eng_status eng_model_set_orthorank_plan(eng_model *m, const eng_orthorank_plan *p)
{
    if (!m || !p) return ENG_EINVAL;
    const int32_t L = m->n_layer;
    if (!valid_layers(p->order, p->n_order, L) || !valid_layers(p->skip_order, p->n_skip_order, L))
        return ENG_EINVAL;
    if (p->thresholds && !(p->threshold_ratio > 0 && p->threshold_ratio <= 1)) return ENG_EINVAL;
    eng__orthorank_plan *mp = &m->orthorank;
    if (p->n_order) memcpy(mp->order, p->order, (size_t)p->n_order * sizeof *mp->order);
    if (p->n_skip_order) memcpy(mp->skip_order, p->skip_order, (size_t)p->n_skip_order * sizeof *mp->skip_order);
    if (p->thresholds) memcpy(mp->thresholds, p->thresholds, (size_t)L * sizeof *mp->thresholds);
    mp->n_order = p->n_order;
    mp->n_skip_order = p->n_skip_order;
    mp->has_thresholds = p->thresholds != NULL;
    mp->threshold_ratio = p->threshold_ratio;
    snprintf(mp->source, sizeof mp->source, "%s", p->source ? p->source : "calibrated");
    return ENG_OK;
}

void eng_model_get_orthorank_plan(const eng_model *m, eng_orthorank_plan *out)
{
    const eng__orthorank_plan *mp = &m->orthorank;
    out->order = mp->order;
    out->n_order = mp->n_order;
    out->skip_order = mp->skip_order;
    out->n_skip_order = mp->n_skip_order;
    out->thresholds = mp->has_thresholds ? mp->thresholds : NULL;
    out->threshold_ratio = mp->threshold_ratio;
    out->source = mp->source;
}

/* The documented fallback: deepest layers first, layer 0 excluded, for both
 * OrthoRank and layer skipping; no decode thresholds. */
void eng__orthorank_plan_fallback(eng_model *m)
{
    int32_t L = m->n_layer, n = L - 1 > 0 ? L - 1 : 0;
    int32_t order[ENG_MAX_LAYERS];
    for (int32_t i = 0; i < n; i++) order[i] = L - 1 - i;
    eng_orthorank_plan p = {.order = order, .n_order = n, .skip_order = order, .n_skip_order = n,
                            .thresholds = NULL, .threshold_ratio = 0, .source = "fallback"};
    eng_status st = eng_model_set_orthorank_plan(m, &p);
    ENG_ASSERT(st == ENG_OK);
}

/* ------------------------------------------------------------------------ */
/* Per-context state                                                        */
/* ------------------------------------------------------------------------ */

/* A sequence that was never set: dense, every position prompt. */
static void seq_reset(seq_orthorank *sq)
{
    uint8_t *lo = sq->layer_on;
    rate_ctl *rate = sq->rate;
    float *sink = sq->sink;
    bool record = sq->record;
    memset(sq, 0, sizeof *sq);
    sq->layer_on = lo;
    sq->rate = rate;
    sq->sink = sink;
    sq->record = record;
    sq->n_prompt = INT32_MAX;
    sq->stats.token_ratio = 1.0f;
}

eng_status eng__orthorank_ctx_init(eng_context *c)
{
    const eng_model *m = c->m;
    const int32_t L = m->n_layer, S = c->n_seq_max, T = c->n_batch_max;
    c->orthorank = eng__calloc((size_t)S, sizeof *c->orthorank);
    c->scores = eng__malloc((size_t)T * sizeof(float));
    c->rec_scores = eng__malloc((size_t)T * L * sizeof(float));
    c->cohort = eng__calloc((size_t)L, sizeof *c->cohort);
    c->act = eng__malloc((size_t)T * sizeof(int32_t));
    c->kvr = eng__malloc((size_t)T * sizeof(int32_t));
    c->sel_tmp = eng__malloc((size_t)T * 3 * sizeof(int32_t)); /* ranked pairs + marks */
    if (!c->orthorank || !c->scores || !c->rec_scores || !c->cohort || !c->act || !c->kvr || !c->sel_tmp) return ENG_ENOMEM;
    for (int32_t s = 0; s < S; s++) {
        seq_orthorank *sq = &c->orthorank[s];
        sq->layer_on = eng__calloc((size_t)L, 1);
        sq->rate = eng__calloc((size_t)L, sizeof *sq->rate);
        sq->sink = eng__calloc((size_t)L * m->n_embd, sizeof(float));
        if (!sq->layer_on || !sq->rate || !sq->sink) return ENG_ENOMEM;
        seq_reset(sq);
    }
    /* Weight-product FLOPs of one token through one layer (mean over layers). */
    double all = 0, kv = 0;
    for (int32_t il = 0; il < L; il++) {
        const eng__layer *l = &m->layers[il];
        const eng__mat *ms[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
        for (int i = 0; i < 7; i++) all += 2.0 * (double)ms[i]->n_in * (double)ms[i]->n_out;
        kv += 2.0 * ((double)l->wk.n_in * l->wk.n_out + (double)l->wv.n_in * l->wv.n_out);
    }
    c->flops_layer = all / L;
    c->flops_kv = kv / L;
    return ENG_OK;
}

void eng__orthorank_ctx_free(eng_context *c)
{
    if (c->orthorank)
        for (int32_t s = 0; s < c->n_seq_max; s++) {
            free(c->orthorank[s].layer_on);
            free(c->orthorank[s].rate);
            free(c->orthorank[s].sink);
        }
    free(c->orthorank);
    free(c->scores);
    free(c->rec_scores);
    free(c->cohort);
    free(c->act);
    free(c->kvr);
    free(c->sel_tmp);
}

#define TARGET_TOL 0.02 /* how far a plan may miss the request (docs/ORTHORANK.md, "Targets") */
#define K_MIN 0.1       /* the smallest k a sparsity may be reached with */

/* The layers a sequence sparsifies and the k it uses: the explicit list
 * with the requested k, or as many of the plan's order as the sparsity
 * asks for (in float, as always computed), with the requested k when that
 * lands within TARGET_TOL of the request and otherwise the k that lands on
 * it (docs/ORTHORANK.md, "Targets"). */
static int32_t resolve_layers(const eng_model *m, const eng_orthorank_params *p, const int32_t **src, float *k)
{
    const int32_t L = m->n_layer;
    *k = (float)p->token_ratio;
    if (p->n_layers > 0) {
        *src = p->layers;
        return p->n_layers;
    }
    const float sparsity = (float)p->sparsity, ratio = (float)p->token_ratio;
    if (!(sparsity > 0)) return 0;
    bool skip = p->method == ENG_ORTHORANK_METHOD_LAYER_SKIP;
    *src = skip ? m->orthorank.skip_order : m->orthorank.order;
    int32_t avail = skip ? m->orthorank.n_skip_order : m->orthorank.n_order;
    if (skip) { /* n/L: the closest that exceeds the request by at most TARGET_TOL */
        int32_t n = (int32_t)floor((double)sparsity * L + 1e-6);
        if ((double)(n + 1) / L <= sparsity + TARGET_TOL + 1e-6 &&
            (double)(n + 1) / L - sparsity < sparsity - (double)n / L)
            n++;
        return n < avail ? n : avail;
    }
    double want = sparsity * L / (1.0 - ratio);
    int32_t n = (int32_t)floor(want + 0.5 + 1e-6); /* round half up, immune to 1/3 in float */
    if (n < 1) n = 1;
    if (n > avail) n = avail;
    if (n == 0) return 0;
    if (fabs(n * (1.0 - ratio) / L - sparsity) > TARGET_TOL + 1e-6) {
        double kk = 1.0 - (double)sparsity * L / n;
        *k = (float)(kk < K_MIN ? K_MIN : kk);
    }
    return n;
}

eng_status eng_seq_set_orthorank(eng_context *c, int32_t seq, const eng_orthorank_params *p, int32_t n_prompt)
{
    if (!c || seq < 0 || seq >= c->n_seq_max || n_prompt < 0) return ENG_EINVAL;
    const eng_model *m = c->m;
    const int32_t L = m->n_layer;
    eng_orthorank_params d = eng_orthorank_default_params();
    if (p) {
        if (eng_orthorank_check(m, p, NULL, NULL, 0) != ENG_OK) return ENG_EINVAL;
        d = *p;
    }
    seq_orthorank *sq = &c->orthorank[seq];
    seq_reset(sq);
    sq->stats.method = d.method;
    sq->stats.decode = d.decode;
    sq->stats.decode_grouping = d.decode_grouping;
    sq->stats.sparsity_requested = (float)d.sparsity;
    sq->stats.token_ratio = (float)d.token_ratio;
    sq->min_tokens = d.min_tokens;
    sq->n_prompt = n_prompt;
    sq->seed = d.seed;
    sq->rng = d.seed ^ 0x9e3779b97f4a7c15ull;
    memset(sq->layer_on, 0, (size_t)L);
    for (int32_t i = 0; i < L; i++) sq->rate[i] = (rate_ctl){.last_prompt_key = NAN};
    if (d.decode == ENG_ORTHORANK_DECODE_OFF) return ENG_OK;
    const int32_t *src = NULL;
    float k;
    int32_t n = resolve_layers(m, &d, &src, &k);
    for (int32_t i = 0; i < n; i++) {
        sq->stats.layers[i] = src[i];
        sq->layer_on[src[i]] = 1;
    }
    sq->stats.n_layers = n;
    sq->stats.token_ratio = k;
    bool skip = d.method == ENG_ORTHORANK_METHOD_LAYER_SKIP;
    sq->stats.sparsity_target = (float)(n * (skip ? 1.0 : 1.0 - (double)k) / L);
    sq->on = n > 0;
    return ENG_OK;
}

eng_status eng_seq_get_orthorank_stats(const eng_context *c, int32_t seq, eng_orthorank_stats *o)
{
    if (!c || !o || seq < 0 || seq >= c->n_seq_max) return ENG_EINVAL;
    *o = c->orthorank[seq].stats;
    snprintf(o->layer_order_source, sizeof o->layer_order_source, "%s", c->m->orthorank.source);
    uint64_t total = o->prefill_total + o->decode_total, skipped = o->prefill_skipped + o->decode_skipped;
    o->sparsity_effective = total ? (double)skipped / (double)total : 0.0;
    o->flops_saved_fraction = o->flops_total > 0 ? o->flops_saved / o->flops_total : 0.0;
    double lo = INFINITY, hi = -INFINITY;
    const seq_orthorank *sq = &c->orthorank[seq];
    for (int32_t i = 0; sq->on && i < o->n_layers; i++) {
        const rate_ctl *r = &sq->rate[o->layers[i]];
        if (!r->decode || r->seen == 0) continue;
        double v = (double)r->updated / (double)r->seen;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    o->decode_rate_min = lo <= hi ? lo : 1.0;
    o->decode_rate_max = lo <= hi ? hi : 1.0;
    return ENG_OK;
}

void eng_seq_record_scores(eng_context *c, int32_t seq, bool on)
{
    if (c && seq >= 0 && seq < c->n_seq_max) c->orthorank[seq].record = on;
}

const float *eng_get_scores(const eng_context *c, int32_t i)
{
    if (!c || i < 0 || i >= c->n_tokens) return NULL;
    /* the row's sequence must be recording */
    for (int32_t g = 0; g < c->n_groups; g++) {
        const seq_group *gr = &c->groups[g];
        if (i >= gr->row0 && i < gr->row0 + gr->n)
            return c->orthorank[gr->seq].record ? c->rec_scores + (size_t)i * c->m->n_layer : NULL;
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Selection                                                                */
/* ------------------------------------------------------------------------ */

/* Whether rows of group g need sink scores at layer il. */
static bool scored(const eng_context *c, const seq_group *g, int il)
{
    const seq_orthorank *sq = &c->orthorank[g->seq];
    if (sq->record) return true;
    return sq->on && sq->layer_on[il] &&
           (sq->stats.method == ENG_ORTHORANK_METHOD_ORTHORANK || sq->stats.method == ENG_ORTHORANK_METHOD_INVERSE);
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

/* The key a row is ranked by (smaller: more deserving of the update):
 * orthorank its score, inverse minus it; NAN when there is none. */
static float sel_key(const seq_orthorank *sq, float score)
{
    return sq->stats.method == ENG_ORTHORANK_METHOD_INVERSE ? -score : score;
}

static void rate_push(rate_ctl *r, float key)
{
    if (isnan(key)) return;
    r->win[r->head] = key;
    r->head = (r->head + 1) % RATE_WIN;
    if (r->n_win < RATE_WIN) r->n_win++;
}

/* Choose the rows of a prompt chunk a sparsified layer updates: round(k*n)
 * rows, namely the sink (position 0, when in the chunk: it is the reference
 * every score is taken against, so it is always computed) and the best-ranked
 * other rows, plus the last prompt token, which the first generated token
 * depends on. With k = 1 that is every row: the dense layer. Marks chosen
 * rows in `mark` (indexed row - g->row0). */
static void select_prompt(eng_context *c, const seq_group *g, seq_orthorank *sq, int il, uint8_t *mark)
{
    const eng_batch *b = c->batch;
    const eng_orthorank_method method = sq->stats.method;
    ranked *cand = (ranked *)c->sel_tmp; /* 2 int32 per row fit one ranked */
    int32_t nc = 0, budget = (int32_t)lround((double)sq->stats.token_ratio * g->n);
    for (int32_t i = 0; i < g->n; i++) {
        int32_t t = g->row0 + i;
        if (b->pos[t] == 0) { /* the sink */
            mark[i] = 1;
            budget--;
            continue;
        }
        float key = method == ENG_ORTHORANK_METHOD_RANDOM ? (float)(rng_next(&sq->rng) >> 40)
                                                          : sel_key(sq, c->scores[t]);
        /* the chunk's keys carry on into its prompt's short chunks */
        if (method != ENG_ORTHORANK_METHOD_RANDOM) rate_push(&sq->rate[il], key);
        if (isnan(key)) key = INFINITY;
        cand[nc++] = (ranked){key, t};
    }
    if (budget > nc) budget = nc;
    if (budget < 0) budget = 0;
    qsort(cand, (size_t)nc, sizeof *cand, cmp_ranked);
    for (int32_t i = 0; i < budget; i++) mark[cand[i].row - g->row0] = 1;
    int32_t last = sq->n_prompt - 1 - g->pos0;
    if (last >= 0 && last < g->n) {
        mark[last] = 1;
        sq->rate[il].last_prompt_key = sel_key(sq, c->scores[g->row0 + last]);
    }
}

/* The running rule's constants (chosen on stories260K's --decode-eval and
 * the rate test over the random-weight models, docs/ORTHORANK_RESULTS.md):
 * how far the updated count may run ahead of / behind k times the rows
 * decided (decode: 3, so 64 decoded tokens are within 0.047 of k; rows of
 * short prompt chunks: 0.5 / 1, so short prompts get their share), how far
 * the rank cut leans against that error per row (harder when ahead: a
 * sequence whose scores drift down would otherwise keep proposing), and
 * below how many known keys a calibrated threshold ranks instead. */
#define RATE_AHEAD_DECODE 3.0
#define RATE_AHEAD_PROMPT 0.5
#define RATE_BEHIND_DECODE 3.0
#define RATE_BEHIND_PROMPT 1.0
#define RATE_GAIN (1.0 / 32)
#define RATE_GAIN_AHEAD (1.0 / 16)
#define RATE_WARM 8

/* Row t's phase begins in r: the first decode row restarts `random`'s
 * stream from the seed, and decoding starts afresh from the last prompt
 * token's key. */
static void rate_phase(seq_orthorank *sq, rate_ctl *r, bool decode)
{
    if (decode && !sq->decoding) { /* random draws of decoding do not depend on the prompt's */
        sq->decoding = true;
        sq->rng = sq->seed ^ 0xd1b54a32d192ed03ull;
    }
    if (r->decode != decode) {
        float last = r->last_prompt_key;
        *r = (rate_ctl){.decode = decode, .last_prompt_key = last};
        rate_push(r, last);
    }
}

/* key's mid-rank quantile among r's recent keys (ties count half: a
 * repeated token is not always the best). */
static double rate_quantile(const rate_ctl *r, float key)
{
    double below = 0;
    for (int32_t i = 0; i < r->n_win; i++) below += r->win[i] < key ? 1.0 : r->win[i] == key ? 0.5 : 0.0;
    return (below + 0.5) / (r->n_win + 1);
}

/* The quantile below which a row is proposed: k, leaning against the
 * error e (updates ahead of the rate). */
static double rate_cut(double k, double e)
{
    return k - e * (e > 0 ? RATE_GAIN_AHEAD : RATE_GAIN);
}

/* A proposal held to the rate: the count of updated rows stays within the
 * slack of k times the rows decided. */
static bool rate_bound(bool up, double e, double k, bool decode)
{
    if (up && e + 1 - k > (decode ? RATE_AHEAD_DECODE : RATE_AHEAD_PROMPT)) return false;
    if (!up && e - k < -(decode ? RATE_BEHIND_DECODE : RATE_BEHIND_PROMPT)) return true;
    return up;
}

static double rng_uniform(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* Row (at pos, with key) decided: counted, and its key known. */
static void rate_count(seq_orthorank *sq, rate_ctl *r, int32_t pos, float key, bool up)
{
    if (sq->stats.method != ENG_ORTHORANK_METHOD_RANDOM) rate_push(r, key);
    if (pos == sq->n_prompt - 1) r->last_prompt_key = key;
    r->seen++;
    r->updated += up;
}

/* The running rule (docs/ORTHORANK.md, "Decoding"): whether row t, decided
 * on its own, is updated at layer il. The proposal ranks the row's key
 * against the phase's last RATE_WIN keys (updated if it is in their best
 * k, the cut leaning against the error), or against the plan's calibrated
 * threshold while few keys are known; `random` proposes with probability
 * k. The proposal is then held to the rate (rate_bound). Forced rows (the
 * sink, the last prompt token) are updated and counted. */
static bool rate_decide(const eng_context *c, seq_orthorank *sq, int il, int32_t t, bool forced)
{
    const eng_orthorank_method method = sq->stats.method;
    const double k = sq->stats.token_ratio;
    const int32_t pos = c->batch->pos[t];
    const bool decode = pos >= sq->n_prompt;
    rate_ctl *r = &sq->rate[il];
    rate_phase(sq, r, decode);
    const double e = (double)r->updated - k * (double)r->seen; /* updates ahead of the rate */
    float key = sel_key(sq, c->scores[t]);
    bool up = forced;
    if (!forced) {
        const eng__orthorank_plan *plan = &c->m->orthorank;
        if (method == ENG_ORTHORANK_METHOD_RANDOM) {
            up = rng_uniform(&sq->rng) < k;
        } else if (isnan(key) || r->n_win == 0) {
            up = e < 0;
        } else if (r->n_win < RATE_WARM && method == ENG_ORTHORANK_METHOD_ORTHORANK && plan->has_thresholds &&
                   fabsf(plan->threshold_ratio - (float)k) < 1e-3f && !isnan(plan->thresholds[il])) {
            up = key < plan->thresholds[il];
        } else {
            up = rate_quantile(r, key) < rate_cut(k, e); /* the cut leans against the error */
        }
        up = rate_bound(up, e, k, decode);
    }
    rate_count(sq, r, pos, key, up);
    return up;
}

/* ------------------------------------------------------------------------ */
/* Batched decode grouping (docs/ORTHORANK.md, "Batched decode grouping")   */
/* ------------------------------------------------------------------------ */

/* Whether group g's row is decided with its cohort at layer il: one decode
 * row of a sequence that chose batch grouping and sparsifies il by tokens. */
static bool groupable(const eng_context *c, const seq_group *g, int il)
{
    const seq_orthorank *sq = &c->orthorank[g->seq];
    return g->n == 1 && sq->on && sq->layer_on[il] && sq->stats.decode_grouping == ENG_ORTHORANK_GROUPING_BATCH &&
           sq->stats.method != ENG_ORTHORANK_METHOD_LAYER_SKIP && sq->stats.decode == ENG_ORTHORANK_DECODE_THRESHOLD &&
           c->batch->pos[g->row0] >= sq->n_prompt;
}

/* How strongly a member asks for the update: its key's quantile among its
 * own recent keys (random: a uniform draw); 0.5 without any. */
static double member_quantile(const eng_context *c, seq_orthorank *sq, const rate_ctl *r, int32_t t)
{
    if (sq->stats.method == ENG_ORTHORANK_METHOD_RANDOM) return rng_uniform(&sq->rng);
    float key = sel_key(sq, c->scores[t]);
    return isnan(key) || r->n_win == 0 ? 0.5 : rate_quantile(r, key);
}

/* The cohort of the step's groupable rows at layer il with the k of group
 * `first` (marked -2 by the caller) decides together: the mean of the
 * members' quantiles is ranked against the layer's recent cohort means and
 * the layer is updated for all of them if it is in their best k, the cut
 * leaning against the members' mean error, as one sequence's rule does.
 * Each member is then held to its own rate bounds (a member at its bound
 * decides against the cohort), and counted. A cohort of one decides alone
 * (grouped = -1), exactly as without grouping. */
static void cohort_decide(eng_context *c, int il, int32_t first)
{
    const float k = c->orthorank[c->groups[first].seq].stats.token_ratio;
    int32_t n = 0;
    for (int32_t gi = first; gi < c->n_groups; gi++) {
        seq_group *g = &c->groups[gi];
        if (g->grouped == -2 && c->orthorank[g->seq].stats.token_ratio == k) {
            g->grouped = 2; /* a member, undecided */
            n++;
        }
    }
    if (n == 1) {
        c->groups[first].grouped = -1;
        return;
    }
    double u = 0, e = 0;
    for (int32_t gi = first; gi < c->n_groups; gi++) {
        seq_group *g = &c->groups[gi];
        if (g->grouped != 2) continue;
        seq_orthorank *sq = &c->orthorank[g->seq];
        rate_ctl *r = &sq->rate[il];
        rate_phase(sq, r, true);
        u += member_quantile(c, sq, r, g->row0);
        e += (double)r->updated - k * (double)r->seen;
    }
    u /= n;
    e /= n;
    rate_ctl *cr = &c->cohort[il];
    bool up = cr->n_win == 0 ? e < 0 : rate_quantile(cr, (float)u) < rate_cut(k, e);
    rate_push(cr, (float)u);
    for (int32_t gi = first; gi < c->n_groups; gi++) {
        seq_group *g = &c->groups[gi];
        if (g->grouped != 2) continue;
        seq_orthorank *sq = &c->orthorank[g->seq];
        rate_ctl *r = &sq->rate[il];
        bool dec = rate_bound(up, (double)r->updated - k * (double)r->seen, k, true);
        rate_count(sq, r, c->batch->pos[g->row0], sel_key(sq, c->scores[g->row0]), dec);
        g->grouped = dec;
    }
}

/* Every group's `grouped` for layer il: the cohorts' decisions, or -1. */
static void group_decide(eng_context *c, int il)
{
    for (int32_t gi = 0; gi < c->n_groups; gi++) c->groups[gi].grouped = groupable(c, &c->groups[gi], il) ? -2 : -1;
    for (int32_t gi = 0; gi < c->n_groups; gi++)
        if (c->groups[gi].grouped == -2) cohort_decide(c, il, gi);
}

/* Mark the rows of group g that layer il updates (all of them unless the
 * layer is sparsified for g); np of its rows are prompt rows. A prompt
 * chunk of at least min_tokens rows is selected as a whole (top-k); decode
 * rows and the rows of shorter chunks one by one by the running rule. */
static void select_group(eng_context *c, const seq_group *g, seq_orthorank *sq, int il, int32_t np, uint8_t *mark)
{
    const eng_batch *b = c->batch;
    bool sparse = sq->on && sq->layer_on[il];
    memset(mark, 0, (size_t)g->n);
    if (!sparse) {
        memset(mark, 1, (size_t)g->n);
    } else if (sq->stats.method == ENG_ORTHORANK_METHOD_LAYER_SKIP) {
        return; /* nothing */
    } else if (np == g->n && g->n >= sq->min_tokens) {
        select_prompt(c, g, sq, il, mark);
    } else {
        for (int32_t i = 0; i < g->n; i++) {
            int32_t t = g->row0 + i, pos = b->pos[t];
            bool decode = pos >= sq->n_prompt;
            if (decode && sq->stats.decode == ENG_ORTHORANK_DECODE_FULL) mark[i] = 1;
            else if (g->grouped >= 0) mark[i] = (uint8_t)g->grouped; /* decided and counted with its cohort */
            else mark[i] = rate_decide(c, sq, il, t, pos == 0 || pos == sq->n_prompt - 1);
        }
    }
}

void eng__orthorank_select(eng_context *c, int il)
{
    const eng_batch *b = c->batch;
    const int32_t T = c->n_tokens;
    uint8_t *mark = (uint8_t *)(c->sel_tmp + 2 * (size_t)T); /* after the ranked pairs */
    c->n_act = c->n_kvr = 0;
    group_decide(c, il);
    for (int32_t gi = 0; gi < c->n_groups; gi++) {
        seq_group *g = &c->groups[gi];
        seq_orthorank *sq = &c->orthorank[g->seq];
        eng_orthorank_stats *st = &sq->stats;
        g->act0 = c->n_act;
        int32_t np = 0;
        for (int32_t i = 0; i < g->n; i++) np += b->pos[g->row0 + i] < sq->n_prompt;
        if (il == 0) {
            st->prefill_tokens += (uint64_t)np;
            st->decode_tokens += (uint64_t)(g->n - np);
        }
        st->prefill_total += (uint64_t)np;
        st->decode_total += (uint64_t)(g->n - np);
        st->flops_total += (double)g->n * c->flops_layer;
        bool skip_layer = sq->on && sq->layer_on[il] && st->method == ENG_ORTHORANK_METHOD_LAYER_SKIP;
        select_group(c, g, sq, il, np, mark);
        for (int32_t i = 0; i < g->n; i++) {
            int32_t t = g->row0 + i;
            if (mark[i]) {
                c->act[c->n_act++] = t;
            } else {
                if (b->pos[t] < sq->n_prompt) st->prefill_skipped++;
                else st->decode_skipped++;
                st->flops_saved += skip_layer ? c->flops_layer : c->flops_layer - c->flops_kv;
            }
            if (!skip_layer) c->kvr[c->n_kvr++] = t;
        }
        g->act_n = c->n_act - g->act0;
    }
    c->act_all = c->n_act == T;
    c->kvr_all = c->n_kvr == T;
}

/* ------------------------------------------------------------------------ */
/* The forward pass's calls                                                 */
/* ------------------------------------------------------------------------ */

void eng__orthorank_step(eng_context *c)
{
    const eng_model *m = c->m;
    const int32_t T = c->n_tokens;
    /* Every row of every layer unless some sequence is sparsified or recorded. */
    c->orthorank_active = false;
    for (int32_t i = 0; i < c->n_groups; i++) {
        const seq_orthorank *sq = &c->orthorank[c->groups[i].seq];
        if (sq->on || sq->record) c->orthorank_active = true;
        c->groups[i].act0 = c->groups[i].row0;
        c->groups[i].act_n = c->groups[i].n;
    }
    c->act_all = c->kvr_all = true;
    c->n_act = c->n_kvr = T;
    if (c->orthorank_active) return; /* eng__orthorank_select counts, layer by layer */
    /* token counts for the stats of dense sequences */
    for (int32_t i = 0; i < c->n_groups; i++) {
        const seq_group *g = &c->groups[i];
        seq_orthorank *sq = &c->orthorank[g->seq];
        eng_orthorank_stats *st = &sq->stats;
        int32_t np = g->pos0 < sq->n_prompt ? (sq->n_prompt - g->pos0 < g->n ? sq->n_prompt - g->pos0 : g->n) : 0;
        st->prefill_tokens += (uint64_t)np;
        st->decode_tokens += (uint64_t)(g->n - np);
        st->prefill_total += (uint64_t)np * (uint64_t)m->n_layer;
        st->decode_total += (uint64_t)(g->n - np) * (uint64_t)m->n_layer;
        st->flops_total += (double)g->n * m->n_layer * c->flops_layer;
    }
}

/* |cos| between row t's normalized input and its sequence's sink. */
static float sink_score(const eng_context *c, const float *xn, const float *sink)
{
    const int64_t E = c->m->n_embd;
    double d = 0, a = 0, s = 0;
    for (int64_t i = 0; i < E; i++) {
        d += (double)xn[i] * sink[i];
        a += (double)xn[i] * xn[i];
        s += (double)sink[i] * sink[i];
    }
    if (a == 0 || s == 0) return 0.0f;
    return (float)(fabs(d) / sqrt(a * s));
}

void eng__orthorank_layer(eng_context *c, int ith, int nth, int il, const float *xn)
{
    if (!c->orthorank_active) return;
    const eng_batch *b = c->batch;
    const int64_t E = c->m->n_embd;
    int64_t r0, r1;
    /* sinks first: a chunk that holds position 0 scores against it */
    for (int32_t gi = ith; gi < c->n_groups; gi += nth) {
        const seq_group *g = &c->groups[gi];
        if (g->pos0 == 0 && scored(c, g, il))
            memcpy(c->orthorank[g->seq].sink + (size_t)il * E, xn + (size_t)g->row0 * E, E * sizeof(float));
    }
    eng__pool_barrier(c->pool);
    eng__split(c->n_tokens, ith, nth, 1, &r0, &r1);
    int32_t gi = 0;
    for (int64_t t = r0; t < r1; t++) {
        while (c->groups[gi].row0 + c->groups[gi].n <= t) gi++;
        const seq_group *g = &c->groups[gi];
        const seq_orthorank *sq = &c->orthorank[g->seq];
        float sc = NAN;
        if (scored(c, g, il) && b->pos[t] > 0) sc = sink_score(c, xn + t * E, sq->sink + (size_t)il * E);
        c->scores[t] = sc;
        if (sq->record) c->rec_scores[t * c->m->n_layer + il] = sc;
    }
    eng__pool_barrier(c->pool);
    if (ith == 0) eng__orthorank_select(c, il);
    eng__pool_barrier(c->pool);
}
