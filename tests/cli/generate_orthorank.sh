#!/usr/bin/env bash
# orthoserve generate --orthorank: sparsifies, reports real stats on stderr,
# keeps stdout to the generated text, and refuses bad settings with exit 2.
#   generate_orthorank.sh ORTHOSERVE TESTDATA
set -euo pipefail
bin=$1 td=$2
model=$td/models/stories260K.gguf
prompt="Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends and her dog."
err=$(mktemp)
trap 'rm -f "$err"' EXIT
out=$("$bin" generate -m "$model" -p "$prompt" -n 16 --orthorank sparsity=0.2,token_ratio=1/3 2>"$err")
[ -n "$out" ] || { echo "no text generated"; exit 1; }
line=$(grep "orthoserve: orthorank" "$err") || { echo "no orthorank stats on stderr"; cat "$err"; exit 1; }
echo "$line"
# round(0.2 * 5 / (2/3)) = 2 layers of the fallback order; some prefill token-layers skipped
echo "$line" | grep -q "2 layers (fallback)" || { echo "expected 2 fallback layers"; exit 1; }
skipped=$(echo "$line" | sed -E 's/.*prefill ([0-9]+)\/([0-9]+).*/\1/')
[ "$skipped" -gt 0 ] || { echo "nothing was skipped"; exit 1; }
# stdout holds only the text: no stats line there
if echo "$out" | grep -q "orthorank"; then echo "stats leaked into stdout"; exit 1; fi
# bad settings: exit 2 with a message
set +e
"$bin" generate -m "$model" -p "Hi" -n 2 --orthorank token_ratio=7 2>"$err"; rc=$?
set -e
[ "$rc" -eq 2 ] || { echo "bad token_ratio: exit $rc, expected 2"; exit 1; }
grep -q "orthorank" "$err" || { echo "no message for bad settings"; exit 1; }
echo "1 passed, 0 failed"
