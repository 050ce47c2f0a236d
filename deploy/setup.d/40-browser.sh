#!/usr/bin/env bash
# parts: test
# Chromium from Debian's packages: the browser tests drive the Temporal UI headless with it.
set -euo pipefail
[ -x /usr/bin/chromium ] || bash deploy/apt-install.sh chromium chromium-driver
[ -x /usr/bin/chromium ] || { echo "setup: /usr/bin/chromium is missing (Debian package chromium)" >&2; exit 1; }
echo "setup: $(/usr/bin/chromium --version 2>/dev/null | head -1 || echo chromium)"
