/* Criterion tests for server/textbuf.c: UTF-8 boundaries, U+FFFD, stop strings. */
#include "textbuf.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

/* Push pieces one by one, collecting what is released after each push. */
static char *run(const char *const *stops, size_t n_stops, const char *const *pieces, size_t n, bool *stopped)
{
    textbuf *tb = textbuf_new(stops, n_stops);
    cr_assert(tb);
    char *out = calloc(1, 4096);
    for (size_t i = 0; i < n; i++) {
        textbuf_push(tb, pieces[i], strlen(pieces[i]));
        size_t len;
        const char *t = textbuf_take(tb, &len);
        cr_assert(utf8_valid_prefix(t, len) == len, "released text must be valid UTF-8");
        strncat(out, t, len);
    }
    textbuf_finish(tb);
    size_t len;
    const char *t = textbuf_take(tb, &len);
    strncat(out, t, len);
    if (stopped) *stopped = textbuf_stopped(tb);
    textbuf_free(tb);
    return out;
}

Test(textbuf, plain_passthrough, .timeout = 10)
{
    const char *p[] = {"Hello", ", ", "world"};
    char *o = run(NULL, 0, p, 3, NULL);
    cr_assert_str_eq(o, "Hello, world");
    free(o);
}

Test(textbuf, split_multibyte_is_held, .timeout = 10)
{
    textbuf *tb = textbuf_new(NULL, 0);
    size_t len;
    textbuf_push(tb, "\xE6\x9D", 2); /* first two bytes of U+6771 */
    textbuf_take(tb, &len);
    cr_assert_eq(len, 0);
    textbuf_push(tb, "\xB1x", 2);
    const char *t = textbuf_take(tb, &len);
    cr_assert_eq(len, 4);
    cr_assert(!memcmp(t, "\xE6\x9D\xB1x", 4));
    textbuf_free(tb);
}

Test(textbuf, invalid_bytes_become_replacement, .timeout = 10)
{
    const char *p[] = {"a\xFF", "b\xC0\xAF", "c\xE6\x9D"}; /* stray, overlong, truncated at the end */
    char *o = run(NULL, 0, p, 3, NULL);
    cr_assert_str_eq(o, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xEF\xBF\xBD" "c\xEF\xBF\xBD");
    free(o);
}

Test(textbuf, stop_within_piece, .timeout = 10)
{
    const char *s[] = {"STOP"};
    const char *p[] = {"abc STOP def"};
    bool st;
    char *o = run(s, 1, p, 1, &st);
    cr_assert_str_eq(o, "abc ");
    cr_assert(st);
    free(o);
}

Test(textbuf, stop_across_pieces_is_held_back, .timeout = 10)
{
    const char *s[] = {"named Lily"};
    textbuf *tb = textbuf_new(s, 1);
    size_t len;
    textbuf_push(tb, "a girl na", 9);
    const char *t = textbuf_take(tb, &len);
    cr_assert_eq(len, 7); /* "a girl " released, "na" held */
    cr_assert(!memcmp(t, "a girl ", 7));
    textbuf_push(tb, "med Li", 6);
    textbuf_take(tb, &len);
    cr_assert_eq(len, 0);
    cr_assert(textbuf_push(tb, "ly.", 3));
    textbuf_take(tb, &len);
    cr_assert_eq(len, 0);
    cr_assert(textbuf_stopped(tb));
    textbuf_free(tb);
}

Test(textbuf, false_start_is_released, .timeout = 10)
{
    const char *s[] = {"<end>"};
    const char *p[] = {"x <en", "d? no", " <e"};
    bool st;
    char *o = run(s, 1, p, 3, &st);
    cr_assert_str_eq(o, "x <end? no <e");
    cr_assert(!st);
    free(o);
}

Test(textbuf, earliest_of_several_stops, .timeout = 10)
{
    const char *s[] = {"world", "lo"};
    const char *p[] = {"hel", "lo world"};
    char *o = run(s, 2, p, 2, NULL);
    cr_assert_str_eq(o, "hel");
    free(o);
}

Test(textbuf, multibyte_stop_string, .timeout = 10)
{
    const char *s[] = {"\xE6\x9D\xB1\xE4\xBA\xAC"}; /* 東京 */
    const char *p[] = {"go \xE6", "\x9D\xB1\xE4\xBA", "\xAC now"};
    bool st;
    char *o = run(s, 1, p, 3, &st);
    cr_assert_str_eq(o, "go ");
    cr_assert(st);
    free(o);
}

Test(textbuf, sanitize, .timeout = 10)
{
    size_t n;
    char *c = utf8_sanitize("ok\xF0\x9F\x90", 5, &n);
    cr_assert_str_eq(c, "ok\xEF\xBF\xBD");
    free(c);
    cr_assert_eq(utf8_count("\xC3\xA9t\xC3\xA9", 5), 3);
}

/* Found by fuzz_textbuf (regressions/fuzz_textbuf/stop-overlap-chunking):
 * with several stop strings in one push, the one that started first won,
 * so "xxabcd" in one push stopped at "abcd" (output "xx") while the same
 * bytes token by token stopped at "bc" (output "xxa"). The stop string
 * completed first decides, however the bytes are split. */
Test(textbuf, overlapping_stops_do_not_depend_on_chunking, .timeout = 10)
{
    const char *s[] = {"abcd", "c", "bc"};
    const char *whole[] = {"xxabcd"}, *split[] = {"xxa", "bcd"}, *bytes[] = {"x", "x", "a", "b", "c", "d"};
    bool st;
    char *o = run(s, 3, whole, 1, &st);
    cr_assert_str_eq(o, "xxa");
    cr_assert(st);
    free(o);
    o = run(s, 3, split, 2, &st);
    cr_assert_str_eq(o, "xxa");
    free(o);
    o = run(s, 3, bytes, 6, &st);
    cr_assert_str_eq(o, "xxa");
    free(o);
    /* Same end: the longer one (it starts first). */
    const char *s2[] = {"bc", "abc"};
    const char *p2[] = {"zabc"};
    o = run(s2, 2, p2, 1, &st);
    cr_assert_str_eq(o, "z");
    free(o);
}

/* Found by fuzz_textbuf (regressions/fuzz_textbuf/stop-invalid-utf8): a stop
 * string that is not valid UTF-8 was matched as raw bytes against decoded
 * text, so a lone continuation byte matched inside a character and the
 * output ended in half of it. Stop strings are now decoded like the text. */
Test(textbuf, stop_strings_are_matched_as_text, .timeout = 10)
{
    const char *s[] = {"\x80"}; /* decodes to U+FFFD */
    const char *p[] = {"a\xC2\x80", "b\x80" "c"};
    bool st;
    char *o = run(s, 1, p, 2, &st);
    cr_assert_str_eq(o, "a\xC2\x80" "b");
    cr_assert(st);
    free(o);
    const char *s2[] = {"x\xE6\x9D"}; /* an unfinished character: "x" U+FFFD */
    const char *p2[] = {"ax\xE6\x9D\xB1", "x\xE6\x9D"};
    o = run(s2, 1, p2, 2, &st);
    cr_assert_str_eq(o, "ax\xE6\x9D\xB1");
    cr_assert(st); /* the unfinished tail became U+FFFD at the end */
    free(o);
}
