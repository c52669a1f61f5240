/*
 * schema_gbnf.h - JSON Schema to GBNF text (which the engine compiles with
 * eng_grammar_new): the structured-output compiler of response_format
 * json_schema, the llama.cpp-style "json_schema" field and json_object.
 *
 * Enforced: type (object, array, string, number, integer, boolean, null,
 * and lists of them), properties (in the order the schema lists them),
 * required, additionalProperties (absent or false: closed objects; true or
 * a schema: further keys that differ from the declared ones), enum, const,
 * anyOf, oneOf (when its branches cannot overlap: disjoint types, or a
 * required property with distinct constants), allOf over objects, $ref to
 * "#", "#/$defs/...", "#/definitions/..." or any JSON pointer into the
 * document (recursion included), items, prefixItems, minItems, maxItems,
 * minLength, maxLength, pattern (regex_gbnf.h), format (date, time,
 * date-time, uuid, email, ipv4), integer minimum / maximum /
 * exclusiveMinimum / exclusiveMaximum, nullable. Annotations (title,
 * description, default, examples, $schema, $id, $comment, deprecated,
 * readOnly, writeOnly) are ignored. Every other keyword is refused, with
 * its JSON pointer. Whitespace between tokens is bounded (at most one
 * newline and 20 spaces or tabs, or one space). Pure: no state kept.
 */
#ifndef ORTHOSERVE_SCHEMA_GBNF_H
#define ORTHOSERVE_SCHEMA_GBNF_H

#include <jansson.h>
#include <stddef.h>

typedef struct {
    int max_depth;    /* nesting of subschemas followed (through $ref too) */
    int max_rules;    /* GBNF rules written */
    size_t max_bytes; /* GBNF text written */
    long max_count;   /* the largest minItems / maxItems / minLength / maxLength enforced */
} schema_limits;

/* Compile schema to GBNF (NUL-terminated, *gbnf to free()). 0, or -1 with
 * the JSON pointer of the offending place ("" is the root; "/properties/a")
 * in pointer and the reason in msg (the keyword named in it). */
int schema_to_gbnf(json_t *schema, const schema_limits *lim, char **gbnf, char *pointer, size_t plen, char *msg,
                   size_t mlen);

/* The grammar of response_format json_object: any JSON object. Static text. */
const char *schema_json_object_gbnf(void);

#endif
