#!/bin/sh
# Create the Temporal server's two PostgreSQL databases and bring their schemas to the version
# the server ships ($TEMPORAL_SCHEMA_DIR/postgresql/v12, the module's own schema). Safe to run
# again: an existing database is kept and a schema already set up is only brought up to date.
# Connection from SQL_HOST, SQL_PORT, SQL_USER and SQL_PASSWORD (or SQL_PASSWORD_FILE), which
# temporal-sql-tool reads; database names from DBNAME and VISIBILITY_DBNAME, as the server's
# config template reads them.
set -eu
schema="${TEMPORAL_SCHEMA_DIR:?set TEMPORAL_SCHEMA_DIR to the schema folder}/postgresql/v12"
if [ -n "${SQL_PASSWORD_FILE:-}" ]; then
  SQL_PASSWORD="$(cat "$SQL_PASSWORD_FILE")"
  export SQL_PASSWORD
fi
export SQL_PLUGIN=postgres12
for target in "${DBNAME:-temporal}=temporal" "${VISIBILITY_DBNAME:-temporal_visibility}=visibility"; do
  database="${target%%=*}"
  temporal-sql-tool --database "$database" create-database --defaultdb postgres
  temporal-sql-tool --database "$database" setup-schema -v 0.0
  temporal-sql-tool --database "$database" update-schema -d "$schema/${target#*=}/versioned"
  echo "temporal-schema: $database is up to date"
done
