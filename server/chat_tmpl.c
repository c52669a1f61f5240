/*
 * chat_tmpl.c - the model's own chat template rendered from a chat request:
 * the request's JSON normalised (content parts to text, tool-call arguments
 * to objects) and converted to template variables in transformers' order.
 */
#include "chat_tmpl.h"
#include "jinja_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct chat_tmpl {
    eng_jinja *t;
    char *bos, *eos;
    tc_format tool_fmt;
    bool thinking;
};

chat_tmpl *chat_tmpl_new(const char *src, size_t len, const char *bos, const char *eos, char *err, size_t errlen)
{
    chat_tmpl *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    eng_jinja_error je;
    eng_status st = eng_jinja_parse(src, len, &c->t, &je);
    if (st != ENG_OK) {
        snprintf(err, errlen, "%s", st == ENG_ENOMEM ? "out of memory" : je.msg);
        free(c);
        return NULL;
    }
    /* the markers are looked for in the source (NUL-terminated copy) */
    char *copy = malloc(len + 1);
    bool copied = copy != NULL;
    if (copied) {
        memcpy(copy, src, len);
        copy[len] = 0;
        c->tool_fmt = tc_detect(copy);
        c->thinking = tc_detect_thinking(copy);
        free(copy);
    }
    if (!copied || (bos && !(c->bos = strdup(bos))) || (eos && !(c->eos = strdup(eos)))) {
        chat_tmpl_free(c);
        goto oom;
    }
    return c;
oom:
    snprintf(err, errlen, "out of memory");
    return NULL;
}

void chat_tmpl_free(chat_tmpl *t)
{
    if (!t) return;
    eng_jinja_free(t->t);
    free(t->bos);
    free(t->eos);
    free(t);
}

const char *chat_tmpl_bos(const chat_tmpl *t) { return t->bos; }
tc_format chat_tmpl_tool_format(const chat_tmpl *t) { return t->tool_fmt; }
bool chat_tmpl_thinking(const chat_tmpl *t) { return t->thinking; }

/* content as an array of {"type": "text", "text"} parts -> one string;
 * NULL after filling msg when a part is not text. */
static json_t *flatten_parts(const json_t *content, char *msg, size_t msglen)
{
    size_t total = 0, i;
    const json_t *p;
    json_array_foreach(content, i, p) {
        const json_t *type = json_object_get(p, "type"), *txt = json_object_get(p, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") || !json_is_string(txt)) {
            snprintf(msg, msglen, "content parts must be of type 'text' with a string 'text'");
            return NULL;
        }
        total += json_string_length(txt) + 1;
    }
    char *buf = malloc(total + 1);
    if (!buf) return NULL;
    size_t n = 0;
    json_array_foreach(content, i, p) {
        const json_t *txt = json_object_get(p, "text");
        if (i) buf[n++] = '\n';
        memcpy(buf + n, json_string_value(txt), json_string_length(txt));
        n += json_string_length(txt);
    }
    json_t *s = json_stringn(buf, n);
    free(buf);
    return s;
}

/* tool_calls[].function.arguments strings that hold a JSON object, parsed. */
static void object_arguments(json_t *m)
{
    size_t i;
    json_t *tc;
    json_array_foreach(json_object_get(m, "tool_calls"), i, tc) {
        json_t *fn = json_object_get(tc, "function"), *args = json_object_get(fn, "arguments");
        if (!json_is_string(args)) continue;
        json_t *obj = json_loadb(json_string_value(args), json_string_length(args), 0, NULL);
        if (json_is_object(obj)) json_object_set_new(fn, "arguments", obj);
        else json_decref(obj);
    }
}

/* The messages as the template gets them (a new array), or NULL: msg filled
 * (refused) or left empty (no memory). */
