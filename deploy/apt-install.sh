#!/usr/bin/env bash
# Install Debian packages as root, or through sudo: deploy/apt-install.sh PACKAGE...
# Prints one `setup:` line; on failure, apt's own output and a non-zero exit.
set -euo pipefail
echo "setup: installing Debian packages: $*"
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { "${as_root[@]}" apt-get update -qq &&
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup: could not install the Debian packages $* (apt-get's output is above)" >&2
  exit 1
fi
