/*
 * sampler.c - token sampling (eng_sampler_*) and log-probabilities
 * (eng_logprobs).
 *
 * Pipeline of eng_sampler_sample, on a private copy of the logits:
 *   1. logit biases are added (-INFINITY bans a token);
 *   2. penalties over the last repeat_last_n accepted tokens (each distinct
 *      token once): repetition (llama.cpp: l > 0 ? l / rp : l * rp), then
 *      OpenAI presence/frequency (l -= presence * (count > 0) + frequency * count);
 *   3. temperature <= 0: argmax (ties to the lowest id), no randomness used;
 *   4. otherwise l / temperature, then top-k, top-p, min-p over the
 *      survivors, then one draw from the softmax of what is left.
 * NaN logits are treated as -INFINITY. If the maximum is +INFINITY (or a
 * division by a tiny temperature overflows) the lowest-id maximal token is
 * returned. When every token is banned the call fails with ENG_EINVAL.
 *
 * Candidates are ordered by (logit descending, id ascending), a strict
 * total order, so every selection step is deterministic. Nothing is sorted
 * in full: top-k is a quickselect; top-p is a quickselect steered by
 * probability mass (expected O(n)); min-p is a linear threshold filter,
 * applied before the top-p step, which gives the same set as top-p then
 * min-p (both keep a prefix of the sorted order, and the top-p mass stays
 * normalised over everything that survived top-k). Tokens whose weight is
 * below e^-60 of the best one are never candidates (their total mass is
 * below double rounding), which keeps peaked 150k-vocab distributions cheap.
 *
 * Randomness: xoshiro256** seeded through splitmix64; every non-greedy
 * sample consumes exactly one 64-bit draw, so the token sequence depends only
 * on the seed and the logits (and accepted history), never on other state.
 * All buffers are sized for n_vocab in eng_sampler_new; sampling allocates
 * nothing.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float s;    /* logit after transforms */
    int32_t id;
    float w;    /* exp(s - max s) */
} cand;

struct eng_sampler {
    eng_sampler_params p;
    int32_t n_vocab;
    eng_logit_bias *bias;   /* copy of p.logit_bias */
    size_t n_bias;
    bool penalties_on;

    float *work;            /* n_vocab: transformed logits */
    cand *cands;            /* n_vocab */

    /* penalty window: counts of each token among the last `win` accepted ones */
    int32_t win;            /* > 0: ring size; -1: whole history; 0: off */
    int32_t *ring;          /* win entries (win > 0) */
    int32_t ring_head, ring_len;
    int32_t *counts;        /* n_vocab */
    int32_t *uniq;          /* distinct tokens with count > 0 */
    int32_t *uniq_pos;      /* n_vocab: index into uniq, or -1 */
    int32_t n_uniq;

    uint64_t rng[4];        /* xoshiro256** state */
};

/* ------------------------------------------------------------------------ */
/* PRNG                                                                     */
/* ------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4])
{
    const uint64_t result = rotl64(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

/* uniform double in [0, 1) with 53 random bits */
static double rng_uniform(uint64_t s[4])
{
    return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53;
}

/* ------------------------------------------------------------------------ */
/* Ordering, selection, sorting (no allocation)                             */
/* ------------------------------------------------------------------------ */

/* a comes before b: higher logit first, then lower id */
static inline bool cand_before(const cand *a, const cand *b)
{
    return a->s > b->s || (a->s == b->s && a->id < b->id);
}

static inline void cand_swap(cand *a, cand *b)
{
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Pivot choice only affects speed, never the result (the order is total). */
static inline size_t pivot_index(uint64_t *st, size_t lo, size_t hi)
{
    *st = *st * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (size_t)((*st >> 33) % (uint64_t)(hi - lo));
}

/* Lomuto partition of a[lo, hi) around a pseudo-random pivot; returns the
 * pivot's final index (elements before it come before it in the order). */
static size_t partition(cand *a, size_t lo, size_t hi, uint64_t *st)
{
    size_t pi = pivot_index(st, lo, hi);
    cand_swap(&a[pi], &a[hi - 1]);
    const cand pv = a[hi - 1];
    size_t store = lo;
    for (size_t i = lo; i + 1 < hi; i++) {
        if (cand_before(&a[i], &pv)) {
            cand_swap(&a[i], &a[store]);
            store++;
        }
    }
    cand_swap(&a[store], &a[hi - 1]);
    return store;
}

/* Rearrange a[lo, hi) so that a[lo, k) holds the best (k - lo) elements
 * (in any order) and every one of them comes before every element of a[k, hi). */
static void select_top(cand *a, size_t lo, size_t hi, size_t k, uint64_t *st)
{
    while (hi - lo > 1 && k > lo && k < hi) {
        size_t p = partition(a, lo, hi, st);
        if (p == k || p + 1 == k) return;
        if (p > k) hi = p;
        else lo = p + 1;
    }
}

static void insertion_sort(cand *a, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        cand x = a[i];
        size_t j = i;
        while (j > 0 && cand_before(&x, &a[j - 1])) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = x;
    }
}

