#!/usr/bin/env bash
# parts: postgres
# PostgreSQL server and client tools from Debian's packages, for the migration_cutover phase:
# the migration demo, the tests and the benchmark start throwaway clusters with initdb and the
# postgres server from /usr/lib/postgresql/<version>/bin; pg_dump/pg_restore take and check backups.
set -euo pipefail

have_server() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
if ! have_server || ! command -v pg_dump >/dev/null 2>&1 || ! command -v pg_restore >/dev/null 2>&1; then
  bash deploy/apt-install.sh postgresql postgresql-client
fi
have_server || { echo "setup: initdb is missing under /usr/lib/postgresql/*/bin (Debian package postgresql)" >&2; exit 1; }
echo "setup: postgresql $(ls /usr/lib/postgresql | sort -V | tail -1) ($(pg_dump --version))"
