/*
 * render.c - orthoserve render-template: render a Jinja chat template with
 * the variables of a JSON file, as the server would, and print the text.
 */
#include "cli.h"
#include "jinja_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: orthoserve render-template --template FILE.jinja --vars VARS.json\n"
               "                                   [--now 'YYYY-MM-DD HH:MM:SS']\n"
               "\n"
               "Renders the template with the keys of VARS.json (one JSON object) as its\n"
               "variables and prints the text, nothing added. On an error (including the\n"
               "template's own raise_exception) prints it on stderr and exits 1.\n"
               "--now fixes the clock of strftime_now (default: local time).\n");
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (k == 0) break;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) { free(buf); return NULL; }
    *len = n;
    return buf;
}

static int render(const char *tpath, const char *vpath, const char *now)
{
    size_t tlen = 0;
    char *src = slurp(tpath, &tlen);
    if (!src) {
        fprintf(stderr, "orthoserve: cannot read %s\n", tpath);
        return 1;
    }
    json_error_t jerr;
    json_t *vars = json_load_file(vpath, 0, &jerr);
    if (!vars || !json_is_object(vars)) {
        fprintf(stderr, "orthoserve: %s: %s\n", vpath, vars ? "not a JSON object" : jerr.text);
        json_decref(vars);
        free(src);
        return 1;
    }
    int rc = 1;
    eng_jinja *t = NULL;
    eng_jinja_vars *v = eng_jinja_vars_new();
    eng_jinja_error err;
    char *out = NULL;
    size_t out_len = 0;
    eng_status st = eng_jinja_parse(src, tlen, &t, &err);
    if (st != ENG_OK) {
        fprintf(stderr, "orthoserve: %s: %s\n", tpath, st == ENG_ENOMEM ? "out of memory" : err.msg);
        goto out;
    }
    if (!v || jinja_vars_from_object(v, vars) != ENG_OK) {
        fprintf(stderr, "orthoserve: out of memory\n");
        goto out;
    }
    eng_jinja_limits lim = eng_jinja_default_limits();
    lim.now = now;
    st = eng_jinja_render(t, v, &lim, &out, &out_len, &err);
    if (st != ENG_OK) {
        fprintf(stderr, "%s%s\n", err.raised ? "raise_exception: " : "", st == ENG_ENOMEM ? "out of memory" : err.msg);
        goto out;
    }
    rc = fwrite(out, 1, out_len, stdout) == out_len && fflush(stdout) == 0 ? 0 : 1;
out:
    eng_free(out);
    eng_jinja_vars_free(v);
    eng_jinja_free(t);
    json_decref(vars);
    free(src);
    return rc;
}

int cli_render_template(int argc, char **argv)
{
    const char *tpath = NULL, *vpath = NULL, *now = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            usage(stderr);
            return 2;
        }
        if (!strcmp(a, "--template")) tpath = argv[++i];
        else if (!strcmp(a, "--vars")) vpath = argv[++i];
        else if (!strcmp(a, "--now")) now = argv[++i];
        else {
            fprintf(stderr, "orthoserve: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!tpath || !vpath) {
        usage(stderr);
        return 2;
    }
    return render(tpath, vpath, now);
}
