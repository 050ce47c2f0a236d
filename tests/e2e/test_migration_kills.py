"""A migration rolled back after its cutover ends exactly where an undisturbed run ends, though
its worker is SIGKILLed at 20+ moments: inside the backup, the scripts, the verification, the
cutover and the restore, between steps, at gates, and at seeded random delays; each time a
fresh worker takes over on the same task queue. Real PostgreSQL, real dev server, worker
processes, and a live writer on a table the migration never touches.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from activities import backup_store
from schemas.plan import LaunchPlan
from tests.support.kills import Blocker, WorkerKiller
from tests.support.launches import new_launch_id, start_launch
from tests.support.live_writer import LiveWriter, Target
from tests.support.postgres import CheckoutDatabase, migration_plan, migrations
from workflows.launch import LaunchWorkflow

pytestmark = pytest.mark.integration

SLOW_SCRIPT_S = 2
SLOW_INVARIANT_S = 1.5
# Rows of a table the migration never touches, large enough that pg_dump takes a moment.
REPORT_ROWS = 100_000
PHASE = "migrate"
MIN_KILLS = 20


def kill_seed() -> int:
    """PHASEGATE_KILL_SEED repeats a run's random delays; otherwise a fresh seed."""
    given = os.environ.get("PHASEGATE_KILL_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


def prepare(db: CheckoutDatabase) -> None:
    """Beside `orders`: the scripts' own record of each run (which the migration changes, so
    the undo restores it), a large table of reports and one the live writer fills (neither
    touched). `reports` has no index, default or check, whose definitions the migration's
    catalog reads would wait for while a report job holds the table."""
    db.query("CREATE TABLE script_runs (version text NOT NULL, at timestamptz DEFAULT now())")
    db.query(
        "CREATE TABLE reports (id bigint, body text);"
        "INSERT INTO reports SELECT n, repeat(md5(n::text), 6) "
        f"FROM generate_series(1, {REPORT_ROWS}) AS n;"
        "CREATE TABLE page_views (id bigint PRIMARY KEY, note text NOT NULL, "
        "created_at timestamptz NOT NULL)"
    )


def kill_test_plan(db: CheckoutDatabase) -> dict[str, Any]:
    """The example migration, each script recording its run in `script_runs`, the copy slow,
    plus a script without a down script (so the undo restores from the backup); gates before
    the cutover and after the phase; a slow invariant."""
    examples = migrations(db.workdir)
    record = "INSERT INTO script_runs (version) VALUES ('{}');"
    folder = migrations(
        db.workdir,
        {
            "001_create_orders_v2": (examples / "001_create_orders_v2.sql").read_text()
            + record.format("001"),
            "002_copy_orders": (examples / "002_copy_orders.sql").read_text()
            + record.format("002")
            + f"SELECT pg_sleep({SLOW_SCRIPT_S});",
            "003_index_orders_v2": (examples / "003_index_orders_v2.sql").read_text()
            + record.format("003"),
            "004_mark_orders_migrated": "ALTER TABLE orders ADD COLUMN migrated_at timestamptz "
            "NOT NULL DEFAULT now();" + record.format("004"),
        },
    )
    plan = migration_plan(db, folder, gates={"after": {"approvers": ["bob"]}})
    phase = plan["phases"][0]
    phase["cutover"]["gate"] = {"approvers": ["alice"]}
    phase["verify"]["invariants"].append(
        {
            "name": "slow-check",
            "query": f"SELECT true FROM pg_sleep({SLOW_INVARIANT_S})",
            "expect": "true",
        }
    )
    return plan


def without(contents: dict[str, Any], table: str) -> dict[str, Any]:
    return {name: value for name, value in contents.items() if name != table}


@pytest.mark.timeout(600)
async def test_rollback_converges_though_the_worker_is_killed_at_twenty_moments(
    dev_env: WorkflowEnvironment, checkout_db: CheckoutDatabase, tmp_path: Path
) -> None:
    seed = kill_seed()
    print(f"kill seed {seed} (PHASEGATE_KILL_SEED={seed} repeats its random delays)")
    started = time.monotonic()
    prepare(checkout_db)
    plan = LaunchPlan.model_validate(kill_test_plan(checkout_db))
    before = checkout_db.contents()
    dsn = checkout_db.dsn
    launch_id = new_launch_id()
    backups = checkout_db.workdir / "backups"
    killer = WorkerKiller(
        client=dev_env.client,
        address=dev_env.client.service_client.config.target_host,
        task_queue=f"mig-kills-{uuid.uuid4().hex[:8]}",
        launch_id=launch_id,
        phase=PHASE,
        dsn=dsn,
        workdir=tmp_path / "workers",
        rng=random.Random(seed),
    )
    writer = LiveWriter(
        dsn,
        [Target("public.page_views", 1, ("id", "note", "created_at"))],
        pause_s=0.02,
        max_writes=100_000,
    )
    with writer:
        async with killer as kills:
            # --- the backup ---------------------------------------------------------------
            async with Blocker(dsn, "LOCK TABLE orders IN ROW EXCLUSIVE MODE") as write_lock:
                handle = await start_launch(
                    dev_env.client, plan, killer.task_queue, launch_id=launch_id
                )
                await kills.kill_when(
                    kills.session(
                        "backup: guarding orders, waiting on a writer's lock",
                        "phasegate",
                        blocked_by=write_lock,
                    )
                )
            async with Blocker(dsn, "LOCK TABLE reports IN ACCESS EXCLUSIVE MODE") as report_lock:
                await kills.kill_when(
                    kills.session(
                        "backup: pg_dump waiting on a report's lock",
                        "phasegate pg_dump%",
                        blocked_by=report_lock,
                    )
                )
            await kills.kill_when(
                kills.session("backup: pg_dump reading", "phasegate pg_dump%", query="COPY%")
            )
            await kills.kill_when(
                kills.attempt_started("backup: at random", "backup_database"), delay=(0.05, 0.8)
            )
            await kills.kill_when(kills.completed("backup done, scripts next", "backup_database"))

            # --- the scripts --------------------------------------------------------------
            sleeping = kills.session(
                "scripts: inside 002_copy_orders", "phasegate-migrate/%", query="%pg_sleep%"
            )
            await kills.kill_when(sleeping)
            await kills.kill_when(sleeping, delay=(0.1, SLOW_SCRIPT_S - 0.3))
            # ALTER TABLE waits for a reader of orders; the retry ends the killed attempt's
            # waiting session and waits the same way.
            async with Blocker(dsn, "LOCK TABLE orders IN ACCESS SHARE MODE") as read_lock:
                altering = kills.session(
                    "scripts: 004 waiting on a reader of orders",
                    "phasegate-migrate/%",
                    blocked_by=read_lock,
                )
                await kills.kill_when(altering)
                await kills.kill_when(altering)
            await kills.kill_when(kills.completed("scripts done, verify next", "apply_migrations"))

            # --- the verification ---------------------------------------------------------
            await kills.kill_when(
                kills.session("verify: slow invariant", "phasegate", query="%pg_sleep%")
            )
            async with Blocker(dsn, "LOCK TABLE orders_v2 IN ACCESS EXCLUSIVE MODE") as v2_lock:
                await kills.kill_when(
                    kills.session(
                        "verify: checksum waiting on orders_v2", "phasegate", blocked_by=v2_lock
                    )
                )
            await kills.kill_when(
                kills.attempt_started("verify: at random", "verify_migration"),
                delay=(0.05, SLOW_INVARIANT_S),
            )
            await kills.kill_when(
                kills.completed("verified, cutover gate next", "verify_migration")
            )

            # --- the cutover --------------------------------------------------------------
            await kills.kill_when(kills.gate_open("cutover gate open", f"{PHASE}.cutover"))
            async with Blocker(dsn, "LOCK TABLE checkout_orders IN ACCESS SHARE MODE") as view:
                await handle.signal(
                    LaunchWorkflow.approve, {"gate": f"{PHASE}.cutover", "approver": "alice"}
                )
                await kills.kill_when(
                    kills.session(
                        "cutover: switching the view, waiting on its readers",
                        "phasegate",
                        blocked_by=view,
                    )
                )
            await kills.kill_when(kills.completed("cutover switched", "cut_over_sql"))
            await kills.kill_when(kills.gate_open("after gate open", f"{PHASE}.after"))
            runs = checkout_db.query(
                "SELECT version, count(*) FROM script_runs GROUP BY 1 ORDER BY 1"
            )

            # --- the rollback -------------------------------------------------------------
            async with Blocker(dsn, "LOCK TABLE script_runs IN ROW EXCLUSIVE MODE") as runs_lock:
                await handle.signal(
                    LaunchWorkflow.reject, {"gate": f"{PHASE}.after", "approver": "bob"}
                )
                await kills.kill_when(
                    kills.session(
                        "restore: locking the touched tables, waiting on a writer",
                        "phasegate-migrate/%",
                        blocked_by=runs_lock,
                    )
                )
            await kills.kill_when(
                kills.attempt_started("restore: at random", "restore_database"), delay=(0.05, 1.5)
            )
            await kills.ready()
            result = await handle.result()
    seconds = time.monotonic() - started
    print(f"{kills.delivered} kills in {seconds:.0f}s (seed {seed}):\n{kills.report()}")

    assert result.status == "rolled_back", result.reason
    assert kills.delivered == len(kills.kills) >= MIN_KILLS, kills.report()
    # Inside each long step at least once (the waits on a lock make sure of it).
    for step in (
        "backup_database",
        "apply_migrations",
        "verify_migration",
        "cut_over_sql",
        "restore_database",
    ):
        assert any(step in kill.activities for kill in kills.kills), (step, kills.report())
    # Each script applied exactly once, though attempts died inside two of them.
    assert runs == [("001", 1), ("002", 1), ("003", 1), ("004", 1)]
    assert [(c.activity, c.status) for c in reversed(result.final.compensations)] == [
        ("switch_back_sql", "done"),
        ("restore_exposure", "done"),
        ("check_writes_since_cutover", "done"),
        ("restore_database", "done"),
    ]
    # As before the launch, but for the live writes elsewhere, which are all kept.
    assert without(checkout_db.contents(), "public.page_views") == without(
        before, "public.page_views"
    )
    live = writer.committed["public.page_views"]
    assert len(live) > 0
    assert [row[0] for row in checkout_db.query("SELECT id FROM page_views ORDER BY id")] == live
    assert checkout_db.scalar("SELECT to_regnamespace('phasegate_capture')") is None
    assert checkout_db.scalar("SELECT to_regclass('phasegate_migrations')") is None
    await no_sessions_left(checkout_db)

    record = next(c for c in result.final.compensations if c.activity == "restore_database")
    check_backups(backups, f"{launch_id}.{PHASE}", record.input["backup"])


async def no_sessions_left(db: CheckoutDatabase, timeout: float = 30) -> None:
    """No session of a killed worker (a statement it left running, a pg_dump it started) is
    still connected once the launch has ended and the last worker stopped."""
    deadline = time.monotonic() + timeout
    while True:
        left = db.query(
            "SELECT application_name, state, left(query, 60) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'phasegate%'"
        )
        if not left:
            return
        assert time.monotonic() < deadline, f"sessions left behind: {left}"
        await asyncio.sleep(0.2)


def check_backups(folder: Path, name: str, backup: dict[str, Any]) -> None:
    """One backup, the one the undo used; beside it its record and the (empty) save of live
    writes to the touched tables; nothing half-written; all private."""
    assert sorted(f.name for f in folder.iterdir()) == [
        f"{name}.dump.pgbk",
        f"{name}.json",
        f"{name}.live-writes.rows.pgbk",
    ]
    assert {f.name: f.stat().st_mode & 0o777 for f in folder.iterdir()} == {
        f.name: 0o600 for f in folder.iterdir()
    }
    assert backup["path"] == str(folder / f"{name}.dump.pgbk")
    assert hashlib.sha256(Path(backup["path"]).read_bytes()).hexdigest() == backup["sha256"]
    assert list(backup_store.read_encrypted_lines(folder / f"{name}.live-writes.rows.pgbk")) == []
