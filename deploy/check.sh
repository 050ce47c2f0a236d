#!/usr/bin/env bash
# Lint, format and type checks, as CI runs them before the tests: `ruff check .`,
# `ruff format --check .` and `mypy` (the files are listed in pyproject.toml's [tool.mypy]).
# Stops at the first that fails, after its output. Needs the `dev` extra (deploy/setup.sh test).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in ruff mypy; do
  [ -x ".venv/bin/$tool" ] || { echo "check: .venv/bin/$tool is missing: run deploy/setup.sh test" >&2; exit 1; }
done
run() {
  echo "check: $*"
  "$@" || { status=$?; echo "check: \`$*\` failed (exit $status)" >&2; exit "$status"; }
}
run .venv/bin/ruff check .
run .venv/bin/ruff format --check .
run .venv/bin/mypy
echo "check: ruff and mypy are clean"