/* Quicksort (best first); recurses on the smaller side, so depth is O(log n). */
static void sort_cands(cand *a, size_t n, uint64_t *st)
{
    while (n > 16) {
        size_t p = partition(a, 0, n, st);
        size_t left = p, right = n - p - 1;
        if (left < right) {
            sort_cands(a, left, st);
            a += p + 1;
            n = right;
        } else {
            sort_cands(a + p + 1, right, st);
            n = left;
        }
    }
    insertion_sort(a, n);
}

/* ------------------------------------------------------------------------ */
/* Construction                                                             */
/* ------------------------------------------------------------------------ */

eng_sampler_params eng_sampler_default_params(void)
{
    eng_sampler_params p;
    memset(&p, 0, sizeof p);
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.presence_penalty = 0.0f;
    p.frequency_penalty = 0.0f;
    p.seed = 0;
    p.logit_bias = NULL;
    p.n_logit_bias = 0;
    return p;
}

void eng_sampler_free(eng_sampler *s)
{
    if (!s) return;
    free(s->bias);
    free(s->work);
    free(s->cands);
    free(s->ring);
    free(s->counts);
    free(s->uniq);
    free(s->uniq_pos);
    free(s);
}

/* Largest penalty window accepted (tokens); larger values mean "everything". */
#define MAX_WINDOW (1 << 24)

bool eng__sampler_params_ok(const eng_sampler_params *p, int32_t n_vocab)
{
    if (isnan(p->temperature) || isinf(p->temperature)) return false;
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) return false;       /* also NaN */
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f)) return false;
    if (!(p->repeat_penalty > 0.0f) || isinf(p->repeat_penalty)) return false;
    if (p->repeat_last_n < -1) return false;
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f)) return false;
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f)) return false;
    if (p->n_logit_bias > 0 && !p->logit_bias) return false;
    for (size_t i = 0; i < p->n_logit_bias; i++) {
        const eng_logit_bias *b = &p->logit_bias[i];
        if (b->token < 0 || b->token >= n_vocab) return false;
        if (isnan(b->bias) || (isinf(b->bias) && b->bias > 0)) return false;
    }
    return true;
}

eng_status eng_sampler_new(const eng_sampler_params *p, int32_t n_vocab, eng_sampler **out)
{
    if (out) *out = NULL;
    if (!p || !out || n_vocab <= 0) return ENG_EINVAL;
    if (!eng__sampler_params_ok(p, n_vocab)) return ENG_EINVAL;

    eng_sampler *s = eng__calloc(1, sizeof *s);
    if (!s) return ENG_ENOMEM;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->p.logit_bias = NULL;
    s->n_bias = p->n_logit_bias;
    s->penalties_on = p->repeat_last_n != 0 &&
                      (p->repeat_penalty != 1.0f || p->presence_penalty != 0.0f ||
                       p->frequency_penalty != 0.0f);
    s->win = p->repeat_last_n;
    if (s->win > MAX_WINDOW) s->win = -1;

    size_t nv = (size_t)n_vocab;
    if (s->n_bias > 0) {
        s->bias = eng__malloc(s->n_bias * sizeof *s->bias);
        if (!s->bias) goto oom;
        memcpy(s->bias, p->logit_bias, s->n_bias * sizeof *s->bias);
    }
    s->work = eng__malloc(nv * sizeof *s->work);
    s->cands = eng__malloc(nv * sizeof *s->cands);
    if (!s->work || !s->cands) goto oom;
    if (s->penalties_on) {
        if (s->win > 0) {
            s->ring = eng__malloc((size_t)s->win * sizeof *s->ring);
            if (!s->ring) goto oom;
        }
        s->counts = eng__calloc(nv, sizeof *s->counts);
        s->uniq = eng__malloc(nv * sizeof *s->uniq);
        s->uniq_pos = eng__malloc(nv * sizeof *s->uniq_pos);
        if (!s->counts || !s->uniq || !s->uniq_pos) goto oom;
        for (size_t i = 0; i < nv; i++) s->uniq_pos[i] = -1;
    }

    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);

    *out = s;
    return ENG_OK;
