/* test_chat.c - chat template detection and rendering (eng_chat_*). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "testutil.h"

/* llama.cpp's test conversation (tests/test-chat-template.cpp) */
static const eng_chat_msg conv[] = {
    {"system", "You are a helpful assistant"},
    {"user", "Hello"},
    {"assistant", "Hi there"},
    {"user", "Who are you"},
    {"assistant", "   I am an assistant   "},
    {"user", "Another question"},
};
#define NCONV (sizeof conv / sizeof conv[0])

static void expect_render(eng_chat_format f, const eng_chat_msg *m, size_t n, bool add,
                          const char *want)
{
    char *out = NULL;
    size_t len = 12345;
    eng_status st = eng_chat_apply(f, m, n, add, &out, &len);
    cr_assert_eq(st, ENG_OK, "%s: status %d", eng_chat_format_name(f), st);
    cr_assert_not_null(out);
    cr_assert_eq(len, strlen(out));
    cr_assert_str_eq(out, want, "%s:\n got: [%s]\nwant: [%s]", eng_chat_format_name(f), out,
                     want);
    eng_free(out);
}

/* ------------------------------------------------------------------------ */
/* Rendering: the standard conversation, as llama.cpp / the model templates */
/* ------------------------------------------------------------------------ */

Test(chat, chatml)
{
    expect_render(ENG_CHAT_CHATML, conv, NCONV, true,
                  "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
                  "<|im_start|>user\nHello<|im_end|>\n"
                  "<|im_start|>assistant\nHi there<|im_end|>\n"
                  "<|im_start|>user\nWho are you<|im_end|>\n"
                  "<|im_start|>assistant\n   I am an assistant   <|im_end|>\n"
                  "<|im_start|>user\nAnother question<|im_end|>\n"
                  "<|im_start|>assistant\n");
    expect_render(ENG_CHAT_CHATML, conv + 1, 2, false,
                  "<|im_start|>user\nHello<|im_end|>\n"
                  "<|im_start|>assistant\nHi there<|im_end|>\n");
}

Test(chat, llama3)
{
    expect_render(ENG_CHAT_LLAMA3, conv, NCONV, true,
                  "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n");
    expect_render(ENG_CHAT_LLAMA3, conv + 1, 1, false,
                  "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>");
}

Test(chat, llama2)
{
    /* Meta's Llama-2-chat Jinja output, leading BOS left to the tokenizer */
    const char *want = "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]"
                       " Hi there </s><s>[INST] Who are you [/INST] I am an assistant </s>"
                       "<s>[INST] Another question [/INST]";
    expect_render(ENG_CHAT_LLAMA2, conv, NCONV, true, want);
    expect_render(ENG_CHAT_LLAMA2, conv, NCONV, false, want); /* opener is empty */
    /* no system prompt; content stripped */
    const eng_chat_msg m[] = {{"user", "  Hello\n"}, {"assistant", " Hi "}, {"user", "Bye"}};
    expect_render(ENG_CHAT_LLAMA2, m, 3, true,
                  "[INST] Hello [/INST] Hi </s><s>[INST] Bye [/INST]");
    /* a system message alone */
    expect_render(ENG_CHAT_LLAMA2, conv, 1, true,
                  "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>> [/INST]");
}

Test(chat, mistral)
{
    /* llama.cpp "mistral-v3" */
    expect_render(ENG_CHAT_MISTRAL, conv, NCONV, true,
                  "[INST] You are a helpful assistant\n\nHello[/INST] Hi there</s>"
                  "[INST] Who are you[/INST] I am an assistant</s>"
                  "[INST] Another question[/INST]");
    expect_render(ENG_CHAT_MISTRAL, conv + 1, 3, true,
                  "[INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST]");
}

Test(chat, zephyr)
{
    expect_render(ENG_CHAT_ZEPHYR, conv, NCONV, true,
                  "<|system|>\nYou are a helpful assistant</s>\n"
                  "<|user|>\nHello</s>\n"
                  "<|assistant|>\nHi there</s>\n"
                  "<|user|>\nWho are you</s>\n"
                  "<|assistant|>\n   I am an assistant   </s>\n"
                  "<|user|>\nAnother question</s>\n"
                  "<|assistant|>\n");
}

