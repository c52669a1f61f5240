/*
 * unicode.c - code point classification and lenient UTF-8 coding for the
 * tokenizer. The category table is generated (unicode_data.c).
 */
#include "tokenizer.h"

static int ucat_search(uint32_t cp)
{
    size_t lo = 0, hi = eng__ucat_nruns; /* find last run with start <= cp */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if ((eng__ucat_runs[mid] >> 3) <= cp)
            lo = mid;
        else
            hi = mid;
    }
    return (int)(eng__ucat_runs[lo] & 7);
}

int eng__ucat(uint32_t cp)
{
    if (cp > 0x10FFFF) return ENG_UCAT_UNDEF;
    return ucat_search(cp);
}

bool eng__uisspace(uint32_t cp)
{
    if (cp < 128) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

int eng__utf8_len(uint8_t lead)
{
    static const uint8_t tab[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return tab[lead >> 4];
}

uint32_t eng__utf8_next(const uint8_t *s, size_t n, size_t *i)
{
    size_t p = *i;
    uint8_t c = s[p];
    if (!(c & 0x80)) {
        *i = p + 1;
        return c;
    }
    int len;
    uint32_t cp;
    if (!(c & 0x40)) goto bad;
    if (!(c & 0x20)) {
        len = 2;
        cp = c & 0x1F;
    } else if (!(c & 0x10)) {
        len = 3;
        cp = c & 0x0F;
    } else if (!(c & 0x08)) {
        len = 4;
        cp = c & 0x07;
    } else {
        goto bad;
    }
    if ((size_t)len > n - p) goto bad;
    for (int k = 1; k < len; k++) {
        if ((s[p + k] & 0xC0) != 0x80) goto bad;
        cp = (cp << 6) | (s[p + k] & 0x3F);
    }
    *i = p + (size_t)len;
    /* llama.cpp would throw re-encoding such a value; we substitute instead. */
    return cp > 0x10FFFF ? 0xFFFD : cp;
bad:
    *i = p + 1;
    return 0xFFFD;
}

int eng__utf8_put(uint32_t cp, uint8_t *out)
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

bool eng__in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid][0])
            hi = mid;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}
