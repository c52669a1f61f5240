/*
 * jsoncount.h - how many JSON values a text holds, counted without parsing
 * it: a cheap bound checked before json_loadb, whose tree costs ~80 bytes a
 * value (a 4 MiB body of "[]," would become ~110 MB). Pure function; any
 * thread.
 */
#ifndef ORTHOSERVE_JSONCOUNT_H
#define ORTHOSERVE_JSONCOUNT_H

#include <stddef.h>

/* An upper bound on the values in text[0..n) when it is valid JSON: one,
 * plus one per ',' and per '[' / '{' outside strings (escapes honoured).
 * Any text gives a number; invalid JSON is left to the parser. */
size_t json_count_values(const char *text, size_t n);

#endif
