/*
 * jsoncount.c - counting a JSON text's values before parsing it (see
 * jsoncount.h).
 */
#include "jsoncount.h"

#include <stdbool.h>

size_t json_count_values(const char *text, size_t n)
{
    size_t count = 1;
    bool in_string = false;
    for (size_t i = 0; i < n; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\') i++; /* the escaped character cannot end the string */
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == ',' || c == '[' || c == '{') {
            count++;
        }
    }
    return count;
}
