"""A migration's rollback under live traffic: real PostgreSQL, real dev server, real worker,
and a client committing writes the whole time, to tables the migration touches and to tables
it does not. After every rollback each committed write is in the database, or saved in the
file Phasegate named and dropped only on a person's recorded decision."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities import backup_store
from schemas.launch_messages import LaunchResult, LaunchStatus
from schemas.plan import LaunchPlan
from tests.support.launches import gate_open, start_launch, wait_for
from tests.support.live_writer import ORDERS, ORDERS_V2, LiveWriter, Target
from tests.support.postgres import SEEDED_ROWS, CheckoutDatabase, migration_plan, migrations
from workflows.launch import LaunchWorkflow

pytestmark = pytest.mark.integration

AUDIT = Target("public.audit_log", 1, ("id", "note"))
OLD_ORDERS = Target("public.orders", 5_000_000, ORDERS)
NEW_ORDERS = Target("public.orders_v2", 8_000_000, ORDERS_V2)


def with_audit_log(db: CheckoutDatabase) -> None:
    db.query("CREATE TABLE audit_log (id bigint PRIMARY KEY, note text NOT NULL)")


def live_plan(db: CheckoutDatabase, folder: Path) -> dict[str, Any]:
    """The checkout migration, rejected at its `after` gate; verification compares no table
    counts (live writes to both sides would never let them match)."""
    return migration_plan(
        db, folder, verify={"tables": [], "invariants": []}, gates={"after": {"approvers": ["bob"]}}
    )


async def start(
    client: Client, plan: dict[str, Any], task_queue: str
) -> WorkflowHandle[LaunchWorkflow, LaunchResult]:
    return await start_launch(client, LaunchPlan.model_validate(plan), task_queue)


async def reject_after(
    env: WorkflowEnvironment, handle: WorkflowHandle[LaunchWorkflow, LaunchResult]
) -> None:
    await gate_open(env, handle, "migrate.after", timeout=90)
    await handle.signal(LaunchWorkflow.reject, {"gate": "migrate.after", "approver": "bob"})


def saved_ids(path: str) -> dict[str, set[int]]:
    """{table: ids} of the rows in an encrypted file of saved writes."""
    found: dict[str, set[int]] = {}
    for line in backup_store.read_encrypted_lines(Path(path)):
        row = json.loads(line)
        image = row["new"] or row["old"]
        found.setdefault(row["table"], set()).add(int(image["id"]))
    return found


def restore_record(status: LaunchStatus) -> Any:
    return next(c for c in status.compensations if c.activity == "restore_database")


async def test_writes_elsewhere_never_stop_or_undo_the_rollback(
    dev_env: WorkflowEnvironment, worker: str, checkout_db: CheckoutDatabase
) -> None:
    with_audit_log(checkout_db)
    plan = live_plan(checkout_db, migrations(checkout_db.workdir))
    with LiveWriter(checkout_db.dsn, [AUDIT, OLD_ORDERS]) as writer:
        handle = await start(dev_env.client, plan, worker)
        await reject_after(dev_env, handle)
        result = await asyncio.wait_for(handle.result(), timeout=120)
        writer.wait_for("public.audit_log", writer.count("public.audit_log") + 5)
    assert result.status == "rolled_back", result.reason
    assert writer.count("public.audit_log") > 20
    assert writer.count("public.orders") > 20
    # Only orders_v2 was touched (created); the writes to orders and audit_log were never read,
    # restored or lost, and the rollback did not stop for them.
    assert writer.missing(checkout_db.dsn, {}) == {}
    assert checkout_db.scalar("SELECT count(*) FROM audit_log") == writer.count("public.audit_log")
    assert checkout_db.scalar("SELECT count(*) FROM orders") == SEEDED_ROWS + writer.count(
        "public.orders"
    )
    assert checkout_db.scalar("SELECT to_regclass('orders_v2')") is None
    assert checkout_db.scalar("SELECT to_regnamespace('phasegate_capture')") is None
    restore = next(c for c in result.final.compensations if c.activity == "restore_database")
    assert (restore.status, restore.attempts) == ("done", 1)


async def test_live_writes_to_a_table_the_revert_drops_are_carried_over(
    dev_env: WorkflowEnvironment, worker: str, checkout_db: CheckoutDatabase
) -> None:
    with_audit_log(checkout_db)
    plan = live_plan(checkout_db, migrations(checkout_db.workdir))
    with LiveWriter(checkout_db.dsn, [AUDIT, OLD_ORDERS, NEW_ORDERS]) as writer:
        handle = await start(dev_env.client, plan, worker)
        await gate_open(dev_env, handle, "migrate.after", timeout=90)
        writer.wait_for("public.orders_v2", 20)
        await handle.signal(LaunchWorkflow.reject, {"gate": "migrate.after", "approver": "bob"})
        stuck = await wait_for(dev_env, handle, lambda s: s.writes_at_risk is not None, timeout=90)
        report = stuck.writes_at_risk
        assert report is not None
        # The writer keeps going while the rollback waits: the table is still there.
        assert report.tables["public.orders_v2"].table_gone
        assert report.rows >= 20
        assert saved_ids(report.saved)["public.orders_v2"] >= set(
            writer.committed["public.orders_v2"][:20]
        )
        await handle.signal(
            "keep_writes", {"compensation": restore_record(stuck).id, "by": "alice"}
        )
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.status == "rolled_back", result.reason
    assert writer.count("public.orders_v2") > report.rows - 1
    # Every committed write is in the database: orders_v2's in orders, by carry_over.sql.
    assert writer.missing(checkout_db.dsn, {}) == {}
    carried = checkout_db.scalar("SELECT count(*) FROM orders WHERE id >= 8000000")
    assert carried == writer.count("public.orders_v2")
    restore = next(c for c in result.final.compensations if c.activity == "restore_database")
    assert restore.status == "done"
    assert "alice" in " ".join(entry.note for entry in result.final.audit)


async def test_writes_a_backup_restore_would_drop_are_dropped_only_on_record(
    dev_env: WorkflowEnvironment, worker: str, checkout_db: CheckoutDatabase
) -> None:
    with_audit_log(checkout_db)
    # A script without a down script that changes orders: the undo restores orders from the
    # backup, which would drop every order written since.
    folder = migrations(
        checkout_db.workdir,
        {"004_mark_orders": "ALTER TABLE orders ADD COLUMN marked boolean NOT NULL DEFAULT false;"},
    )
    plan = live_plan(checkout_db, folder)
    with LiveWriter(checkout_db.dsn, [AUDIT, OLD_ORDERS]) as writer:
        handle = await start(dev_env.client, plan, worker)
        await gate_open(dev_env, handle, "migrate.after", timeout=90)
        writer.wait_for("public.orders", 20)
        await handle.signal(LaunchWorkflow.reject, {"gate": "migrate.after", "approver": "bob"})
        stuck = await wait_for(dev_env, handle, lambda s: s.writes_at_risk is not None, timeout=90)
    # Traffic stopped; ask again so the count is final, then drop on record.
    record = restore_record(stuck).id
    await handle.signal("retry_compensation", {"compensation": record, "by": "alice"})
    await wait_for(dev_env, handle, lambda s: restore_record(s).attempts >= 2, timeout=60)
    stuck = await wait_for(dev_env, handle, lambda s: s.writes_at_risk is not None, timeout=90)
    report = stuck.writes_at_risk
    assert report is not None
    assert report.method == "backup"
    assert set(report.tables) == {"public.orders"}  # audit_log is never at risk
    assert checkout_db.scalar("SELECT count(*) FROM orders WHERE NOT marked") > 0  # untouched yet
    refused = {"compensation": record, "by": "alice", "rows": report.rows}
    await handle.signal("drop_writes", refused)  # no comment: refused, nothing changes
    await handle.signal("drop_writes", {**refused, "comment": "test orders, safe to lose"})
    result = await asyncio.wait_for(handle.result(), timeout=120)

    assert result.status == "rolled_back", result.reason
    saved = saved_ids(report.saved)
    # The orders written after the backup's snapshot (those before it are in the backup).
    assert len(saved["public.orders"]) == report.rows
    assert 0 < report.rows <= writer.count("public.orders")
    # Dropped from the database, kept in the saved file: never silently gone.
    assert writer.missing(checkout_db.dsn, saved) == {}
    # Back as at the backup: the seeded orders and those written before its snapshot.
    assert checkout_db.scalar("SELECT count(*) FROM orders") == (
        SEEDED_ROWS + writer.count("public.orders") - report.rows
    )
    assert checkout_db.scalar("SELECT count(*) FROM audit_log") == writer.count("public.audit_log")
    assert (
        checkout_db.scalar(
            "SELECT count(*) FROM information_schema.columns WHERE column_name = 'marked'"
        )
        == 0
    )
    notes = [(entry.handler, entry.accepted, entry.note) for entry in result.final.audit]
    assert any(h == "drop_writes" and not ok and "comment" in note for h, ok, note in notes)
    assert any(h == "drop_writes" and ok and "alice" in note for h, ok, note in notes)
    restore = next(c for c in result.final.compensations if c.activity == "restore_database")
    assert restore.status == "done"
