/*
 * grammar_cache.h - compiled structured-output grammars, kept by the hash
 * of their GBNF text so that a schema sent again is not compiled again.
 *
 * DESIGN: request validation runs on worker threads, so the cache is
 * locked by a mutex. The vocabulary's token table (eng_grammar_vocab) is
 * built on first use. A miss compiles outside the lock (so one slow
 * grammar does not stall the others); the least recently used entry goes
 * when the cache is full. Entries hold a reference to their grammar, and
 * callers get a reference of their own.
 */
#ifndef ORTHOSERVE_GRAMMAR_CACHE_H
#define ORTHOSERVE_GRAMMAR_CACHE_H

#include "orthoserve/engine.h"

#include <stddef.h>

typedef struct grammar_cache grammar_cache;

/* A cache of at most cap grammars (0: nothing kept) for vocabulary v, with
 * the bounds every compile obeys. NULL when memory runs out. */
grammar_cache *grammar_cache_new(const eng_vocab *v, const eng_grammar_limits *lim, size_t cap);
void grammar_cache_free(grammar_cache *gc);

/* The grammar of text (len bytes): *out is a reference the caller drops
 * with eng_grammar_release(); *hit tells whether it came from the cache.
 * ENG_EINVAL with the reason in err (a grammar error), ENG_ENOMEM. */
eng_status grammar_cache_get(grammar_cache *gc, const char *text, size_t len, eng_grammar **out, bool *hit,
                             char *err, size_t errlen);

#endif
