"""Migration cutover at scale, with and without live traffic: backup + migrate + verify + rollback
of the checkout migration over a seeded `orders` table (1 million rows by default) in a
throwaway PostgreSQL, while a client keeps writing, and verify's throughput set against
pg_dump's own speed on the same table.

    python -m benchmarks.migration [--rows 1000000] [--repeat 3] [--write-rate 200]

Each round migrates and rolls back three times on the same database:

- quiet: nobody else writes; the rollback (down scripts) commits. Here verify and
  `pg_dump -Fc --table=orders` also run in turns, three times each, for their ratio.
- writes to orders: a live writer inserts into `orders`, a table the migration reads but never
  changes; the rollback must commit without asking (writes elsewhere never stop it).
- writes to orders_v2 too: from the moment the copy script committed, the writer also inserts
  into `orders_v2`, which the rollback drops; the rollback must stop with `WritesAtRisk`
  (the time it takes to find out is measured) and a second run with a recorded `carry_over`
  decision keeps those rows (carry_over.sql moves them back to `orders`).

The live writer is one thread and one autocommit connection per table, paced at
`--write-rate` inserts a second each; it logs a write only once PostgreSQL confirmed the commit.
A window of the writer alone opens each live scenario: its baseline in the same run (the
orders_v2 thread writes to an unguarded table of orders_v2's shape then). Every committed write
must end up in the database or in the rows Phasegate saved; any other is lost, and the run
exits with an error.

The activities run as the worker runs them (temporalio's ActivityEnvironment, same code, no
server in between, start-to-close timeouts sized as the workflow sizes them). Verify compares
the seeded rows (`id <= --rows`, through two views) so that rows the writer adds to either side
do not fail it. Figures are medians over `--repeat` rounds. Peak memory is the high-water RSS
of this process (the activities and the writer) and of the pg_dump / pg_restore it runs,
sampled every 20 ms; the PostgreSQL server's own memory is not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil
import psycopg
from psycopg import sql
from temporalio import workflow
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import backup_store, limits
from activities.errors import WritesAtRisk
from activities.limits import FileLimits, SecretLimits, WorkerLimits
from activities.postgres import POSTGRES_OPTIONS, PostgresActivities, long_options
from devstack.checkout_db import seed_checkout
from devstack.postgres_cluster import PostgresCluster, postgres_cluster
from devstack.processes import LOOPBACK
from schemas.basics import SecretRef
from schemas.migration_cutover_spec import TableCheck
from schemas.migration_messages import (
    BackupRecord,
    BackupRequest,
    MigrateRequest,
    MigrationTarget,
    PreflightReport,
    PreflightRequest,
    RestoreDatabaseRequest,
    RestoreReport,
    VerifyRequest,
    WritesAtRiskReport,
    WritesDecision,
)

EXAMPLE_SCRIPTS = Path(__file__).resolve().parent.parent / "examples" / "migrations" / "checkout"
DSN_ENV = "PHASEGATE_BENCH_DSN"
LEDGER = "phasegate_migrations"
COPY_SCRIPT = "002"  # once committed, orders_v2 holds the copy and takes live writes
ORDERS = "public.orders"
ORDERS_V2 = "public.orders_v2"
# The writer's orders_v2 thread writes here during its baseline: orders_v2's shape, no guard.
V2_BASELINE = "public.bench_orders_v2_baseline"
V2_BASELINE_TABLE = f"""
CREATE TABLE {V2_BASELINE} (
    id          bigint PRIMARY KEY,
    customer_id integer NOT NULL,
    total       numeric(12, 2) NOT NULL,
    status      text NOT NULL,
    created_at  timestamptz NOT NULL
)
"""
SEEDED_V1 = "bench_orders_seeded"
SEEDED_V2 = "bench_orders_v2_seeded"
CHECKED_COLUMNS = ["id", "customer_id", "status", "created_at"]
# Live writes get ids far above the seeded ones, a separate range per scenario and table.
ID_SPAN = 10_000_000
ANCHOR_PAIRS = 3  # verify and pg_dump in turns, per round
RATIO_TARGET = 1.5  # verify reads its rows at least this much faster than pg_dump dumps them
T = TypeVar("T")
Figures = dict[str, float]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    writes_orders: bool
    writes_v2: bool


SCENARIOS = (
    Scenario("quiet", "no live writes", writes_orders=False, writes_v2=False),
    Scenario("orders", "writes to orders", writes_orders=True, writes_v2=False),
    Scenario("v2", "+ writes to orders_v2", writes_orders=True, writes_v2=True),
)


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


class ChildMemory:
    """The largest RSS of any pg_dump or pg_restore seen while running (the PostgreSQL server,
    a child process too, does not count)."""

    TOOLS = ("pg_dump", "pg_restore")

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.02):
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.name() in self.TOOLS:
                        self.peak_mib = max(self.peak_mib, child.memory_info().rss / 2**20)

    def __enter__(self) -> ChildMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the live writer ---------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    table: str
    ended: float  # time.perf_counter() when PostgreSQL answered
    seconds: float  # how long it waited for the answer
    committed: bool


@dataclass(frozen=True)
class WindowStats:
    rate: float  # committed writes a second
    p50_ms: float
    max_ms: float
    failed: int


def _row(table: str, row_id: int) -> tuple[str, tuple[Any, ...]]:
    """The INSERT for one live write to `table`, and its values."""
    cents = row_id % 100_000
    amount: Any = cents if table == ORDERS else cents / 100
    amount_column = "total_cents" if table == ORDERS else "total"
    insert = f"INSERT INTO {table} (id, customer_id, {amount_column}, status, created_at) "
    values = (row_id, 1 + row_id % 5000, amount, "live", datetime(2026, 12, 1, tzinfo=UTC))
    return insert + "VALUES (%s, %s, %s, %s, %s)", values


class TableWriter:
    """Inserts into one table at `rate` a second, on its own thread and autocommit connection,
    never catching up on a write that was held back; `write_to` changes the table or pauses."""

    def __init__(self, dsn: str, first_id: int, rate: float, table: str | None) -> None:
        self._dsn = dsn
        self._next_id = first_id
        self._interval = 1 / rate
        self._table = table
        self._since = {table: time.perf_counter()} if table is not None else {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.committed: dict[str, list[int]] = {}
        self.attempts: list[Attempt] = []
        self._failure: psycopg.Error | None = None
        self._thread = threading.Thread(target=self._run, name="live-writer", daemon=True)

    def write_to(self, table: str | None) -> None:
        with self._lock:
            self._table = table
            if table is not None:
                self._since.setdefault(table, time.perf_counter())

    def __enter__(self) -> TableWriter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            raise RuntimeError("the live writer did not stop within 30 s")
        if self._failure is not None:
            raise RuntimeError(f"the live writer stopped: {self._failure}")

    def _run(self) -> None:
        try:
            self._write()
        except psycopg.Error as err:  # the connection itself: the writer is gone
            self._failure = err

    def _write(self) -> None:
        options = "-c lock_timeout=5000 -c statement_timeout=10000"
        with psycopg.connect(
            self._dsn, autocommit=True, connect_timeout=10, options=options
        ) as conn:
            due = time.perf_counter()
            while not self._stop.wait(max(0.0, due - time.perf_counter())):
                due = max(due + self._interval, time.perf_counter())
                with self._lock:
                    table = self._table
                if table is None:
                    continue
                row_id, self._next_id = self._next_id, self._next_id + 1
                insert, values = _row(table, row_id)
                started = time.perf_counter()
                try:
                    conn.execute(insert.encode(), values)
                    committed = True
                except psycopg.Error:
                    if conn.closed:
                        raise
                    committed = False
                ended = time.perf_counter()
                with self._lock:
                    self.attempts.append(Attempt(table, ended, ended - started, committed))
                    if committed:
                        self.committed.setdefault(table, []).append(row_id)

    def window(self, table: str, start: float, end: float) -> WindowStats | None:
        """The writes to `table` between `start` and `end`, from when the writer began writing
        there (None if it had not by `end`): commits counted when PostgreSQL confirmed them,
        waits and refusals of the writes sent in the window, however long they waited."""
        with self._lock:
            begin = max(start, self._since.get(table, end))
            mine = [a for a in self.attempts if a.table == table]
        if begin >= end:
            return None
        done = sum(a.committed and begin <= a.ended < end for a in mine)
        sent = [a for a in mine if begin <= a.ended - a.seconds < end]
        waits = [a.seconds * 1000 for a in sent if a.committed]
        return WindowStats(
            rate=done / (end - begin),
            p50_ms=statistics.median(waits) if waits else 0.0,
            max_ms=max((a.seconds * 1000 for a in sent), default=0.0),
            failed=sum(not a.committed for a in sent),
        )


class LedgerWatch:
    """Calls `then` once the ledger records `version` as applied (its script committed)."""

    def __init__(self, dsn: str, version: str, then: Callable[[], None]) -> None:
        self._dsn, self._version, self._then = dsn, version, then
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-watch", daemon=True)

    def __enter__(self) -> LedgerWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        applied = sql.SQL("SELECT 1 FROM {} WHERE version = %s AND status = 'applied'").format(
            sql.Identifier(LEDGER)
        )
        with psycopg.connect(self._dsn, autocommit=True, connect_timeout=10) as conn:
            while not self._stop.wait(0.01):
                if conn.execute("SELECT to_regclass(%s)", (LEDGER,)).fetchone() == (None,):
                    continue
                if conn.execute(applied, (self._version,)).fetchone() is not None:
                    self._then()
                    return


# --- one scenario: backup, migrate, verify, rollback ------------------------------------


@dataclass
class Bench:
    cluster: PostgresCluster
    dsn: str
    rows: int
    write_rate: float
    baseline_s: float
    root: Path
    postgres: PostgresActivities
    env: ActivityEnvironment = field(default_factory=ActivityEnvironment)

    def run(
        self, activity: Callable[[Any], T], request: Any, options: workflow.ActivityConfig
    ) -> T:
        """Run one activity with the start-to-close timeout the workflow gives it."""
        now = datetime.now(UTC)
        self.env.info = dataclasses.replace(
            self.env.info,
            scheduled_time=now,
            started_time=now,
            current_attempt_scheduled_time=now,
            start_to_close_timeout=options.get("start_to_close_timeout"),
            schedule_to_close_timeout=None,
            heartbeat_timeout=options.get("heartbeat_timeout"),
        )
        return self.env.run(activity, request)

    def sql(self, statement: str) -> Any:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(statement.encode())
            row = cursor.fetchone() if cursor.description else None
        return None if row is None else row[0]


class Steps:
    """Each step's start and end (perf_counter), for timing it and the writer's windows."""

    def __init__(self) -> None:
        self.spans: dict[str, tuple[float, float]] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.spans[name] = (started, time.perf_counter())

    def seconds(self, name: str) -> float:
        start, end = self.spans[name]
        return end - start


@dataclass
class Outcome:
    figures: Figures
    preflight: PreflightReport
    backup: BackupRecord
    at_risk: WritesAtRiskReport | None = None
    restored: RestoreReport | None = None


def run_scenario(bench: Bench, scenario: Scenario, round_no: int) -> Outcome:
    where = MigrationTarget(
        launch_id=f"bench-{round_no}-{scenario.key}",
        phase="migrate",
        source=SecretRef(env=DSN_ENV),
        target=SecretRef(env=DSN_ENV),
        migrations=str(EXAMPLE_SCRIPTS),
        ledger_table=LEDGER,
    )
    backups = str(bench.root / "backups")
    postgres = bench.postgres
    preflight = bench.run(
        postgres.preflight_migration,
        PreflightRequest(where=where, backup_dir=backups),
        POSTGRES_OPTIONS,
    )
    whole = long_options(preflight.database_bytes)
    steps = Steps()
    first_id = ID_SPAN * (1 + round_no * len(SCENARIOS) + SCENARIOS.index(scenario))
    orders = TableWriter(bench.dsn, first_id, bench.write_rate, ORDERS)
    v2 = TableWriter(bench.dsn, first_id + ID_SPAN // 2, bench.write_rate, V2_BASELINE)
    writers = [w for w, on in ((orders, scenario.writes_orders), (v2, scenario.writes_v2)) if on]
    with contextlib.ExitStack() as running:
        for writer in writers:
            running.enter_context(writer)
        if writers:
            with steps.step("baseline"):
                time.sleep(bench.baseline_s)
            v2.write_to(None)  # until the copy script committed
            if scenario.writes_v2:
                running.enter_context(
                    LedgerWatch(bench.dsn, COPY_SCRIPT, lambda: v2.write_to(ORDERS_V2))
                )
        with steps.step("backup"):
            backup = bench.run(
                postgres.backup_database,
                BackupRequest(where=where, backup_dir=backups, touched=preflight.touched),
                whole,
            )
        with steps.step("migrate"):
            bench.run(
                postgres.apply_migrations,
                MigrateRequest(where=where, scripts=preflight.scripts, touched=preflight.touched),
                long_options(preflight.touched_bytes),
            )
        bench.sql(
            f"CREATE VIEW {SEEDED_V2} AS SELECT * FROM {ORDERS_V2} WHERE id <= {bench.rows:d}"
        )
        verify = VerifyRequest(
            where=where,
            tables=[TableCheck(table=SEEDED_V1, target_table=SEEDED_V2, columns=CHECKED_COLUMNS)],
        )
        with steps.step("verify"):
            report = bench.run(postgres.verify_migration, verify, whole)
        figures: Figures = {"rows_checked": report.rows_checked}
        if scenario == SCENARIOS[0]:
            figures |= against_pg_dump(
                bench, lambda: bench.run(postgres.verify_migration, verify, whole)
            )
        bench.sql(f"DROP VIEW {SEEDED_V2}")
        outcome = Outcome(figures, preflight, backup)
        undo = RestoreDatabaseRequest(where=where, backup=backup, scripts=preflight.scripts)
        if scenario.writes_v2:
            with steps.step("rollback_detect"):
                outcome.at_risk = stopped_at_risk(bench, undo, whole)
            undo.writes = WritesDecision(
                action="carry_over", by="benchmark", comment="keep the live orders"
            )
            with steps.step("rollback_carry_over"):
                outcome.restored = bench.run(postgres.restore_database, undo, whole)
        else:
            with steps.step("rollback"):
                outcome.restored = bench.run(postgres.restore_database, undo, whole)
        v2.write_to(None)
    figures |= {f"{name}_s": steps.seconds(name) for name in steps.spans if name != "baseline"}
    for writer, table in ((orders, ORDERS), (v2, ORDERS_V2)):
        if writer not in writers:
            continue
        for name, (start, end) in steps.spans.items():
            written = V2_BASELINE if writer is v2 and name == "baseline" else table
            stats = writer.window(written, start, end)
            if stats is None:
                continue
            prefix = f"writer.{table}.{name}"
            figures |= {
                f"{prefix}.rate": stats.rate,
                f"{prefix}.p50_ms": stats.p50_ms,
                f"{prefix}.max_ms": stats.max_ms,
                f"{prefix}.failed": stats.failed,
            }
    if writers:
        figures |= count_losses(bench, writers, where)
    if outcome.at_risk is not None:
        figures["at_risk_rows"] = outcome.at_risk.rows
    if outcome.restored is not None:
        figures["carried_over"] = outcome.restored.carried_over
    remove_files(Path(backups))
    bench.sql("CHECKPOINT")
    return outcome


def stopped_at_risk(
    bench: Bench, undo: RestoreDatabaseRequest, options: workflow.ActivityConfig
) -> WritesAtRiskReport:
    """Run the undo that must stop: its WritesAtRisk report."""
    try:
        restored = bench.run(bench.postgres.restore_database, undo, options)
    except ApplicationError as err:
        if err.type != WritesAtRisk.__name__:
            raise
        return WritesAtRiskReport.model_validate(err.details[0])
    raise SystemExit(
        f"the rollback committed ({restored.method}) although live writes to orders_v2 were "
        "to be dropped with it: it must stop with WritesAtRisk"
    )


def against_pg_dump(bench: Bench, verify: Callable[[], object]) -> Figures:
    """Verify against pg_dump -Fc of `orders` alone (how fast PostgreSQL's own tool reads the
    same table), taken in turns `ANCHOR_PAIRS` times so that a busy machine slows both alike:
    the median of verify's row pairs/s over pg_dump's rows/s in each pair."""
    rows = int(bench.sql(f"SELECT count(*) FROM {ORDERS}"))
    dump = bench.root / "orders-only.dump"
    dumps: list[float] = []
    verifies: list[float] = []
    for _ in range(ANCHOR_PAIRS):
        started = time.perf_counter()
        subprocess.run(
            [
                str(bench.cluster.bin_dir / "pg_dump"),
                "-Fc",
                "--table=orders",
                "-f",
                str(dump),
                f"--dbname={bench.dsn}",
            ],
            check=True,
        )
        dumps.append(time.perf_counter() - started)
        dump.unlink()
        started = time.perf_counter()
        verify()
        verifies.append(time.perf_counter() - started)
    return {
        "pg_dump_rows": rows,
        "pg_dump_s": statistics.median(dumps),
        "anchor_verify_s": statistics.median(verifies),
        "ratio": statistics.median(
            (bench.rows / verified) / (rows / dumped)
            for verified, dumped in zip(verifies, dumps, strict=True)
        ),
    }


def count_losses(bench: Bench, writers: list[TableWriter], where: MigrationTarget) -> Figures:
    """Every committed live write is in the database (in its table, or carried over to
    orders) or in a file Phasegate saved; the rest are lost."""
    saved: dict[str, set[int]] = {}
    folder = bench.root / "backups"
    for path in folder.glob(f"{where.launch_id}.{where.phase}.*{backup_store.BACKUP_SUFFIX}"):
        if "at-risk" not in path.name and "live-writes" not in path.name:
            continue
        for line in backup_store.read_encrypted_lines(path):
            write = json.loads(line)
            image = write.get("new") or write.get("old") or {}
            saved.setdefault(str(write["table"]), set()).add(int(image["id"]))
    committed = in_database = only_saved = 0
    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        for writer in writers:
            for table, ids in writer.committed.items():
                present: set[int] = set()
                for holder in {table, ORDERS}:
                    if conn.execute("SELECT to_regclass(%s)", (holder,)).fetchone() == (None,):
                        continue
                    query = sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(
                        sql.Identifier(*holder.split("."))
                    )
                    present |= {int(row[0]) for row in conn.execute(query, (ids,))}
                committed += len(ids)
                in_database += sum(row_id in present for row_id in ids)
                only_saved += sum(
                    row_id not in present and row_id in saved.get(table, set()) for row_id in ids
                )
    return {
        "writes_committed": committed,
        "writes_in_database": in_database,
        "writes_only_saved": only_saved,
        "writes_lost": committed - in_database - only_saved,
    }


def remove_files(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


# --- the run and its table --------------------------------------------------------------


def configure_worker(root: Path, cluster: PostgresCluster) -> None:
    """The worker's backup key and limits, as a deployment would give them."""
    backup_store.configure(backup_store.generate_key_file(root / "backup.keys"))
    limits.configure(
        WorkerLimits(
            secrets=SecretLimits(env=[DSN_ENV]),
            databases=[
                f"{LOOPBACK}:{cluster.port}/checkout",
                f"{LOOPBACK}:{cluster.port}/postgres",
            ],
            files=FileLimits(read=[str(EXAMPLE_SCRIPTS)], backups=[str(root / "backups")]),
        )
    )


