"""PostgreSQL for the migration cutover: preflight, backup, migrate, verify, switch, restore.

psycopg 3 (sync) in plain `def` activities on the worker's thread pool; pg_dump/pg_restore as
subprocesses. Every activity is idempotent: the ledger table records each script applied (in
the script's own transaction where it allows one) and the cutover switch, the backup is written
once per launch and phase and recorded next to itself, and a restore converges on the
fingerprint taken in the backup's own snapshot.

What leaves an activity (results, failures, logs) carries counts, checksums and names only:
never a DSN or its password (every failure passes `kept_out` of both DSNs, and a DSN psycopg
cannot parse gets a fixed message), and never a row value (the server's DETAIL and CONTEXT,
which quote rows, are withheld, and invariants report how many rows they returned).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, LiteralString, Protocol, TypeVar, cast

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError

from activities import backup_store, pg_capture, pg_table_restore
from activities.errors import ConfigurationError, MigrationError, WritesAtRisk
from activities.limits import in_force
from activities.options import HOUR, MINUTE, SECOND, activity_options
from activities.pg_errors import describe, without_row_values
from activities.pg_progress import (
    Progress,
    ToolFailed,
    activity_budget,
    connection_options,
    run_tool,
    sized_timeout,
    watching_statement,
)
from activities.redaction import describe_ref, kept_out, redact
from activities.secrets import resolve_secret
from schemas.migration_messages import (
    AppliedScript,
    BackupRecord,
    BackupRequest,
    DatabaseFingerprint,
    MigrateRequest,
    MigrateResult,
    MigrationScript,
    MigrationTarget,
    PreflightReport,
    PreflightRequest,
    RestoreDatabaseRequest,
    RestoreReport,
    SqlSwitchRequest,
    SqlSwitchResult,
    TableComparison,
    TableFingerprint,
    TableLoss,
    VerificationReport,
    VerifyRequest,
    WritesAtRiskReport,
    WritesDecision,
    WritesGuardRequest,
    WritesGuardResult,
)

# Quick checks: a few retries for a database that is restarting, then the launch hears of it.
POSTGRES_OPTIONS = activity_options(
    10 * MINUTE, attempts=5, longest_retry=30 * SECOND, heartbeat=30 * SECOND
)
# Backup, migrate and restore can run for hours; a dead worker is noticed by its missing
# heartbeat within seconds and the activity resumes on another one from the ledger.
LONG_POSTGRES_OPTIONS = activity_options(
    6 * HOUR, attempts=20, longest_retry=30 * SECOND, heartbeat=10 * SECOND
)
HEARTBEAT_S = 2.0
# Long activities get a timeout sized from what they work through, measured at preflight:
# ten minutes plus three times the time at a pessimistic 5 MB/s, at most a day.
SIZED_RATE_BYTES_PER_S = 5e6
SIZED_FLOOR = 10 * MINUTE
SIZED_CEILING = 24 * HOUR


def long_options(size_bytes: int) -> workflow.ActivityConfig:
    """`LONG_POSTGRES_OPTIONS` with a start-to-close timeout sized from `size_bytes`."""
    options = LONG_POSTGRES_OPTIONS.copy()
    options["start_to_close_timeout"] = sized_timeout(
        max(0, size_bytes),
        rate_bytes_per_s=SIZED_RATE_BYTES_PER_S,
        floor=SIZED_FLOOR,
        ceiling=SIZED_CEILING,
    )
    return options


NO_TRANSACTION_MARK = "-- phasegate: no-transaction"
_SCRIPT = re.compile(r"^(\d+)_([A-Za-z0-9_-]+)\.sql$")
_DOWN = re.compile(r"^(\d+)_([A-Za-z0-9_-]+)\.down\.sql$")
_SYSTEM_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
)
CUTOVER_VERSION = "cutover"
# The migration folder's script that keeps live writes the undo would lose (see docs).
CARRY_OVER = "carry_over.sql"
# Saved live writes (encrypted JSON lines) beside the backup; never pruned with backups.
ROWS_SUFFIX = ".rows.pgbk"


# --- the scripts folder ----------------------------------------------------------------


def discover_scripts(folder: str) -> list[MigrationScript]:
    """The folder's `NNN_name.sql` files in version order; anything odd is a clear error."""
    problem = in_force().read_problem(folder)
    if problem is not None:
        raise ConfigurationError(f"migrations folder {folder}: {problem}")
    root = Path(folder)
    if not root.is_dir():
        raise ConfigurationError(f"migrations folder {folder} does not exist")
    ups: dict[str, Path] = {}
    downs: set[str] = set()
    for path in sorted(root.iterdir()):
        if not path.name.endswith(".sql") or path.name == CARRY_OVER:
            continue
        if _DOWN.match(path.name):
            downs.add(path.name.removesuffix(".down.sql"))
        elif up := _SCRIPT.match(path.name):
            if up.group(1) in {_version(p) for p in ups.values()}:
                raise ConfigurationError(
                    f"{folder}: two scripts have version {up.group(1)} ({path.name})"
                )
            ups[path.name.removesuffix(".sql")] = path
        else:
            raise ConfigurationError(
                f"{folder}/{path.name}: name it NNN_name.sql (or NNN_name.down.sql for its undo)"
            )
    orphans = downs - set(ups)
    if orphans:
        raise ConfigurationError(f"{folder}: down scripts without an up script: {sorted(orphans)}")
    if not ups:
        raise ConfigurationError(f"migrations folder {folder} has no NNN_name.sql scripts")
    scripts = []
    for stem, path in sorted(ups.items(), key=lambda item: int(_version(item[1]))):
        text = path.read_text()
        scripts.append(
            MigrationScript(
                version=_version(path),
                name=stem.split("_", 1)[1],
                sha256=hashlib.sha256(text.encode()).hexdigest(),
                transactional=NO_TRANSACTION_MARK not in text.splitlines()[:5],
                has_down=stem in downs,
            )
        )
    return scripts


