#!/usr/bin/env bash
# The local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler,
# kwok) built from Go modules and cached by version; see deploy/kube/build.sh.
set -euo pipefail
if [ -n "${KUBECONFIG:-}" ]; then
  echo "setup: KUBECONFIG is set: tests use that cluster; not building a local control plane"
  exit 0
fi
command -v go >/dev/null 2>&1 || {
  echo "setup: go >= 1.24 is needed to build the local control plane (none on PATH)" >&2; exit 1; }
go_minor="$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
[ "${go_minor:-0}" -ge 24 ] || {
  echo "setup: go >= 1.24 is needed to build the local control plane (found $(go env GOVERSION))" >&2; exit 1; }
if [ ! -x /usr/bin/time ]; then  # build.sh records peak memory with it when present
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends time >/dev/null 2>&1 || true
fi
exec bash deploy/kube/build.sh
