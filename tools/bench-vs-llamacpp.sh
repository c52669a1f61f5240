#!/usr/bin/env bash
# orthoserve against llama.cpp's llama-server on the same GGUF, through the
# HTTP API: TTFT of a 670-token prompt, 128-token decode, 8 concurrent clients
# x 64 tokens; both servers on 2 threads, one up at a time, median of 3
# rounds (ROUNDS=n to change). Prints the three ratios and the CPU line.
#
#   tools/bench-vs-llamacpp.sh LLAMA_BIN_DIR MODEL [ISA]
#
# LLAMA_BIN_DIR holds llama-server (llama.cpp or a fork with the same server,
# e.g. ik_llama.cpp); ISA (scalar|avx2|avx2vnni|avx512) is given to
# orthoserve as ORTHOSERVE_ISA. orthoserve is build/server/orthoserve
# (ORTHOSERVE_BIN to override). Only 127.0.0.1 is used; the servers are
# started and stopped here (tools/bench_vs_llamacpp.py does the work).
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  sed -n '7p' "$0" | sed 's/^# *//' >&2
  exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
PY_PID=""
cleanup() { [ -n "$PY_PID" ] && kill -TERM "$PY_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
python3 "$HERE/bench_vs_llamacpp.py" "$@" &
PY_PID=$!
set +e
wait "$PY_PID"
rc=$?
PY_PID=""
exit $rc