def _touched_tables(
    conn: psycopg.Connection[Any], where: MigrationTarget, scripts: list[MigrationScript]
) -> list[str]:
    """`schema.table` of the existing tables the migration changes: those the plan declares in
    `touches` and those its scripts name. A statement whose effects the text does not show
    (a DO block, a function call) is caught inside its script's transaction, where a table
    changed without being guarded fails the script; a script outside a transaction cannot be
    caught, so its hidden changes must be declared."""
    names: set[str] = set(where.touches)
    for script in scripts:
        label = f"{script.version}_{script.name}.sql"
        try:
            written = pg_capture.tables_written_by(_script_text(where.migrations, script))
        except ValueError as err:
            raise MigrationError(f"{label} cannot be parsed: {err}") from None
        if written.opaque and not script.transactional and not where.touches:
            raise MigrationError(
                f"{label} runs outside a transaction and its text does not show everything it "
                f"changes ({'; '.join(written.opaque[:3])}): list the tables it changes in the "
                "phase's `touches`"
            )
        names |= written.tables
    try:
        return sorted(set(pg_capture.resolve_tables(conn, names).values()))
    except ValueError as err:
        raise MigrationError(f"touches: {err}") from None


def _version(path: Path) -> str:
    return path.name.split("_", 1)[0]


def _backup_folder(folder: str) -> Path:
    """The backup folder, made if missing, once the worker's limits allow writing there."""
    problem = in_force().backup_problem(folder)
    if problem is not None:
        raise ConfigurationError(f"backup folder {folder}: {problem}")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _script_text(folder: str, script: MigrationScript, *, down: bool = False) -> str:
    path = Path(folder) / f"{script.version}_{script.name}{'.down' if down else ''}.sql"
    text = path.read_text()
    if not down and hashlib.sha256(text.encode()).hexdigest() != script.sha256:
        raise MigrationError(
            f"{path} changed after preflight read it; start the launch again to apply the new text"
        )
    return text


# --- connections, heartbeats, subprocesses ----------------------------------------------

Role = Literal["source", "target"]


def _identifier(name: str) -> sql.Identifier:
    return sql.Identifier(*name.split("."))


def _field(where: MigrationTarget, role: Role) -> str:
    """The plan field a DSN comes from, as `<phase>.source` or `<phase>.target` (a phase
    without a `target` migrates its source)."""
    if role == "target" and where.target == where.source:
        role = "source"
    return f"{where.phase}.{role}"


def _dsn(where: MigrationTarget, role: Role) -> dict[str, str]:
    """The DSN's settings, or a fixed message naming the field: psycopg's own parse errors
    quote the text around the mistake, which can be the password."""
    ref = where.source if role == "source" else where.target
    field = _field(where, role)
    dsn = resolve_secret(ref, where=field)
    try:
        params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    except psycopg.Error:
        raise ConfigurationError(
            f"{field}: not a valid PostgreSQL connection string (the secret {describe_ref(ref)}); "
            "write key=value settings (host, port, dbname, user, password) or a postgresql:// URI"
        ) from None
    # Checked again here, not only when the launch started: the limits or the secret may
    # have changed since.
    problem = in_force().database_problem(dsn)
    if problem is not None:
        raise ConfigurationError(f"{field}: {problem}")
    return params


def _dsn_secrets(where: MigrationTarget) -> list[str]:
    """Both DSNs and their passwords, to keep out of everything an activity reports."""
    secrets: list[str] = []
    for ref in (where.source, where.target):
        try:
            dsn = resolve_secret(ref, where="")
        except ConfigurationError:
            continue
        secrets.append(dsn)
        with contextlib.suppress(psycopg.Error):
            secrets.append(str(conninfo_to_dict(dsn).get("password") or ""))
    return secrets


class _Located(Protocol):
    @property
    def where(self) -> MigrationTarget: ...


R = TypeVar("R", bound=_Located)
T = TypeVar("T")


def _dsns_kept_out(
    activity_method: Callable[[PostgresActivities, R], T],
) -> Callable[[PostgresActivities, R], T]:
    """Whatever the activity raises says nothing of the request's DSNs."""

    @functools.wraps(activity_method)
    def run(self: PostgresActivities, request: R) -> T:
        with kept_out(_dsn_secrets(request.where)):
            return activity_method(self, request)

    return run


