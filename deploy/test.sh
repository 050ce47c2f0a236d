#!/usr/bin/env bash
# The whole test suite against real servers (each test session starts its own on free
# loopback ports). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
