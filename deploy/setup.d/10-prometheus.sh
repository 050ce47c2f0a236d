#!/usr/bin/env bash
# parts: demo
# Prometheus from Debian's packages: the demo's and the tests' metrics store, which the
# launch's analysis queries.
set -euo pipefail
[ -x /usr/bin/prometheus ] || bash deploy/apt-install.sh prometheus
[ -x /usr/bin/prometheus ] || { echo "setup: /usr/bin/prometheus is missing (Debian package prometheus)" >&2; exit 1; }
echo "setup: $(/usr/bin/prometheus --version 2>&1 | head -1 | cut -d' ' -f1-3)"
