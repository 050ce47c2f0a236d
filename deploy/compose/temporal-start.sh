#!/bin/sh
# Start the Temporal server on deploy/temporal/config/production.yaml (the image keeps it at
# /etc/temporal/production.yaml): the PostgreSQL password read from its secret file, the
# server announced to its own services at the container's address.
set -eu
if [ -n "${POSTGRES_PWD_FILE:-}" ]; then
  POSTGRES_PWD="$(cat "$POSTGRES_PWD_FILE")"
  export POSTGRES_PWD
fi
if [ -z "${TEMPORAL_BROADCAST_ADDRESS:-}" ]; then
  TEMPORAL_BROADCAST_ADDRESS="$(getent hosts "$(hostname)" | awk '{print $1; exit}')"
  export TEMPORAL_BROADCAST_ADDRESS
fi
exec temporal-server --config-file "${TEMPORAL_SERVER_CONFIG:-/etc/temporal/production.yaml}" start