Test(chat, phi3)
{
    expect_render(ENG_CHAT_PHI3, conv, NCONV, true,
                  "<|system|>\nYou are a helpful assistant<|end|>\n"
                  "<|user|>\nHello<|end|>\n"
                  "<|assistant|>\nHi there<|end|>\n"
                  "<|user|>\nWho are you<|end|>\n"
                  "<|assistant|>\n   I am an assistant   <|end|>\n"
                  "<|user|>\nAnother question<|end|>\n"
                  "<|assistant|>\n");
    expect_render(ENG_CHAT_PHI3, conv + 1, 1, false, "<|user|>\nHello<|end|>\n");
}

Test(chat, gemma)
{
    expect_render(ENG_CHAT_GEMMA, conv, NCONV, true,
                  "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n"
                  "<start_of_turn>model\nHi there<end_of_turn>\n"
                  "<start_of_turn>user\nWho are you<end_of_turn>\n"
                  "<start_of_turn>model\nI am an assistant<end_of_turn>\n"
                  "<start_of_turn>user\nAnother question<end_of_turn>\n"
                  "<start_of_turn>model\n");
    /* without a system prompt, and without the opener */
    expect_render(ENG_CHAT_GEMMA, conv + 1, 2, false,
                  "<start_of_turn>user\nHello<end_of_turn>\n"
                  "<start_of_turn>model\nHi there<end_of_turn>\n");
    /* a system prompt with no user turn after it is not lost */
    const eng_chat_msg m[] = {{"system", " Be brief. "}, {"assistant", "Ok"}};
    expect_render(ENG_CHAT_GEMMA, m, 2, true,
                  "<start_of_turn>user\nBe brief.<end_of_turn>\n"
                  "<start_of_turn>model\nOk<end_of_turn>\n"
                  "<start_of_turn>model\n");
}

Test(chat, plain)
{
    expect_render(ENG_CHAT_PLAIN, conv, NCONV, true,
                  "system: You are a helpful assistant\n"
                  "user: Hello\n"
                  "assistant: Hi there\n"
                  "user: Who are you\n"
                  "assistant:    I am an assistant   \n"
                  "user: Another question\n"
                  "assistant:");
    expect_render(ENG_CHAT_PLAIN, conv + 1, 1, false, "user: Hello\n");
}

Test(chat, empty_and_null_content)
{
    expect_render(ENG_CHAT_CHATML, NULL, 0, false, "");
    expect_render(ENG_CHAT_CHATML, NULL, 0, true, "<|im_start|>assistant\n");
    const eng_chat_msg m[] = {{"user", NULL}};
    expect_render(ENG_CHAT_CHATML, m, 1, false, "<|im_start|>user\n<|im_end|>\n");
}

Test(chat, invalid)
{
    char *out = (char *)1;
    const eng_chat_msg tool[] = {{"user", "hi"}, {"tool", "x"}};
    const eng_chat_msg nullrole[] = {{NULL, "hi"}};
    const eng_chat_msg upper[] = {{"User", "hi"}};
    for (int f = ENG_CHAT_CHATML; f <= ENG_CHAT_PLAIN; f++) {
        cr_assert_eq(eng_chat_apply((eng_chat_format)f, tool, 2, true, &out, NULL), ENG_EINVAL);
        cr_assert_null(out);
        cr_assert_eq(eng_chat_apply((eng_chat_format)f, nullrole, 1, true, &out, NULL),
                     ENG_EINVAL);
        cr_assert_eq(eng_chat_apply((eng_chat_format)f, upper, 1, true, &out, NULL), ENG_EINVAL);
    }
    cr_assert_eq(eng_chat_apply(ENG_CHAT_UNKNOWN, conv, NCONV, true, &out, NULL), ENG_EINVAL);
    cr_assert_eq(eng_chat_apply((eng_chat_format)99, conv, NCONV, true, &out, NULL), ENG_EINVAL);
    cr_assert_eq(eng_chat_apply(ENG_CHAT_CHATML, NULL, 2, true, &out, NULL), ENG_EINVAL);
    cr_assert_eq(eng_chat_apply(ENG_CHAT_CHATML, conv, NCONV, true, NULL, NULL), ENG_EINVAL);
}