class PostgresActivities:
    """The migration activities; `bin_dir` holds pg_dump/pg_restore (default: from PATH)."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        self._bin_dir = bin_dir

    def _tool(self, name: str) -> str:
        if self._bin_dir is not None:
            return str(self._bin_dir / name)
        found = shutil.which(name)
        if found is None:
            raise ConfigurationError(
                f"{name} not found on the worker: install the Debian package postgresql-client"
            )
        return found

    def _connect(
        self,
        where: MigrationTarget,
        role: Role,
        *,
        application: str = "phasegate",
        dbname: str | None = None,
    ) -> psycopg.Connection[Any]:
        params = _dsn(where, role)
        if dbname is not None:
            params["dbname"] = dbname
            problem = in_force().database_problem(make_conninfo("", **params))
            if problem is not None:
                raise ConfigurationError(f"{_field(where, role)}: {problem}")
        # No statement and no idle transaction outlives the activity that runs it.
        bounds = connection_options(activity_budget(SIZED_FLOOR), None)
        params["options"] = f"{params['options']} {bounds}" if params.get("options") else bounds
        try:
            return psycopg.connect(
                make_conninfo("", **params),
                autocommit=True,
                application_name=application,
                connect_timeout=10,
            )
        except psycopg.Error as err:
            message = redact(without_row_values(str(err).strip()), _dsn_secrets(where))
            if isinstance(err, psycopg.OperationalError):
                # Retryable: the database may be restarting; the message names which one.
                raise ConnectionError(f"{_field(where, role)}: cannot connect: {message}") from None
            raise ConfigurationError(
                f"{_field(where, role)}: not a usable PostgreSQL connection string: {message}"
            ) from None

    # --- preflight --------------------------------------------------------------------

    @activity.defn(name="preflight_migration")
    @_dsns_kept_out
    def preflight_migration(self, request: PreflightRequest) -> PreflightReport:
        where = request.where
        scripts = discover_scripts(where.migrations)
        versions: dict[str, str] = {}
        roles: tuple[Role, ...] = ("source", "target")
        for role in roles:
            with self._connect(where, role) as conn:
                number = int(_scalar(conn, "SHOW server_version_num"))
                versions[role] = str(_scalar(conn, "SHOW server_version"))
                if request.min_server_version and number < request.min_server_version:
                    raise MigrationError(
                        f"{role} database runs PostgreSQL {versions[role]} ({number}); the plan "
                        f"needs server_version_num >= {request.min_server_version}"
                    )
                if role == "target":
                    installed = {row[0] for row in conn.execute("SELECT extname FROM pg_extension")}
                    missing = sorted(set(request.extensions) - installed)
                    if missing:
                        raise MigrationError(
                            f"target database lacks extension(s) {', '.join(missing)} "
                            f"(installed: {', '.join(sorted(installed))}); CREATE EXTENSION them first"
                        )
                    size = int(_scalar(conn, "SELECT pg_database_size(current_database())"))
                    applied = self._check_ledger(conn, where, scripts)
                    touched = _touched_tables(conn, where, scripts)
                    touched_bytes = sum(
                        int(_scalar(conn, "SELECT pg_total_relation_size(%s::regclass)", (t,)))
                        for t in touched
                    )
        backup_store.in_use()  # no backup without the worker's key: refused before any change
        backup_dir = _backup_folder(request.backup_dir)
        free = shutil.disk_usage(backup_dir).free
        if free < size:
            raise MigrationError(
                f"backup folder {backup_dir} has {free} bytes free; the target database takes "
                f"{size} bytes, and the backup must fit before anything changes"
            )
        return PreflightReport(
            source_version=versions["source"],
            target_version=versions["target"],
            database_bytes=size,
            free_bytes=free,
            scripts=scripts,
            already_applied=applied,
            touched=touched,
            touched_bytes=touched_bytes,
            carry_over=(Path(where.migrations) / CARRY_OVER).is_file(),
        )

    def _check_ledger(
        self, conn: psycopg.Connection[Any], where: MigrationTarget, scripts: list[MigrationScript]
    ) -> list[str]:
        """Versions applied earlier; refuses a half-applied script or one edited since."""
        rows = self._ledger_rows(conn, where.ledger_table)
        half = [version for version, (status, _, _) in rows.items() if status == "applying"]
        if half:
            raise MigrationError(
                f"migration(s) {', '.join(half)} are half-applied (status `applying` in "
                f"{where.ledger_table}): a script outside a transaction stopped midway. Repair "
                "the database by hand, then delete or complete those ledger rows"
            )
        known = {script.version: script for script in scripts}
        for version, (_, sha, _) in rows.items():
            script = known.get(version)
            if script is not None and script.sha256 != sha:
                raise MigrationError(
                    f"{version}_{script.name}.sql was changed after it was applied "
                    f"(ledger {sha[:12]}, file {script.sha256[:12]}); add a new script instead"
                )
        return sorted(v for v in rows if v in known)

    def _ledger_rows(
        self, conn: psycopg.Connection[Any], ledger: str
    ) -> dict[str, tuple[str, str, str]]:
        if _scalar(conn, "SELECT to_regclass(%s)", (ledger,)) is None:
            return {}
        query = sql.SQL("SELECT version, status, sha256, launch_id FROM {}").format(
            _identifier(ledger)
        )
        return {row[0]: (row[1], row[2], row[3]) for row in conn.execute(query)}

    def _ensure_ledger(self, conn: psycopg.Connection[Any], ledger: str) -> None:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " version text PRIMARY KEY,"
                " name text NOT NULL,"
                " sha256 text NOT NULL,"
                " status text NOT NULL CHECK (status IN ('applying', 'applied', 'switched')),"
                " launch_id text NOT NULL,"
                " started_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
                " finished_at timestamptz)"
            ).format(_identifier(ledger))
        )

    # --- backup -----------------------------------------------------------------------

    @activity.defn(name="backup_database")
    @_dsns_kept_out
    def backup_database(self, request: BackupRequest) -> BackupRecord:
        """Guard the touched tables, then an encrypted `pg_dump -Fc` of the target in one
        snapshot with the touched tables' fingerprint and shapes; verified before it counts.

        The capture goes in first, committed: every write to a touched table after the
        snapshot is recorded, so the undo knows each live write it could lose."""
        where = request.where
        keys = backup_store.in_use()
        folder = _backup_folder(request.backup_dir)
        path = backup_store.backup_path(folder, f"{where.launch_id}.{where.phase}")
        sidecar = backup_store.sidecar_of(path)
        progress = Progress("looking for this launch's backup")
        if sidecar.exists() and path.exists():
            recorded = BackupRecord.model_validate_json(sidecar.read_text())
            if _sha256(path) == recorded.sha256:
                activity.logger.info("backup %s already taken and intact", path)
                return recorded
        started = time.monotonic()
        capture = pg_capture.capture_name(where.launch_id, where.phase)
        with self._connect(where, "target") as conn, conn.transaction():
            progress.step("guarding the touched tables", tables=len(request.touched))
            guarded = pg_capture.install_capture(conn, capture, request.touched)
        application = f"phasegate-backup/{where.launch_id}/{where.phase}"[:63]
        with self._connect(where, "target", application=application) as conn:
            # A killed attempt's session may still hold its snapshot: end it first.
            self._stop_earlier_attempts(conn, application)
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            snapshot = str(_scalar(conn, "SELECT pg_export_snapshot()"))
            fingerprint, shapes = _fingerprint(
                conn, guarded, where.ledger_table, progress, _dsn(where, "target")
            )
            objects = pg_table_restore.table_objects(conn, guarded)
            database = str(_scalar(conn, "SELECT current_database()"))
            argv, env = self._tool_call(where, "pg_dump", "-Fc", f"--snapshot={snapshot}")
            writer = backup_store.EncryptingWriter(path, keys)
            try:
                run_tool(argv, env, progress, f"backing up {database}", stdout=writer)
            except BaseException:
                writer.abort()
                raise
            encrypted = writer.close()
            conn.rollback()
        progress.step(f"verifying backup {path}")
        entries = backup_store.verify_backup(
            path,
            self._tool("pg_restore"),
            keys=keys,
            on_progress=lambda _: _step(progress, f"verifying backup {path}"),
        )
        record = BackupRecord(
            path=str(path),
            sha256=encrypted.sha256,
            size_bytes=encrypted.size_bytes,
            entries=entries,
            database=database,
            fingerprint=fingerprint,
            seconds=time.monotonic() - started,
            touched=guarded,
            shapes=shapes,
            written_by=socket.gethostname(),
            objects={name: found.model_dump(mode="json") for name, found in objects.items()},
        )
        _write_private(sidecar, record.model_dump_json(indent=2).encode())
        removed = backup_store.prune_backups(folder, request.keep_days, datetime.now(UTC))
        activity.logger.info(
            "backup %s: %d bytes encrypted, %d entries, sha256 %s; %d old file(s) pruned",
            path,
            record.size_bytes,
            entries,
            record.sha256,
            len(removed),
        )
        return record

    def _tool_call(
        self, where: MigrationTarget, tool: str, *args: str
    ) -> tuple[list[str], dict[str, str]]:
        """argv and environment for pg_dump on the target: the password only in the
        environment, a connect timeout, and no statement outliving the activity."""
        params = _dsn(where, "target")
        password = params.pop("password", None)
        env = {**os.environ, **({"PGPASSWORD": password} if password else {})}
        env["PGOPTIONS"] = connection_options(activity_budget(SIZED_FLOOR), None)
        return [self._tool(tool), *args, f"--dbname={make_conninfo('', **params)}"], env

    # --- migrate ----------------------------------------------------------------------

    @activity.defn(name="apply_migrations")
    @_dsns_kept_out
    def apply_migrations(self, request: MigrateRequest) -> MigrateResult:
        """Apply each script once, in order, recorded in the ledger; skip what it records.
        Inside each script's transaction, the tables it changed must be guarded (tables it
        created are, from then on); a change to any other table fails the script."""
        where = request.where
        application = f"phasegate-migrate/{where.launch_id}/{where.phase}"[:63]
        capture = pg_capture.capture_name(where.launch_id, where.phase)
        result = MigrateResult()
        progress = Progress("starting")
        params = _dsn(where, "target")
        with self._connect(where, "target", application=application) as conn:
            self._stop_earlier_attempts(conn, application)
            self._ensure_ledger(conn, where.ledger_table)
            self._check_ledger(conn, where, request.scripts)
            pg_capture.mark_migration_session(conn, capture)
            with conn.transaction():
                pg_capture.install_capture(conn, capture, request.touched)
            ledger = _identifier(where.ledger_table)
            ledger_name = pg_capture.resolve_tables(conn, [where.ledger_table]).get(
                where.ledger_table, ""
            )
            for number, script in enumerate(request.scripts, start=1):
                label = f"{script.version}_{script.name}.sql"
                if script.version in self._ledger_rows(conn, where.ledger_table):
                    result.applied.append(
                        AppliedScript(
                            version=script.version, name=script.name, seconds=0, skipped=True
                        )
                    )
                    continue
                progress.step(f"applying {label}", script=number, scripts=len(request.scripts))
                text = _script_text(where.migrations, script)
                started = time.monotonic()
                record = sql.SQL(
                    "INSERT INTO {} (version, name, sha256, status, launch_id) "
                    "VALUES (%s, %s, %s, %s, %s)"
                ).format(ledger)
                done = sql.SQL(
                    "UPDATE {} SET status = 'applied', finished_at = clock_timestamp() "
                    "WHERE version = %s"
                ).format(ledger)
                values = (script.version, script.name, script.sha256)
                try:
                    if script.transactional:
                        with conn.transaction():
                            conn.execute(record, (*values, "applying", where.launch_id))
                            counts = pg_capture.write_counts(conn)
                            guarded = pg_capture.guarded_tables(conn, capture)
                            before = pg_capture.catalog_shapes(conn, full=guarded)
                            with watching_statement(conn, progress, f"applying {label}", params):
                                conn.execute(text.encode())
                            self._guard_changes(
                                conn, capture, label, before, counts, ledger_name, guarded
                            )
                            conn.execute(done, (script.version,))
                    else:
                        conn.execute(record, (*values, "applying", where.launch_id))
                        guarded = pg_capture.guarded_tables(conn, capture)
                        before = pg_capture.catalog_shapes(conn, full=guarded)
                        with watching_statement(conn, progress, f"applying {label}", params):
                            conn.execute(text.encode())
                        with conn.transaction():
                            self._guard_changes(
                                conn, capture, label, before, {}, ledger_name, guarded
                            )
                        conn.execute(done, (script.version,))
                except psycopg.Error as err:
                    raise MigrationError(
                        f"{label} failed: {describe(err)}"
                        + (
                            ""
                            if script.transactional
                            else "; it ran outside a transaction, so "
                            "it may be half-applied (see the ledger)"
                        )
                    ) from None
                seconds = time.monotonic() - started
                activity.logger.info("applied %s in %.2fs", label, seconds)
                result.applied.append(
                    AppliedScript(version=script.version, name=script.name, seconds=seconds)
                )
        return result

    def _guard_changes(
        self,
        conn: psycopg.Connection[Any],
        capture: str,
        label: str,
        before: dict[str, str],
        counts: dict[int, int],
        ledger: str,
        guarded: set[str],
    ) -> None:
        """Guard the tables the script created; refuse (fail the script, in its transaction)
        when it changed a table that was not guarded: live writes to it since the backup
        would be unknown to the undo."""
        after = pg_capture.catalog_shapes(conn, full=guarded)
        created = sorted(set(after) - set(before) - {ledger})
        pg_capture.install_capture(conn, capture, created)
        changed = {name for name, shape in after.items() if before.get(name, shape) != shape}
        if counts or not before:
            changed |= pg_capture.tables_written_in_transaction(conn, counts) & set(after)
        unguarded = sorted(changed - pg_capture.guarded_tables(conn, capture) - {ledger})
        if unguarded:
            raise MigrationError(
                f"{label} changed {', '.join(unguarded)}, which the scripts do not name and the "
                "phase's `touches` does not list, so live writes to it since the backup are "
                "not guarded; list it in `touches` and start the launch again"
            )

    def _stop_earlier_attempts(self, conn: psycopg.Connection[Any], application: str) -> None:
        """A worker killed midway leaves its session running a script; end it (its open
        transaction rolls back) before applying anything, so no script runs twice at once."""
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application,),
        )
        for _ in range(100):
            if not _scalar(
                conn,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND pid <> pg_backend_pid()",
                (application,),
            ):
                return
            time.sleep(0.1)

    # --- verify -----------------------------------------------------------------------

    @activity.defn(name="verify_migration")
    @_dsns_kept_out
    def verify_migration(self, request: VerifyRequest) -> VerificationReport:
        """Counts and checksums source vs target, then the invariants; a mismatch fails."""
        where = request.where
        started = time.monotonic()
        report = VerificationReport()
        problems: list[str] = []
        progress = Progress("verifying")
        with (
            self._connect(where, "source") as source,
            self._connect(where, "target") as target,
        ):
            for number, check in enumerate(request.tables, start=1):
                target_table = check.target_table or check.table
                doing = f"comparing {check.table} with {target_table}"
                progress.step(doing, table=check.table, check=number, checks=len(request.tables))
                with watching_statement(source, progress, doing, _dsn(where, "source")):
                    source_rows, source_sum = _table_checksum(source, check.table, check.columns)
                with watching_statement(target, progress, doing, _dsn(where, "target")):
                    target_rows, target_sum = _table_checksum(target, target_table, check.columns)
                comparison = TableComparison(
                    table=check.table,
                    target_table=target_table,
                    source_rows=source_rows,
                    target_rows=target_rows,
                    source_checksum=source_sum,
                    target_checksum=target_sum,
                )
                comparison.columns = check.columns
                report.tables.append(comparison)
                report.rows_checked += source_rows + target_rows
                if source_rows != target_rows:
                    problems.append(
                        f"{check.table} → {target_table}: {source_rows} rows in the source, "
                        f"{target_rows} in the target ({target_rows - source_rows:+d})"
                    )
                elif source_sum != target_sum:
                    problems.append(
                        f"{check.table} → {target_table}: {source_rows} rows each, but the checksum "
                        f"over ({', '.join(check.columns)}) differs: {source_sum} vs {target_sum}"
                    )
            for invariant in request.invariants:
                progress.step(f"checking invariant {invariant.name}")
                try:
                    with watching_statement(
                        target, progress, f"invariant {invariant.name}", _dsn(where, "target")
                    ):
                        cursor = target.execute(invariant.query.encode())
                    rows = cursor.fetchmany(3) if cursor.description else []
                except psycopg.Error as err:
                    raise MigrationError(
                        f"invariant {invariant.name} could not run: {describe(err)}"
                    ) from None
                # How many rows, never what they hold: row values stay in the database.
                returned = f"{len(rows)}{' or more' if len(rows) == 3 else ''} row(s)"
                if invariant.expect == "no_rows":
                    holds = not rows
                    detail = f"returned {returned}; none wanted"
                else:
                    holds = len(rows) == 1 and rows[0][0] is True
                    detail = f"returned {_shape(rows, returned)} instead of one `true`"
                report.invariants[invariant.name] = holds
                if not holds:
                    problems.append(f"invariant {invariant.name} {detail}")
        report.seconds = time.monotonic() - started
        if problems:
            raise MigrationError("verification failed: " + "; ".join(problems))
        return report

    # --- cutover by SQL ---------------------------------------------------------------

    @activity.defn(name="cut_over_sql")
    @_dsns_kept_out
    def cut_over_sql(self, request: SqlSwitchRequest) -> SqlSwitchResult:
        """Run the forward switch once: it and its ledger row commit together."""
        where = request.where
        with self._connect(where, "target") as conn:
            self._ensure_ledger(conn, where.ledger_table)
            with conn.transaction():
                if CUTOVER_VERSION in self._ledger_rows(conn, where.ledger_table):
                    return SqlSwitchResult(changed=False)
                _run_switch(conn, request.switch.forward, "cutover SQL failed")
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (version, name, sha256, status, launch_id, finished_at) "
                        "VALUES (%s, 'sql switch', %s, 'switched', %s, clock_timestamp())"
                    ).format(_identifier(where.ledger_table)),
                    (
                        CUTOVER_VERSION,
                        hashlib.sha256(request.switch.forward.encode()).hexdigest(),
                        where.launch_id,
                    ),
                )
        return SqlSwitchResult(changed=True)

    @activity.defn(name="switch_back_sql")
    @_dsns_kept_out
    def switch_back_sql(self, request: SqlSwitchRequest) -> SqlSwitchResult:
        """Run the backward switch if (and only if) the forward one is recorded."""
        where = request.where
        with self._connect(where, "target") as conn, conn.transaction():
            if CUTOVER_VERSION not in self._ledger_rows(conn, where.ledger_table):
                return SqlSwitchResult(changed=False)
            _run_switch(conn, request.switch.backward, "switching back failed")
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE version = %s").format(
                    _identifier(where.ledger_table)
                ),
                (CUTOVER_VERSION,),
            )
        return SqlSwitchResult(changed=True)

    # --- writes since the backup ---------------------------------------------------------

    @activity.defn(name="check_writes_since_cutover")
    @_dsns_kept_out
    def check_writes_since_cutover(self, request: WritesGuardRequest) -> WritesGuardResult:
        """Save every live write to the touched tables since the backup (during the scripts,
        verification and after cutover), encrypted next to the backup, before anything is
        reverted. It never blocks: the restore, which knows what a revert would lose, asks."""
        where = request.where
        capture = pg_capture.capture_name(where.launch_id, where.phase)
        folder = _backup_folder(request.backup_dir)
        saved = folder / f"{where.launch_id}.{where.phase}.live-writes{ROWS_SUFFIX}"
        with self._connect(where, "target") as conn:
            rows = _save_encrypted(conn, capture, saved, only_at_risk=False, progress=Progress())
        activity.logger.info("saved %d live write(s) since the backup in %s", rows, saved)
        return WritesGuardResult(saved=str(saved), rows=rows)

    # --- restore ----------------------------------------------------------------------

    @activity.defn(name="restore_database")
    @_dsns_kept_out
    def restore_database(self, request: RestoreDatabaseRequest) -> RestoreReport:
        """Revert what this launch's scripts changed, in one transaction: by down scripts
        when every applied script has one, else the touched tables from the backup. Before
        committing, the live writes the revert would lose are counted; any loss rolls it all
        back and stops for a person (`WritesAtRisk`), unless their recorded decision covers
        it. Tables the migration never touched are never read, dropped or restored."""
        where, backup = request.where, request.backup
        started = time.monotonic()
        application = f"phasegate-migrate/{where.launch_id}/{where.phase}"[:63]
        capture = pg_capture.capture_name(where.launch_id, where.phase)
        progress = Progress("restoring")
        if not self._database_exists(where, backup.database):
            # Nothing lives in a database that is gone: the whole backup comes back.
            self._restore_whole_backup(where, backup, progress)
            return RestoreReport(method="backup", seconds=time.monotonic() - started)
        with self._connect(where, "target", application=application) as conn:
            self._stop_earlier_attempts(conn, application)
            pg_capture.mark_migration_session(conn, capture)
            rows = self._ledger_rows(conn, where.ledger_table)
            ours = [
                s
                for s in request.scripts
                if rows.get(s.version, ("", "", ""))[2] == where.launch_id
            ]
            if not ours:
                with conn.transaction():
                    pg_capture.remove_capture(conn, capture)
                    self._drop_ledger_if_new(conn, where.ledger_table, backup.fingerprint)
                return RestoreReport(method="nothing_applied", seconds=time.monotonic() - started)
            method: Literal["down_scripts", "backup"] = (
                "down_scripts" if all(s.has_down for s in ours) else "backup"
            )
            folder = Path(backup.path).parent
            saved_all = folder / f"{where.launch_id}.{where.phase}.live-writes{ROWS_SUFFIX}"
            progress.step(f"saving live writes to {saved_all} before reverting")
            _save_encrypted(conn, capture, saved_all, only_at_risk=False, progress=progress)
            if method == "down_scripts" and not all(s.transactional for s in ours):
                return self._revert_outside_transaction(
                    conn, request, ours, capture, progress, started
                )
            return self._revert(conn, request, ours, method, capture, progress, started)

    def _revert(
        self,
        conn: psycopg.Connection[Any],
        request: RestoreDatabaseRequest,
        ours: list[MigrationScript],
        method: Literal["down_scripts", "backup"],
        capture: str,
        progress: Progress,
        started: float,
    ) -> RestoreReport:
        where, backup, decision = request.where, request.backup, request.writes
        params = _dsn(where, "target")
        reverted: list[str] = []
        carried = 0
        dropped: WritesAtRiskReport | None = None
        at_risk_error: ApplicationError | None = None
        with conn.transaction() as transaction:
            self._lock_touched(conn, capture)
            if method == "down_scripts":
                for script in reversed(ours):
                    label = f"{script.version}_{script.name}.down.sql"
                    with watching_statement(conn, progress, f"reverting {label}", params):
                        self._run_down(conn, where, script)
                    reverted.append(script.version)
            else:
                reverted = self._restore_touched_tables(conn, where, backup, capture, progress)
            progress.step("counting the live writes the revert would lose")
            loss = pg_capture.at_risk(conn, capture)
            if loss and decision is not None and decision.action == "carry_over":
                carried, loss = self._carry_over(conn, where, capture, progress)
            report = WritesAtRiskReport(
                tables=loss,
                rows=sum(t.rows_lost + t.deletes_undone for t in loss.values()),
                method=method,
            )
            if loss:
                saved = self._save_at_risk(conn, where, backup, capture)
                report.saved = str(saved)
                if (
                    decision is not None
                    and decision.action == "drop"
                    and (report.rows <= decision.at_most_rows)
                ):
                    dropped = report
                    activity.logger.warning(
                        "dropping %d live write(s) on record (%s: %s); saved in %s",
                        report.rows,
                        decision.by,
                        decision.comment,
                        saved,
                    )
                else:
                    at_risk_error = _writes_at_risk(report, decision)
                    raise psycopg.Rollback(transaction)
            self._forget_ours(conn, where, ours)
            problems = self._shape_problems(conn, backup, capture)
            if problems:
                raise MigrationError(
                    f"after {method.replace('_', ' ')} the touched tables do not have their "
                    "shape at the backup: " + "; ".join(problems)
                )
            pg_capture.remove_capture(conn, capture)
            self._drop_ledger_if_new(conn, where.ledger_table, backup.fingerprint)
        if at_risk_error is not None:
            raise at_risk_error
        activity.logger.info("reverted %s by %s", backup.database, method)
        return RestoreReport(
            method=method,
            reverted=reverted,
            seconds=time.monotonic() - started,
            carried_over=carried,
            dropped=dropped,
        )

    def _revert_outside_transaction(
        self,
        conn: psycopg.Connection[Any],
        request: RestoreDatabaseRequest,
        ours: list[MigrationScript],
        capture: str,
        progress: Progress,
        started: float,
    ) -> RestoreReport:
        """Down scripts of which some cannot run in a transaction: the revert cannot be tried
        and rolled back, so every live write to a touched table counts as at risk until a
        person drops them on record (their rows are saved either way)."""
        where, backup, decision = request.where, request.backup, request.writes
        with conn.transaction():
            live = _live_writes(conn, capture)
            report = WritesAtRiskReport(
                tables=live,
                rows=sum(t.rows_lost + t.deletes_undone for t in live.values()),
                method="down_scripts",
            )
            if live:
                report.saved = str(
                    self._save_at_risk(conn, where, backup, capture, only_at_risk=False)
                )
        dropped: WritesAtRiskReport | None = None
        if live:
            if decision is None or decision.action != "drop" or report.rows > decision.at_most_rows:
                raise _writes_at_risk(
                    report,
                    decision,
                    why="some down scripts run outside a transaction, so the revert cannot be "
                    "tried first; carry-over is not offered",
                )
            dropped = report
        params = _dsn(where, "target")
        reverted = []
        for script in reversed(ours):
            label = f"{script.version}_{script.name}.down.sql"
            with watching_statement(conn, progress, f"reverting {label}", params):
                self._run_down(conn, where, script)
            reverted.append(script.version)
        with conn.transaction():
            problems = self._shape_problems(conn, backup, capture)
            if problems:
                raise MigrationError(
                    "after the down scripts the touched tables do not have their shape at the "
                    "backup: " + "; ".join(problems)
                )
            pg_capture.remove_capture(conn, capture)
            self._drop_ledger_if_new(conn, where.ledger_table, backup.fingerprint)
        return RestoreReport(
            method="down_scripts",
            reverted=reverted,
            seconds=time.monotonic() - started,
            dropped=dropped,
        )

    def _lock_touched(self, conn: psycopg.Connection[Any], capture: str) -> None:
        """Hold live writes to the touched tables back while the revert and the count of what
        it would lose run, so no write slips in between; readers go on."""
        tables = sorted(pg_capture.guarded_tables(conn, capture))
        if tables:
            conn.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(_identifier(t) for t in tables)
                )
            )

    def _run_down(
        self, conn: psycopg.Connection[Any], where: MigrationTarget, script: MigrationScript
    ) -> None:
        text = _script_text(where.migrations, script, down=True)
        forget = sql.SQL("DELETE FROM {} WHERE version = %s").format(
            _identifier(where.ledger_table)
        )
        try:
            if script.transactional:
                with conn.transaction():
                    conn.execute(text.encode())
                    conn.execute(forget, (script.version,))
            else:
                conn.execute(text.encode())
                conn.execute(forget, (script.version,))
        except psycopg.Error as err:
            raise MigrationError(
                f"{script.version}_{script.name}.down.sql failed: {describe(err)}"
            ) from None

    def _restore_touched_tables(
        self,
        conn: psycopg.Connection[Any],
        where: MigrationTarget,
        backup: BackupRecord,
        capture: str,
        progress: Progress,
    ) -> list[str]:
        """The touched tables as the backup has them, in the caller's transaction; tables the
        migration created are dropped. Every other table is left as it is."""
        path = self._readable_backup(backup)
        at_backup = {
            name: pg_table_restore.TableObjects.model_validate(found)
            for name, found in backup.objects.items()
        }

        def feed(stdin: IO[bytes]) -> None:
            for chunk in backup_store.decrypt_chunks(path):
                stdin.write(chunk)

        rows = pg_table_restore.restore_tables(
            conn,
            run_pg_restore=pg_table_restore.pg_restore_from_stream(self._tool("pg_restore"), feed),
            at_backup=at_backup,
            drop_now=sorted(pg_capture.guarded_tables(conn, capture)),
            on_progress=lambda line: _step(progress, line),
        )
        activity.logger.info("restored %s (%d rows) from %s", ", ".join(at_backup), rows, path)
        return sorted(at_backup)

    def _readable_backup(self, backup: BackupRecord) -> Path:
        path = Path(backup.path)
        if not path.exists():
            raise MigrationError(
                f"backup {path} is not on this worker ({socket.gethostname()}); it was written "
                f"by {backup.written_by or 'another worker'}: the backup folder must be one every "
                "worker reaches (a shared mount)"
            )
        if _sha256(path) != backup.sha256:
            raise MigrationError(
                f"backup {path} does not match its recorded sha256 {backup.sha256}; restore it "
                "from its copy and retry this undo"
            )
        return path

    def _carry_over(
        self,
        conn: psycopg.Connection[Any],
        where: MigrationTarget,
        capture: str,
        progress: Progress,
    ) -> tuple[int, dict[str, TableLoss]]:
        """Run the folder's carry_over.sql on the rows at risk; what it leaves in
        `phasegate_writes` is still at risk."""
        path = Path(where.migrations) / CARRY_OVER
        if not path.is_file():
            raise MigrationError(
                f"keeping the live writes needs {path}: a script that carries the rows in "
                "`phasegate_writes` over to the reverted tables and deletes what it carried"
            )
        loaded = pg_capture.load_writes_table(conn, capture)
        progress.step(f"carrying {loaded} live write(s) over with {CARRY_OVER}")
        try:
            with conn.transaction():
                conn.execute(path.read_text().encode())
        except psycopg.Error as err:
            raise MigrationError(f"{CARRY_OVER} failed: {describe(err)}") from None
        left: dict[str, TableLoss] = {}
        for table, op, count in conn.execute(
            "SELECT table_name, op, count(*) FROM pg_temp.phasegate_writes GROUP BY 1, 2"
        ):
            loss = left.setdefault(str(table), TableLoss())
            if op == "D":
                loss.deletes_undone += int(count)
            else:
                loss.rows_lost += int(count)
        still = sum(t.rows_lost + t.deletes_undone for t in left.values())
        return loaded - still, left

    def _save_at_risk(
        self,
        conn: psycopg.Connection[Any],
        where: MigrationTarget,
        backup: BackupRecord,
        capture: str,
        *,
        only_at_risk: bool = True,
    ) -> Path:
        dest = Path(backup.path).parent / (f"{where.launch_id}.{where.phase}.at-risk{ROWS_SUFFIX}")
        _save_encrypted(conn, capture, dest, only_at_risk=only_at_risk)
        return dest

    def _forget_ours(
        self, conn: psycopg.Connection[Any], where: MigrationTarget, ours: list[MigrationScript]
    ) -> None:
        if _scalar(conn, "SELECT to_regclass(%s)", (where.ledger_table,)) is not None:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE version = ANY(%s)").format(
                    _identifier(where.ledger_table)
                ),
                ([s.version for s in ours],),
            )

    def _shape_problems(
        self, conn: psycopg.Connection[Any], backup: BackupRecord, capture: str
    ) -> list[str]:
        """How the touched tables differ in shape from the backup's, in words; tables the
        migration created must be gone."""
        now = pg_capture.catalog_shapes(conn, full=backup.shapes)
        problems = [
            f"{table}: {'absent now' if table not in now else 'columns, constraints or indexes differ'}"
            for table, shape in sorted(backup.shapes.items())
            if now.get(table) != shape
        ]
        problems += [
            f"{table}: created by the migration and still present"
            for table in sorted(pg_capture.guarded_tables(conn, capture) - set(backup.shapes))
        ]
        return problems

    def _drop_ledger_if_new(
        self, conn: psycopg.Connection[Any], ledger: str, expected: DatabaseFingerprint
    ) -> None:
        if expected.ledger_existed or _scalar(conn, "SELECT to_regclass(%s)", (ledger,)) is None:
            return
        if not self._ledger_rows(conn, ledger):
            conn.execute(sql.SQL("DROP TABLE {}").format(_identifier(ledger)))

    def _database_exists(self, where: MigrationTarget, database: str) -> bool:
        with self._connect(where, "target", dbname="postgres") as conn:
            return bool(_scalar(conn, "SELECT 1 FROM pg_database WHERE datname = %s", (database,)))

    def _restore_whole_backup(
        self, where: MigrationTarget, backup: BackupRecord, progress: Progress
    ) -> None:
        """The target database is gone: make it again and restore the backup into it in one
        transaction. Nothing written lives in a database that does not exist."""
        path = self._readable_backup(backup)
        name = sql.Identifier(backup.database)
        with self._connect(where, "target", dbname="postgres") as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(name))
        argv, env = self._tool_call(where, "pg_restore", "--exit-on-error", "--single-transaction")
        try:
            run_tool(
                argv,
                env,
                progress,
                f"restoring {path}",
                stdin=backup_store.decrypt_chunks(path),
            )
        except ToolFailed as err:
            tail = redact(without_row_values(err.stderr_tail), _dsn_secrets(where))
            raise MigrationError(f"pg_restore of {path} failed: {tail[-1500:]}") from None


# --- measuring a database ----------------------------------------------------------------


def _scalar(
    conn: psycopg.Connection[Any], query: LiteralString, params: tuple[Any, ...] = ()
) -> Any:
    row = conn.execute(query, params or None).fetchone()
    return None if row is None else row[0]


def _table_checksum(
    conn: psycopg.Connection[Any], table: str, columns: list[str]
) -> tuple[int, str]:
    """Row count and an order-independent checksum: the sum of 64-bit hashes of each row's
    text over `columns` (the whole row when none are named)."""
    row: sql.Composable
    if columns:
        row = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    else:
        row = sql.SQL("t")
    query = sql.SQL(
        "SELECT count(*), coalesce(sum(hashtextextended(({})::text, 0)::numeric), 0)::text "
        "FROM {} AS t"
    ).format(row, _identifier(table))
    try:
        result = conn.execute(query).fetchone()
    except psycopg.errors.UndefinedTable:
        raise MigrationError(f"table {table} does not exist") from None
    except psycopg.Error as err:
        raise MigrationError(f"cannot checksum {table}: {describe(err)}") from None
    assert result is not None
    return int(result[0]), str(result[1])


def _fingerprint(
    conn: psycopg.Connection[Any],
    tables: list[str],
    ledger: str,
    progress: Progress,
    dsn_params: dict[str, str],
) -> tuple[DatabaseFingerprint, dict[str, str]]:
    """The touched tables' shapes, counts and checksums (one heartbeat per table, and the
    server's own progress while a large one is read), and whether the ledger existed."""
    shapes = {
        t: shape for t, shape in pg_capture.catalog_shapes(conn, full=tables).items() if t in tables
    }
    result = DatabaseFingerprint(
        schema_hash=hashlib.md5(
            "\n".join(f"{t} {shapes[t]}" for t in sorted(shapes)).encode(), usedforsecurity=False
        ).hexdigest(),
        ledger_existed=_scalar(conn, "SELECT to_regclass(%s)", (ledger,)) is not None,
    )
    for number, table in enumerate(tables, start=1):
        doing = f"fingerprinting {table}"
        progress.step(doing, table=table, table_number=number, tables=len(tables))
        with watching_statement(conn, progress, doing, dsn_params):
            rows, checksum = _table_checksum(conn, table, [])
        result.tables[table] = TableFingerprint(rows=rows, checksum=checksum)
    return result, shapes


