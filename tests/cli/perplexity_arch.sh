#!/bin/sh
# orthoserve perplexity, dense and with --orthorank, on the qwen3 / gemma3 /
# phi3 test models (F32 and Q8_0): both runs finish with a finite PPL in a
# sane range for a random 512-token model, OrthoRank skips token-layers of
# the fallback plan (gemma3's sliding-window layers included), and its PPL
# differs from the dense one; the decode policy too (--decode-eval).
# usage: perplexity_arch.sh ORTHOSERVE TESTDATA_DIR
set -eu
bin=$1
td=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
ppl_of() { printf '%s\n' "$1" | sed -n 's/^PPL = \([0-9.]*\) +\/- .*/\1/p'; }
for f in qwen3tiny-F32 qwen3tiny-Q8_0 gemma3tiny-F32 gemma3tiny-Q8_0 phi3tiny-F32 phi3tiny-Q8_0; do
    model=$td/models/$f.gguf
    args="-f $td/corpus/tinystories_val.txt -c 128 --chunks 4 -t 2"
    dense=$("$bin" perplexity -m "$model" $args 2>/dev/null) || fail "$f: dense perplexity failed"
    sparse=$("$bin" perplexity -m "$model" $args --orthorank sparsity=0.3,token_ratio=1/3 2>/dev/null) ||
        fail "$f: perplexity --orthorank failed"
    dec=$("$bin" perplexity -m "$model" $args --decode-eval --orthorank sparsity=0.3,token_ratio=1/3 2>/dev/null) ||
        fail "$f: perplexity --decode-eval --orthorank failed"
    pd=$(ppl_of "$dense"); ps=$(ppl_of "$sparse"); pe=$(ppl_of "$dec")
    [ -n "$pd" ] && [ -n "$ps" ] && [ -n "$pe" ] || fail "$f: no 'PPL = X +/- Y' line"
    skipped=$(printf '%s\n' "$sparse" | sed -n 's/^sparsity_effective = .* (\([0-9]*\) of .*/\1/p')
    layers=$(printf '%s\n' "$sparse" | sed -n 's/^layers = \[\([0-9,]*\)\].*/\1/p')
    [ -n "$skipped" ] && [ "$skipped" -gt 0 ] || fail "$f: orthorank skipped nothing"
    [ -n "$layers" ] || fail "$f: no orthorank layers"
    awk -v a="$pd" -v b="$ps" -v c="$pe" -v f="$f" -v l="$layers" 'BEGIN {
        if (!(a > 50 && a < 2000 && b > 50 && b < 2000 && c > 50 && c < 2000)) { printf "FAIL: %s: PPL %s / %s / %s out of range\n", f, a, b, c; exit 1 }
        if (a == b) { printf "FAIL: %s: orthorank PPL equals the dense one (%s)\n", f, a; exit 1 }
        printf "ok: %s dense PPL %s, orthorank %s (layers %s), decode-eval %s\n", f, a, b, l, c }' ||
        exit 1
done
