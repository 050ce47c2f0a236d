#!/usr/bin/env bash
# Build Phasegate's OpenID Connect provider (devstack/identity_provider: zitadel's example OP
# with Phasegate's people, clients and claims) and cache it by library version and source:
#   $PHASEGATE_IDP_CACHE (default ~/.cache/phasegate/identity)/
#     zitadel-oidc-<version>-<source hash>/phasegate-idp
# The source hash is the first 12 hex digits of the sha256 of `sha256sum go.mod go.sum *.go`
# (names in C order) run in devstack/identity_provider; devstack/identity_provider.py computes
# it the same way to find the binary, so editing the Go sources means building again.
# A binary already in the cache is not rebuilt. `build.sh --print-path` prints the binary's
# path and builds nothing. Prints `setup:` lines; the last one names the binary.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
src="$(cd "$here/../../devstack/identity_provider" && pwd)"
CACHE="${PHASEGATE_IDP_CACHE:-$HOME/.cache/phasegate/identity}"

source_hash() {
  local files
  # shellcheck disable=SC2035  # the Go sources have plain names
  files="$(cd "$src" && printf '%s\n' go.mod go.sum *.go | LC_ALL=C sort)"
  # shellcheck disable=SC2086  # one name per line, none with spaces
  (cd "$src" && sha256sum -- $files) | sha256sum | cut -c1-12
}

dir="$CACHE/zitadel-oidc-$ZITADEL_OIDC_VERSION-$(source_hash)"
binary="$dir/phasegate-idp"
if [ "${1:-}" = "--print-path" ]; then
  echo "$binary"
  exit 0
fi
[ $# -eq 0 ] || { echo "setup: usage: $0 [--print-path]" >&2; exit 2; }

grep -q "^[[:space:]]*github.com/zitadel/oidc/v3 $ZITADEL_OIDC_VERSION\$" "$src/go.mod" || {
  echo "setup: $src/go.mod does not require github.com/zitadel/oidc/v3 $ZITADEL_OIDC_VERSION (deploy/identity/versions.env)" >&2
  exit 1
}

if [ ! -x "$binary" ]; then
  # Go is only needed to build; the image keeps it in /usr/local/go.
  command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"
  needed="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$src/go.mod")"
  command -v go >/dev/null 2>&1 || { echo "setup: go >= $needed is needed to build the identity provider (none on PATH)" >&2; exit 1; }
  export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
  have="$(go env GOVERSION)"
  # sort -V puts the older first: the toolchain must not be older than go.mod's `go` line.
  if [ "$(printf '%s\n' "$needed" "${have#go}" | sort -V | head -1)" != "$needed" ]; then
    echo "setup: go >= $needed is needed to build the identity provider (found $have)" >&2
    exit 1
  fi
  echo "setup: building the identity provider (zitadel/oidc $ZITADEL_OIDC_VERSION, cold: under a minute)"
  mkdir -p "$dir"
  log="$(mktemp)"
  # Module downloads are chatty: show their output only when they fail.
  (cd "$src" && go mod download) >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; exit 1; }
  rm -f "$log"
  # Peak memory and wall time of a cold build go to build-stats.txt next to the binary.
  timed=()
  [ -x /usr/bin/time ] && timed=(/usr/bin/time -v -a -o "$dir/build-stats.txt")
  (cd "$src" && "${timed[@]}" nice -n 19 go build -trimpath -ldflags '-s -w' -o "$binary.tmp" .)
  mv "$binary.tmp" "$binary"
fi
echo "setup: identity provider ready: $binary"
