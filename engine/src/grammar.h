/*
 * grammar.h - the grammar modules' shared internals (never included by
 * server/): the byte-level grammar IR that grammar.c builds from GBNF text,
 * the parse-stack arena grammar_match.c advances byte by byte, and the
 * vocabulary token trie grammar_mask.c walks to compute token masks.
 *
 * The IR is a context-free grammar over bytes. Rule r has alternatives
 * alt_start[rule_alt[r]] .. alt_start[rule_alt[r + 1] - 1]; an alternative
 * is a run of elements ending in GE_END. A GE_BYTES element matches one byte
 * in its 256-bit set; a GE_RULE element expands rule arg. Code-point classes
 * of the GBNF text become rules over UTF-8 byte sequences, so the matcher
 * and the masks work on bytes alone (a token may end inside a character).
 */
#ifndef ORTHOSERVE_GRAMMAR_H
#define ORTHOSERVE_GRAMMAR_H

#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>

enum { GE_END = 0, GE_BYTES = 1, GE_RULE = 2 };

typedef struct {
    uint8_t kind;   /* GE_* */
    int32_t arg;    /* GE_BYTES: byte-set index; GE_RULE: rule id; GE_END: owning rule */
} gelem;

typedef struct {
    uint32_t w[8];  /* bit b: byte b matches */
} gbyteset;

static inline bool gbs_has(const gbyteset *s, unsigned b) { return (s->w[b >> 5] >> (b & 31)) & 1u; }

/* The compiled grammar, before any vocabulary work. */
typedef struct {
    gelem *el;          /* (n_el) */
    int32_t n_el;
    int32_t *alt_start; /* (n_alt) element index of each alternative's first element */
    int32_t n_alt;
    int32_t *rule_alt;  /* (n_rule + 1) first alternative of each rule */
    int32_t n_rule;
    gbyteset *sets;     /* (n_set) */
    int32_t n_set;
    int32_t root;       /* the start rule */
} gir;

void eng__gir_free(gir *g);
/* Parse GBNF text into g (root: the start rule's name, NULL: "root").
 * ENG_EINVAL with a message (the line and column, or the limit exceeded). */
eng_status eng__gir_parse(const char *text, size_t len, const char *root, const eng_grammar_limits *lim, gir *g,
                          char *err, size_t errlen);

/* ------------------------------------------------------------------------ */
/* Parse stacks (grammar_match.c)                                           */
/* ------------------------------------------------------------------------ */

#define GSTK_ROOT (-1)  /* the parent of a bottom frame: popping it accepts */
#define GSTK_CUT (-2)   /* the parent of a rule-local bottom frame (mask precomputation) */

/* A frame: the element to match (or return to) and the frame below. Frames
 * are hash-consed, so equal stacks are equal indices. */
typedef struct {
    int32_t pos, parent, depth;
} gnode;

typedef struct {
    int32_t pos, parent; /* a stack whose top is a GE_BYTES element */
} gstack;

/* An arena of frames; scratch frames above a mark are dropped by rewinding. */
typedef struct {
    const gir *g;
    gnode *nodes;
    int32_t *next;      /* (cap) hash chain */
    int32_t *head;      /* (n_bucket) */
    int32_t n, cap, n_bucket;
    int32_t max_depth, max_stacks;
    bool oom;
    int64_t work;       /* expansion steps so far (bounds the work of one mask) */
} garena;

/* The result of advancing a set of stacks: the new set and two flags. */
typedef struct {
    gstack *s;
    int32_t n, cap;
    bool accept;        /* a path popped GSTK_ROOT: the input so far is a sentence */
    bool cut;           /* a path popped GSTK_CUT: the rule may end here */
    bool overflow;      /* paths beyond max_stacks were dropped */
} gset;

/* The frame (pos, parent), made if needed; -1 past max_depth or out of memory. */
int32_t eng__garena_frame(garena *a, int32_t pos, int32_t parent);
eng_status eng__garena_init(garena *a, const gir *g, int32_t max_depth, int32_t max_stacks);
void eng__garena_free(garena *a);
/* Drop frames >= mark (made after it) from the arena and its hash. */
void eng__garena_rewind(garena *a, int32_t mark);
/* out = the stacks reached from frame (pos, parent) without consuming a byte. */
void eng__gset_expand(garena *a, gset *out, int32_t pos, int32_t parent);
/* out = in advanced by byte b (out is cleared first). */
void eng__gset_advance(garena *a, const gset *in, unsigned b, gset *out);
bool eng__gset_reserve(gset *s, int32_t n);
void eng__gset_free(gset *s);

/* ------------------------------------------------------------------------ */
/* Vocabulary tries and compiled grammars (grammar_mask.c)                  */
/* ------------------------------------------------------------------------ */

typedef struct {
    uint8_t byte;
    uint16_t depth;     /* 1 for the root's children */
    int32_t skip;       /* index of the first node after this subtree */
    int32_t tok0, ntok; /* tokens whose bytes end here: ids[tok0 .. tok0 + ntok) */
} gtrie_node;

struct eng_grammar_vocab {
    const eng_vocab *v;
    int32_t n_vocab;
    uint8_t **bytes;    /* (n_vocab) each token's bytes (NULL: no bytes, never allowed) */
    uint16_t *len;      /* (n_vocab) */
    bool *eog;          /* (n_vocab) */
    int32_t *eog_ids;   /* (n_eog) the end-of-generation tokens */
    int32_t n_eog;
    gtrie_node *trie;   /* (n_trie) preorder */
    int32_t n_trie;
    int32_t *ids;       /* tokens in trie order */
    int32_t max_len;    /* the longest token in bytes */
};

/* What tokens do from the top GTAB_K frames of a stack (its context),
 * whatever lies below them. */
#define GTAB_K 3

typedef struct {
    int32_t key[GTAB_K];  /* the top frames' positions, then GSTK_ROOT if the stack ends (or GSTK_CUT) */
    bool ready;
    uint32_t *acc_bits; /* always accepted: a bitmap, or NULL with ... */
    int32_t *acc;       /* ... a list of ids */
    int32_t n_acc;
    int32_t *unc;       /* depend on the frames below: checked per step */
    int32_t n_unc;
} gpos_cache;

struct eng_grammar {
    atomic_int refs;
    const eng_grammar_vocab *gv;
    gir ir;
    eng_grammar_limits lim;
    pthread_mutex_t mu;     /* guards the tables */
    gpos_cache *tab;        /* (n_tab_cap) open addressing by key, filled on first use */
    uint32_t n_tab, n_tab_cap;
};

/* One sequence's parse state. */
struct eng_matcher {
    eng_grammar *g;
    garena a;
    gset cur;           /* the committed stacks (frames below mark) */
    int32_t mark;       /* frames >= mark are scratch */
    int32_t live;       /* frames after the last compaction */
    gset run[2];        /* scratch of eng__matcher_run */
    gset *lvl;          /* (n_lvl) per-depth sets of a trie walk */
    int32_t n_lvl;
    int32_t *lvl_mark;  /* (n_lvl) arena size after each level's set */
    int32_t *gc_map;
    int32_t gc_cap;
};

extern int32_t eng__grammar_max_tables;      /* tables a grammar keeps (grammar_mask.c) */
extern int64_t eng__grammar_mask_work_max;   /* expansion steps of one table build / one mask's checks */
const gset *eng__matcher_run(eng_matcher *m, const gset *from, const uint8_t *s, size_t n);

#endif
