#!/usr/bin/env bash
# Build the Temporal server and its SQL schema tool from the Go module go.temporal.io/server and
# cache them by version, with the module's PostgreSQL schema:
#   $PHASEGATE_TEMPORAL_CACHE (default ~/.cache/phasegate/temporal)/server-<version>/
#     temporal-server  temporal-sql-tool  schema/postgresql/...
# A complete cache entry is not rebuilt. `build.sh --print-path` prints the directory and builds
# nothing. Prints `setup:` lines; the last one names the directory. A cold build takes about
# 8 minutes and 2.6 GB of memory on 2 cores.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
CACHE="${PHASEGATE_TEMPORAL_CACHE:-$HOME/.cache/phasegate/temporal}"
dir="$CACHE/server-$TEMPORAL_SERVER_VERSION"
if [ "${1:-}" = "--print-path" ]; then
  echo "$dir"
  exit 0
fi
[ $# -eq 0 ] || { echo "setup: usage: $0 [--print-path]" >&2; exit 2; }

if [ ! -f "$dir/.complete" ]; then
  command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"
  command -v go >/dev/null 2>&1 || { echo "setup: go is needed to build the Temporal server (none on PATH)" >&2; exit 1; }
  export GOTOOLCHAIN=local GOFLAGS="-buildvcs=false" CGO_ENABLED=0
  module="go.temporal.io/server@$TEMPORAL_SERVER_VERSION"
  echo "setup: building the Temporal server $TEMPORAL_SERVER_VERSION and its SQL tool (cold: about 8 minutes)"
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp/bin"
  log="$(mktemp)"
  # The module's source holds the schema; downloading it is quiet unless it fails.
  src="$(go mod download -json "$module" 2>"$log" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')" \
    || { cat "$log" >&2; rm -f "$log"; exit 1; }
  rm -f "$log"
  [ -d "$src/schema/postgresql" ] || { echo "setup: $module has no schema/postgresql" >&2; exit 1; }
  cp -r "$src/schema/postgresql" "$dir.tmp/schema-postgresql"
  chmod -R u+w "$dir.tmp/schema-postgresql"
  mkdir -p "$dir.tmp/schema" && mv "$dir.tmp/schema-postgresql" "$dir.tmp/schema/postgresql"
  timed=()
  [ -x /usr/bin/time ] && timed=(/usr/bin/time -v -o "$dir.tmp/build-stats.txt")
  # One command for both: they share every compiled package.
  GOBIN="$dir.tmp/bin" "${timed[@]}" nice -n 19 go install -trimpath -ldflags '-s -w' \
    "go.temporal.io/server/cmd/server@$TEMPORAL_SERVER_VERSION" \
    "go.temporal.io/server/cmd/tools/sql@$TEMPORAL_SERVER_VERSION"
  mv "$dir.tmp/bin/server" "$dir.tmp/temporal-server"
  mv "$dir.tmp/bin/sql" "$dir.tmp/temporal-sql-tool"
  rmdir "$dir.tmp/bin"
  touch "$dir.tmp/.complete"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
fi
echo "setup: Temporal server ready: $dir"