static json_t *normalise_messages(const json_t *msgs, bool obj_args, bool empty_null, const char **param, char *msg,
                                  size_t msglen)
{
    *param = "messages";
    if (!json_is_array(msgs) || !json_array_size(msgs)) {
        snprintf(msg, msglen, "'messages' must be a non-empty array");
        return NULL;
    }
    json_t *out = json_deep_copy(msgs);
    if (!out) return NULL;
    size_t i;
    json_t *m;
    json_array_foreach(out, i, m) {
        if (!json_is_object(m) || !json_is_string(json_object_get(m, "role"))) {
            snprintf(msg, msglen, "'messages[%zu]' must be an object with a string 'role'", i);
            goto fail;
        }
        json_t *c = json_object_get(m, "content");
        if (json_is_array(c)) {
            json_t *s = flatten_parts(c, msg, msglen);
            if (!s) goto fail;
            json_object_set_new(m, "content", s);
        } else if (c && !json_is_string(c) && !json_is_null(c)) {
            snprintf(msg, msglen, "'messages[%zu].content' must be a string, null or an array of text parts", i);
            goto fail;
        }
        if (obj_args) object_arguments(m);
        if (empty_null && json_is_null(c)) json_object_set_new(m, "content", json_string(""));
    }
    return out;
fail:
    json_decref(out);
    return NULL;
}

static eng_status set_json(eng_jinja_vars *v, const char *name, const json_t *j)
{
    return eng_jinja_vars_set(v, name, j ? jinja_from_json(v, j) : eng_jinja_none(v));
}

/* The variables in transformers' order; later keys win. */
static eng_status build_vars(const chat_tmpl *t, eng_jinja_vars *v, const json_t *body, const json_t *msgs)
{
    const json_t *tools = json_object_get(body, "tools"), *agp = json_object_get(body, "add_generation_prompt");
    const json_t *kw = json_object_get(body, "chat_template_kwargs");
    eng_status st = set_json(v, "messages", msgs);
    if (st == ENG_OK) st = set_json(v, "tools", json_is_array(tools) && json_array_size(tools) ? tools : NULL);
    if (st == ENG_OK) st = set_json(v, "documents", NULL);
    if (st == ENG_OK)
        st = eng_jinja_vars_set(v, "add_generation_prompt", eng_jinja_bool(v, json_is_boolean(agp) ? json_is_true(agp) : true));
    if (st == ENG_OK && t->bos) st = eng_jinja_vars_set(v, "bos_token", eng_jinja_str(v, t->bos, strlen(t->bos)));
    if (st == ENG_OK && t->eos) st = eng_jinja_vars_set(v, "eos_token", eng_jinja_str(v, t->eos, strlen(t->eos)));
    if (st == ENG_OK && json_is_object(kw)) st = jinja_vars_from_object(v, kw);
    return st;
}

static int render_once(const chat_tmpl *t, const json_t *body, bool obj_args, bool empty_null, char **out,
                       size_t *len, const char **param, char *msg, size_t msglen)
{
    msg[0] = 0;
    json_t *msgs = normalise_messages(json_object_get(body, "messages"), obj_args, empty_null, param, msg, msglen);
    if (!msgs) return msg[0] ? -1 : -2;
    eng_jinja_vars *v = eng_jinja_vars_new();
    eng_status st = v ? build_vars(t, v, body, msgs) : ENG_ENOMEM;
    eng_jinja_error err;
    if (st == ENG_OK) {
        st = eng_jinja_render(t->t, v, NULL, out, len, &err);
        if (st == ENG_EINVAL) snprintf(msg, msglen, "%s%s", err.raised ? "" : "chat template error: ", err.msg);
    }
    eng_jinja_vars_free(v);
    json_decref(msgs);
    if (st == ENG_OK) return 0;
    return st == ENG_ENOMEM ? -2 : -1;
}

int chat_tmpl_render(const chat_tmpl *t, const json_t *body, char **out, size_t *len, const char **param, char *msg,
                     size_t msglen)
{
    *out = NULL;
    *len = 0;
    *param = "messages";
    const json_t *kw = json_object_get(body, "chat_template_kwargs");
    if (kw && !json_is_null(kw) && !json_is_object(kw)) {
        *param = "chat_template_kwargs";
        snprintf(msg, msglen, "'chat_template_kwargs' must be an object");
        return -1;
    }
    int rc = render_once(t, body, true, false, out, len, param, msg, msglen);
    if (rc != -1 || !msg[0] || strcmp(*param, "messages")) return rc;
    /* Templates that fail on what OpenAI clients send: a null content next
     * to tool_calls (Qwen3 tests '</think>' in it), string arguments
     * (functionary concatenates them). The first error is the one reported. */
    char first[512];
    snprintf(first, sizeof first, "%s", msg);
    rc = render_once(t, body, true, true, out, len, param, msg, msglen);
    if (rc == -1) rc = render_once(t, body, false, true, out, len, param, msg, msglen);
    if (rc == -1) snprintf(msg, msglen, "%s", first);
    return rc;
}
