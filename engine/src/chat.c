/*
 * chat.c - chat template detection (eng_chat_detect) and rendering
 * (eng_chat_apply) for the common template families, without a Jinja
 * interpreter.
 *
 * Rendering rules, per family ("trim" removes leading and trailing ASCII
 * whitespace, as Jinja's |trim and Python's str.strip() do). The BOS token a
 * template puts at the very start is never emitted: the tokenizer adds it.
 * Tokens inside the text ("<s>", "</s>", "<|eot_id|>", ...) are meant to be
 * tokenized with parse_special.
 *
 *   CHATML   per message: "<|im_start|>" role "\n" content "<|im_end|>\n"
 *            assistant opener: "<|im_start|>assistant\n"
 *   LLAMA3   per message: "<|start_header_id|>" role "<|end_header_id|>\n\n"
 *            trim(content) "<|eot_id|>"
 *            opener: "<|start_header_id|>assistant<|end_header_id|>\n\n"
 *   LLAMA2   Meta's Llama-2-chat template. System messages are held and
 *            prefixed to the next user message as
 *            "<<SYS>>\n" system "\n<</SYS>>\n\n"; then
 *            user:      "<s>" "[INST] " trim(prefix + content) " [/INST]"
 *                       (the "<s>" is left out when it would start the text)
 *            assistant: " " trim(content) " </s>"
 *            System text not followed by a user message becomes a user turn of
 *            its own. The opener is empty: " [/INST]" already ends each user
 *            turn.
 *   MISTRAL  llama.cpp's "mistral-v3" rendering (Mistral 7B v0.3, Mixtral,
 *            Mistral Large), system folded into the first user turn:
 *            "[INST] " opens a turn (at the start and after each assistant
 *            message), then system: content "\n\n"; user: content "[/INST]";
 *            assistant: " " trim(content) "</s>". Opener empty.
 *   ZEPHYR   per message: "<|" role "|>\n" content "</s>\n"; opener "<|assistant|>\n"
 *   PHI3     per message: "<|" role "|>\n" content "<|end|>\n"; opener "<|assistant|>\n"
 *   GEMMA    roles user/model ("assistant" -> "model"); per message:
 *            "<start_of_turn>" role "\n" trim(content) "<end_of_turn>\n".
 *            System messages (trimmed, joined by "\n\n") are held and
 *            prefixed as system "\n\n" to the next user message; if a model
 *            turn or the end comes first they become a user turn of their
 *            own. Opener "<start_of_turn>model\n".
 *   PLAIN    fallback for models without a template: per message
 *            role ": " content "\n"; opener "assistant:" (no trailing space
 *            or newline).
 *
 * These match llama.cpp's llama_chat_apply_template for chatml, llama3,
 * mistral-v3, zephyr, phi3 and gemma. For Llama 2 we follow the model's own
 * Jinja template (" Hi </s><s>[INST] ...") rather than llama.cpp's
 * llama2-sys-strip variant, which drops those spaces and inner BOS tokens.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Names and detection                                                      */
/* ------------------------------------------------------------------------ */

static const struct {
    eng_chat_format f;
    const char *name;
} format_names[] = {
    {ENG_CHAT_UNKNOWN, "unknown"}, {ENG_CHAT_CHATML, "chatml"}, {ENG_CHAT_LLAMA2, "llama2"},
    {ENG_CHAT_LLAMA3, "llama3"},   {ENG_CHAT_MISTRAL, "mistral"}, {ENG_CHAT_ZEPHYR, "zephyr"},
    {ENG_CHAT_PHI3, "phi3"},       {ENG_CHAT_GEMMA, "gemma"},   {ENG_CHAT_PLAIN, "plain"},
};

/* Extra spellings accepted by eng_chat_format_from_name (llama.cpp names). */
static const struct {
    eng_chat_format f;
    const char *name;
} format_aliases[] = {
    {ENG_CHAT_MISTRAL, "mistral-v3"},
    {ENG_CHAT_LLAMA2, "llama2-sys"},
    {ENG_CHAT_PHI3, "phi-3"},
};

const char *eng_chat_format_name(eng_chat_format f)
{
    for (size_t i = 0; i < sizeof format_names / sizeof format_names[0]; i++)
        if (format_names[i].f == f) return format_names[i].name;
    return "unknown";
}

