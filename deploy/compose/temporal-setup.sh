#!/bin/sh
# Make the cluster ready for Phasegate: its namespace and Phasegate's search attributes, with the
# Temporal CLI connected by TEMPORAL_* and an admin's profile (TEMPORAL_CONFIG_FILE). Safe to run
# again: an existing namespace is kept and search attributes already there are left alone.
set -eu
namespace="${TEMPORAL_NAMESPACE:-default}"
if ! temporal operator namespace describe --namespace "$namespace" >/dev/null 2>&1; then
  temporal operator namespace create --namespace "$namespace" --retention "${TEMPORAL_RETENTION:-7d}"
fi
# One at a time: given several --name, the CLI pairs each with a --type of its own. A namespace
# just registered reaches every service of the server within seconds; until then it is unknown.
for attribute in PhasegateService PhasegatePhase PhasegateStatus; do
  tries=0
  until temporal operator search-attribute create --namespace "$namespace" --name "$attribute" --type Keyword; do
    tries=$((tries + 1))
    if [ "$tries" -ge 30 ]; then
      echo "temporal-setup: could not add search attribute $attribute to $namespace" >&2
      exit 1
    fi
    sleep 1
  done
done
echo "temporal-setup: namespace $namespace is ready for Phasegate"
