"""A rollback whose database restore would lose live writes stops and asks, on time-skipped
launches: keep them, drop them on record, or leave the database migrated. The PostgreSQL
activities are mocked by name (`MigrationFakeWorld`); the real restore is exercised against
PostgreSQL in tests/e2e."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from approvals.proofs import plan_digest
from schemas.launch_messages import LaunchResult, LaunchStatus
from schemas.migration_messages import TableLoss, WritesAtRiskReport, WritesDecision
from schemas.plan import LaunchPlan
from tests.support.fakes import MigrationFakeWorld, running_launch
from tests.support.launches import decide_gate, gate_open, new_launch_id, wait_for
from tests.support.plans import migration_phase, plan_dict
from tests.support.proofs import ProofMaker, TrustingWorld
from workflows.launch import LaunchWorkflow

UNDO = "migrate.1"  # the restore_database undo: the migration phase's first
SAVED = "/srv/backups/checkout.writes.jsonl.enc"
Handle = WorkflowHandle[LaunchWorkflow, LaunchResult]


def migration_plan(**changes: Any) -> LaunchPlan:
    """A migration that waits at a gate before its cutover; rejecting it rolls back the
    migration, whose only undo then is the database restore."""
    spec = migration_phase(
        cutover={"gate": True, "sql": {"forward": "SELECT 1", "backward": "SELECT 2"}}
    )
    return LaunchPlan.model_validate(
        plan_dict(
            phases=[spec],
            notifications=[{"name": "ops", "url": "http://127.0.0.1:1/hook"}],
            **changes,
        )
    )


def at_risk(orders: int, deletes: int = 0, audit_rows: int = 0) -> WritesAtRiskReport:
    """What a revert would lose: `orders` rows written live to orders and `deletes` deleted
    there, and `audit_rows` rows in a table the revert drops."""
    tables = {"orders": TableLoss(rows_lost=orders, deletes_undone=deletes)}
    if audit_rows:
        tables["order_audit"] = TableLoss(rows_lost=audit_rows, table_gone=True)
    return WritesAtRiskReport(
        tables=tables, rows=orders + deletes + audit_rows, saved=SAVED, method="down_scripts"
    )


async def stuck(env: WorkflowEnvironment, handle: Handle, attempts: int = 1) -> LaunchStatus:
    """Wait until the rollback waits on the restore after its `attempts`-th attempt."""
    return await wait_for(
        env,
        handle,
        lambda s: (
            s.status == "needs_attention"
            and s.compensations[0].attempts == attempts
            and s.compensations[0].status == "failed"
        ),
        timeout=60,
    )


async def reject_cutover(env: WorkflowEnvironment, handle: Handle) -> LaunchStatus:
    await decide_gate(env, handle, "migrate.cutover", "reject", "alice", "error budget gone")
    return await stuck(env, handle)


def notes(current: LaunchStatus, handler: str) -> list[tuple[bool, str]]:
    return [(e.accepted, e.note) for e in current.audit if e.handler == handler]


async def audited(
    env: WorkflowEnvironment, handle: Handle, handler: str, count: int
) -> list[tuple[bool, str]]:
    """The audit notes of `handler` once it has `count` of them."""
    current = await wait_for(env, handle, lambda s: len(notes(s, handler)) == count)
    return notes(current, handler)


def writes(world: MigrationFakeWorld) -> list[WritesDecision | None]:
    return [request.writes for request in world.restores]


def alerts(world: MigrationFakeWorld) -> list[dict[str, Any]]:
    return [note.details for note in world.notifications if note.event == "compensation_failed"]


async def test_a_restore_that_would_lose_writes_stops_shows_them_and_keeps_them(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    env = time_skipping_env
    world = MigrationFakeWorld(at_risk=[at_risk(10, deletes=2, audit_rows=3)])
    async with running_launch(env.client, migration_plan(), world) as handle:
        blocked = await reject_cutover(env, handle)
        assert blocked.writes_at_risk == at_risk(10, deletes=2, audit_rows=3)
        record = blocked.compensations[0]
        assert (record.id, record.activity, record.status) == (UNDO, "restore_database", "failed")
        assert "reverting would lose 15 live-written row(s)" in record.error
        shown = blocked.waiting_for
        assert shown.startswith(f"Rollback blocked: undo {UNDO} (")
        assert "would lose 15 row(s) written live since the backup" in shown
        assert (
            "  - orders: 10 row(s) inserted or updated live would be gone; "
            "2 live delete(s) would be undone"
        ) in shown
        assert (
            "  - order_audit: 3 row(s) inserted or updated live would be gone; "
            "the revert drops the table"
        ) in shown
        assert f"Those rows are saved, encrypted, in {SAVED}." in shown
        for answer in (
            f"`phasegate compensation keep-writes LAUNCH {UNDO}`",
            "signal `keep_writes`",
            f"`phasegate compensation drop-writes LAUNCH {UNDO} -m WHY`",
            "signal `drop_writes`",
            f"`phasegate compensation skip LAUNCH {UNDO} -m WHY` leaves the database migrated",
            "signal `skip_compensation`",
            f"`phasegate compensation retry LAUNCH {UNDO}` checks again",
        ):
            assert answer in shown
        assert alerts(world) == [
            {
                "compensation": UNDO,
                "description": record.description,
                "rows_at_risk": 15,
                "saved": SAVED,
                "tables": ["order_audit", "orders"],
            }
        ]

        # Refused: nobody named, someone not an approver.
        await handle.signal(LaunchWorkflow.keep_writes, {"compensation": UNDO})
        await handle.signal(LaunchWorkflow.keep_writes, {"compensation": UNDO, "by": "mallory"})
        assert await audited(env, handle, "keep_writes", 2) == [
            (False, "by: name yourself; this plan's approvals are not authenticated"),
            (False, "'mallory' is not one of the plan's approvers"),
        ]
        # The same request delivered twice is taken once.
        keep = {"compensation": UNDO, "by": "bob", "id": "keep-1", "rows": 15}
        await handle.signal(LaunchWorkflow.keep_writes, keep)
        await handle.signal(LaunchWorkflow.keep_writes, keep)
        result = await handle.result()
    assert result.status == "rolled_back"
    assert [accepted for accepted, _ in notes(result.final, "keep_writes")] == [
        False,
        False,
        True,
        False,
    ]
    assert writes(world) == [
        None,
        WritesDecision(action="carry_over", by="bob", comment="", at_most_rows=15),
    ]
    record = result.final.compensations[0]
    assert (record.status, record.attempts) == ("done", 2)
    assert record.resolved_by == "15 live-written row(s) kept by bob (carry_over.sql)"
    assert record.input["writes"] == {
        "action": "carry_over",
        "by": "bob",
        "comment": "",
        "at_most_rows": 15,
    }
    assert result.final.writes_at_risk is None
    assert result.final.waiting_for == ""


async def test_dropping_writes_needs_a_reason_and_is_on_record(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    env = time_skipping_env
    world = MigrationFakeWorld(at_risk=[at_risk(4), at_risk(4)])
    async with running_launch(env.client, migration_plan(), world) as handle:
        await reject_cutover(env, handle)
        await handle.signal(LaunchWorkflow.drop_writes, {"compensation": UNDO, "by": "alice"})
        await handle.signal(
            LaunchWorkflow.drop_writes, {"compensation": UNDO, "by": "alice", "comment": "  "}
        )
        assert await audited(env, handle, "drop_writes", 2) == [
            (False, "comment: dropping live writes needs a comment saying why"),
            (False, "comment: dropping live writes needs a comment saying why"),
        ]
        await handle.signal(
            LaunchWorkflow.drop_writes,
            {"compensation": UNDO, "by": "alice", "comment": "test orders from the load test"},
        )
        result = await handle.result()
    assert result.status == "rolled_back"
    assert writes(world) == [
        None,
        WritesDecision(
            action="drop", by="alice", comment="test orders from the load test", at_most_rows=4
        ),
    ]
    record = result.final.compensations[0]
    assert (record.status, record.resolved_by) == (
        "done",
        "at most 4 live-written row(s) dropped by alice: test orders from the load test",
    )


async def test_a_decision_covers_only_the_rows_the_person_saw(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    env = time_skipping_env
    # Rows keep arriving: 5 at risk when the person decides, 9 by the next attempt.
    world = MigrationFakeWorld(at_risk=[at_risk(5), at_risk(9), at_risk(9)])
    async with running_launch(env.client, migration_plan(), world) as handle:
        await reject_cutover(env, handle)
        drop = {"compensation": UNDO, "by": "alice", "comment": "duplicates", "rows": 5}
        await handle.signal(LaunchWorkflow.drop_writes, {**drop, "id": "drop-1"})
        again = await stuck(env, handle, attempts=2)
        assert again.writes_at_risk is not None
        assert again.writes_at_risk.rows == 9
        assert "would lose 9 row(s)" in again.waiting_for
        assert "writes" not in again.compensations[0].input
        assert [details["rows_at_risk"] for details in alerts(world)] == [5, 9]

        # The decision delivered again, or given again for the 5 rows seen before, does not
        # cover the 9 at risk now.
        await handle.signal(LaunchWorkflow.drop_writes, {**drop, "id": "drop-1"})
        await handle.signal(LaunchWorkflow.drop_writes, {**drop, "id": "drop-2"})
        assert (await audited(env, handle, "drop_writes", 3))[1:] == [
            (False, "id: request 'drop-1' was already taken"),
            (
                False,
                "rows: 9 live-written row(s) are at risk now, not 5; look at the launch's "
                "status again",
            ),
        ]
        # A retry checks again, without the earlier decision.
        await handle.signal(LaunchWorkflow.retry_compensation, {"compensation": UNDO, "by": "bob"})
        third = await stuck(env, handle, attempts=3)
        assert third.writes_at_risk is not None
        assert third.writes_at_risk.rows == 9
        await handle.signal(
            LaunchWorkflow.skip_compensation,
            {"compensation": UNDO, "by": "bob", "comment": "keep v2, move the rows by hand"},
        )
        result = await handle.result()
    assert result.status == "rolled_back"
    assert writes(world) == [
        None,
        WritesDecision(action="drop", by="alice", comment="duplicates", at_most_rows=5),
        None,
    ]
    record = result.final.compensations[0]
    assert (record.status, record.attempts) == ("skipped", 3)
    assert record.resolved_by == (
        "skipped by bob: keep v2, move the rows by hand; the database stays migrated"
    )
    assert "writes" not in record.input
    assert len(alerts(world)) == 3
    assert f"not undone: {UNDO}" not in result.reason


async def test_keep_and_drop_answer_only_writes_at_risk(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    env = time_skipping_env
    world = MigrationFakeWorld(
        restore_errors=[
            ApplicationError(
                "could not connect to server", type="OperationalError", non_retryable=True
            ),
            # Not a report of writes at risk: an ordinary failure.
            ApplicationError("lost", {"rows": "many"}, type="WritesAtRisk", non_retryable=True),
        ]
    )
    async with running_launch(env.client, migration_plan(), world) as handle:
        blocked = await reject_cutover(env, handle)
        assert blocked.writes_at_risk is None
        assert "keeps failing" in blocked.waiting_for
        assert "could not connect to server" in blocked.waiting_for
        refused = (
            False,
            f"compensation: undo '{UNDO}' did not stop on live writes at risk; keep_writes "
            "answers only a database restore that did (retry or skip this one)",
        )
        await handle.signal(LaunchWorkflow.keep_writes, {"compensation": UNDO, "by": "bob"})
        assert await audited(env, handle, "keep_writes", 1) == [refused]
        await handle.signal(LaunchWorkflow.retry_compensation, {"compensation": UNDO, "by": "bob"})

        blocked = await stuck(env, handle, attempts=2)
        assert blocked.writes_at_risk is None
        assert "activity restore_database failed: lost" in blocked.compensations[0].error
        await handle.signal(
            LaunchWorkflow.drop_writes, {"compensation": UNDO, "by": "bob", "comment": "x"}
        )
        assert await audited(env, handle, "drop_writes", 1) == [
            (False, refused[1].replace("keep_writes", "drop_writes"))
        ]
        # Nothing harmed: the launch still takes a retry, and the restore then succeeds.
        await handle.signal(LaunchWorkflow.retry_compensation, {"compensation": UNDO, "by": "bob"})
        result = await handle.result()
    assert result.status == "rolled_back"
    assert writes(world) == [None, None, None]
    assert result.final.compensations[0].status == "done"
    assert [details.get("rows_at_risk") for details in alerts(world)] == [None, None]


ISSUER = "http://idp.test"


async def test_keeping_writes_takes_a_proof_for_exactly_that(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    env = time_skipping_env
    launch_id = new_launch_id()
    maker = ProofMaker(launch=launch_id, run="", idp=ISSUER)

    async def now() -> None:
        issued = (await env.get_current_time()).timestamp()
        maker.clock = lambda: issued

    await now()
    world = TrustingMigrationWorld(maker, at_risk=[at_risk(3)])
    plan = migration_plan(
        approvals={"identity": {"issuer": ISSUER}, "approvers": ["bob"], "timeout": "1h"}
    )
    lifetime = timedelta(minutes=14)
    start = maker.proof("bob", "start", plan_digest(plan), lifetime=lifetime)
    async with running_launch(
        env.client, plan, world, launch_id=launch_id, start_proof=start
    ) as handle:
        opened = await gate_open(env, handle, "migrate.cutover")
        maker.run = opened.run_id
        await now()
        reject = maker.proof("bob", "reject", "migrate.cutover", lifetime=lifetime)
        await handle.signal(LaunchWorkflow.reject, {"gate": "migrate.cutover", "proof": reject})
        await stuck(env, handle)
        await now()
        for act in ("retry_compensation", "drop_writes"):
            await handle.signal(
                LaunchWorkflow.keep_writes,
                {"compensation": UNDO, "proof": maker.proof("bob", act, UNDO, lifetime=lifetime)},
            )
        await handle.signal(
            LaunchWorkflow.keep_writes,
            {
                "compensation": UNDO,
                "proof": maker.proof("bob", "keep_writes", "migrate.2", lifetime=lifetime),
            },
        )
        refused = await audited(env, handle, "keep_writes", 3)
        assert [accepted for accepted, _ in refused] == [False, False, False]
        assert refused[0][1].startswith("proof: made for act 'retry_compensation'")
        await handle.signal(
            LaunchWorkflow.keep_writes,
            {
                "compensation": UNDO,
                "proof": maker.proof("bob", "keep_writes", UNDO, lifetime=lifetime),
            },
        )
        result = await handle.result()
    assert result.status == "rolled_back"
    assert writes(world) == [
        None,
        WritesDecision(action="carry_over", by="bob", comment="", at_most_rows=3),
    ]


class TrustingMigrationWorld(TrustingWorld, MigrationFakeWorld):
    """The migration fakes on a worker that trusts the test's approval service."""
