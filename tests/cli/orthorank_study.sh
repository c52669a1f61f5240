#!/bin/sh
# The OrthoRank study of docs/ORTHORANK_RESULTS.md (not a ctest: ~10 minutes).
# Calibrates on windows 200..263 of tinystories_val.txt (64 x 256 tokens) and
# evaluates on windows 0..49 (llama-perplexity's 50 x 256, half mode): for
# --exclude first and first,last, token ratios 1/3, 1/2, 2/3, all methods,
# sparsity 0.1..0.4, prefill top-K (whole window in one call) and the decode
# threshold policy (--decode-eval), plus the engine's fallback order.
# One thread, so that the tok/CPU-s column measures work, not machine load.
# usage: orthorank_study.sh ORTHOSERVE TESTDATA_DIR OUT_DIR
set -eu
bin=$1
td=$2
out=$3
m=$td/models/stories260K.gguf
t=$td/corpus/tinystories_val.txt
mkdir -p "$out"
eval_args="-m $m -f $t -c 256 --chunks 50 -t 1"
for ex in first first,last; do
    exn=$(echo "$ex" | tr ',' '_')
    for k in 1/3 1/2 2/3; do
        kn=$(echo "$k" | tr '/' '_')
        plan=$out/plan_${exn}_k${kn}.json
        "$bin" calibrate -m "$m" -f "$t" -o "$plan" -c 256 --start-chunk 200 --chunks 64 \
            --exclude "$ex" --token-ratio "$k" -t 1 > "$out/calib_${exn}_k${kn}.txt"
        "$bin" perplexity $eval_args --plan "$plan" --sweep --sweep-ratios "$k" \
            > "$out/sweep_prefill_${exn}_k${kn}.md"
        "$bin" perplexity $eval_args --plan "$plan" --sweep --sweep-ratios "$k" --decode-eval \
            > "$out/sweep_decode_${exn}_k${kn}.md"
    done
done
"$bin" perplexity $eval_args --sweep > "$out/sweep_prefill_fallback.md"
