#!/usr/bin/env bash
# parts: test
# Health schedules: the probe tests make a short-lived TLS certificate with the openssl CLI.
set -euo pipefail
command -v openssl >/dev/null 2>&1 || bash deploy/apt-install.sh openssl
command -v openssl >/dev/null 2>&1 || { echo "setup: openssl is missing (Debian package openssl)" >&2; exit 1; }
echo "setup: $(openssl version)"
