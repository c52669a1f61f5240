#!/bin/sh
# ORTHOSERVE_ISA reaches the user: an unknown level makes `generate` and
# `serve` exit non-zero with a message naming the variable, the value and the
# levels this CPU has (serve before it listens), and each level this CPU has
# is the one `info`, `generate` and the server's load log line report using.
# usage: isa_override.sh ORTHOSERVE TESTDATA_DIR
set -eu
bin=$1
model=$2/models/stories260K.gguf
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# generate with an unknown level: non-zero, the message on stderr, no text
rc=0
ORTHOSERVE_ISA=bogus "$bin" generate -m "$model" -p "Once upon a time" -n 4 >"$tmp/out" 2>"$tmp/err" || rc=$?
cat "$tmp/err"
[ "$rc" -ne 0 ] || fail "generate with ORTHOSERVE_ISA=bogus exited 0"
[ ! -s "$tmp/out" ] || fail "generate with ORTHOSERVE_ISA=bogus wrote: $(cat "$tmp/out")"
grep -q 'ORTHOSERVE_ISA=bogus is not a kernel level' "$tmp/err" || fail "generate: no ORTHOSERVE_ISA message"
levels=$(sed -n 's/.*levels this CPU has: \([a-z0-9, ]*\)).*/\1/p' "$tmp/err" | head -n 1)
[ -n "$levels" ] || fail "the message does not list the levels this CPU has"
case "$levels" in scalar*) ;; *) fail "levels '$levels' do not start with scalar" ;; esac

# serve refuses before listening (timeout: it must not start and wait)
rc=0
ORTHOSERVE_ISA=bogus timeout 20 "$bin" serve -m "$model" --host 127.0.0.1 --port 0 >"$tmp/out" 2>"$tmp/err" || rc=$?
cat "$tmp/err"
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "serve with ORTHOSERVE_ISA=bogus: exit status $rc"
grep -q 'ORTHOSERVE_ISA=bogus is not a kernel level' "$tmp/err" || fail "serve: no ORTHOSERVE_ISA message"
! grep -q 'listening' "$tmp/out" "$tmp/err" || fail "serve started listening"

# every level the CPU has is the one in use; empty means the best
for lvl in $(echo "$levels" | tr ',' ' '); do
    ORTHOSERVE_ISA=$lvl "$bin" info -m "$model" >"$tmp/out" 2>&1 || fail "info with ORTHOSERVE_ISA=$lvl failed"
    grep -q "^kernels  *$lvl\$" "$tmp/out" || fail "info with ORTHOSERVE_ISA=$lvl: $(grep kernels "$tmp/out")"
    ORTHOSERVE_ISA=$lvl "$bin" generate -m "$model" -p "Once upon a time" -n 4 --temp 0 >/dev/null 2>"$tmp/err" ||
        fail "generate with ORTHOSERVE_ISA=$lvl failed: $(cat "$tmp/err")"
    grep -q "kernels $lvl," "$tmp/err" || fail "generate with ORTHOSERVE_ISA=$lvl: $(cat "$tmp/err")"
    best=$lvl
done
ORTHOSERVE_ISA= "$bin" info -m "$model" | grep -q "^kernels  *$best\$" || fail "empty ORTHOSERVE_ISA is not $best"

# the server's start-up log names the forced level (bounded wait, then stopped)
ORTHOSERVE_ISA=scalar "$bin" serve -m "$model" --host 127.0.0.1 --port 0 >"$tmp/serve" 2>&1 &
pid=$!
i=0
while [ $i -lt 100 ] && ! grep -q 'loaded:' "$tmp/serve"; do sleep 0.2; i=$((i + 1)); done
kill "$pid" 2>/dev/null || true
wait "$pid" || true
grep 'loaded:' "$tmp/serve" || fail "serve with ORTHOSERVE_ISA=scalar did not load: $(cat "$tmp/serve")"
grep -q 'loaded:.*kernels scalar$' "$tmp/serve" || fail "serve's load line does not name the scalar kernels"
echo "ok: levels $levels; default $best"
