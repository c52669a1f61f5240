#!/usr/bin/env bash
# tools/fuzz.sh [SECONDS] [HARNESS...] - build the libFuzzer harnesses with
# clang + ASan + UBSan in build-fuzz (-DORTHOSERVE_FUZZ=ON), generate the seed
# corpora from the test data, and run each harness (default: all nine) for
# SECONDS (default 60). Exits non-zero if any harness finds a crash, leak,
# timeout or out-of-memory; the reproducer is left in
# build-fuzz/fuzz-artifacts/<harness>/ (see docs/SECURITY.md for what to do
# with it). Inputs that found new coverage accumulate in
# build-fuzz/fuzz-work/<harness>/ and are reused by the next run.
#
# Environment: FUZZ_BUILD_DIR (default build-fuzz), FUZZ_JOBS (parallel
# libFuzzer workers per harness, default 1), FUZZ_ARGS (extra libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
[ $# -gt 0 ] && shift
harnesses=("$@")
[ ${#harnesses[@]} -eq 0 ] && harnesses=(fuzz_gguf fuzz_model fuzz_tokenizer fuzz_request fuzz_textbuf fuzz_jinja fuzz_gbnf fuzz_schema fuzz_toolcall)
build=${FUZZ_BUILD_DIR:-build-fuzz}
jobs=${FUZZ_JOBS:-1}

if ! command -v clang >/dev/null; then
    echo "fuzz.sh: clang is required (libFuzzer ships with it)" >&2
    exit 2
fi
cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DORTHOSERVE_SANITIZE="address;undefined" -DORTHOSERVE_FUZZ=ON >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${harnesses[@]}" fuzz_mkseeds
td=$(sed -n 's/^ORTHOSERVE_TESTDATA:PATH=//p' "$build/CMakeCache.txt")
sh tests/fuzz/make_corpus.sh "$build/fuzz-corpus" "$td" "$build/tests/fuzz/fuzz_mkseeds"

export ORTHOSERVE_TESTDATA="$td"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
status=0
summary=""
for h in "${harnesses[@]}"; do
    work="$build/fuzz-work/$h"
    art="$build/fuzz-artifacts/$h"
    log="$build/fuzz-logs/$h.log"
    mkdir -p "$work" "$art" "$(dirname "$log")"
    echo "=== $h: ${secs}s"
    # A dictionary of the input's keywords, when the harness has one.
    dict=""
    [ -f "tests/fuzz/$h.dict" ] && dict="-dict=tests/fuzz/$h.dict"
    # First directory: where new inputs go; the others are read-only seeds.
    set +e
    # shellcheck disable=SC2086
    "$build/tests/fuzz/$h" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$art/" $dict \
        $([ "$jobs" -gt 1 ] && echo "-jobs=$jobs -workers=$jobs") ${FUZZ_ARGS:-} "$work" "$build/fuzz-corpus/$h" "tests/fuzz/regressions/$h" >"$log" 2>&1
    rc=$?
    set -e
    if [ "$jobs" -gt 1 ]; then cat fuzz-*.log >>"$log" 2>/dev/null && rm -f fuzz-*.log; fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | awk '{s+=$1} END {print s+0}' || true)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | awk '{s+=$1} END {print s+0}' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
    line="$h: rc=$rc runs=$runs exec/s=$eps cov=${cov:-?} corpus=$(ls "$work" | wc -l)"
    echo "$line"
    summary="$summary$line"$'\n'
    if [ $rc -ne 0 ] || grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:' "$log"; then
        echo "!!! $h failed; last lines of $log:" >&2
        tail -n 60 "$log" >&2
        echo "!!! reproducer(s): $(ls "$art")" >&2
        status=1
    fi
done
echo
echo "fuzz summary:"
printf '%s' "$summary"
exit $status
