#!/usr/bin/env bash
# The demo launch on the embedded Temporal dev server, Prometheus and the demo service.
# Installs only the demo's part (deploy/setup.sh demo). Arguments go to `phasegate demo`
# (e.g. --auto-approve, --faulty, --secure, --authenticated, --keep-running).
# --authenticated also needs the local identity provider, built once from Go modules
# (deploy/identity/build.sh, which `deploy/setup.sh test` runs too); the other demos never do.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh demo
for arg in "$@"; do
  if [ "$arg" = "--authenticated" ]; then
    bash deploy/identity/build.sh
    break
  fi
done
exec .venv/bin/phasegate demo "$@"
