#!/bin/sh
# orthoserve perplexity on stories260K, 50 windows of 256 tokens of
# tinystories_val.txt (llama-perplexity's protocol, half mode) must give
# llama-perplexity's figure: 3.8845 +/- 0.0005 (F32-KV golden: 3.884488), with an F32 KV
# cache as the golden's (F16, the default, gives 3.8845 too; Q8_0 K and V 3.8929).
# usage: perplexity_golden.sh ORTHOSERVE TESTDATA_DIR
set -eu
bin=$1
td=$2
out=$("$bin" perplexity -m "$td/models/stories260K.gguf" -f "$td/corpus/tinystories_val.txt" \
      -c 256 --chunks 50 -t 2 --cache-type-k f32 --cache-type-v f32 2>/dev/null)
echo "$out"
ppl=$(printf '%s\n' "$out" | sed -n 's/^PPL = \([0-9.]*\) +\/- .*/\1/p')
if [ -z "$ppl" ]; then
    echo "FAIL: no 'PPL = X +/- Y' line on stdout" >&2
    exit 1
fi
awk -v p="$ppl" 'BEGIN { d = p - 3.8845; if (d < 0) d = -d; if (d > 0.0005) { printf "FAIL: PPL %s, expected 3.8845 +/- 0.0005\n", p; exit 1 } printf "ok: PPL %s\n", p }'