def _step(progress: Progress, doing: str) -> None:
    progress.step(doing)


def _live_writes(conn: psycopg.Connection[Any], capture: str) -> dict[str, TableLoss]:
    """Every live write captured so far, per table: what counts as at risk when a revert
    cannot be tried first."""
    table = sql.Identifier(pg_capture.CAPTURE_SCHEMA, capture)
    if _scalar(conn, "SELECT to_regclass(%s)", (f"{pg_capture.CAPTURE_SCHEMA}.{capture}",)) is None:
        return {}
    losses: dict[str, TableLoss] = {}
    query = sql.SQL(
        "SELECT table_name, op, count(*) FROM {} WHERE NOT by_migration GROUP BY 1, 2"
    ).format(table)
    for name, op, count in conn.execute(query):
        loss = losses.setdefault(str(name), TableLoss())
        if op == "D":
            loss.deletes_undone += int(count)
        else:
            loss.rows_lost += int(count)
    return losses


class _Beating:
    """A writer that heartbeats as the saved rows pass through it."""

    def __init__(self, writer: backup_store.EncryptingWriter, progress: Progress, what: str):
        self._writer, self._progress, self._what = writer, progress, what

    def write(self, data: bytes) -> int:
        self._progress.step(self._what, saved_bytes=self._writer.plaintext_bytes)
        return self._writer.write(data)