static bool ascii_ieq(const char *a, const char *b)
{
    for (;; a++, b++) {
        unsigned char x = (unsigned char)*a, y = (unsigned char)*b;
        if (x >= 'A' && x <= 'Z') x = (unsigned char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = (unsigned char)(y - 'A' + 'a');
        if (x != y) return false;
        if (!x) return true;
    }
}

eng_chat_format eng_chat_format_from_name(const char *name)
{
    if (!name) return ENG_CHAT_UNKNOWN;
    for (size_t i = 0; i < sizeof format_names / sizeof format_names[0]; i++)
        if (ascii_ieq(name, format_names[i].name)) return format_names[i].f;
    for (size_t i = 0; i < sizeof format_aliases / sizeof format_aliases[0]; i++)
        if (ascii_ieq(name, format_aliases[i].name)) return format_aliases[i].f;
    return ENG_CHAT_UNKNOWN;
}

/*
 * Markers, checked in this order (a template matching an earlier rule is
 * never tested against a later one):
 *   "<|im_start|>"                               -> CHATML
 *   "<|start_header_id|>"                        -> LLAMA3
 *   "<start_of_turn>"                            -> GEMMA
 *   "<|user|>" and "<|end|>"                     -> PHI3
 *   "<|user|>" and ("</s>" or "eos_token")       -> ZEPHYR
 *   "[INST]" and "<<SYS>>"                       -> LLAMA2
 *   "[INST]"                                     -> MISTRAL
 */
eng_chat_format eng_chat_detect(const char *tmpl)
{
    if (!tmpl) return ENG_CHAT_UNKNOWN;
#define HAS(s) (strstr(tmpl, (s)) != NULL)
    if (HAS("<|im_start|>")) return ENG_CHAT_CHATML;
    if (HAS("<|start_header_id|>")) return ENG_CHAT_LLAMA3;
    if (HAS("<start_of_turn>")) return ENG_CHAT_GEMMA;
    if (HAS("<|user|>")) {
        if (HAS("<|end|>")) return ENG_CHAT_PHI3;
        if (HAS("</s>") || HAS("eos_token")) return ENG_CHAT_ZEPHYR;
        return ENG_CHAT_UNKNOWN;
    }
    if (HAS("[INST]")) return HAS("<<SYS>>") ? ENG_CHAT_LLAMA2 : ENG_CHAT_MISTRAL;
#undef HAS
    return ENG_CHAT_UNKNOWN;
}

/*
 * The family a model of an architecture is trained on, for files that carry
 * no tokenizer.chat_template: qwen2 / qwen3 -> CHATML (Qwen3's default
 * thinking mode opens the assistant turn exactly as ChatML does), gemma3 ->
 * GEMMA, phi3 -> PHI3. llama is used by models of several families (Llama 2,
 * Llama 3, Mistral, TinyLlama, SmolLM), so it has none (ENG_CHAT_UNKNOWN).
 */
eng_chat_format eng_chat_for_arch(const char *arch)
{
    if (!arch) return ENG_CHAT_UNKNOWN;
    if (!strcmp(arch, "qwen2") || !strcmp(arch, "qwen3")) return ENG_CHAT_CHATML;
    if (!strcmp(arch, "gemma3")) return ENG_CHAT_GEMMA;
    if (!strcmp(arch, "phi3")) return ENG_CHAT_PHI3;
    return ENG_CHAT_UNKNOWN;
}

/* ------------------------------------------------------------------------ */
/* Trimming (the text is built in an eng__buf)                              */
/* ------------------------------------------------------------------------ */

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* trimmed view of s */
static void trim_view(const char *s, size_t n, const char **ts, size_t *tn)
{
    size_t a = 0, e = n;
    while (a < e && is_space(s[a])) a++;
    while (e > a && is_space(s[e - 1])) e--;
    *ts = s + a;
    *tn = e - a;
}

static void put_trimmed(eng__buf *b, const char *s)
{
    const char *t;
    size_t n;
    trim_view(s, strlen(s), &t, &n);
    eng__buf_append(b, t, n);
}

/* ------------------------------------------------------------------------ */
/* Rendering                                                                */
/* ------------------------------------------------------------------------ */

typedef enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT } role_t;

