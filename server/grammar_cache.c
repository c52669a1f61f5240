/*
 * grammar_cache.c - a small LRU of compiled grammars keyed by a 64-bit
 * FNV-1a hash of their text (the text itself is compared on a hit).
 */
#include "grammar_cache.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t hash;
    char *text;
    size_t len;
    eng_grammar *g;
    uint64_t used;      /* LRU clock, 0: empty */
} entry;

struct grammar_cache {
    pthread_mutex_t mu;
    const eng_vocab *v;
    eng_grammar_vocab *gv; /* built on first use */
    eng_grammar_limits lim;
    entry *e;
    size_t cap;
    uint64_t clock;
};

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return h;
}

grammar_cache *grammar_cache_new(const eng_vocab *v, const eng_grammar_limits *lim, size_t cap)
{
    grammar_cache *gc = calloc(1, sizeof *gc);
    if (!gc) return NULL;
    gc->e = cap ? calloc(cap, sizeof *gc->e) : NULL;
    if ((cap && !gc->e) || pthread_mutex_init(&gc->mu, NULL)) {
        free(gc->e);
        free(gc);
        return NULL;
    }
    gc->v = v;
    gc->lim = *lim;
    gc->cap = cap;
    return gc;
}

void grammar_cache_free(grammar_cache *gc)
{
    if (!gc) return;
    for (size_t i = 0; i < gc->cap; i++) {
        eng_grammar_release(gc->e[i].g);
        free(gc->e[i].text);
    }
    free(gc->e);
    eng_grammar_vocab_free(gc->gv);
    pthread_mutex_destroy(&gc->mu);
    free(gc);
}

/* The entry holding text (under the lock), or NULL. */
static entry *find(grammar_cache *gc, uint64_t h, const char *text, size_t len)
{
    for (size_t i = 0; i < gc->cap; i++) {
        entry *x = &gc->e[i];
        if (x->used && x->hash == h && x->len == len && !memcmp(x->text, text, len)) return x;
    }
    return NULL;
}

/* Keep g under text (under the lock), evicting the least recently used. */
static void insert(grammar_cache *gc, uint64_t h, const char *text, size_t len, eng_grammar *g)
{
    if (!gc->cap || find(gc, h, text, len)) return;
    entry *victim = &gc->e[0];
    for (size_t i = 0; i < gc->cap; i++)
        if (gc->e[i].used < victim->used) victim = &gc->e[i];
    char *copy = malloc(len + 1);
    if (!copy) return;
    memcpy(copy, text, len);
    copy[len] = 0;
    eng_grammar_release(victim->g);
    free(victim->text);
    eng_grammar_retain(g);
    *victim = (entry){h, copy, len, g, ++gc->clock};
}

eng_status grammar_cache_get(grammar_cache *gc, const char *text, size_t len, eng_grammar **out, bool *hit,
                             char *err, size_t errlen)
{
    *out = NULL;
    *hit = false;
    uint64_t h = fnv1a(text, len);
    pthread_mutex_lock(&gc->mu);
    eng_status st = gc->gv ? ENG_OK : eng_grammar_vocab_new(gc->v, &gc->gv);
    entry *x = st == ENG_OK ? find(gc, h, text, len) : NULL;
    if (x) {
        x->used = ++gc->clock;
        eng_grammar_retain(x->g);
        *out = x->g;
        *hit = true;
    }
    const eng_grammar_vocab *gv = gc->gv;
    pthread_mutex_unlock(&gc->mu);
    if (st != ENG_OK || x) return st;
    st = eng_grammar_new(gv, text, len, NULL, &gc->lim, out, err, errlen);
    if (st != ENG_OK) return st;
    pthread_mutex_lock(&gc->mu);
    insert(gc, h, text, len, *out);
    pthread_mutex_unlock(&gc->mu);
    return ENG_OK;
}
