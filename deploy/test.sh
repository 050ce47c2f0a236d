#!/usr/bin/env bash
# The whole test suite against real servers (each test session starts its own on free
# loopback ports), after installing every part (deploy/setup.sh all). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh all
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
