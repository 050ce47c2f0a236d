"""Migration cutover at scale: backup + migrate + verify + restore of a seeded `orders` table
(1 million rows by default) in a throwaway PostgreSQL, with the verify step's throughput set
against pg_dump's own speed on the same table.

    python -m benchmarks.migration [--rows 1000000] [--repeat 3]

The activities run as the worker runs them (temporalio's ActivityEnvironment, same code, no
server in between). Peak memory is the high-water RSS of this process (the activities) and of
the pg_dump / pg_restore it runs, sampled every 20 ms; the PostgreSQL server's own memory is
not counted (it is the database's, with or without Phasegate).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
from temporalio.testing import ActivityEnvironment

from activities.postgres import PostgresActivities
from devstack.checkout_db import seed_checkout
from devstack.postgres_cluster import postgres_cluster
from schemas.basics import SecretRef
from schemas.migration_cutover_spec import TableCheck
from schemas.migration_messages import (
    BackupRequest,
    MigrateRequest,
    MigrationTarget,
    PreflightRequest,
    RestoreDatabaseRequest,
    VerifyRequest,
)

EXAMPLE_SCRIPTS = Path(__file__).resolve().parent.parent / "examples" / "migrations" / "checkout"
T = TypeVar("T")


def timed(action: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


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


def scripts_without_downs(folder: Path) -> Path:
    """The example scripts without their down scripts: the restore must use the backup."""
    for path in EXAMPLE_SCRIPTS.glob("*.sql"):
        if not path.name.endswith(".down.sql"):
            (folder / path.name).write_text(path.read_text())
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of verify and pg_dump")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="phasegate-bench-") as scratch:
        root = Path(scratch)
        with postgres_cluster(root / "pg") as cluster:
            dsn = cluster.create_database("checkout")
            _, seed_s = timed(lambda: seed_checkout(dsn, args.rows))
            os.environ["PHASEGATE_BENCH_DSN"] = dsn
            ref = SecretRef(env="PHASEGATE_BENCH_DSN")
            scripts = scripts_without_downs(Path(tempfile.mkdtemp(dir=root)))
            where = MigrationTarget(
                launch_id="bench",
                phase="migrate",
                source=ref,
                target=ref,
                migrations=str(scripts),
                ledger_table="phasegate_migrations",
            )
            postgres = PostgresActivities(bin_dir=cluster.bin_dir)
            env = ActivityEnvironment()

            def run(activity: Callable[[Any], T], request: Any) -> T:
                return env.run(activity, request)

            rss_before = peak_rss_mib(resource.RUSAGE_SELF)
            children = ChildMemory().__enter__()
            backup_dir = str(root / "backups")
            preflight = run(
                postgres.preflight_migration, PreflightRequest(where=where, backup_dir=backup_dir)
            )
            backup, backup_s = timed(
                lambda: run(
                    postgres.backup_database, BackupRequest(where=where, backup_dir=backup_dir)
                )
            )
            _, migrate_s = timed(
                lambda: run(
                    postgres.apply_migrations,
                    MigrateRequest(where=where, scripts=preflight.scripts),
                )
            )
            check = TableCheck(
                table="orders",
                target_table="orders_v2",
                columns=["id", "customer_id", "status", "created_at"],
            )
            verify = VerifyRequest(where=where, tables=[check])
            verify_runs = [
                timed(lambda: run(postgres.verify_migration, verify)) for _ in range(args.repeat)
            ]
            report, _ = verify_runs[0]
            verify_s = statistics.median(seconds for _, seconds in verify_runs)

            dump_runs = []
            orders_only = root / "orders-only.dump"
            for _ in range(args.repeat):
                _, seconds = timed(
                    lambda: subprocess.run(
                        [
                            str(cluster.bin_dir / "pg_dump"),
                            "-Fc",
                            "--table=orders",
                            "-f",
                            str(orders_only),
                            f"--dbname={dsn}",
                        ],
                        check=True,
                    )
                )
                dump_runs.append(seconds)
            dump_s = statistics.median(dump_runs)

            restored, restore_s = timed(
                lambda: run(
                    postgres.restore_database,
                    RestoreDatabaseRequest(where=where, backup=backup, scripts=preflight.scripts),
                )
            )
            rss_after = peak_rss_mib(resource.RUSAGE_SELF)
            children.__exit__()

    rows = args.rows
    total = backup_s + migrate_s + verify_s + restore_s
    verify_rate = rows / verify_s
    dump_rate = rows / dump_s
    print(
        f"migration benchmark: {rows:,} rows in orders (seeded in {seed_s:.1f}s), "
        f"PostgreSQL {preflight.target_version}, {os.cpu_count()} CPU(s)"
    )
    print(f"  database size          {preflight.database_bytes / 2**20:9.1f} MiB")
    print(
        f"  backup (pg_dump -Fc)   {backup_s:9.2f} s   {backup.size_bytes / 2**20:.1f} MiB, "
        f"{backup.entries} entries, verified with pg_restore --list"
    )
    print(f"  migrate (3 scripts)    {migrate_s:9.2f} s")
    print(
        f"  verify (median of {args.repeat})    {verify_s:9.2f} s   {verify_rate:,.0f} row pairs/s "
        f"({report.rows_checked:,} rows read, counts + checksums)"
    )
    print(f"  restore ({restored.method})      {restore_s:9.2f} s   fingerprint checked")
    print(f"  total                  {total:9.2f} s")
    print(
        f"  pg_dump -Fc -t orders  {dump_s:9.2f} s   {dump_rate:,.0f} rows/s (median of {args.repeat})"
    )
    print(f"  verify / pg_dump       {verify_rate / dump_rate:9.2f} ×")
    print(
        f"  peak RSS: activities {rss_after:.0f} MiB (was {rss_before:.0f} MiB before the run), "
        f"largest pg_dump/pg_restore {children.peak_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
