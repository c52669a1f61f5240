#!/usr/bin/env bash
# Build the container image from docker/Dockerfile with podman and run it.
#
# No container engine runs here (podman run needs cgroup/rlimit rights these
# machines do not give), so the image is checked the way a runtime would use
# it, by hand: its filesystem is mounted (podman image mount), the model is
# bind-mounted at /models in a private mount namespace (unshare: the mounts
# vanish with it), and the image's ENTRYPOINT runs chrooted as the image's
# USER with the image's ENV plus a host/port override. Checked: the image
# config (non-root user, HEALTHCHECK, volume, entrypoint), /health (also
# through the image's own HEALTHCHECK command), a completion, /metrics, and
# that the server process runs as the non-root user; a clean SIGTERM exit.
#
# The debian:bookworm-slim base is made locally with debootstrap (minbase)
# and cached as a tarball under the build directory (IMAGE_DIR); podman's
# storage is private to this run and removed at the end.
#
# Waits are deadlines in seconds (a fast machine's, multiplied by
# $E2E_TIME_SCALE, default 1), never counts of retries.
#
# usage: test_image.sh SOURCE_DIR BUILD_DIR MODEL
set -euo pipefail
SRC=$(cd "$1" && pwd)
BUILD=$(mkdir -p "$2" && cd "$2" && pwd)
MODEL=$(readlink -f "$3")
IMAGE_DIR=$BUILD/image
BASE_TAR=$IMAGE_DIR/debian-bookworm-slim.tar
STORE=$IMAGE_DIR/storage.$$
TAG=localhost/orthoserve:test-$$
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
scaled() { awk -v s="$1" -v k="${E2E_TIME_SCALE:-1}" 'BEGIN { printf "%d", s * k + 0.5 }'; }

for tool in podman debootstrap unshare chroot curl python3; do
  command -v "$tool" >/dev/null || fail "$tool not found (tools/deps.sh installs it)"
done
[ "$(id -u)" -eq 0 ] || fail "needs root (podman image mount, chroot)"
[ -f "$MODEL" ] || fail "no model at $MODEL"

P=(podman --root "$STORE/root" --runroot "$STORE/run" --storage-driver overlay --cgroup-manager cgroupfs
   --events-backend none)
MNT=""
SERVER_PID=""
cleanup() {
  set +e
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID"; sleep 1; kill -9 "$SERVER_PID" 2>/dev/null
  fi
  [ -n "$MNT" ] && "${P[@]}" image unmount "$TAG" >/dev/null 2>&1
  "${P[@]}" system reset --force >/dev/null 2>&1
  # Anything podman left mounted under the private store, then the store.
  grep -o " $STORE[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$STORE"
}
trap cleanup EXIT

mkdir -p "$IMAGE_DIR" "$STORE"

# --- the base image ----------------------------------------------------------
if [ ! -s "$BASE_TAR" ]; then
  say "debootstrap --variant=minbase bookworm (cached afterwards in $BASE_TAR)"
  rootfs=$IMAGE_DIR/rootfs.$$
  rm -rf "$rootfs"
  timeout 900 debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$IMAGE_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$IMAGE_DIR/debootstrap.log"; rm -rf "$rootfs"; fail "debootstrap"; }
  # What the official slim image also leaves out: package lists and caches.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
  tar -C "$rootfs" -cf "$BASE_TAR.tmp" . && mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$rootfs"
fi
say "importing the base image"
"${P[@]}" import "$BASE_TAR" docker.io/library/debian:bookworm-slim >"$IMAGE_DIR/import.log" 2>&1 \
  || { cat "$IMAGE_DIR/import.log"; fail "podman import"; }

# --- build -------------------------------------------------------------------
say "podman build"
b0=$(date +%s)
timeout 1200 "${P[@]}" build --isolation=chroot --network=host --pull=never --format docker \
  -f "$SRC/docker/Dockerfile" --ignorefile "$SRC/docker/Dockerfile.dockerignore" -t "$TAG" "$SRC" \
  >"$IMAGE_DIR/build.log" 2>&1 || { tail -40 "$IMAGE_DIR/build.log"; fail "podman build"; }
say "image built in $(( $(date +%s) - b0 ))s; size $("${P[@]}" image inspect --format '{{.Size}}' "$TAG") bytes"

# --- the image's configuration ------------------------------------------------
CFG=$IMAGE_DIR/config.$$
mkdir -p "$CFG"
"${P[@]}" image inspect "$TAG" >"$CFG/inspect.json"
python3 - "$CFG" <<'EOF'
import json, os, sys
d = sys.argv[1]
c = json.load(open(os.path.join(d, "inspect.json")))[0]
conf = c["Config"]
user = conf.get("User", "")
assert user and user.split(":")[0] not in ("", "0", "root"), "the image must run as a non-root user: %r" % user


