/*
 * test_log.c - log_escape: what a client-chosen path or method looks like
 * in a log line (no line breaks, no spaces, always valid UTF-8).
 */
#include "log.h"

#include <criterion/criterion.h>
#include <string.h>

static const char *esc(const char *s)
{
    static char buf[512];
    return log_escape(s, buf, sizeof buf);
}

Test(log_escape, plain_paths_unchanged)
{
    cr_assert_str_eq(esc("/v1/chat/completions"), "/v1/chat/completions");
    cr_assert_str_eq(esc("/v1/models/caf\xc3\xa9"), "/v1/models/caf\xc3\xa9"); /* valid UTF-8 kept */
}

Test(log_escape, line_breaks_and_spaces_escaped)
{
    cr_assert_str_eq(esc("/x\northoserve: req-1 POST / 200"), "/x\\x0aorthoserve:\\x20req-1\\x20POST\\x20/\\x20200");
    cr_assert_str_eq(esc("/nope\r\nX: 1"), "/nope\\x0d\\x0aX:\\x201");
    cr_assert_str_eq(esc("a\tb\x7f\\"), "a\\x09b\\x7f\\x5c");
}

Test(log_escape, invalid_utf8_escaped)
{
    cr_assert_str_eq(esc("/\xff"), "/\\xff");
    cr_assert_str_eq(esc("/\xc3"), "/\\xc3");             /* truncated sequence */
    cr_assert_str_eq(esc("/\xc3(x"), "/\\xc3(x");         /* bad continuation */
    cr_assert_str_eq(esc("/\xed\xa0\x80"), "/\\xed\\xa0\\x80"); /* a surrogate */
}

Test(log_escape, cut_at_capacity)
{
    char small[8];
    log_escape("/abcdefghij", small, sizeof small);
    cr_assert_str_eq(small, "/abcdef");
    log_escape("/\n\n\n", small, sizeof small);
    cr_assert_str_eq(small, "/\\x0a"); /* never half an escape */
}
