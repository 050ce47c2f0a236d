"""The migration cutover end to end: real PostgreSQL, real dev server, real worker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities import backup_store
from devstack.processes import start_worker
from schemas.launch_messages import LaunchResult
from schemas.plan import LaunchPlan
from tests.support.launches import gate_open, start_launch, wait_for
from tests.support.postgres import SEEDED_ROWS, CheckoutDatabase, migration_plan, migrations
from tests.support.servers import canary_share
from workflows.launch import LaunchWorkflow

pytestmark = pytest.mark.integration


async def start(
    client: Client, plan: dict[str, Any], task_queue: str
) -> WorkflowHandle[LaunchWorkflow, LaunchResult]:
    return await start_launch(client, LaunchPlan.model_validate(plan), task_queue)


def view_source(db: CheckoutDatabase) -> str:
    return str(db.scalar("SELECT definition FROM pg_views WHERE viewname = 'checkout_orders'"))


def backup_input(result: LaunchResult) -> dict[str, Any]:
    record = next(c for c in result.final.compensations if c.activity == "restore_database")
    backup: dict[str, Any] = record.input["backup"]
    return backup


def saved_file(name: str) -> tuple[int, list[dict[str, Any]], bytes]:
    """A file Phasegate wrote: its mode, its rows (when it holds saved writes), its bytes."""
    path = Path(name)
    rows = (
        [json.loads(line) for line in backup_store.read_encrypted_lines(path)]
        if ".at-risk." in path.name
        else []
    )
    return path.stat().st_mode & 0o777, rows, path.read_bytes()


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def test_migrates_verifies_and_cuts_over(
    dev_env: WorkflowEnvironment, worker: str, checkout_db: CheckoutDatabase
) -> None:
    plan = migration_plan(
        checkout_db,
        migrations(checkout_db.workdir),
        cutover={
            **migration_plan(checkout_db, migrations(checkout_db.workdir))["phases"][0]["cutover"],
            "gate": {"approvers": ["alice"]},
        },
    )
    handle = await start(dev_env.client, plan, worker)
    waiting = await wait_for(dev_env, handle, lambda s: s.open_gate is not None, timeout=60)
    assert waiting.open_gate is not None
    assert waiting.open_gate.gate == "migrate.cutover"
    assert f"orders_v2 {SEEDED_ROWS}" in waiting.open_gate.question
    assert "orders_v1" not in view_source(checkout_db)
    assert "orders_v2" not in view_source(checkout_db)  # nobody reads the new table yet
    await handle.signal(LaunchWorkflow.approve, {"gate": "migrate.cutover", "approver": "alice"})
    result = await handle.result()

    assert result.status == "completed", result.reason
    assert checkout_db.scalar("SELECT count(*) FROM orders_v2") == SEEDED_ROWS
    assert (
        checkout_db.scalar(
            "SELECT count(*) FROM checkout_orders c JOIN orders o USING (id) "
            "WHERE c.total * 100 = o.total_cents"
        )
        == SEEDED_ROWS
    )
    assert "orders_v2" in view_source(checkout_db)
    assert checkout_db.query(
        "SELECT version, status FROM phasegate_migrations ORDER BY version"
    ) == [("001", "applied"), ("002", "applied"), ("003", "applied"), ("cutover", "switched")]
    assert canary_share(checkout_db.workdir / "flags" / "db.json", "orders-v2") == 100.0
    backup = backup_input(result)
    assert sha256(backup["path"]) == backup["sha256"]
    # Only the tables the migration changes are guarded and fingerprinted: orders_v2 did not
    # exist yet, and orders is only read.
    assert backup["touched"] == []
    assert backup["fingerprint"]["tables"] == {}
    phase = result.final.phases[0]
    assert (phase.status, phase.step, phase.steps) == ("completed", 5, 6)
    assert [c.activity for c in phase.compensations] == [
        "restore_database",
        "check_writes_since_cutover",
        "restore_exposure",
        "switch_back_sql",
    ]


LOSSY_COPY = (
    "INSERT INTO orders_v2 (id, customer_id, total, status, created_at) "
    "SELECT id, customer_id, total_cents / 100.0, status, created_at FROM orders "
    "WHERE id % 1000 <> 0;"
)


@pytest.mark.parametrize(
    ("scripts", "downs", "reasons"),
    [
        pytest.param(
            {"003_index_orders_v2": "CREATE INDEX orders_v2_bad ON orders_v2 (no_such_column);"},
            False,  # restored from the backup: every row, same shape
            ["003_index_orders_v2.sql failed", 'column "no_such_column" does not exist'],
            id="failing-third-script",
        ),
        pytest.param(
            {"002_copy_orders": LOSSY_COPY},
            True,  # by the down scripts, checked against the backup
            [
                f"orders → orders_v2: {SEEDED_ROWS} rows in the source, {SEEDED_ROWS - 30} in "
                "the target (-30)"
            ],
            id="verification-mismatch",
        ),
    ],
)
async def test_a_failure_before_the_cutover_leaves_the_database_as_before(
    dev_env: WorkflowEnvironment,
    worker: str,
    checkout_db: CheckoutDatabase,
    scripts: dict[str, str],
    downs: bool,
    reasons: list[str],
) -> None:
    before = checkout_db.contents()
    folder = migrations(checkout_db.workdir, scripts, downs=downs)
    handle = await start(dev_env.client, migration_plan(checkout_db, folder), worker)
    result = await handle.result()

    assert result.status == "rolled_back"
    for reason in reasons:
        assert reason in result.reason
    assert [(c.activity, c.status) for c in result.final.compensations] == [
        ("restore_database", "done")
    ]
    assert checkout_db.contents() == before
    assert checkout_db.scalar("SELECT to_regclass('phasegate_migrations')") is None
    assert not (checkout_db.workdir / "flags" / "db.json").exists()


async def test_rollback_after_cutover_restores_every_row(
    dev_env: WorkflowEnvironment, worker: str, checkout_db: CheckoutDatabase
) -> None:
    before = checkout_db.contents()
    # A script that rewrites the old table too, without a down script: only the backup undoes it.
    folder = migrations(
        checkout_db.workdir,
        {
            "004_mark_orders_migrated": "ALTER TABLE orders ADD COLUMN migrated_at timestamptz "
            "NOT NULL DEFAULT now();"
        },
    )
    plan = migration_plan(checkout_db, folder, gates={"after": {"approvers": ["bob"]}})
    handle = await start(dev_env.client, plan, worker)
    await gate_open(dev_env, handle, "migrate.after", timeout=60)
    assert "orders_v2" in view_source(checkout_db)
    assert canary_share(checkout_db.workdir / "flags" / "db.json", "orders-v2") == 100.0
    assert (
        checkout_db.scalar("SELECT count(*) FROM orders WHERE migrated_at IS NOT NULL")
        == SEEDED_ROWS
    )
    await handle.signal(LaunchWorkflow.reject, {"gate": "migrate.after", "approver": "bob"})
    result = await handle.result()

    assert result.status == "rolled_back"
    assert [(c.activity, c.status) for c in reversed(result.final.compensations)] == [
        ("switch_back_sql", "done"),
        ("restore_exposure", "done"),
        ("check_writes_since_cutover", "done"),
        ("restore_database", "done"),
    ]
    assert checkout_db.contents() == before
    assert checkout_db.scalar("SELECT count(*) FROM checkout_orders") == SEEDED_ROWS
    assert "orders_v2" not in view_source(checkout_db)
    assert canary_share(checkout_db.workdir / "flags" / "db.json", "orders-v2") == 0.0


async def test_writes_after_cutover_stop_the_undo_until_a_person_keeps_them(
    dev_env: WorkflowEnvironment, worker: str, checkout_db: CheckoutDatabase
) -> None:
    plan = migration_plan(
        checkout_db, migrations(checkout_db.workdir), gates={"after": {"approvers": ["bob"]}}
    )
    handle = await start(dev_env.client, plan, worker)
    await gate_open(dev_env, handle, "migrate.after", timeout=60)
    checkout_db.query(
        "INSERT INTO orders_v2 SELECT id + 1000000, customer_id, total, 'open', created_at "
        "FROM orders_v2 WHERE id <= 12"
    )
    await handle.signal(LaunchWorkflow.reject, {"gate": "migrate.after", "approver": "bob"})
    stuck = await wait_for(dev_env, handle, lambda s: s.writes_at_risk is not None, timeout=90)

    # The down scripts would drop orders_v2 and the 12 orders written to it after cutover:
    # nothing was reverted, the rows are saved, and a person is asked.
    assert stuck.writes_at_risk is not None
    assert stuck.writes_at_risk.rows == 12
    assert stuck.writes_at_risk.tables["public.orders_v2"].table_gone
    mode, lines, raw = saved_file(stuck.writes_at_risk.saved)
    assert mode == 0o600
    assert sorted(row["new"]["id"] for row in lines) == list(range(1000001, 1000013))
    assert b"1000001" not in raw  # encrypted at rest
    restore = next(c for c in stuck.compensations if c.activity == "restore_database")
    assert restore.status == "failed"
    assert "would lose 12 live write(s)" in restore.error
    assert checkout_db.scalar("SELECT count(*) FROM orders_v2") == SEEDED_ROWS + 12
    assert "orders_v2" not in view_source(checkout_db)  # traffic is back on the old table

    await handle.signal("keep_writes", {"compensation": restore.id, "by": "alice", "rows": 12})
    result = await handle.result()
    assert result.status == "rolled_back", result.reason
    # carry_over.sql moved them back to orders, in cents; the migration itself is undone.
    assert checkout_db.scalar("SELECT to_regclass('orders_v2')") is None
    assert checkout_db.scalar("SELECT count(*) FROM orders") == SEEDED_ROWS + 12
    assert checkout_db.query(
        "SELECT o.id FROM orders o JOIN orders p ON p.id = o.id - 1000000 "
        "WHERE o.id > 1000000 AND o.total_cents = p.total_cents"
    ) == [(1000000 + n,) for n in range(1, 13)]
    assert checkout_db.scalar("SELECT to_regnamespace('phasegate_capture')") is None


async def test_worker_killed_mid_script_resumes_without_reapplying(
    dev_env: WorkflowEnvironment, checkout_db: CheckoutDatabase, tmp_path: Path
) -> None:
    address = dev_env.client.service_client.config.target_host
    task_queue = f"mig-kill-{uuid.uuid4().hex[:8]}"
    checkout_db.query("CREATE TABLE script_runs (version text, at timestamptz DEFAULT now())")
    record = "INSERT INTO script_runs (version) VALUES ('{}');"
    folder = migrations(
        checkout_db.workdir,
        {
            "001_create_orders_v2": (
                (migrations(checkout_db.workdir) / "001_create_orders_v2.sql").read_text()
                + record.format("001")
            ),
            "002_copy_orders": (
                (migrations(checkout_db.workdir) / "002_copy_orders.sql").read_text()
                + record.format("002")
                # Longer than the 10 s heartbeat timeout: only heartbeats keep it alive.
                + "SELECT pg_sleep(13);  -- the long part"
            ),
            "003_index_orders_v2": "CREATE INDEX orders_v2_customer ON orders_v2 (customer_id);"
            + record.format("003"),
        },
    )
    plan = migration_plan(checkout_db, folder)

    first = start_worker(address=address, workdir=tmp_path / "w1", task_queue=task_queue)
    try:
        handle = await start(dev_env.client, plan, task_queue)
        async with asyncio.timeout(60):
            while not checkout_db.query(  # noqa: ASYNC110
                "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'phasegate-migrate/%' "
                "AND query LIKE '%pg_sleep%' AND state = 'active'"
            ):
                await asyncio.sleep(0.1)
        first.kill()
    finally:
        first.stop()
    backup_files = sorted((checkout_db.workdir / "backups").glob("*.dump.pgbk"))
    assert len(backup_files) == 1
    backup_sha = sha256(str(backup_files[0]))
    assert checkout_db.query("SELECT version FROM script_runs") == [("001",)]

    second = start_worker(address=address, workdir=tmp_path / "w2", task_queue=task_queue)
    try:
        result = await asyncio.wait_for(handle.result(), timeout=120)
    finally:
        second.stop()

    assert result.status == "completed", result.reason
    migration = await dev_env.client.get_workflow_handle(f"{handle.id}.migrate").fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in migration.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    # apply_migrations ran twice: the killed attempt, then one that outlived the heartbeat
    # timeout on heartbeats alone and finished; every other activity ran once.
    assert sorted(attempts) == [1] * (len(attempts) - 1) + [2]
    assert checkout_db.query("SELECT version, count(*) FROM script_runs GROUP BY 1 ORDER BY 1") == [
        ("001", 1),
        ("002", 1),
        ("003", 1),
    ]
    assert checkout_db.scalar("SELECT count(*) FROM orders_v2") == SEEDED_ROWS
    backup = backup_input(result)
    assert backup["path"] == str(backup_files[0])
    assert sha256(backup["path"]) == backup["sha256"] == backup_sha  # the one backup, kept
    sidecar = backup_store.sidecar_of(Path(backup["path"]))
    assert json.loads(sidecar.read_text())["sha256"] == backup_sha
    assert saved_file(backup["path"])[0] == 0o600
