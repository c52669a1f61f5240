#!/usr/bin/env bash
# End-to-end test of orthoserve-loadgen against tests/loadgen/mock_server.py.
#   test_loadgen.sh LOADGEN_BINARY [CORPUS_FILE]
# Starts the mock on a free 127.0.0.1 port, runs the load generator for a few
# seconds with 4 clients (streaming, with cancellations, malformed requests and
# injected 503s), then checks the accounting identity and the JSON output.
# Also checks that non-loopback targets are refused. Needs python3 only.
# Times are a fast machine's, multiplied by $E2E_TIME_SCALE (default 1) for a
# slow one: every wait is a deadline in seconds, never a count of retries.
set -euo pipefail

LG=${1:?usage: test_loadgen.sh LOADGEN [CORPUS]}
CORPUS=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
MOCK_PID=""
cleanup() {
  if [ -n "$MOCK_PID" ]; then kill "$MOCK_PID" 2>/dev/null || true; wait "$MOCK_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
scaled() { awk -v s="$1" -v k="${E2E_TIME_SCALE:-1}" 'BEGIN { printf "%g", s * k }'; }

python3 "$HERE/mock_server.py" --port 0 --port-file "$WORK/port" --error-every 25 \
  --token-delay 0.002 2>"$WORK/mock.log" &
MOCK_PID=$!
deadline=$(( SECONDS + $(scaled 30 | cut -d. -f1) ))
while [ ! -s "$WORK/port" ] && [ "$SECONDS" -lt "$deadline" ]; do
  kill -0 "$MOCK_PID" 2>/dev/null || break
  sleep 0.05
done
[ -s "$WORK/port" ] || fail "mock did not write its port within $(scaled 30) s: $(cat "$WORK/mock.log")"
PORT=$(cat "$WORK/port")
URL="http://127.0.0.1:$PORT"

PROMPT_ARGS=()
[ -n "$CORPUS" ] && [ -r "$CORPUS" ] && PROMPT_ARGS=(--prompt-file "$CORPUS")

# 1. The main run: closed loop, 4 clients, bounded by time (3 s) before count;
# in-flight requests then get the drain, so the whole run takes at most both.
RUN=$(scaled 3)
DRAIN=$(scaled 10)
"$LG" --url "$URL" --concurrency 4 --requests 100000 --duration "$RUN" --drain "$DRAIN" \
  --output-len 12 --output-range 0.5 --input-len 20 --input-range 0.5 "${PROMPT_ARGS[@]}" \
  --cancel-fraction 0.1 --malformed-fraction 0.1 --extra '{"orthorank":{"sparsity":0.2}}' \
  --progress 0 --json "$WORK/out.json" >"$WORK/out.txt" || fail "loadgen exited $?: $(cat "$WORK/out.txt")"
cat "$WORK/out.txt"
grep -q '^Accounting: .*\[OK\]$' "$WORK/out.txt" || fail "accounting identity line missing or not OK"

python3 - "$WORK/out.json" "$RUN" "$DRAIN" "${E2E_TIME_SCALE:-1}" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
run, drain, scale = (float(x) for x in sys.argv[2:])
def check(cond, msg):
    if not cond:
        print("FAIL:", msg, file=sys.stderr); sys.exit(1)
s = r["sent"]
total = r["completed"] + r["http_errors"] + r["transport_errors"] + r["cancelled"] + r["malformed"]
check(s == total, f"sent {s} != sum {total}")
check(r["accounting_ok"] is True, "accounting_ok false")
check(r["stop_reason"] == "duration", f"stop_reason {r['stop_reason']}")
check(run - 0.1 < r["duration"] < run + drain + 1, f"duration {r['duration']} (run {run} s + drain {drain} s)")
check(r["completed"] >= 20, f"too few completed: {r['completed']}")
check(r["transport_errors"] == 0, f"transport errors: {r['transport_errors_by_reason']}")
check(r["http_errors"] > 0 and set(r["http_errors_by_status"]) == {"503"}, f"503s: {r['http_errors_by_status']}")
check(r["cancelled"] > 0, "no cancellations")
check(r["malformed"] > 0 and r["malformed_unexpected"] == 0 and r["malformed_ok_4xx"] == r["malformed"],
      f"malformed: {r['malformed_ok_4xx']} ok, {r['malformed_unexpected']} unexpected")
check(r["output_len_mismatch"] == 0, "completion_tokens != max_tokens")
check(r["total_output_tokens"] >= 6 * r["completed"], "output tokens too low")
check(r["config"]["extra"] == {"orthorank": {"sparsity": 0.2}}, "extra not recorded")
for m in ("ttft", "tpot", "itl", "e2el"):
    for k in ("mean", "median", "p90", "p99"):
        v = r[f"{k}_{m}_ms"]
        check(isinstance(v, float) and v >= 0, f"{k}_{m}_ms = {v}")
    check(r[f"n_{m}"] > 0, f"no {m} samples")
check(r["median_ttft_ms"] <= r["p99_ttft_ms"] <= r["max_ttft_ms"], "ttft percentiles not ordered")
check(r["median_e2el_ms"] >= r["median_ttft_ms"], "e2e < ttft")
check(1.0 < r["median_itl_ms"] < 50 * scale, f"itl median {r['median_itl_ms']} (mock sleeps 2 ms per token)")
check(r["request_throughput"] > 0 and r["output_throughput"] > 0, "throughput zero")
print("json checks ok")
EOF

# 2. Count-bounded, non-streaming chat, open loop.
"$LG" --url "$URL" --api chat --no-stream --rate 200 --requests 30 --duration "$(scaled 60)" \
  --output-len 4 --input-unit chars --input-len 40 --progress 0 --json "$WORK/chat.json" \
  --strict >"$WORK/chat.txt" || true
grep -q '^Accounting: sent 30 = .*\[OK\]$' "$WORK/chat.txt" || fail "chat run: $(cat "$WORK/chat.txt")"
python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["stop_reason"] == "requests" and r["sent"] == 30, r
assert r["completed"] + r["http_errors"] == 30, r
assert r["n_e2el"] == r["completed"] and r["n_ttft"] == 0, r
print("chat checks ok")' "$WORK/chat.json"

# 3. Only loopback targets unless --allow-remote.
if "$LG" --url http://192.0.2.1:8080 --requests 1 >/dev/null 2>&1; then fail "remote host accepted"; fi
if "$LG" --url http://example.com --requests 1 >/dev/null 2>&1; then fail "remote name accepted"; fi

echo "PASS"
