/*
 * regex_gbnf.h - a JSON Schema "pattern" (an ECMAScript regular expression,
 * a subset) to a GBNF expression over the JSON-escaped text of a string.
 *
 * Supported: literals, escapes (\d \D \w \W \s \S \t \n \r \f \v \0 \xHH
 * \uHHHH and escaped punctuation), classes with ranges and negation, `.`,
 * `*` `+` `?` `{m}` `{m,}` `{m,n}` (lazy forms too: same language), groups
 * `( )` `(?: )` `(?<name> )`, alternation, and the anchors `^` / `$` at the
 * start / end of a top-level alternative (a side without its anchor may
 * have anything before / after it, as the pattern is searched). Refused:
 * back-references, lookaround, \b \B, anchors elsewhere, counts above
 * REGEX_MAX_COUNT. Characters the JSON text must escape come out escaped
 * (\" \\ \n \r \t); other control characters are never generated. Pure.
 */
#ifndef ORTHOSERVE_REGEX_GBNF_H
#define ORTHOSERVE_REGEX_GBNF_H

#include "sbuf.h"

#include <stddef.h>

#define REGEX_MAX_COUNT 1000 /* the largest {m,n} count accepted */

/* Append the expression (in parentheses) to out. 0, or -1 with the reason
 * in msg (out may hold a partial expression then). */
int regex_to_gbnf(const char *re, size_t len, sbuf *out, char *msg, size_t msglen);

/* Append a GBNF class (in parentheses, with escape alternatives) matching
 * one JSON-string character of the code-point ranges lo[i]..hi[i] (n of
 * them, sorted and disjoint). 0, or -1 when no character can be written. */
int regex_class_gbnf(const unsigned *lo, const unsigned *hi, size_t n, sbuf *out);

#endif