static bool parse_role(const char *r, role_t *out)
{
    if (!r) return false;
    if (!strcmp(r, "system")) *out = ROLE_SYSTEM;
    else if (!strcmp(r, "user")) *out = ROLE_USER;
    else if (!strcmp(r, "assistant")) *out = ROLE_ASSISTANT;
    else return false;
    return true;
}

static const char *role_name(role_t r)
{
    return r == ROLE_SYSTEM ? "system" : r == ROLE_USER ? "user" : "assistant";
}

static const char *msg_content(const eng_chat_msg *m) { return m->content ? m->content : ""; }

/* One Llama 2 user turn: "[INST] " strip(sys block + content) " [/INST]",
 * with "<s>" in front unless it starts the text. sys are the held system
 * messages (may be none); content may be NULL (a system-only turn). */
static void llama2_user(eng__buf *b, const eng_chat_msg *sys, size_t n_sys, const char *content)
{
    eng__buf t = {0};
    if (n_sys > 0) {
        eng__buf_puts(&t, "<<SYS>>\n");
        for (size_t j = 0; j < n_sys; j++) {
            if (j > 0) eng__buf_puts(&t, "\n\n");
            eng__buf_puts(&t, msg_content(&sys[j]));
        }
        eng__buf_puts(&t, "\n<</SYS>>\n\n");
    }
    if (content) eng__buf_puts(&t, content);
    if (t.oom) {
        b->oom = true;
        eng__buf_free(&t);
        return;
    }
    if (b->len > 0) eng__buf_puts(b, "<s>");
    eng__buf_puts(b, "[INST] ");
    if (t.data) {
        const char *ts;
        size_t tn;
        trim_view(t.data, t.len, &ts, &tn);
        eng__buf_append(b, ts, tn);
    }
    eng__buf_puts(b, " [/INST]");
    eng__buf_free(&t);
}

static void render_llama2(eng__buf *b, const eng_chat_msg *msgs, size_t n)
{
    size_t sys_first = 0, n_sys = 0; /* held run of consecutive system messages */
    for (size_t i = 0; i < n; i++) {
        role_t r;
        parse_role(msgs[i].role, &r);
        if (r == ROLE_SYSTEM) {
            if (n_sys == 0) sys_first = i;
            n_sys++;
        } else if (r == ROLE_USER) {
            llama2_user(b, msgs + sys_first, n_sys, msg_content(&msgs[i]));
            n_sys = 0;
        } else {
            if (n_sys > 0) { /* system text with no user turn before this reply */
                llama2_user(b, msgs + sys_first, n_sys, NULL);
                n_sys = 0;
            }
            eng__buf_puts(b, " ");
            put_trimmed(b, msg_content(&msgs[i]));
            eng__buf_puts(b, " </s>");
        }
    }
    if (n_sys > 0) llama2_user(b, msgs + sys_first, n_sys, NULL);
}

static void render_mistral(eng__buf *b, const eng_chat_msg *msgs, size_t n)
{
    bool inside = false;
    for (size_t i = 0; i < n; i++) {
        role_t r;
        parse_role(msgs[i].role, &r);
        if (!inside) {
            eng__buf_puts(b, "[INST] ");
            inside = true;
        }
        const char *c = msg_content(&msgs[i]);
        if (r == ROLE_SYSTEM) {
            eng__buf_puts(b, c);
            eng__buf_puts(b, "\n\n");
        } else if (r == ROLE_USER) {
            eng__buf_puts(b, c);
            eng__buf_puts(b, "[/INST]");
        } else {
            eng__buf_puts(b, " ");
            put_trimmed(b, c);
            eng__buf_puts(b, "</s>");
            inside = false;
        }
    }
}

static void gemma_turn(eng__buf *b, const char *role, const eng__buf *prefix, const char *content)
{
    eng__buf_puts(b, "<start_of_turn>");
    eng__buf_puts(b, role);
    eng__buf_puts(b, "\n");
    if (prefix && prefix->len > 0) {
        eng__buf_append(b, prefix->data, prefix->len);
        if (content) eng__buf_puts(b, "\n\n");
    }
    if (content) put_trimmed(b, content);
    eng__buf_puts(b, "<end_of_turn>\n");
}