def _save_encrypted(
    conn: psycopg.Connection[Any],
    capture: str,
    dest: Path,
    *,
    only_at_risk: bool,
    progress: Progress | None = None,
) -> int:
    """The captured live writes (all, or those at risk) as encrypted JSON lines in `dest`,
    written 0600 and atomically, heartbeating as they are written; how many lines."""
    writer = backup_store.EncryptingWriter(dest)
    out = _Beating(writer, progress or Progress(), f"saving live writes to {dest}")
    try:
        rows = pg_capture.save_writes(conn, capture, cast(BinaryIO, out), only_at_risk=only_at_risk)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return rows


def _writes_at_risk(
    report: WritesAtRiskReport, decision: WritesDecision | None, *, why: str = ""
) -> ApplicationError:
    """The failure that stops the rollback for a person, with the report as its details."""
    tables = "; ".join(
        f"{name}: "
        + ", ".join(
            part
            for part in (
                f"{loss.rows_lost} row(s) written live would be lost" if loss.rows_lost else "",
                f"{loss.deletes_undone} live delete(s) undone" if loss.deletes_undone else "",
                "the revert drops the table" if loss.table_gone else "",
            )
            if part
        )
        for name, loss in sorted(report.tables.items())
    )
    earlier = ""
    if decision is not None and decision.action == "drop":
        earlier = (
            f" ({decision.by} agreed to drop at most {decision.at_most_rows}; "
            f"{report.rows} are at risk now)"
        )
    elif decision is not None:
        earlier = f" (after {CARRY_OVER}, which {decision.by} asked for)"
    return ApplicationError(
        f"reverting by {report.method.replace('_', ' ')} would lose {report.rows} live "
        f"write(s){earlier}: {tables}. They are saved in {report.saved}"
        + (f"; {why}" if why else "")
        + ". Nothing was reverted; a person decides: keep them, drop them on record, or stop",
        report.model_dump(mode="json"),
        type=WritesAtRisk.__name__,
        non_retryable=True,
    )


def _write_private(path: Path, data: bytes) -> None:
    """`data` in `path`, 0600, atomically."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, path)


def _shape(rows: list[Any], returned: str) -> str:
    """What a query meant to return one `true` returned instead, without quoting a value."""
    if len(rows) != 1 or not rows[0]:
        return returned
    value = rows[0][0]
    if value is None or isinstance(value, bool):
        return {None: "null", False: "false", True: "true"}[value] + (
            f" and {len(rows[0]) - 1} more column(s)" if len(rows[0]) > 1 else ""
        )
    return f"a {type(value).__name__}"


def _run_switch(conn: psycopg.Connection[Any], text: str, failure: str) -> None:
    """Run one side of a plan's SQL switch; a database error is the migration's failure."""
    try:
        conn.execute(text.encode())
    except psycopg.Error as err:
        raise MigrationError(f"{failure}: {describe(err)}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
