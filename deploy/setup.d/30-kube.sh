#!/usr/bin/env bash
# parts: kube
# The local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler,
# kwok) built from Go modules and cached by version; see deploy/kube/build.sh.
set -euo pipefail
if [ -n "${KUBECONFIG:-}" ]; then
  echo "setup: KUBECONFIG is set: tests use that cluster; not building a local control plane"
  exit 0
fi
# build.sh records a cold build's time and peak memory with /usr/bin/time; it builds without.
[ -x /usr/bin/time ] || bash deploy/apt-install.sh time 2>/dev/null ||
  echo "setup: no /usr/bin/time (Debian package time): a cold build's time and memory go unrecorded"
exec bash deploy/kube/build.sh