def median(rounds: list[Figures], key: str) -> float | None:
    values = [figures[key] for figures in rounds if key in figures]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the three scenarios")
    parser.add_argument(
        "--write-rate", type=float, default=200.0, help="live inserts a second, per table"
    )
    parser.add_argument("--baseline", type=float, default=3.0, help="seconds of writer alone")
    args = parser.parse_args()
    if args.rows < 1 or args.repeat < 1 or args.write_rate <= 0 or args.baseline <= 0:
        parser.error("--rows, --repeat, --write-rate and --baseline must be positive")

    results: dict[str, list[Figures]] = {scenario.key: [] for scenario in SCENARIOS}
    with tempfile.TemporaryDirectory(prefix="phasegate-bench-") as scratch:
        root = Path(scratch)
        with postgres_cluster(root / "pg") as cluster:
            dsn = cluster.create_database("checkout")
            seed_started = time.perf_counter()
            seed_checkout(dsn, args.rows)
            seed_s = time.perf_counter() - seed_started
            os.environ[DSN_ENV] = dsn
            configure_worker(root, cluster)
            bench = Bench(
                cluster=cluster,
                dsn=dsn,
                rows=args.rows,
                write_rate=args.write_rate,
                baseline_s=args.baseline,
                root=root,
                postgres=PostgresActivities(bin_dir=cluster.bin_dir),
            )
            bench.sql(
                f"CREATE VIEW {SEEDED_V1} AS SELECT * FROM {ORDERS} WHERE id <= {args.rows:d}"
            )
            bench.sql(V2_BASELINE_TABLE)
            rss_before = peak_rss_mib(resource.RUSAGE_SELF)
            with ChildMemory() as children:
                last: Outcome | None = None
                for round_no in range(args.repeat):
                    for scenario in SCENARIOS:
                        last = run_scenario(bench, scenario, round_no)
                        results[scenario.key].append(last.figures)
                        print(
                            f"round {round_no + 1}/{args.repeat}: {scenario.title} done", flush=True
                        )
            rss_after = peak_rss_mib(resource.RUSAGE_SELF)
    assert last is not None
    lost = print_table(args, seed_s, last, results, rss_before, rss_after, children.peak_mib)
    if lost:
        raise SystemExit(f"{lost} committed live write(s) are neither in the database nor saved")


