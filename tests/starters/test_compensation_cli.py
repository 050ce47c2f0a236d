"""`phasegate compensation keep-writes` / `drop-writes` against the real dev server, on a launch
whose database restore (mocked by name) stops on live writes at risk."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.testing import WorkflowEnvironment
from typer.testing import Result

from schemas.launch_messages import LaunchStatus
from schemas.migration_messages import TableLoss, WritesAtRiskReport, WritesDecision
from schemas.plan import LaunchPlan
from tests.support.cli import against
from tests.support.fakes import MigrationFakeWorld, running_launch
from tests.support.launches import decide_gate, wait_for
from tests.support.plans import migration_phase, plan_dict
from workers.settings import Settings

pytestmark = pytest.mark.integration

UNDO = "migrate.1"
SAVED = "/srv/backups/checkout.writes.jsonl.enc"
AT_RISK = WritesAtRiskReport(
    tables={"orders": TableLoss(rows_lost=10, deletes_undone=2)},
    rows=12,
    saved=SAVED,
    method="backup",
)
PLAN = LaunchPlan.model_validate(
    plan_dict(
        phases=[
            migration_phase(
                cutover={"gate": True, "sql": {"forward": "SELECT 1", "backward": "SELECT 2"}}
            )
        ]
    )
)


async def phasegate(settings: Settings, *args: str) -> Result:
    """The CLI on a thread of its own: it runs its own event loop, as a user's shell would."""
    return await asyncio.to_thread(against, settings, *args)


def notes(current: LaunchStatus, handler: str) -> list[tuple[bool, str]]:
    return [(e.accepted, e.note) for e in current.audit if e.handler == handler]


async def test_keep_writes_shows_what_is_kept_and_sends_the_rows_seen(
    dev_env: WorkflowEnvironment, dev_settings: Settings
) -> None:
    world = MigrationFakeWorld(at_risk=[AT_RISK])
    async with running_launch(dev_env.client, PLAN, world) as handle:
        await decide_gate(dev_env, handle, "migrate.cutover", "reject", "alice")
        await wait_for(dev_env, handle, lambda s: s.writes_at_risk is not None, timeout=30)

        shown = await phasegate(dev_settings, "status", handle.id)
        assert shown.exit_code == 0, shown.output
        assert (
            f"Live writes at risk: 12 row(s) a revert with the backup would lose (saved in {SAVED})"
            in shown.stdout
        )
        assert f"compensation keep-writes LAUNCH {UNDO}" in shown.stdout
        [orders] = [line for line in shown.stdout.splitlines() if "│ orders" in line]
        assert [cell.strip() for cell in orders.split("│")[1:5]] == ["orders", "10", "2", "no"]

        kept = await phasegate(
            dev_settings, "compensation", "keep-writes", handle.id, UNDO, "--as", "bob"
        )
        assert kept.exit_code == 0, kept.output
        assert kept.stdout.splitlines() == [
            f"asked {handle.id} to keep the live writes at risk in {UNDO} (12 rows at risk, "
            f"saved in {SAVED}); the refusal, if any, shows in `phasegate status {handle.id}`"
        ]
        result = await handle.result()
    assert result.status == "rolled_back"
    [(accepted, _)] = notes(result.final, "keep_writes")
    assert accepted
    assert [request.writes for request in world.restores] == [
        None,
        WritesDecision(action="carry_over", by="bob", at_most_rows=12),
    ]


async def test_drop_writes_is_refused_without_a_reason_and_taken_with_one(
    dev_env: WorkflowEnvironment, dev_settings: Settings
) -> None:
    world = MigrationFakeWorld(at_risk=[AT_RISK, AT_RISK])
    async with running_launch(dev_env.client, PLAN, world) as handle:
        await decide_gate(dev_env, handle, "migrate.cutover", "reject", "alice")
        await wait_for(dev_env, handle, lambda s: s.writes_at_risk is not None, timeout=30)

        unexplained = await phasegate(
            dev_settings, "compensation", "drop-writes", handle.id, UNDO, "--as", "alice"
        )
        assert unexplained.exit_code == 0, unexplained.output
        refused = await wait_for(
            dev_env, handle, lambda s: len(notes(s, "drop_writes")) == 1, timeout=30
        )
        assert notes(refused, "drop_writes") == [
            (False, "comment: dropping live writes needs a comment saying why")
        ]
        assert refused.status == "needs_attention"

        dropped = await phasegate(
            dev_settings,
            "compensation",
            "drop-writes",
            handle.id,
            UNDO,
            "--as",
            "alice",
            "-m",
            "rows of the load test",
        )
        assert dropped.exit_code == 0, dropped.output
        assert dropped.stdout.startswith(
            f"asked {handle.id} to drop the live writes at risk in {UNDO} (12 rows at risk"
        )
        result = await handle.result()
    assert result.status == "rolled_back"
    assert [request.writes for request in world.restores] == [
        None,
        WritesDecision(action="drop", by="alice", comment="rows of the load test", at_most_rows=12),
    ]
    assert result.final.compensations[0].resolved_by == (
        "at most 12 live-written row(s) dropped by alice: rows of the load test"
    )
