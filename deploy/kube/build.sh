#!/usr/bin/env bash
# Build the local Kubernetes control plane from Go modules and cache the binaries by version:
#   etcd            a tiny wrapper module around go.etcd.io/etcd/server/v3/etcdmain
#   kube-apiserver, kube-controller-manager, kube-scheduler
#                   a local module requiring k8s.io/kubernetes, every k8s.io/* staging module
#                   pinned by `replace` to the matching v0.x.y (generated from the release's go.mod)
#   kwok            go install sigs.k8s.io/kwok/cmd/kwok@version
# Cache layout: $PHASEGATE_KUBE_CACHE (default ~/.cache/phasegate/kube)/
#   kubernetes-<version>/{kube-apiserver,kube-controller-manager,kube-scheduler}
#   etcd-<version>/etcd      kwok-<version>/kwok
# A component already in the cache is not rebuilt, so a warm run takes well under a second.
# Prints `setup:` lines; the last line names the cache directories.
set -euo pipefail

# shellcheck source=versions.env
. "$(dirname "$0")/versions.env"
CACHE="${PHASEGATE_KUBE_CACHE:-$HOME/.cache/phasegate/kube}"


export GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
NICE=(nice -n 19)
# Peak memory and wall time of each cold build go to build-stats.txt next to the binaries.
TIMED=()
[ -x /usr/bin/time ] && TIMED=(/usr/bin/time -v -a -o)

kube_dir="$CACHE/kubernetes-$KUBE_VERSION"
etcd_dir="$CACHE/etcd-$ETCD_VERSION"
kwok_dir="$CACHE/kwok-$KWOK_VERSION"

quiet() {  # module downloads are chatty: show their output only when they fail
  local log; log="$(mktemp)"
  "$@" >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; return 1; }
  rm -f "$log"
}

timed() {  # timed STATS_FILE command...
  local stats="$1"; shift
  if [ ${#TIMED[@]} -gt 0 ]; then "${TIMED[@]}" "$stats" "$@"; else "$@"; fi
}

build_etcd() {
  [ -x "$etcd_dir/etcd" ] && return 0
  echo "setup: building etcd $ETCD_VERSION (cold, a few minutes)"
  local work; work="$(mktemp -d)"
  mkdir -p "$etcd_dir"
  cat >"$work/main.go" <<'GO'
// Command etcd is etcd's own main, built from its Go module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (
    cd "$work"
    quiet go mod init phasegate.local/etcd
    quiet go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    quiet go mod tidy
    timed "$etcd_dir/build-stats.txt" "${NICE[@]}" go build -trimpath -ldflags '-s -w' -o "$etcd_dir/etcd.tmp" .
  )
  mv "$etcd_dir/etcd.tmp" "$etcd_dir/etcd"
  rm -rf "$work"
}

build_kubernetes() {
  local names=(kube-apiserver kube-controller-manager kube-scheduler) name missing=0
  for name in "${names[@]}"; do [ -x "$kube_dir/$name" ] || missing=1; done
  [ "$missing" -eq 0 ] && return 0
  echo "setup: building kube-apiserver, kube-controller-manager, kube-scheduler $KUBE_VERSION (cold, tens of minutes)"
  local work; work="$(mktemp -d)"
  mkdir -p "$kube_dir"
  local staging="v0.${KUBE_VERSION#v1.}"
  (
    cd "$work"
    # The release's own go.mod lists its staging modules as `k8s.io/x => ./staging/src/k8s.io/x`.
    local release_mod
    release_mod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
    {
      echo "module phasegate.local/kubernetes"
      echo
      echo "go $(sed -n 's/^go \([0-9.]*\)$/\1/p' "$release_mod")"
      echo
      echo "require k8s.io/kubernetes $KUBE_VERSION"
      echo
      echo "replace ("
      sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/k8s.io/.*#\t\1 => \1 '"$staging"'#p' "$release_mod"
      echo ")"
    } >go.mod
    grep -q "k8s.io/api => k8s.io/api $staging" go.mod || { echo "setup: no staging replaces found in $release_mod" >&2; exit 1; }
    for name in "${names[@]}"; do quiet go get "k8s.io/kubernetes/cmd/$name@$KUBE_VERSION"; done
    local commit date ldflags v="${KUBE_VERSION#v}"
    commit="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"Hash": "\(.*\)",*/\1/p')"
    date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=${v%%.*}"
      ldflags+=" -X $pkg.gitMinor=$(echo "$v" | cut -d. -f2) -X $pkg.gitTreeState=clean"
      ldflags+=" -X $pkg.gitCommit=${commit:-unknown} -X $pkg.buildDate=$date"
    done
    local pkgs=()
    for name in "${names[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$name"); done
    timed "$kube_dir/build-stats.txt" "${NICE[@]}" go build -trimpath -ldflags "$ldflags" -o "$kube_dir/" "${pkgs[@]}"
  )
  rm -rf "$work"
}

build_kwok() {
  [ -x "$kwok_dir/kwok" ] && return 0
  echo "setup: building kwok $KWOK_VERSION"
  mkdir -p "$kwok_dir"
  local v="$KWOK_VERSION"
  GOBIN="$kwok_dir" timed "$kwok_dir/build-stats.txt" "${NICE[@]}" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$v" "sigs.k8s.io/kwok/cmd/kwok@$v"
}

cached=1
for binary in "$etcd_dir/etcd" "$kwok_dir/kwok" "$kube_dir/kube-apiserver" \
  "$kube_dir/kube-controller-manager" "$kube_dir/kube-scheduler"; do
  [ -x "$binary" ] || cached=0
done
if [ "$cached" -eq 0 ]; then
  # Go is only needed to build; the image keeps it in /usr/local/go.
  command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"
  command -v go >/dev/null 2>&1 || { echo "setup: go >= 1.24 is needed to build the local control plane (none on PATH)" >&2; exit 1; }
  go_minor="$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
  [ "${go_minor:-0}" -ge 24 ] || { echo "setup: go >= 1.24 is needed to build the local control plane (found $(go env GOVERSION))" >&2; exit 1; }
  build_etcd
  build_kwok
  build_kubernetes
fi
echo "setup: kube control plane ready: $kube_dir $etcd_dir $kwok_dir"
