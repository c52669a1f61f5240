#!/usr/bin/env bash
# Run a ctest selection on a machine made slow on purpose: the whole run
# (ctest, the test scripts, the servers they start) pinned to one CPU that a
# busy loop shares, so every process gets about half a core. A test that
# passes here does not depend on the machine's speed (see tests/e2e/e2eutil.py:
# waits are deadlines in seconds, scaled by E2E_TIME_SCALE or by the build).
#
#   tools/slow-ci.sh BUILD_DIR [CTEST_ARGS...]
#
#   TSAN_OPTIONS=halt_on_error=1 tools/slow-ci.sh build-tsan -R '^e2e\.(http|lifecycle|batching|metrics)$'
#   tools/slow-ci.sh build -L e2e -LE slow
#
# SLOW_CI_CPU picks the CPU (default: the last one this shell may use);
# SLOW_CI_HOGS is the number of busy loops on it (default 1: the tests get
# half the CPU; 8 leaves them a ninth, for a fast machine to play a slow one);
# SLOW_CI_LIMIT bounds each busy loop in seconds (default 3600). The busy
# loops are stopped when the run ends, whatever its outcome.
set -euo pipefail
build=${1:?usage: tools/slow-ci.sh BUILD_DIR [CTEST_ARGS...]}
shift
cpu=${SLOW_CI_CPU:-$(python3 -c 'import os; print(max(os.sched_getaffinity(0)))')}
hogs=${SLOW_CI_HOGS:-1}
limit=${SLOW_CI_LIMIT:-3600}
pids=()
stop_hogs() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop_hogs EXIT
for _ in $(seq 1 "$hogs"); do
    taskset -c "$cpu" timeout "$limit" sh -c 'while :; do :; done' &
    pids+=("$!")
done
start=$(date +%s)
rc=0
taskset -c "$cpu" ctest --test-dir "$build" --output-on-failure "$@" || rc=$?
echo "slow-ci: ctest exit $rc after $(( $(date +%s) - start )) s on CPU $cpu shared with $hogs busy loop(s)"
exit "$rc"
