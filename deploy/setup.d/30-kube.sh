#!/usr/bin/env bash
# The local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler,
# kwok) built from Go modules and cached by version; see deploy/kube/build.sh.
set -euo pipefail
if [ -n "${KUBECONFIG:-}" ]; then
  echo "setup: KUBECONFIG is set: tests use that cluster; not building a local control plane"
  exit 0
fi
if [ ! -x /usr/bin/time ]; then  # build.sh records a cold build's time and peak memory with it
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends time >/dev/null 2>&1 || true
fi
exec bash deploy/kube/build.sh
