/*
 * jinja_json.c - jansson values to Jinja template values.
 */
#include "jinja_json.h"

static eng_jinja_val *conv(eng_jinja_vars *v, const json_t *j, int depth)
{
    if (depth > 128) return NULL;
    switch (json_typeof(j)) {
    case JSON_NULL: return eng_jinja_none(v);
    case JSON_TRUE: return eng_jinja_bool(v, true);
    case JSON_FALSE: return eng_jinja_bool(v, false);
    case JSON_INTEGER: return eng_jinja_int(v, (int64_t)json_integer_value(j));
    case JSON_REAL: return eng_jinja_float(v, json_real_value(j));
    case JSON_STRING: return eng_jinja_str(v, json_string_value(j), json_string_length(j));
    case JSON_ARRAY: {
        eng_jinja_val *l = eng_jinja_list(v);
        size_t i;
        const json_t *x;
        json_array_foreach(j, i, x) {
            if (eng_jinja_list_push(v, l, conv(v, x, depth + 1)) != ENG_OK) return NULL;
        }
        return l;
    }
    case JSON_OBJECT: {
        eng_jinja_val *d = eng_jinja_dict(v);
        const char *k;
        size_t klen;
        json_t *x;
        json_object_keylen_foreach((json_t *)j, k, klen, x) {
            if (eng_jinja_dict_set(v, d, k, klen, conv(v, x, depth + 1)) != ENG_OK) return NULL;
        }
        return d;
    }
    }
    return NULL;
}

eng_jinja_val *jinja_from_json(eng_jinja_vars *v, const json_t *j) { return j ? conv(v, j, 0) : NULL; }

eng_status jinja_vars_from_object(eng_jinja_vars *v, const json_t *obj)
{
    if (!json_is_object(obj)) return ENG_EINVAL;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)obj, k, x) {
        eng_status st = eng_jinja_vars_set(v, k, jinja_from_json(v, x));
        if (st != ENG_OK) return st;
    }
    return ENG_OK;
}
