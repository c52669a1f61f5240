#!/usr/bin/env bash
# Install the Debian packages orthoserve builds and tests with (idempotent).
# Runs apt-get only when something is missing; needs root (or sudo).
set -euo pipefail
PKGS=(build-essential cmake pkg-config git ca-certificates curl
      libopenblas-dev libmicrohttpd-dev libjansson-dev libuv1-dev libcriterion-dev
      libcurl4-openssl-dev libsqlite3-dev python3 nodejs npm clang libclang-rt-dev
      python3-yaml python3-jsonschema wrk
      podman debootstrap uidmap fuse-overlayfs prometheus)  # the image and deploy tests (slow;image)
missing=()
for p in "${PKGS[@]}"; do
  # Node.js and npm may come from outside Debian (the CI image has its own):
  # a working command counts, and installing Debian's would conflict with it.
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PKGS[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
