/*
 * jinja_json.h - jansson values to Jinja template values (the engine's
 * interpreter has its own value model and never sees a json_t).
 */
#ifndef ORTHOSERVE_JINJA_JSON_H
#define ORTHOSERVE_JINJA_JSON_H

#include <jansson.h>
#include <orthoserve/engine.h>

/* A copy of j in v's memory (objects keep their key order, integers stay
 * integers), or NULL when memory runs out or j is nested deeper than 128. */
eng_jinja_val *jinja_from_json(eng_jinja_vars *v, const json_t *j);

/* Every key of the object obj as a template variable, in order. */
eng_status jinja_vars_from_object(eng_jinja_vars *v, const json_t *obj);

#endif
