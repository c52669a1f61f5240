#!/usr/bin/env bash
# Soak test: orthoserve under a mixed load for SECONDS, then checks that
# every request is accounted for, nothing leaked (RSS, fds, KV) and the
# metrics agree with the clients. See tests/e2e/test_soak.py for what runs.
#
#   tools/soak.sh [BUILD_DIR] [SECONDS]
#
# BUILD_DIR defaults to build, SECONDS to $SOAK_SECONDS or 150 (CI). For a
# long run: tools/soak.sh build 3600 (or SOAK_SECONDS=3600 tools/soak.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-build}"
case "$build" in /*) ;; *) build="$root/$build" ;; esac
seconds="${2:-${SOAK_SECONDS:-150}}"
export ORTHOSERVE_BIN="$build/server/orthoserve"
export ORTHOSERVE_LOADGEN="$build/tools/orthoserve-loadgen"
export ORTHOSERVE_TESTDATA="${ORTHOSERVE_TESTDATA:-$root/../shared/testdata}"
export ORTHOSERVE_OPENAPI="$root/openapi.yaml"
export PYTHONDONTWRITEBYTECODE=1
for f in "$ORTHOSERVE_BIN" "$ORTHOSERVE_LOADGEN"; do
    [ -x "$f" ] || { echo "soak: $f is missing (build first)" >&2; exit 2; }
done
exec python3 "$root/tests/e2e/test_soak.py" "$seconds"
