#!/usr/bin/env bash
# Continuous-batching benchmark (not a test): start orthoserve on MODEL,
# drive it with orthoserve-loadgen at several concurrencies, one after the
# other in the same run, and print output tokens/s, TTFT and TPOT per level
# plus the aggregate-throughput ratio against concurrency 1.
#   tools/bench-batching.sh [BUILD_DIR] MODEL [SECONDS_PER_LEVEL] [LEVELS...]
# Defaults: build, 30 s per level, levels 1 4 8 16. Prompts: 64 words of
# TinyStories; outputs: 128 tokens (ignore_eos). Only 127.0.0.1.
set -euo pipefail
build=${1:-build}
model=${2:?usage: tools/bench-batching.sh [BUILD_DIR] MODEL [SECONDS] [LEVELS...]}
secs=${3:-30}
shift 3 2>/dev/null || shift $#
levels=("$@")
[ ${#levels[@]} -gt 0 ] || levels=(1 4 8 16)
max=0
for c in "${levels[@]}"; do [ "$c" -gt "$max" ] && max=$c; done
corpus=../shared/testdata/corpus/tinystories_val.txt
log=$(mktemp /tmp/bench-batching-XXXX.log)
"$build/server/orthoserve" serve -m "$model" --host 127.0.0.1 --port 0 -c 1024 \
    --parallel "$max" --max-queue 256 --threads 2 --log-requests=false 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
port=""
for _ in $(seq 1 600); do
  port=$(grep -oE 'listening on http://[^:]+:[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 $pid 2>/dev/null || { port=""; break; }  # the server exited: fail at once
  sleep 0.5
done
[ -n "$port" ] || { echo "server did not start"; cat "$log"; exit 1; }
echo "model $(basename "$model"), $secs s per level, prompts 64 words, 128 output tokens"
echo
echo "| concurrency | requests | output tok/s | vs c=1 | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms | ITL p50 ms |"
echo "|---|---|---|---|---|---|---|---|---|"
base=""
for c in "${levels[@]}"; do
  out=$(mktemp /tmp/bench-batching-XXXX.json)
  # warm-up of a few requests, then the measured run
  "$build/tools/orthoserve-loadgen" -u "http://127.0.0.1:$port" -c "$c" -n "$c" -d 60 -f "$corpus" -i 64 -o 16 >/dev/null
  "$build/tools/orthoserve-loadgen" -u "http://127.0.0.1:$port" -c "$c" -n 100000 -d "$secs" -f "$corpus" \
      -i 64 -o 128 -j "$out" >/dev/null
  python3 - "$out" "$c" "${base:-}" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); c = int(sys.argv[2]); base = float(sys.argv[3]) if sys.argv[3] else None
tps = j["output_throughput"]
print("| %d | %d | %.1f | %s | %.0f | %.0f | %.1f | %.1f | %.1f |" % (
    c, j["completed"], tps, ("%.2fx" % (tps / base)) if base else "1.00x",
    j["median_ttft_ms"], j["p99_ttft_ms"], j["median_tpot_ms"], j["p99_tpot_ms"], j["median_itl_ms"]))
open(sys.argv[1] + ".tps", "w").write(str(tps))
PY
  [ -n "$base" ] || base=$(cat "$out.tps")
  rm -f "$out" "$out.tps"
done
