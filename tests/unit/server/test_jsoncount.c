/*
 * test_jsoncount.c - json_count_values: an upper bound on a JSON text's
 * values that ignores what is inside strings.
 */
#include "jsoncount.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

static size_t count(const char *s) { return json_count_values(s, strlen(s)); }

Test(jsoncount, scalars_and_containers)
{
    cr_assert_eq(count("1"), 1);
    cr_assert_eq(count("{}"), 2);             /* the object, and a bound for its first member */
    cr_assert_eq(count("[1,2,3]"), 4);
    cr_assert_eq(count("{\"a\":[[],[],[]]}"), 8);
}

Test(jsoncount, strings_do_not_count)
{
    cr_assert_eq(count("{\"prompt\":\"a,b,[c],{d}\"}"), 2);
    cr_assert_eq(count("[\"\\\",[,\",1]"), 3); /* an escaped quote does not end the string */
    cr_assert_eq(count("[\"\\\\\",1]"), 3);    /* an escaped backslash does */
}

Test(jsoncount, bounds_the_amplification_body)
{
    /* D8's body: "[" + "[]," x n + "[]]" */
    size_t n = 1000000, len = 1 + 3 * n + 3;
    char *s = malloc(len + 1);
    cr_assert(s);
    s[0] = '[';
    for (size_t i = 0; i < n; i++) memcpy(s + 1 + 3 * i, "[],", 3);
    memcpy(s + 1 + 3 * n, "[]]", 4);
    cr_assert_geq(json_count_values(s, len), n);
    free(s);
}
