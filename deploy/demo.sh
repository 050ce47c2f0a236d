#!/usr/bin/env bash
# The demo launch on the embedded Temporal dev server, Prometheus and the demo service.
# Installs only the demo's part (deploy/setup.sh demo). Arguments go to `phasegate demo`
# (e.g. --auto-approve, --faulty, --secure, --keep-running).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh demo
exec .venv/bin/phasegate demo "$@"
