/*
 * api_template.c - POST /apply-template: {"messages", "tools",
 * "chat_template_kwargs", "add_generation_prompt"} in, {"prompt": text} out,
 * rendered as a chat completion's prompt would be (the model's Jinja template,
 * else the built-in family, which takes string contents and the roles
 * system, user and assistant only).
 */
#include "api_template.h"
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The built-in family: messages as {role, content string}. */
static void builtin(hreq *r, json_t *body)
{
    json_t *msgs = json_object_get(body, "messages"), *agp = json_object_get(body, "add_generation_prompt");
    size_t n = json_array_size(msgs);
    if (!n) {
        http_reply_error(r, 400, "invalid_request_error", "invalid_value", "messages",
                         "'messages' must be a non-empty array");
        return;
    }
    eng_chat_msg *cm = calloc(n, sizeof *cm);
    if (!cm) {
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i), *role = json_object_get(m, "role"), *c = json_object_get(m, "content");
        if (!json_is_string(role) || !(json_is_string(c) || json_is_null(c))) {
            free(cm);
            http_reply_error(r, 400, "invalid_request_error", "invalid_type", "messages",
                             "'messages[%zu]' needs a string 'role' and 'content'", i);
            return;
        }
        cm[i].role = strcmp(json_string_value(role), "developer") ? json_string_value(role) : "system";
        cm[i].content = json_is_string(c) ? json_string_value(c) : "";
    }
    char *text = NULL;
    size_t len = 0;
    eng_status st = eng_chat_apply(r->s->chat_fmt, cm, n, json_is_boolean(agp) ? json_is_true(agp) : true, &text, &len);
    free(cm);
    if (st != ENG_OK) {
        http_reply_error(r, 400, "invalid_request_error", "invalid_value", "messages",
                         "the messages could not be rendered with the '%s' template (roles: system, user, assistant)",
                         eng_chat_format_name(r->s->chat_fmt));
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "prompt", json_stringn(text, len));
    eng_free(text);
    http_reply_json(r, 200, o);
}

void api_apply_template(hreq *r)
{
    srv *s = r->s;
    if (s->state == SRV_LOADING || !s->vocab) {
        http_reply_error(r, 503, "unavailable_error", "loading", NULL, "the model is still loading");
        return;
    }
    json_t *body = r->json;
    json_t *tools = json_object_get(body, "tools");
    if (tools && !json_is_null(tools) && !json_is_array(tools)) {
        http_reply_error(r, 400, "invalid_request_error", "invalid_type", "tools", "'tools' must be an array");
        return;
    }
    if (!s->tmpl) {
        if (json_array_size(tools)) {
            http_reply_error(r, 400, "invalid_request_error", "not_supported", "tools",
                             "tools need the model's own chat template (this model has none)");
            return;
        }
        builtin(r, body);
        return;
    }
    char *text = NULL, msg[512];
    size_t len = 0;
    const char *param = "messages";
    int rc = chat_tmpl_render(s->tmpl, body, &text, &len, &param, msg, sizeof msg);
    if (rc == -2) {
        http_reply_error(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    if (rc) {
        http_reply_error(r, 400, "invalid_request_error", "invalid_value", param, "%s", msg);
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "prompt", json_stringn(text, len));
    eng_free(text);
    http_reply_json(r, 200, o);
}
