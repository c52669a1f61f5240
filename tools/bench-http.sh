#!/usr/bin/env bash
# Server overhead benchmark (not a test): GET /health requests/s with 64
# keep-alive connections (wrk), and the median latency a max_tokens=1
# completion adds on top of the engine's own time (queue + prompt + generate,
# as the response's "timings" reports them).
#
#   tools/bench-http.sh [BUILD_DIR] [MODEL]     (defaults: build, stories260K)
# Only 127.0.0.1 is used; the server is started and stopped here.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
MODEL=${2:-../shared/testdata/models/stories260K.gguf}
DURATION=${DURATION:-10}
N_COMPLETIONS=${N_COMPLETIONS:-300}
BIN=$BUILD/server/orthoserve
command -v wrk >/dev/null || { echo "bench-http: wrk is missing (tools/deps.sh installs it)" >&2; exit 1; }
LOG=$(mktemp)
"$BIN" serve -m "$MODEL" --host 127.0.0.1 --port 0 --log-requests=false 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -f "$LOG"' EXIT
PORT=""
for _ in $(seq 200); do
  PORT=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$LOG")
  [ -n "$PORT" ] && curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.05
done
[ -n "$PORT" ] || { cat "$LOG" >&2; exit 1; }
URL=http://127.0.0.1:$PORT
echo "== orthoserve $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, model $(basename "$MODEL")"
echo "== GET /health, wrk -t2 -c64 -d${DURATION}s"
wrk -t2 -c64 -d"${DURATION}s" --latency "$URL/health" | grep -E "Requests/sec|Latency|50%|99%"
echo "== POST /v1/completions max_tokens=1, $N_COMPLETIONS sequential keep-alive requests"
python3 - "$PORT" "$N_COMPLETIONS" <<'PY'
import http.client, json, statistics, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
body = json.dumps({"prompt": "Once upon a time", "max_tokens": 1, "temperature": 0})
wall, eng = [], []
for i in range(n + 20):
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse(); data = r.read()
    dt = (time.perf_counter() - t0) * 1e3
    t = json.loads(data)["timings"]
    if i >= 20:  # warm-up
        wall.append(dt); eng.append(t["queue_ms"] + t["prompt_ms"] + t["predicted_ms"])
added = [w - e for w, e in zip(wall, eng)]
med = statistics.median
print("client wall time   median %.3f ms  p90 %.3f ms" % (med(wall), sorted(wall)[int(0.9 * len(wall))]))
print("engine time        median %.3f ms  (queue + prompt + generate)" % med(eng))
print("added by server    median %.3f ms  p90 %.3f ms" % (med(added), sorted(added)[int(0.9 * len(added))]))
PY