static void render_gemma(eng__buf *b, const eng_chat_msg *msgs, size_t n, bool add_assistant)
{
    eng__buf sys = {0};
    for (size_t i = 0; i < n; i++) {
        role_t r;
        parse_role(msgs[i].role, &r);
        const char *c = msg_content(&msgs[i]);
        if (r == ROLE_SYSTEM) {
            if (sys.len > 0) eng__buf_puts(&sys, "\n\n");
            put_trimmed(&sys, c);
            continue;
        }
        if (r == ROLE_USER) {
            gemma_turn(b, "user", &sys, c);
        } else {
            if (sys.len > 0) gemma_turn(b, "user", &sys, NULL);
            gemma_turn(b, "model", NULL, c);
        }
        sys.len = 0;
    }
    if (sys.len > 0) gemma_turn(b, "user", &sys, NULL);
    if (sys.oom) b->oom = true;
    eng__buf_free(&sys);
    if (add_assistant) eng__buf_puts(b, "<start_of_turn>model\n");
}

eng_status eng_chat_apply(eng_chat_format f, const eng_chat_msg *msgs, size_t n,
                          bool add_assistant, char **out, size_t *out_len)
{
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (!out || (n > 0 && !msgs)) return ENG_EINVAL;
    if (f <= ENG_CHAT_UNKNOWN || f > ENG_CHAT_PLAIN) return ENG_EINVAL;
    for (size_t i = 0; i < n; i++) {
        role_t r;
        if (!parse_role(msgs[i].role, &r)) return ENG_EINVAL;
    }

    eng__buf b = {0};
    switch (f) {
    case ENG_CHAT_CHATML:
        for (size_t i = 0; i < n; i++) {
            eng__buf_puts(&b, "<|im_start|>");
            eng__buf_puts(&b, msgs[i].role);
            eng__buf_puts(&b, "\n");
            eng__buf_puts(&b, msg_content(&msgs[i]));
            eng__buf_puts(&b, "<|im_end|>\n");
        }
        if (add_assistant) eng__buf_puts(&b, "<|im_start|>assistant\n");
        break;
    case ENG_CHAT_LLAMA3:
        for (size_t i = 0; i < n; i++) {
            eng__buf_puts(&b, "<|start_header_id|>");
            eng__buf_puts(&b, msgs[i].role);
            eng__buf_puts(&b, "<|end_header_id|>\n\n");
            put_trimmed(&b, msg_content(&msgs[i]));
            eng__buf_puts(&b, "<|eot_id|>");
        }
        if (add_assistant) eng__buf_puts(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case ENG_CHAT_LLAMA2:
        render_llama2(&b, msgs, n);
        break;
    case ENG_CHAT_MISTRAL:
        render_mistral(&b, msgs, n);
        break;
    case ENG_CHAT_ZEPHYR:
    case ENG_CHAT_PHI3:
        for (size_t i = 0; i < n; i++) {
            role_t r;
            parse_role(msgs[i].role, &r);
            eng__buf_puts(&b, "<|");
            eng__buf_puts(&b, role_name(r));
            eng__buf_puts(&b, "|>\n");
            eng__buf_puts(&b, msg_content(&msgs[i]));
            eng__buf_puts(&b, f == ENG_CHAT_ZEPHYR ? "</s>\n" : "<|end|>\n");
        }
        if (add_assistant) eng__buf_puts(&b, "<|assistant|>\n");
        break;
    case ENG_CHAT_GEMMA:
        render_gemma(&b, msgs, n, add_assistant);
        break;
    case ENG_CHAT_PLAIN:
        for (size_t i = 0; i < n; i++) {
            eng__buf_puts(&b, msgs[i].role);
            eng__buf_puts(&b, ": ");
            eng__buf_puts(&b, msg_content(&msgs[i]));
            eng__buf_puts(&b, "\n");
        }
        if (add_assistant) eng__buf_puts(&b, "assistant:");
        break;
    default:
        return ENG_EINVAL;
    }

    size_t len = b.len;
    *out = eng__buf_take(&b); /* "" when nothing was rendered */
    if (!*out) return ENG_ENOMEM;
    if (out_len) *out_len = len;
    return ENG_OK;
}
