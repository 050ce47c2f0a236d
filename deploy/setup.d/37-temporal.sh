#!/usr/bin/env bash
# parts: test
# The Temporal server and its SQL schema tool for the tests' real cluster (PostgreSQL, TLS,
# authorization), built from the Go module go.temporal.io/server and cached by version; see
# deploy/temporal/build.sh.
set -euo pipefail
exec bash deploy/temporal/build.sh