Test(chat, oom_is_clean)
{
    setenv("ORTHOSERVE_FAIL_ALLOC_AT", "2", 1);
    char *out = NULL;
    /* a long message forces more than one growth step */
    static char big[5000];
    memset(big, 'x', sizeof big - 1);
    const eng_chat_msg m[] = {{"system", big}, {"user", big}};
    cr_assert_eq(eng_chat_apply(ENG_CHAT_GEMMA, m, 2, true, &out, NULL), ENG_ENOMEM);
    cr_assert_null(out);
}

/* ------------------------------------------------------------------------ */
/* Names                                                                    */
/* ------------------------------------------------------------------------ */

Test(chat, names_round_trip)
{
    const char *names[] = {"unknown", "chatml", "llama2", "llama3", "mistral",
                           "zephyr",  "phi3",   "gemma",  "plain"};
    for (int f = ENG_CHAT_UNKNOWN; f <= ENG_CHAT_PLAIN; f++) {
        const char *n = eng_chat_format_name((eng_chat_format)f);
        cr_assert_str_eq(n, names[f]);
        cr_assert_eq(eng_chat_format_from_name(n), (eng_chat_format)f);
    }
    cr_assert_eq(eng_chat_format_from_name("ChatML"), ENG_CHAT_CHATML);
    cr_assert_eq(eng_chat_format_from_name("mistral-v3"), ENG_CHAT_MISTRAL);
    cr_assert_eq(eng_chat_format_from_name("vicuna"), ENG_CHAT_UNKNOWN);
    cr_assert_eq(eng_chat_format_from_name(""), ENG_CHAT_UNKNOWN);
    cr_assert_eq(eng_chat_format_from_name(NULL), ENG_CHAT_UNKNOWN);
    cr_assert_str_eq(eng_chat_format_name((eng_chat_format)42), "unknown");
}

/* ------------------------------------------------------------------------ */
/* Detection on real (abbreviated) tokenizer.chat_template strings          */
/* ------------------------------------------------------------------------ */

/* Qwen2-7B-Instruct */
static const char *t_qwen2 =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* Meta-Llama-3-8B-Instruct */
static const char *t_llama3 =
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
    "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}";

/* Llama-2-7b-chat-hf */
static const char *t_llama2 =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}";

/* Mistral-7B-Instruct-v0.2 */
static const char *t_mistral2 =
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}";

/* Mistral-7B-Instruct-v0.3 (tool parts cut) */
static const char *t_mistral3 =
    "{%- if messages[0][\"role\"] == \"system\" %}\n"
    "    {%- set system_message = messages[0][\"content\"] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n{%- else %}\n"
    "    {%- set loop_messages = messages %}\n{%- endif %}\n"
    "{{- bos_token }}\n{%- for message in loop_messages %}\n"
    "    {%- if message[\"role\"] == \"user\" %}\n"
    "        {%- if loop.last and system_message is defined %}\n"
    "            {{- \"[INST] \" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n"
    "        {%- else %}\n"
    "            {{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}\n"
    "        {%- endif %}\n"
    "    {%- elif message[\"role\"] == \"assistant\" %}\n"
    "        {{- \" \" + message[\"content\"]|trim + eos_token}}\n"
    "    {%- endif %}\n{%- endfor %}\n";

/* HuggingFaceH4/zephyr-7b-beta */
static const char *t_zephyr =
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}";

/* a Zephyr-style template with a literal </s> */
static const char *t_zephyr_lit =
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] "
    "+ '</s>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    "{# <|user|> #}";

/* microsoft/Phi-3-mini-4k-instruct */
static const char *t_phi3 =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}"
    "{{'<|user|>' + '\\n' + message['content'] + '<|end|>' + '\\n' + '<|assistant|>' + '\\n'}}"
    "{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\\n'}}"
    "{% endif %}{% endfor %}";