oom:
    eng_sampler_free(s);
    return ENG_ENOMEM;
}

/* ------------------------------------------------------------------------ */
/* History                                                                  */
/* ------------------------------------------------------------------------ */

static void count_add(eng_sampler *s, int32_t t)
{
    if (s->counts[t]++ == 0) {
        s->uniq_pos[t] = s->n_uniq;
        s->uniq[s->n_uniq++] = t;
    }
}

static void count_remove(eng_sampler *s, int32_t t)
{
    if (--s->counts[t] == 0) {
        int32_t pos = s->uniq_pos[t];
        int32_t last = s->uniq[--s->n_uniq];
        s->uniq[pos] = last;
        s->uniq_pos[last] = pos;
        s->uniq_pos[t] = -1;
    }
}

void eng_sampler_accept(eng_sampler *s, int32_t token)
{
    if (!s || !s->penalties_on || token < 0 || token >= s->n_vocab) return;
    if (s->win > 0) {
        if (s->ring_len == s->win) {
            count_remove(s, s->ring[s->ring_head]);
            s->ring[s->ring_head] = token;
            s->ring_head = (s->ring_head + 1) % s->win;
        } else {
            s->ring[(s->ring_head + s->ring_len) % s->win] = token;
            s->ring_len++;
        }
    }
    count_add(s, token);
}

/* ------------------------------------------------------------------------ */
/* Sampling                                                                 */
/* ------------------------------------------------------------------------ */

static void apply_penalties(eng_sampler *s, float *l)
{
    const float rp = s->p.repeat_penalty;
    const float pres = s->p.presence_penalty, freq = s->p.frequency_penalty;
    for (int32_t i = 0; i < s->n_uniq; i++) {
        int32_t t = s->uniq[i];
        int32_t c = s->counts[t];
        float v = l[t];
        if (rp != 1.0f) v = v > 0.0f ? v / rp : v * rp;
        v -= (float)c * freq + (c > 0 ? pres : 0.0f);
        l[t] = v;
    }
}

/* Largest value of l[0, n), -INFINITY if none (NaN never wins). Eight
 * independent lanes so the loop is not one long dependency chain; max is
 * exact, so the lane split cannot change the result. */
static float max_value(const float *l, int32_t n)
{
    float m[8];
    for (int j = 0; j < 8; j++) m[j] = -INFINITY;
    int32_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) m[j] = l[i + j] > m[j] ? l[i + j] : m[j];
    for (; i < n; i++) m[0] = l[i] > m[0] ? l[i] : m[0];
    float r = m[0];
    for (int j = 1; j < 8; j++) r = m[j] > r ? m[j] : r;
    return r;
}

/* top-k up to this size is taken with a heap during the scan */
#define HEAP_K_MAX 1024

/* sift down in a heap whose root is the candidate that comes last */
static void heap_down(cand *h, size_t n, size_t i)
{
    for (;;) {
        size_t w = i, a = 2 * i + 1, b = a + 1;
        if (a < n && cand_before(&h[w], &h[a])) w = a;
        if (b < n && cand_before(&h[w], &h[b])) w = b;
        if (w == i) return;
        cand_swap(&h[i], &h[w]);
        i = w;
    }
}

/* The best k tokens with l[i] * inv_t >= thr, into h[0, returned count), in
 * heap order. Ids are visited in ascending order, so a newcomer with the same
 * value as the current last one comes after it and is rejected. */
static size_t heap_top_k(const float *l, int32_t nv, float inv_t, float thr, cand *h, size_t k)
{
    size_t n = 0;
    for (int32_t i = 0; i < nv; i++) {
        float v = l[i] * inv_t;
        if (!(v >= thr)) continue;
        if (n < k) {
            /* sift up */
            size_t j = n++;
            h[j].s = v;
            h[j].id = i;
            while (j > 0) {
                size_t parent = (j - 1) / 2;
                if (!cand_before(&h[parent], &h[j])) break;
                cand_swap(&h[parent], &h[j]);
                j = parent;
            }
            if (n == k) thr = h[0].s; /* from now on only strictly better values */
            continue;
        }
        if (!(v > h[0].s)) continue;
        h[0].s = v;
        h[0].id = i;
        heap_down(h, n, 0);
        thr = h[0].s;
    }
    return n;
}