STEPS = (
    ("backup", "backup (pg_dump -Fc, encrypted, verified)"),
    ("migrate", "migrate (3 scripts)"),
    ("verify", "verify (counts + checksums)"),
    ("rollback", "rollback by down scripts, commits"),
    ("rollback_detect", "rollback stops: WritesAtRisk (detect)"),
    ("rollback_carry_over", "rollback with a carry_over decision"),
)


def print_table(
    args: argparse.Namespace,
    seed_s: float,
    last: Outcome,
    results: dict[str, list[Figures]],
    rss_before: float,
    rss_after: float,
    children_mib: float,
) -> int:
    """Print the figures; returns how many committed live writes were lost."""

    def at(key: str, figure: str) -> float | None:
        return median(results[key], figure)

    quiet, orders, v2 = (s.key for s in SCENARIOS)
    label_width = 40
    print(
        f"\nmigration benchmark: {args.rows:,} rows in orders (seeded in {seed_s:.1f} s, "
        f"{last.preflight.database_bytes / 2**20:.1f} MiB database), PostgreSQL "
        f"{last.preflight.target_version}, {os.cpu_count()} CPU(s); medians of {args.repeat} "
        f"round(s); live writer {args.write_rate:g} inserts/s per table"
    )
    print(f"\n{'seconds':<{label_width}}" + "".join(f"{s.title:>24}" for s in SCENARIOS))
    for step, label in STEPS:
        cells = []
        for scenario in SCENARIOS:
            value = at(scenario.key, f"{step}_s")
            cells.append(f"{value:>24.2f}" if value is not None else f"{'':>24}")
        if any(cell.strip() for cell in cells):
            print(f"{label:<{label_width}}" + "".join(cells))
    backup = last.backup
    print(
        f"  backup: {backup.size_bytes / 2**20:.1f} MiB encrypted, {backup.entries} entries; "
        f"rows at risk when it stops {at(v2, 'at_risk_rows') or 0:.0f}, "
        f"carried over {at(v2, 'carried_over') or 0:.0f}"
    )

    verify_s, dump_s = at(quiet, "anchor_verify_s") or 0.0, at(quiet, "pg_dump_s") or 0.0
    dump_rows, ratio = at(quiet, "pg_dump_rows") or 0.0, at(quiet, "ratio") or 0.0
    print(f"\nno live writes, {ANCHOR_PAIRS} turns each per round:")
    print(
        f"verify                           {verify_s:8.2f} s  {args.rows / verify_s:>12,.0f} "
        f"row pairs/s ({at(quiet, 'rows_checked') or 0:,.0f} rows read)"
    )
    print(
        f"pg_dump -Fc --table=orders       {dump_s:8.2f} s  {dump_rows / dump_s:>12,.0f} rows/s "
        f"({dump_rows:,.0f} rows)"
    )
    print(
        f"verify / pg_dump                 {ratio:8.2f} ×  "
        f"(target ≥ {RATIO_TARGET}: {'yes' if ratio >= RATIO_TARGET else 'NO'})"
    )

    columns = [(orders, ORDERS), (v2, ORDERS), (v2, ORDERS_V2)]
    print(
        "\nlive writer: committed writes/s (× its baseline alone), then the median / worst ms "
        "a write sent during the step waited for its answer"
    )
    header = [f"{SCENARIOS[1].title}: orders", f"{SCENARIOS[2].title}: orders", "orders_v2"]
    print(f"{'step':<{label_width}}" + "".join(f"{title:>32}" for title in header))
    for step, label in (("baseline", "writer alone (baseline)"), *STEPS):
        cells = []
        for key, table in columns:
            prefix = f"writer.{table}.{step}"
            rate = at(key, f"{prefix}.rate")
            base = at(key, f"writer.{table}.baseline.rate")
            if rate is None or not base:
                cells.append(f"{'':>32}")
                continue
            p50, worst = at(key, f"{prefix}.p50_ms") or 0, at(key, f"{prefix}.max_ms") or 0
            cells.append(f"{rate:>8.0f} ({rate / base:4.2f}×) {p50:5.1f} / {worst:6.0f}")
        if any(cell.strip() for cell in cells):
            print(f"{label:<{label_width}}" + "".join(cells))
    refused = [
        f"{table.removeprefix('public.')} during {step}: {failed:.0f}"
        for key, table in columns
        for step, _ in STEPS
        if (failed := at(key, f"writer.{table}.{step}.failed"))
    ]
    if refused:
        print("writes refused (never committed, median): " + ", ".join(refused))
    lost_in_all = 0.0
    for key in (orders, v2):
        title = next(s.title for s in SCENARIOS if s.key == key)
        committed = sum(f.get("writes_committed", 0) for f in results[key])
        kept = sum(f.get("writes_in_database", 0) for f in results[key])
        saved = sum(f.get("writes_only_saved", 0) for f in results[key])
        lost = sum(f.get("writes_lost", 0) for f in results[key])
        lost_in_all += lost
        print(
            f"{title}: {committed:,.0f} committed writes over {args.repeat} round(s), "
            f"{kept:,.0f} in the database, {saved:,.0f} only in saved files, {lost:,.0f} lost"
        )
    print(
        f"\npeak RSS: activities + writer {rss_after:.0f} MiB (was {rss_before:.0f} MiB before "
        f"the rounds), largest pg_dump/pg_restore {children_mib:.0f} MiB"
    )
    return int(lost_in_all)


if __name__ == "__main__":
    main()
