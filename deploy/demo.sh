#!/usr/bin/env bash
# The demo launch on the embedded Temporal dev server, Prometheus and the demo service.
# Arguments go to `phasegate demo` (e.g. --auto-approve, --faulty, --keep-running).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
exec .venv/bin/phasegate demo "$@"