/*
 * Top-p without sorting: the smallest prefix of a[0, n) in candidate order
 * whose mass reaches target (= top_p * Z, same units as the weights) is
 * moved to the front and its length returned. A quickselect that steers by
 * accumulated mass instead of by rank: expected O(n).
 */
static size_t top_p_select(cand *a, size_t n, double target, uint64_t *st)
{
    size_t lo = 0, hi = n;
    double acc = 0.0; /* mass of a[0, lo), all of which is kept */
    while (hi - lo > 16) {
        size_t p = partition(a, lo, hi, st);
        double m = 0.0;
        for (size_t i = lo; i < p; i++) m += a[i].w;
        if (acc + m >= target) {
            hi = p; /* crossing point is before the pivot */
        } else if (acc + m + a[p].w >= target) {
            return p + 1;
        } else {
            acc += m + a[p].w;
            lo = p + 1;
        }
    }
    sort_cands(a + lo, hi - lo, st);
    for (size_t i = lo; i < hi; i++) {
        acc += a[i].w;
        if (acc >= target) return i + 1;
    }
    return hi; /* rounding: keep what is left of the range */
}

/* Top-p with a cheap first try: the tokens with at least 1/1024 of the best
 * weight form a prefix of the candidate order; when they already hold the
 * target mass the answer lies among them, and only they are searched. */
static size_t top_p(cand *a, size_t n, double target, uint64_t *st)
{
    if (n > 4096) {
        const float t = 1.0f / 1024.0f;
        double m = 0.0;
        size_t cnt = 0;
        for (size_t i = 0; i < n; i++) {
            if (a[i].w >= t) {
                m += a[i].w;
                cnt++;
            }
        }
        if (m >= target && cnt < n) {
            size_t k = 0;
            for (size_t i = 0; i < n; i++)
                if (a[i].w >= t) cand_swap(&a[k++], &a[i]);
            return top_p_select(a, cnt, target, st);
        }
    }
    return top_p_select(a, n, target, st);
}

/* Steps 1-2 when there is anything to apply: s->work = logits + biases +
 * penalties. Returns the array to sample from. NaN needs no mapping: every
 * comparison below is false for NaN, so such a token is never a candidate. */
static const float *prepare_logits(eng_sampler *s, const float *logits)
{
    bool pen = s->penalties_on && s->n_uniq > 0;
    if (s->n_bias == 0 && !pen) return logits;
    float *l = s->work;
    memcpy(l, logits, (size_t)s->n_vocab * sizeof *l);
    for (size_t i = 0; i < s->n_bias; i++) l[s->bias[i].token] += s->bias[i].bias;
    if (pen) apply_penalties(s, l);
    return l;
}

/* Test hook, deliberately in no header (the unit tests declare it): the
 * logits eng_sampler_sample would work from after biases and penalties. */
eng_status eng__sampler_debug_logits(eng_sampler *s, const float *logits, float *out);
eng_status eng__sampler_debug_logits(eng_sampler *s, const float *logits, float *out)
{
    if (!s || !logits || !out) return ENG_EINVAL;
    const float *l = prepare_logits(s, logits);
    memcpy(out, l, (size_t)s->n_vocab * sizeof *out);
    return ENG_OK;
}

/* Tokens whose weight relative to the best is below e^-CUTOFF are not made
 * candidates: even 2^31 of them hold less mass than double rounding of the
 * best token's weight, so no draw can tell the difference. */
#define CUTOFF 60.0f

