#!/usr/bin/env bash
# Health schedules: the probe tests make a short-lived TLS certificate with the openssl CLI.
set -euo pipefail
if ! command -v openssl >/dev/null 2>&1; then
  echo "setup: installing Debian package openssl (TLS expiry tests)"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi
command -v openssl >/dev/null 2>&1 || { echo "setup: openssl is missing (Debian package openssl)" >&2; exit 1; }