/* google/gemma-7b-it */
static const char *t_gemma =
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}";

/* templates of other families */
static const char *t_vicuna =
    "{%- for message in messages %}{%- if message['role'] == 'system' -%}"
    "{{- '' + message['content'] + '\\n\\n' -}}{%- else -%}{%- if message['role'] == 'user' -%}"
    "{{-'USER: ' + message['content'] + '\\n'-}}{%- else -%}"
    "{{-'ASSISTANT: ' + message['content'] + '</s>\\n' -}}{%- endif -%}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{-'ASSISTANT:'-}}{%- endif -%}";
static const char *t_command_r =
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ '<|START_OF_TURN_TOKEN|>"
    "<|SYSTEM_TOKEN|>' + messages[0]['content'] + '<|END_OF_TURN_TOKEN|>' }}{% endif %}";
static const char *t_glmedge =
    "{% for item in messages %}{% if item['role'] == 'user' %}<|user|>\\n{{ item['content'] }}"
    "{% elif item['role'] == 'assistant' %}<|assistant|>\\n{{ item['content'] }}{% endif %}"
    "{% endfor %}<|assistant|>";

Test(chat, detect_real_templates)
{
    cr_assert_eq(eng_chat_detect(t_qwen2), ENG_CHAT_CHATML);
    cr_assert_eq(eng_chat_detect(t_llama3), ENG_CHAT_LLAMA3);
    cr_assert_eq(eng_chat_detect(t_llama2), ENG_CHAT_LLAMA2);
    cr_assert_eq(eng_chat_detect(t_mistral2), ENG_CHAT_MISTRAL);
    cr_assert_eq(eng_chat_detect(t_mistral3), ENG_CHAT_MISTRAL);
    cr_assert_eq(eng_chat_detect(t_zephyr), ENG_CHAT_ZEPHYR);
    cr_assert_eq(eng_chat_detect(t_zephyr_lit), ENG_CHAT_ZEPHYR);
    cr_assert_eq(eng_chat_detect(t_phi3), ENG_CHAT_PHI3);
    cr_assert_eq(eng_chat_detect(t_gemma), ENG_CHAT_GEMMA);
}

Test(chat, detect_unknown)
{
    cr_assert_eq(eng_chat_detect(NULL), ENG_CHAT_UNKNOWN);
    cr_assert_eq(eng_chat_detect(""), ENG_CHAT_UNKNOWN);
    cr_assert_eq(eng_chat_detect("INVALID TEMPLATE"), ENG_CHAT_UNKNOWN);
    cr_assert_eq(eng_chat_detect(t_vicuna), ENG_CHAT_UNKNOWN);
    cr_assert_eq(eng_chat_detect(t_command_r), ENG_CHAT_UNKNOWN);
    cr_assert_eq(eng_chat_detect(t_glmedge), ENG_CHAT_UNKNOWN);
}

Test(chat, detect_then_render)
{
    /* the detected format renders the conversation the way the template would */
    char *out = NULL;
    cr_assert_eq(eng_chat_apply(eng_chat_detect(t_gemma), conv + 1, 1, true, &out, NULL), ENG_OK);
    cr_assert_str_eq(out, "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n");
    eng_free(out);
}

/* Files without a template: the family their architecture is trained on
 * (the server's default, and `orthoserve info`'s). */
Test(chat, family_for_arch)
{
    cr_assert_eq(eng_chat_for_arch("qwen3"), ENG_CHAT_CHATML);
    cr_assert_eq(eng_chat_for_arch("qwen2"), ENG_CHAT_CHATML);
    cr_assert_eq(eng_chat_for_arch("gemma3"), ENG_CHAT_GEMMA);
    cr_assert_eq(eng_chat_for_arch("phi3"), ENG_CHAT_PHI3);
    cr_assert_eq(eng_chat_for_arch("llama"), ENG_CHAT_UNKNOWN, "llama models come in several families");
    cr_assert_eq(eng_chat_for_arch("gemma2"), ENG_CHAT_UNKNOWN);
    cr_assert_eq(eng_chat_for_arch(NULL), ENG_CHAT_UNKNOWN);
}
