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
import contextvars
import functools
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, LiteralString, Protocol, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from temporalio import activity

from activities.errors import ConfigurationError, MigrationError, WritesAfterCutover
from activities.limits import in_force
from activities.options import HOUR, MINUTE, SECOND, activity_options
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
    VerificationReport,
    VerifyRequest,
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
NO_TRANSACTION_MARK = "-- phasegate: no-transaction"
_SCRIPT = re.compile(r"^(\d+)_([A-Za-z0-9_-]+)\.sql$")
_DOWN = re.compile(r"^(\d+)_([A-Za-z0-9_-]+)\.down\.sql$")
_SYSTEM_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
)
CUTOVER_VERSION = "cutover"


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
        if not path.name.endswith(".sql"):
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


def _without_row_values(text: str) -> str:
    """A server or pg_dump/pg_restore message without the lines that can quote rows."""
    return "\n".join(
        line
        for line in text.splitlines()
        if not re.match(r"^\s*(DETAIL|CONTEXT|Command was|LINE \d+):", line)
    )


@contextmanager
def _heartbeating(progress: list[Any]) -> Iterator[None]:
    """Heartbeat from a helper thread while the activity's thread waits on the database."""
    stop = threading.Event()
    context = contextvars.copy_context()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            activity.heartbeat(*progress)

    thread = threading.Thread(target=context.run, args=(beat,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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
        try:
            return psycopg.connect(
                make_conninfo("", **params),
                autocommit=True,
                application_name=application,
                connect_timeout=10,
            )
        except psycopg.Error as err:
            message = redact(_without_row_values(str(err).strip()), _dsn_secrets(where))
            if isinstance(err, psycopg.OperationalError):
                # Retryable: the database may be restarting; the message names which one.
                raise ConnectionError(f"{_field(where, role)}: cannot connect: {message}") from None
            raise ConfigurationError(
                f"{_field(where, role)}: not a usable PostgreSQL connection string: {message}"
            ) from None

    def _run_tool(self, argv: list[str], where: MigrationTarget, progress: list[Any]) -> str:
        """Run pg_dump/pg_restore on the target with the DSN's password in the environment,
        heartbeating."""
        params = _dsn(where, "target")
        password = params.pop("password", None)
        env = {**os.environ, **({"PGPASSWORD": password} if password else {})}
        argv = [*argv, f"--dbname={make_conninfo('', **params)}"]
        with _heartbeating(progress):
            done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            stderr = redact(_without_row_values(done.stderr.strip()), _dsn_secrets(where))
            raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): {stderr[-1500:]}")
        return done.stdout

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
        """pg_dump -Fc of the target in the same snapshot as its fingerprint; verified."""
        where = request.where
        folder = _backup_folder(request.backup_dir)
        path = folder / f"{where.launch_id}.{where.phase}.dump"
        sidecar = path.with_suffix(".json")
        if sidecar.exists() and path.exists():
            recorded = BackupRecord.model_validate_json(sidecar.read_text())
            if _sha256(path) == recorded.sha256:
                activity.logger.info("backup %s already taken and intact", path)
                return recorded
        started = time.monotonic()
        with self._connect(where, "target", application="phasegate-backup") as conn:
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            snapshot = str(_scalar(conn, "SELECT pg_export_snapshot()"))
            fingerprint = _fingerprint(conn, where.ledger_table)
            database = str(_scalar(conn, "SELECT current_database()"))
            partial = path.with_suffix(".partial")
            self._run_tool(
                [self._tool("pg_dump"), "-Fc", f"--snapshot={snapshot}", "-f", str(partial)],
                where,
                ["backing up"],
            )
            conn.rollback()
        listing = self._list_backup(partial)
        entries = sum(1 for line in listing.splitlines() if line and not line.startswith(";"))
        os.replace(partial, path)
        record = BackupRecord(
            path=str(path),
            sha256=_sha256(path),
            size_bytes=path.stat().st_size,
            entries=entries,
            database=database,
            fingerprint=fingerprint,
            seconds=time.monotonic() - started,
        )
        partial_sidecar = sidecar.with_suffix(".partial-json")
        partial_sidecar.write_text(record.model_dump_json(indent=2))
        os.replace(partial_sidecar, sidecar)
        activity.logger.info(
            "backup %s: %d bytes, %d entries, sha256 %s",
            path,
            record.size_bytes,
            entries,
            record.sha256,
        )
        return record

    def _list_backup(self, path: Path) -> str:
        """`pg_restore --list`: the backup is readable as an archive, or we do not go on."""
        done = subprocess.run(
            [self._tool("pg_restore"), "--list", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise MigrationError(f"backup {path} is not restorable: {done.stderr.strip()[-800:]}")
        return done.stdout

    # --- migrate ----------------------------------------------------------------------

    @activity.defn(name="apply_migrations")
    @_dsns_kept_out
    def apply_migrations(self, request: MigrateRequest) -> MigrateResult:
        """Apply each script once, in order, recorded in the ledger; skip what it records."""
        where = request.where
        application = f"phasegate-migrate/{where.launch_id}/{where.phase}"[:63]
        result = MigrateResult()
        progress: list[Any] = ["starting"]
        with self._connect(where, "target", application=application) as conn:
            self._stop_earlier_attempts(conn, application)
            self._ensure_ledger(conn, where.ledger_table)
            self._check_ledger(conn, where, request.scripts)
            ledger = _identifier(where.ledger_table)
            with _heartbeating(progress):
                for script in request.scripts:
                    label = f"{script.version}_{script.name}.sql"
                    if script.version in self._ledger_rows(conn, where.ledger_table):
                        result.applied.append(
                            AppliedScript(
                                version=script.version, name=script.name, seconds=0, skipped=True
                            )
                        )
                        continue
                    progress[0] = f"applying {label}"
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
                                conn.execute(text.encode())
                                conn.execute(done, (script.version,))
                        else:
                            conn.execute(record, (*values, "applying", where.launch_id))
                            conn.execute(text.encode())
                            conn.execute(done, (script.version,))
                    except psycopg.Error as err:
                        raise MigrationError(
                            f"{label} failed: {_describe(err)}"
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
        progress: list[Any] = ["verifying"]
        with (
            self._connect(where, "source") as source,
            self._connect(where, "target") as target,
            _heartbeating(progress),
        ):
            for check in request.tables:
                target_table = check.target_table or check.table
                progress[0] = f"comparing {check.table} with {target_table}"
                source_rows, source_sum = _table_checksum(source, check.table, check.columns)
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
                progress[0] = f"checking invariant {invariant.name}"
                try:
                    cursor = target.execute(invariant.query.encode())
                    rows = cursor.fetchmany(3) if cursor.description else []
                except psycopg.Error as err:
                    raise MigrationError(
                        f"invariant {invariant.name} could not run: {_describe(err)}"
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

    # --- writes after cutover -----------------------------------------------------------

    @activity.defn(name="check_writes_since_cutover")
    @_dsns_kept_out
    def check_writes_since_cutover(self, request: WritesGuardRequest) -> WritesGuardResult:
        """Refuse to go on with the restore while migrated tables hold rows written after
        cutover: they are saved to a dump next to the backup and the counts named, and a
        person decides (retry once they are dealt with, or skip this undo on record)."""
        where = request.where
        changed: list[str] = []
        tables: list[str] = []
        with self._connect(where, "target") as conn:
            if _scalar(conn, "SELECT to_regclass(%s)", (where.ledger_table,)) is None:
                return WritesGuardResult()  # restored already: nothing of the migration is left
            for seen in request.at_cutover:
                if _scalar(conn, "SELECT to_regclass(%s)", (seen.target_table,)) is None:
                    continue
                rows, checksum = _table_checksum(conn, seen.target_table, seen.columns)
                if rows != seen.target_rows or checksum != seen.target_checksum:
                    changed.append(
                        f"{seen.target_table} has {rows} rows now, {seen.target_rows} at cutover "
                        f"({rows - seen.target_rows:+d}"
                        + (", contents changed" if rows == seen.target_rows else "")
                        + ")"
                    )
                    tables.append(seen.target_table)
        if not changed:
            return WritesGuardResult(unchanged=[seen.target_table for seen in request.at_cutover])
        saved = (
            _backup_folder(request.backup_dir)
            / f"{where.launch_id}.{where.phase}.after-cutover.dump"
        )
        self._run_tool(
            [
                self._tool("pg_dump"),
                "-Fc",
                "--data-only",
                *(f"--table={table}" for table in tables),
                "-f",
                str(saved),
            ],
            where,
            ["saving rows written after cutover"],
        )
        raise WritesAfterCutover(
            "writes were accepted after cutover: "
            + "; ".join(changed)
            + f". Restoring the pre-migration data would drop them; they are saved in {saved}. "
            "Carry them over to the old tables (and delete them from the new ones), then retry "
            "this undo; or skip it on record, and the restore drops them from the database "
            "(the saved dump keeps them)"
        )

    # --- restore ----------------------------------------------------------------------

    @activity.defn(name="restore_database")
    @_dsns_kept_out
    def restore_database(self, request: RestoreDatabaseRequest) -> RestoreReport:
        """Back to the fingerprint of the backup: by down scripts when every applied script
        has one, else from the verified backup; then the counts and checksums must match."""
        where, backup = request.where, request.backup
        started = time.monotonic()
        expected = backup.fingerprint
        application = f"phasegate-migrate/{where.launch_id}/{where.phase}"[:63]
        progress: list[Any] = ["restoring"]
        with _heartbeating(progress):
            method: Literal["nothing_applied", "down_scripts", "backup"] = "nothing_applied"
            reverted: list[str] = []
            if self._database_exists(where, backup.database):
                with self._connect(where, "target", application=application) as conn:
                    self._stop_earlier_attempts(conn, application)
                    rows = self._ledger_rows(conn, where.ledger_table)
                    ours = [
                        s
                        for s in request.scripts
                        if rows.get(s.version, ("", "", ""))[2] == where.launch_id
                    ]
                    if ours and all(s.has_down for s in ours):
                        method = "down_scripts"
                        for script in reversed(ours):
                            progress[0] = f"reverting {script.version}_{script.name}.sql"
                            self._revert(conn, where, script)
                            reverted.append(script.version)
                    elif ours:
                        method = "backup"
                    if method != "backup":
                        self._drop_ledger_if_new(conn, where.ledger_table, expected)
                        found = _fingerprint(conn, where.ledger_table)
                        problems = expected.differences(found)
                        if problems:
                            activity.logger.warning(
                                "after %s the database differs from the backup (%s); restoring "
                                "the backup",
                                method,
                                "; ".join(problems),
                            )
                            method = "backup"
            else:
                method = "backup"
            if method == "backup":
                progress[0] = f"restoring {backup.path}"
                self._restore_backup(where, backup, progress)
                with self._connect(where, "target") as conn:
                    problems = expected.differences(_fingerprint(conn, where.ledger_table))
                if problems:
                    raise MigrationError(
                        f"the database restored from {backup.path} does not match the backup's "
                        "fingerprint: " + "; ".join(problems)
                    )
        activity.logger.info("restored %s by %s", backup.database, method)
        return RestoreReport(method=method, reverted=reverted, seconds=time.monotonic() - started)

    def _revert(
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
                f"{script.version}_{script.name}.down.sql failed: {_describe(err)}"
            ) from None

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

    def _restore_backup(
        self, where: MigrationTarget, backup: BackupRecord, progress: list[Any]
    ) -> None:
        """Recreate the database empty and restore the dump into it in one transaction."""
        path = Path(backup.path)
        if not path.exists() or _sha256(path) != backup.sha256:
            raise MigrationError(
                f"backup {path} is missing or does not match its recorded sha256 "
                f"{backup.sha256}; restore it from its copy and retry this undo"
            )
        name = sql.Identifier(backup.database)
        with self._connect(where, "target", dbname="postgres") as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(name))
        self._run_tool(
            [self._tool("pg_restore"), "--exit-on-error", "--single-transaction", str(path)],
            where,
            progress,
        )


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
        raise MigrationError(f"cannot checksum {table}: {_describe(err)}") from None
    assert result is not None
    return int(result[0]), str(result[1])


def _fingerprint(conn: psycopg.Connection[Any], ledger: str) -> DatabaseFingerprint:
    """The shape (tables, columns, views, indexes) and every table's count and checksum."""
    schema = conn.execute(
        f"""
        SELECT md5(coalesce(string_agg(line, E'\\n' ORDER BY line), '')) FROM (
          SELECT format('%s.%s %s %s %s %s', n.nspname, c.relname, c.relkind, a.attname,
                        format_type(a.atttypid, a.atttypmod), a.attnotnull) AS line
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          WHERE c.relkind IN ('r', 'p', 'v', 'm') AND {_SYSTEM_SCHEMAS}
          UNION ALL
          SELECT format('view %s.%s %s', schemaname, viewname, definition) FROM pg_views
          WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
          UNION ALL
          SELECT indexdef FROM pg_indexes
          WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
        ) AS lines
        """.encode()
    ).fetchone()
    assert schema is not None
    tables = conn.execute(
        f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND {_SYSTEM_SCHEMAS} ORDER BY 1, 2
        """.encode()
    ).fetchall()
    result = DatabaseFingerprint(
        schema_hash=str(schema[0]),
        ledger_existed=_scalar(conn, "SELECT to_regclass(%s)", (ledger,)) is not None,
    )
    for namespace, name in tables:
        rows, checksum = _table_checksum(conn, f"{namespace}.{name}", [])
        result.tables[f"{namespace}.{name}"] = TableFingerprint(rows=rows, checksum=checksum)
    return result


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
        raise MigrationError(f"{failure}: {_describe(err)}") from None


def _describe(err: psycopg.Error) -> str:
    """The server's message with what it names (table, column, constraint), never the rows:
    its DETAIL (`Failing row contains (...)`, `Key (id)=(5)`) and CONTEXT are left out, and a
    data exception's quoted value (`invalid input syntax for type integer: "abc"`) hidden."""
    diag = err.diag
    message = diag.message_primary or _without_row_values(str(err).strip())
    if (diag.sqlstate or "").startswith("22"):
        message = re.sub(r'"[^"]*"', '"…"', message)
    parts = [message]
    named = [
        f"{label} {value}"
        for label, value in (
            ("table", diag.table_name),
            ("column", diag.column_name),
            ("constraint", diag.constraint_name),
        )
        if value
    ]
    if named:
        parts.append(", ".join(named))
    if diag.sqlstate:
        parts.append(f"SQLSTATE {diag.sqlstate}")
    return " — ".join(parts)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