def find_hc(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if k.lower() == "healthcheck" and isinstance(v, dict) and v.get("Test"):
                return v
            r = find_hc(v)
            if r:
                return r
    return None


hc = find_hc(c) or {}
test = hc.get("Test", [])
assert test and test[0] == "CMD-SHELL" and "/health" in test[1], "HEALTHCHECK on /health missing: %r" % hc
assert "/models" in (conf.get("Volumes") or {}), "no /models volume"
assert conf["Entrypoint"][-1] == "serve", conf["Entrypoint"]
env = dict(e.split("=", 1) for e in conf["Env"])
assert env["ORTHOSERVE_MODEL"].startswith("/models/"), env
open(os.path.join(d, "user"), "w").write(user)
open(os.path.join(d, "hc"), "w").write(test[1])
open(os.path.join(d, "model"), "w").write(env["ORTHOSERVE_MODEL"])
open(os.path.join(d, "entry"), "w").write("\n".join(conf["Entrypoint"]) + "\n")
open(os.path.join(d, "env"), "w").write("\n".join(conf["Env"]) + "\n")
print("image config ok: user %s, entrypoint %s, healthcheck %s" % (user, conf["Entrypoint"], test))
EOF
USERSPEC=$(cat "$CFG/user")
HC=$(cat "$CFG/hc")
MODEL_IN=$(cat "$CFG/model")
mapfile -t ENTRY <"$CFG/entry"
mapfile -t IENV <"$CFG/env"
rm -rf "$CFG"

# --- run it ------------------------------------------------------------------
MNT=$("${P[@]}" image mount "$TAG")
[ -x "$MNT${ENTRY[0]}" ] || fail "entrypoint ${ENTRY[0]} missing in the image"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOG=$IMAGE_DIR/server.$$.log
say "running ${ENTRY[*]} as $USERSPEC on 127.0.0.1:$PORT (model at $MODEL_IN)"
# A private mount namespace: the model at /models, /proc and /dev, undone on exit.
unshare --mount --propagation private -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  MNT="$MNT" MODEL="$MODEL" MODEL_IN="$MODEL_IN" USERSPEC="$USERSPEC" \
  bash -c '
    set -e
    mount -t tmpfs tmpfs "$MNT/models"
    touch "$MNT$MODEL_IN"
    mount --bind -o ro "$MODEL" "$MNT$MODEL_IN"
    mount -t proc proc "$MNT/proc"
    mount --rbind /dev "$MNT/dev"
    mount -t tmpfs tmpfs "$MNT/tmp"
    shift 0
    exec chroot --userspec="$USERSPEC" "$MNT" "$@"
  ' _ env -i "${IENV[@]}" ORTHOSERVE_HOST=127.0.0.1 ORTHOSERVE_PORT="$PORT" "${ENTRY[@]}" >"$LOG" 2>&1 &
SERVER_PID=$!

ok=""
limit=$(scaled 60)
deadline=$(( SECONDS + limit ))
while [ "$SECONDS" -lt "$deadline" ]; do
  if curl -fsS -m 10 -o /dev/null "http://127.0.0.1:$PORT/health" 2>/dev/null; then ok=1; break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG"; fail "the server exited"; }
  sleep 0.1
done
[ -n "$ok" ] || { cat "$LOG"; fail "/health did not answer 200 within $limit s"; }
say "/health is 200"

# The image's own HEALTHCHECK command, inside the image (its curl, its env).
unshare --mount --propagation private -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin MNT="$MNT" USERSPEC="$USERSPEC" \
  bash -c 'mount -t proc proc "$MNT/proc"; mount --rbind /dev "$MNT/dev"; shift 0; exec chroot --userspec="$USERSPEC" "$MNT" "$@"' \
  _ env -i "${IENV[@]}" ORTHOSERVE_PORT="$PORT" /bin/sh -c "$HC" || fail "the image's HEALTHCHECK command failed: $HC"
say "HEALTHCHECK command passes: $HC"

body=$(curl -fsS -m "$(scaled 120)" "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
  -d '{"prompt":"Once upon a time","max_tokens":16,"temperature":0}')
python3 - "$body" <<'EOF'
import json, sys
j = json.loads(sys.argv[1])
assert j["object"] == "text_completion", j
assert j["usage"]["completion_tokens"] == 16, j["usage"]
assert j["choices"][0]["text"], j
print("completion ok: %r" % j["choices"][0]["text"][:60])
EOF
curl -fsS -m "$(scaled 60)" "http://127.0.0.1:$PORT/metrics" | grep '^orthoserve_model_info{' >/dev/null || fail "/metrics has no model_info"

# The server process (the chroot's child after exec) runs as the image's user.
spid=$(pgrep -P "$SERVER_PID" || true)
for p in $SERVER_PID $spid; do
  comm=$(cat "/proc/$p/comm" 2>/dev/null || true)
  if [ "$comm" = "orthoserve" ]; then
    uid=$(awk '/^Uid:/ {print $2}' "/proc/$p/status")
    [ "$uid" = "${USERSPEC%%:*}" ] || fail "orthoserve runs as uid $uid, not ${USERSPEC%%:*}"
    say "orthoserve (pid $p) runs as uid $uid"
  fi
done

kill -TERM "$SERVER_PID"
limit=$(scaled 30)
deadline=$(( SECONDS + limit ))
while kill -0 "$SERVER_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
kill -0 "$SERVER_PID" 2>/dev/null && fail "no exit within $limit s of SIGTERM"
wait "$SERVER_PID" && rc=0 || rc=$?
SERVER_PID=""
[ "$rc" -eq 0 ] || { cat "$LOG"; fail "exit code $rc after SIGTERM"; }
grep -q '"level":"info","msg":"request"' "$LOG" || { cat "$LOG"; fail "no JSON request log line"; }
rm -f "$LOG"
say "PASS (image build + run)"