eng_status eng_sampler_sample(eng_sampler *s, const float *logits, int32_t *token)
{
    if (!s || !logits || !token) return ENG_EINVAL;
    const int32_t nv = s->n_vocab;
    const float *l = prepare_logits(s, logits);

    /* argmax, ties to the lowest id; also tells whether anything is left */
    float bestv = max_value(l, nv);
    if (!(bestv > -INFINITY)) return ENG_EINVAL; /* every token banned (or NaN) */
    int32_t best = 0;
    while (!(l[best] == bestv)) best++;

    if (s->p.temperature <= 0.0f) {
        *token = best;
        return ENG_OK;
    }

    /* one draw per stochastic sample, whatever the candidate count */
    const double u = rng_uniform(s->rng);

    /* temperature; a +inf maximum (given, or from overflow) is degenerate */
    const float inv_t = 1.0f / s->p.temperature;
    const float smax = bestv * inv_t;
    if (isinf(smax)) {
        *token = best;
        return ENG_OK;
    }
    const float thr = smax - CUTOFF;
    cand *c = s->cands;
    size_t n = 0;
    uint64_t st = 0x853c49e6748fea9bULL; /* pivot stream: speed only */
    const int32_t top_k = s->p.top_k;

    if (top_k > 0 && top_k <= HEAP_K_MAX && top_k < nv) {
        n = heap_top_k(l, nv, inv_t, thr, c, (size_t)top_k);
    } else {
        for (int32_t i = 0; i < nv; i++) {
            float v = l[i] * inv_t;
            if (v >= thr) {
                c[n].s = v;
                c[n].id = i;
                n++;
            }
        }
        if (top_k > 0 && (size_t)top_k < n) {
            select_top(c, 0, n, (size_t)top_k, &st);
            n = (size_t)top_k;
        }
    }

    /* top-p mass is relative to everything that survived top-k */
    double z = 0.0;
    const bool use_top_p = s->p.top_p < 1.0f && n > 1;
    if (use_top_p) {
        for (size_t i = 0; i < n; i++) {
            c[i].w = expf(c[i].s - smax);
            z += c[i].w;
        }
    }

    if (s->p.min_p > 0.0f && n > 1) {
        const double mthr = (double)smax + log((double)s->p.min_p);
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if ((double)c[i].s >= mthr) c[k++] = c[i];
        n = k; /* the maximum always survives */
    }

    if (!use_top_p)
        for (size_t i = 0; i < n; i++) c[i].w = expf(c[i].s - smax);
    else if (n > 1)
        n = top_p(c, n, (double)s->p.top_p * z, &st);

    /* draw from the softmax of the survivors */
    double w = 0.0;
    for (size_t i = 0; i < n; i++) w += c[i].w;
    const double r = u * w;
    double acc = 0.0;
    for (size_t i = 0; i < n; i++) {
        acc += c[i].w;
        if (r < acc) {
            *token = c[i].id;
            return ENG_OK;
        }
    }
    *token = c[n - 1].id; /* rounding */
    return ENG_OK;
}

/* ------------------------------------------------------------------------ */
/* Log-probabilities                                                        */
/* ------------------------------------------------------------------------ */

static inline float clean(float v) { return isnan(v) ? -INFINITY : v; }

eng_status eng_logprobs(const float *logits, int32_t n_vocab, int32_t token, float *lp,
                        int32_t n_top, int32_t *top_ids, float *top_lps)
{
    if (!logits || n_vocab <= 0 || n_top < 0 || n_top > n_vocab) return ENG_EINVAL;
    if (lp && (token < 0 || token >= n_vocab)) return ENG_EINVAL;
    if (n_top > 0 && (!top_ids || !top_lps)) return ENG_EINVAL;

    float m = -INFINITY;
    int32_t n_posinf = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        float v = clean(logits[i]);
        if (v > m) m = v;
        if (v == INFINITY) n_posinf++;
    }
    if (m == -INFINITY) return ENG_EINVAL; /* no token has any probability */

    /* log p(i) = l_i - lse, lse = m + log(sum exp(l - m)) in double */
    double lse;
    if (n_posinf > 0) {
        lse = 0.0; /* handled per element below */
    } else {
        double sum = 0.0;
        for (int32_t i = 0; i < n_vocab; i++) {
            float v = clean(logits[i]);
            if (v != -INFINITY) sum += exp((double)v - (double)m);
        }
        lse = (double)m + log(sum);
    }
#define LOGP(v)                                                                     \
    (n_posinf > 0 ? ((v) == INFINITY ? (float)-log((double)n_posinf) : -INFINITY)   \
                  : ((v) == -INFINITY ? -INFINITY : (float)((double)(v) - lse)))

    if (lp) *lp = LOGP(clean(logits[token]));

    if (n_top > 0) {
        /* insertion into a list kept sorted by (logit desc, id asc); ids are
         * visited in ascending order, so an equal logit never moves ahead */
        int32_t have = 0;
        float *keys = top_lps; /* raw logits while scanning, converted after */
        for (int32_t i = 0; i < n_vocab; i++) {
            float v = clean(logits[i]);
            if (have == n_top && !(v > keys[have - 1])) continue;
            int32_t j = have < n_top ? have++ : n_top - 1;
            while (j > 0 && v > keys[j - 1]) {
                keys[j] = keys[j - 1];
                top_ids[j] = top_ids[j - 1];
                j--;
            }
            keys[j] = v;
            top_ids[j] = i;
        }
        for (int32_t j = 0; j < n_top; j++) top_lps[j] = LOGP(keys[j]);
    }
#undef LOGP
    return ENG_OK;
}
