"""LaunchWorkflow logic on the time-skipping server, with every activity mocked by name."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from schemas.launch_messages import (
    CompensationRecord,
    LaunchResult,
    PhaseReport,
    PhaseStatusValue,
)
from schemas.metrics_messages import MetricReading
from tests.support.fakes import FakeWorld, running_launch
from tests.support.histories import failed_tasks
from tests.support.launches import decide_gate, gate_open, status, wait_for
from tests.support.plans import exposure_only, make_plan
from workflows.audit import KEEP_AUDIT
from workflows.launch import LaunchWorkflow

APPROVE = {"gate": "soft-launch.before", "approver": "alice", "comment": "go"}


@asynccontextmanager
async def at_first_gate(
    env: WorkflowEnvironment, world: FakeWorld
) -> AsyncIterator[WorkflowHandle[LaunchWorkflow, LaunchResult]]:
    """The default plan's launch on `world`'s fakes, once it waits at soft-launch.before."""
    async with running_launch(env.client, make_plan(), world) as handle:
        await gate_open(env, handle, "soft-launch.before")
        yield handle


async def test_approved_launch_reaches_everyone(time_skipping_env: WorkflowEnvironment) -> None:
    world = FakeWorld()
    async with at_first_gate(time_skipping_env, world) as handle:
        await handle.signal(LaunchWorkflow.approve, APPROVE)
        waiting = await gate_open(time_skipping_env, handle, "soft-launch.step-2")
        assert waiting.exposure == 10
        assert waiting.status == "waiting"
        assert "approve" in waiting.waiting_for
        assert "soft-launch.step-2" in waiting.waiting_for
        await handle.signal(
            LaunchWorkflow.approve, {**APPROVE, "gate": "soft-launch.step-2", "approver": "bob"}
        )
        result = await handle.result()

    assert result.status == "completed"
    assert world.exposure == 100
    assert [w for n, w in world.calls if n == "set_exposure"] == [1, 10, 50, 100]
    assert "promote_exposure" in world.names()
    assert "restore_exposure" not in world.names()
    decisions = [(d.gate, d.outcome, d.by) for d in result.final.decisions]
    assert decisions == [
        ("soft-launch.before", "approved", "alice"),
        ("soft-launch.step-2", "approved", "bob"),
    ]
    metric = result.final.phases[0].analysis[0]
    assert (metric.metric, metric.verdict, metric.successes) == ("error-rate", "successful", 3)


async def test_rejection_rolls_back_in_reverse_order(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(exposure=0.0)
    async with at_first_gate(time_skipping_env, world) as handle:
        await handle.signal(LaunchWorkflow.approve, APPROVE)
        await decide_gate(
            time_skipping_env, handle, "soft-launch.step-2", "reject", "bob", "error budget"
        )
        result = await handle.result()

    assert result.status == "rolled_back"
    assert "soft-launch.step-2 rejected by bob: error budget" in result.reason
    assert world.calls[-1] == ("restore_exposure", 0.0)
    assert world.exposure == 0.0
    assert [c.status for c in result.final.compensations] == ["done"]
    assert result.final.phases[1].status == "pending"


async def test_compensations_run_in_reverse_across_phases(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """Full launch's undo restores soft launch's exposure, then soft launch's undo restores the original."""
    world = FakeWorld(exposure=0.0)
    plan = make_plan(
        phases=[
            {"name": "soft-launch", "kind": "soft_launch", "steps": [{"weight": 5}]},
            {
                "name": "full-launch",
                "kind": "full_launch",
                "steps": [{"weight": 50, "approval": True}, {"weight": 100}],
            },
        ]
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await decide_gate(time_skipping_env, handle, "full-launch.step-1", "reject", "alice")
        result = await handle.result()

    restores = [(n, w) for n, w in world.calls if n.startswith("restore")]
    assert restores == [("restore_exposure", 5.0), ("restore_exposure", 0.0)]
    assert [c.id for c in result.final.compensations] == ["soft-launch.1", "full-launch.1"]
    assert all(c.status == "done" for c in result.final.compensations)


async def test_abort_cancels_the_phase_and_rolls_back(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()
    plan = exposure_only([{"weight": 20, "pause": "1h"}, {"weight": 100}])
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await wait_for(time_skipping_env, handle, lambda s: s.exposure == 20)
        await handle.signal(LaunchWorkflow.abort, {"reason": "pager went off", "by": "carol"})
        # Only once the abort is taken may time skip on: else the hour's bake could end first.
        await wait_for(time_skipping_env, handle, lambda s: s.status != "running")
        result = await handle.result()

    assert result.status == "rolled_back"
    assert result.reason == "aborted by carol: pager went off"
    assert result.final.phases[0].status == "cancelled"
    assert world.calls[-1] == ("restore_exposure", 0.0)
    assert 100 not in [w for n, w in world.calls if n == "set_exposure"]


async def test_gate_timeout_rejects_by_default(time_skipping_env: WorkflowEnvironment) -> None:
    world = FakeWorld()
    plan = exposure_only([{"weight": 30, "approval": {"timeout": "10m"}}, {"weight": 100}])
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await gate_open(time_skipping_env, handle, "full-launch.step-1")
        result = await handle.result()  # time skips past the gate's 10 minutes

    assert result.status == "rolled_back"
    assert "rejected by the gate's timeout" in result.reason
    decision = result.final.decisions[0]
    assert (decision.outcome, decision.by, decision.source) == ("rejected", "timeout", "timeout")
    assert world.exposure == 0.0


async def test_gate_timeout_approves_only_when_the_plan_says_so(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()
    plan = exposure_only(
        [{"weight": 30, "approval": {"timeout": "10m", "on_timeout": "approve"}}, {"weight": 100}]
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        result = await handle.result()

    assert result.status == "completed"
    assert result.final.decisions[0].outcome == "approved"
    assert result.final.decisions[0].by == "timeout"


async def test_failed_analysis_rolls_back_without_asking(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=lambda q: MetricReading(value=0.4))
    plan = exposure_only([{"weight": 5, "analysis": ["error-rate"]}, {"weight": 100}])
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        result = await handle.result()

    assert result.status == "rolled_back"
    assert "analysis failed at full-launch step 1 (5%)" in result.reason
    assert "0.4 > max 0.05" in result.reason
    metric = result.final.phases[0].analysis[0]
    assert (metric.verdict, metric.failures) == ("failed", 1)
    assert world.names().count("query_metric") == 1  # failure_limit 0: the first breach is enough
    assert world.exposure == 0.0
    assert 100 not in [w for n, w in world.calls if n == "set_exposure"]


async def test_failure_limit_tolerates_isolated_breaches(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    values = iter([0.4, 0.0, 0.0, 0.0])
    world = FakeWorld(readings=lambda q: MetricReading(value=next(values)))
    analysis = {
        "error-rate": {"query": "q", "max": 0.05, "interval": "1s", "count": 4, "failure_limit": 1}
    }
    plan = exposure_only(
        [{"weight": 5, "analysis": ["error-rate"]}, {"weight": 100}], analysis=analysis
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        result = await handle.result()
    assert result.status == "completed"
    assert result.final.phases[0].analysis[0].failures == 1


async def test_baseline_comparison_fails_a_canary_worse_than_stable(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=lambda q: MetricReading(value=0.30, baseline=0.10))
    analysis = {
        "latency": {
            "query": 'histogram_quantile(0.99, sum by (le) (rate(x{variant="{{variant}}"}[30s])))',
            "baseline": {"max_ratio": 1.5, "tolerance": 0.05},
            "count": 2,
        }
    }
    plan = exposure_only(
        [{"weight": 5, "analysis": ["latency"]}, {"weight": 100}], analysis=analysis
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        result = await handle.result()
    assert result.status == "rolled_back"
    assert "canary 0.3 > baseline 0.1 × 1.5 + 0.05" in result.reason


@pytest.mark.parametrize(
    ("reading", "detail"),
    [
        (MetricReading(value=None), "no data for the canary"),
        (MetricReading(error="ConnectionError: connection refused"), "ConnectionError"),
    ],
)
async def test_inconclusive_analysis_waits_for_a_person_and_never_promotes(
    time_skipping_env: WorkflowEnvironment, reading: MetricReading, detail: str
) -> None:
    world = FakeWorld(readings=lambda q: reading)
    plan = exposure_only([{"weight": 5, "analysis": ["error-rate"]}, {"weight": 100}])
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        waiting = await gate_open(time_skipping_env, handle, "full-launch.step-1.analysis")
        assert waiting.exposure == 5
        assert "inconclusive" in waiting.open_gate.question  # type: ignore[union-attr]
        assert detail in waiting.phases[0].analysis[0].measurements[-1].detail
        assert 100 not in [w for n, w in world.calls if n == "set_exposure"]
        await handle.signal(
            LaunchWorkflow.reject,
            {"gate": "full-launch.step-1.analysis", "approver": "alice", "comment": "no data"},
        )
        result = await handle.result()
    assert result.status == "rolled_back"
    assert world.exposure == 0.0


async def test_consecutive_errors_stop_measuring_early(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=lambda q: MetricReading(error="Timeout"))
    analysis = {
        "error-rate": {
            "query": "q",
            "max": 0.05,
            "interval": "1s",
            "count": 10,
            "consecutive_error_limit": 2,
        }
    }
    plan = exposure_only(
        [{"weight": 5, "analysis": ["error-rate"]}, {"weight": 100}], analysis=analysis
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        waiting = await gate_open(time_skipping_env, handle, "full-launch.step-1.analysis")
        assert waiting.phases[0].analysis[0].errors == 3
        await handle.signal(
            LaunchWorkflow.approve, {"gate": "full-launch.step-1.analysis", "approver": "bob"}
        )
        result = await handle.result()
    assert result.status == "completed"
    assert world.names().count("query_metric") == 3


async def test_malformed_and_unauthorized_signals_are_recorded_and_ignored(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()
    async with at_first_gate(time_skipping_env, world) as handle:
        await handle.signal(LaunchWorkflow.approve, "yes please")
        await handle.signal(LaunchWorkflow.approve, {"gate": "soft-launch.before"})
        await handle.signal(LaunchWorkflow.approve, {"gate": "nope", "approver": "alice"})
        await handle.signal(
            LaunchWorkflow.approve, {"gate": "soft-launch.step-2", "approver": "alice"}
        )
        await handle.signal(
            LaunchWorkflow.approve, {"gate": "soft-launch.before", "approver": "mallory"}
        )
        await handle.signal(
            LaunchWorkflow.approve, {"gate": "soft-launch.before", "approver": "alice", "extra": 1}
        )
        await handle.signal(LaunchWorkflow.abort, {"by": "carol"})
        await handle.signal(LaunchWorkflow.approve, None)
        current = await wait_for(time_skipping_env, handle, lambda s: len(s.audit) == 8)
        assert current.status == "waiting"
        assert current.open_gate is not None
        assert current.open_gate.gate == "soft-launch.before"
        notes = [entry.note for entry in current.audit]
        assert not any(entry.accepted for entry in current.audit)
        assert notes[0].startswith("malformed: input:")
        assert notes[1].startswith("approver: name yourself")
        assert notes[2].startswith(
            "gate: unknown gate 'nope'; this plan's gates are: soft-launch.before"
        )
        assert (
            notes[3]
            == "gate: 'soft-launch.step-2' is not open; the open gate is 'soft-launch.before'"
        )
        assert (
            notes[4] == "'mallory' may not decide gate 'soft-launch.before'; approvers: alice, bob"
        )
        assert "extra: Extra inputs are not permitted" in notes[5]
        assert "reason: Field required" in notes[6]
        # The launch still works after all of that.
        await handle.signal(LaunchWorkflow.approve, APPROVE)
        await gate_open(time_skipping_env, handle, "soft-launch.step-2")
        await handle.signal(LaunchWorkflow.abort, {"reason": "done testing", "by": "carol"})
        result = await handle.result()
    assert result.status == "rolled_back"


async def test_duplicate_approvals_are_taken_once(time_skipping_env: WorkflowEnvironment) -> None:
    world = FakeWorld()
    plan = exposure_only([{"weight": 10, "approval": True}, {"weight": 100, "approval": True}])
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await gate_open(time_skipping_env, handle, "full-launch.step-1")
        payload = {"gate": "full-launch.step-1", "approver": "alice", "id": "req-1"}
        await handle.signal(LaunchWorkflow.approve, payload)
        await handle.signal(LaunchWorkflow.approve, payload)
        current = await gate_open(time_skipping_env, handle, "full-launch.step-2")
        await wait_for(time_skipping_env, handle, lambda s: len(s.audit) == 2)
        current = await status(handle)
        assert [e.accepted for e in current.audit] == [True, False]
        assert current.audit[1].note == "id: decision req-1 was already taken"
        assert len(current.decisions) == 1
        await handle.signal(
            LaunchWorkflow.approve, {"gate": "full-launch.step-2", "approver": "alice"}
        )
        result = await handle.result()
    assert result.status == "completed"


async def test_failing_compensation_alerts_and_waits_for_a_person(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(restore_failures=100)
    plan = exposure_only(
        [{"weight": 10, "approval": True}, {"weight": 100}],
        notifications=[{"name": "ops", "url": "http://127.0.0.1:1/hook"}],
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await decide_gate(time_skipping_env, handle, "full-launch.step-1", "reject", "alice")
        stuck = await wait_for(
            time_skipping_env, handle, lambda s: s.status == "needs_attention", timeout=60
        )
        assert stuck.compensations[0].status == "failed"
        assert "flag file is read-only" in stuck.compensations[0].error
        assert "retry_compensation" in stuck.waiting_for
        assert ("send_notification", "compensation_failed") in world.calls
        # Refused: not an approver, and skipping without saying why.
        await handle.signal(
            LaunchWorkflow.skip_compensation,
            {"compensation": "full-launch.1", "by": "mallory", "comment": "x"},
        )
        await handle.signal(
            LaunchWorkflow.skip_compensation, {"compensation": "full-launch.1", "by": "alice"}
        )
        world.restore_failures = 0
        await handle.signal(
            LaunchWorkflow.retry_compensation, {"compensation": "full-launch.1", "by": "alice"}
        )
        result = await handle.result()
    assert result.status == "rolled_back"
    assert result.final.compensations[0].status == "done"
    assert result.final.compensations[0].resolved_by == "retry requested by alice"
    assert [e.accepted for e in result.final.audit if "compensation" in e.handler] == [
        False,
        False,
        True,
    ]
    assert world.calls[-2:] == [("restore_exposure", 0.0), ("send_notification", "rolled_back")]


async def test_skipping_a_stuck_compensation_is_on_record(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(restore_failures=100)
    plan = exposure_only([{"weight": 10, "approval": True}, {"weight": 100}])
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await decide_gate(time_skipping_env, handle, "full-launch.step-1", "reject", "alice")
        await wait_for(
            time_skipping_env, handle, lambda s: s.status == "needs_attention", timeout=60
        )
        await handle.signal(
            LaunchWorkflow.skip_compensation,
            {"compensation": "full-launch.1", "by": "bob", "comment": "flag removed by hand"},
        )
        result = await handle.result()
    record = result.final.compensations[0]
    assert (record.status, record.resolved_by) == (
        "skipped",
        "skipped by bob: flag removed by hand",
    )


async def test_workflow_cancellation_also_rolls_back(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()
    plan = exposure_only([{"weight": 20, "approval": True}, {"weight": 100}])
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await gate_open(time_skipping_env, handle, "full-launch.step-1")
        await handle.cancel()
        result = await handle.result()
    assert result.status == "rolled_back"
    assert result.reason == "the launch workflow was cancelled"
    assert world.exposure == 0.0


async def test_notifications_follow_the_launch(time_skipping_env: WorkflowEnvironment) -> None:
    world = FakeWorld()
    plan = exposure_only(
        [{"weight": 10, "approval": {"timeout": "1m", "on_timeout": "approve"}}, {"weight": 100}],
        notifications=[{"name": "ops", "url": "http://127.0.0.1:1/hook"}],
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await handle.result()
    events = [e for n, e in world.calls if n == "send_notification"]
    assert events == ["launch_started", "gate_opened", "completed"]


async def test_a_signal_cannot_carry_the_opposite_decision(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()
    async with at_first_gate(time_skipping_env, world) as handle:
        await handle.signal(LaunchWorkflow.approve, {**APPROVE, "decision": "reject"})
        refused = await wait_for(time_skipping_env, handle, lambda s: len(s.audit) == 1)
        assert not refused.audit[0].accepted
        assert (
            refused.audit[0].note == "decision: the `approve` signal cannot carry decision 'reject'"
        )
        assert refused.open_gate is not None
        await handle.signal(LaunchWorkflow.approve, {**APPROVE, "decision": "approve"})
        moved = await gate_open(time_skipping_env, handle, "soft-launch.step-2")
        assert [d.outcome for d in moved.decisions] == ["approved"]
        await handle.signal(LaunchWorkflow.abort, {"reason": "done testing", "by": "carol"})
        result = await handle.result()
    assert result.status == "rolled_back"


class WorldWithAnotherActivity(FakeWorld):
    """The fakes, plus an activity no undo is: a rollback must never run it."""

    @activity.defn(name="delete_everything")
    async def delete_everything(self, request: dict[str, Any]) -> None:
        self.calls.append(("delete_everything", request))


async def test_a_forged_phase_report_is_refused_and_changes_no_undo(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = WorldWithAnotherActivity()
    async with at_first_gate(time_skipping_env, world) as handle:
        current = await status(handle)
        # A report for the phase that has not started, carrying a record of an unknown undo,
        # once unsealed, once claiming a seal, once as a bare phase state.
        forged = current.phases[1].model_copy(deep=True)
        record = CompensationRecord(
            id="full-launch.1",
            phase="full-launch",
            activity="delete_everything",
            input={"everything": True},
            description="looks harmless",
        )
        forged.compensations.append(record)
        report = PhaseReport(
            phase="full-launch",
            seq=99,
            launch_run=current.run_id,
            status=PhaseStatusValue.RUNNING,
            compensations=[record],
        )
        await handle.signal("phase_progress", report)
        await handle.signal("phase_progress", report.model_copy(update={"seal": "verified"}))
        await handle.signal("phase_progress", forged)
        refused = await wait_for(time_skipping_env, handle, lambda s: len(s.audit) == 3)
        assert [entry.handler for entry in refused.audit] == ["phase_progress"] * 3
        assert not any(entry.accepted for entry in refused.audit)
        assert refused.audit[0].note.startswith("seal: not sent by a Phasegate worker")
        assert refused.compensations == []
        await handle.signal(LaunchWorkflow.reject, {**APPROVE, "comment": "no"})
        result = await handle.result()
    assert result.status == "rolled_back"
    assert result.final.compensations == []
    assert "delete_everything" not in world.names()


async def test_a_signal_sent_with_the_start_is_checked_like_any_other(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    # Signal-with-start: the handler runs in the launch's first moment, before `run`.
    world = FakeWorld()
    early = ("approve", APPROVE)
    async with running_launch(time_skipping_env.client, make_plan(), world, early) as handle:
        first = await wait_for(time_skipping_env, handle, lambda s: len(s.audit) == 1)
        assert not first.audit[0].accepted
        assert first.audit[0].note == "gate: 'soft-launch.before' is not open; no gate is open now"
        await gate_open(time_skipping_env, handle, "soft-launch.before")
        await handle.signal(LaunchWorkflow.abort, {"reason": "done testing", "by": "carol"})
        result = await handle.result()
    assert result.status == "rolled_back"


async def test_oversized_payloads_are_refused_and_kept_short_in_the_audit(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()
    async with at_first_gate(time_skipping_env, world) as handle:
        await handle.signal(LaunchWorkflow.approve, {**APPROVE, "comment": "x" * 100_000})
        await handle.signal(LaunchWorkflow.approve, {**APPROVE, "approver": "a" * 129})
        await handle.signal(LaunchWorkflow.abort, {"by": "carol", "reason": "é" * 3000})
        await handle.signal(LaunchWorkflow.approve, ["y" * 50_000])
        current = await wait_for(time_skipping_env, handle, lambda s: len(s.audit) == 4)
        assert not any(entry.accepted for entry in current.audit)
        notes = [entry.note for entry in current.audit]
        assert "comment: String should have at most 2000 characters" in notes[0]
        assert "approver: String should have at most 128 characters" in notes[1]
        assert "reason: String should have at most 2000 characters" in notes[2]
        # A payload that fits is kept as sent; a long one as the start of its JSON text (at
        # most 2 KiB of it, never half a character) and the size it had.
        assert current.audit[1].payload == {**APPROVE, "approver": "a" * 129}
        assert current.audit[1].payload_bytes == 0
        long = [current.audit[i] for i in (0, 2, 3)]
        assert all(isinstance(entry.payload, str) for entry in long)
        assert [len(entry.payload.encode()) for entry in long] == [2048, 2047, 2048]
        assert [entry.payload_bytes for entry in long] == [
            len(json.dumps(sent, ensure_ascii=False).encode())
            for sent in (
                {**APPROVE, "comment": "x" * 100_000},
                {"by": "carol", "reason": "é" * 3000},
                ["y" * 50_000],
            )
        ]
        assert current.audit[3].payload.startswith('["yyy')
        assert current.status == "waiting"
        assert current.open_gate is not None
        await handle.signal(LaunchWorkflow.abort, {"reason": "done testing", "by": "carol"})
        result = await handle.result()
    assert result.status == "rolled_back"


async def test_status_shows_the_exposure_the_rollback_restored(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()
    plan = make_plan(
        phases=[
            {"name": "soft-launch", "kind": "soft_launch", "steps": [{"weight": 5}]},
            {
                "name": "full-launch",
                "kind": "full_launch",
                "steps": [{"weight": 50, "approval": True}, {"weight": 100}],
            },
        ]
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        waiting = await gate_open(time_skipping_env, handle, "full-launch.step-1")
        assert waiting.exposure == 50
        await handle.signal(
            LaunchWorkflow.reject, {"gate": "full-launch.step-1", "approver": "alice"}
        )
        result = await handle.result()
    assert result.status == "rolled_back"
    # The last step set 50%; the undos put the router back to 5%, then to 0%.
    assert [p.exposure for p in result.final.phases] == [5.0, 50.0]
    assert (result.final.exposure, result.final.exposure_note) == (0.0, "")
    assert world.exposure == 0.0


async def test_status_says_when_the_exposure_undo_did_not_run(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(restore_failures=100)
    plan = exposure_only([{"weight": 20, "approval": True}, {"weight": 100}])
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await decide_gate(time_skipping_env, handle, "full-launch.step-1", "reject", "alice")
        stuck = await wait_for(
            time_skipping_env, handle, lambda s: s.status == "needs_attention", timeout=60
        )
        assert stuck.exposure == 20
        assert stuck.exposure_note.startswith(
            "the exposure undo full-launch.1 failed (activity restore_exposure failed: "
        )
        await handle.signal(
            LaunchWorkflow.skip_compensation,
            {"compensation": "full-launch.1", "by": "bob", "comment": "fixed by hand"},
        )
        result = await handle.result()
    assert result.status == "rolled_back"
    assert result.final.exposure == 20
    assert result.final.exposure_note == (
        "the exposure undo full-launch.1 was skipped by bob: the router may still serve the "
        "exposure shown"
    )


async def test_a_long_launch_continues_as_new_between_phases(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """Forced after every phase: the next run goes on with everything the first one knew."""
    world = FakeWorld()
    plan = make_plan(
        phases=[
            {
                "name": "soft-launch",
                "kind": "soft_launch",
                "gates": {"before": True},
                "steps": [{"weight": 5}, {"weight": 10, "approval": True}],
            },
            {
                "name": "full-launch",
                "kind": "full_launch",
                "steps": [{"weight": 50, "approval": True}, {"weight": 100}],
            },
        ],
        notifications=[{"name": "ops", "url": "http://127.0.0.1:1/hook"}],
    )
    async with running_launch(
        time_skipping_env.client, plan, world, continue_after_events=1
    ) as handle:
        await gate_open(time_skipping_env, handle, "soft-launch.before")
        await handle.signal(LaunchWorkflow.approve, {**APPROVE, "id": "req-1"})
        await decide_gate(time_skipping_env, handle, "soft-launch.step-2", "approve", "bob")
        second = await gate_open(time_skipping_env, handle, "full-launch.step-1")
        # The second run remembers the request ids the first one took.
        gate = {"gate": "full-launch.step-1", "approver": "alice"}
        await handle.signal(LaunchWorkflow.approve, {**gate, "id": "req-1"})
        await wait_for(time_skipping_env, handle, lambda s: len(s.audit) == 3)
        await handle.signal(LaunchWorkflow.reject, {**gate, "comment": "not today"})
        result = await handle.result()

    first_run = handle.result_run_id
    assert first_run is not None
    last_run = (await handle.describe()).run_id
    assert last_run != first_run
    history = await time_skipping_env.client.get_workflow_handle(
        handle.id, run_id=first_run
    ).fetch_history()
    assert history.events[-1].HasField("workflow_execution_continued_as_new_event_attributes")
    assert second.run_id == result.final.run_id == first_run
    assert result.status == "rolled_back"
    assert result.reason == "gate full-launch.step-1 rejected by alice: not today"
    assert result.final.started_at is not None
    assert [(c.id, c.status) for c in result.final.compensations] == [
        ("soft-launch.1", "done"),
        ("full-launch.1", "done"),
    ]
    assert [w for n, w in world.calls if n == "restore_exposure"] == [10.0, 0.0]
    assert [(d.gate, d.outcome) for d in result.final.decisions] == [
        ("soft-launch.before", "approved"),
        ("soft-launch.step-2", "approved"),
        ("full-launch.step-1", "rejected"),
    ]
    assert [(e.handler, e.accepted, e.note) for e in result.final.audit] == [
        ("approve", True, "approved by alice"),
        ("approve", True, "approved by bob"),
        ("approve", False, "id: decision req-1 was already taken"),
        ("reject", True, "rejected by alice"),
    ]
    events = [e for n, e in world.calls if n == "send_notification"]
    assert events == ["launch_started", "gate_opened", "gate_opened", "gate_opened", "rolled_back"]
    for run in (first_run, last_run):
        assert await failed_tasks(time_skipping_env.client, handle.id, run) == 0


async def test_phase_reports_stay_small_however_long_the_analysis(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """Each report carries what changed: its size does not grow with the measurements taken."""
    world = FakeWorld()
    analysis = {"error-rate": {"query": "q", "max": 0.05, "interval": "1s", "count": 60}}
    plan = exposure_only(
        [{"weight": 5, "analysis": ["error-rate"]}, {"weight": 100}], analysis=analysis
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        result = await handle.result()
    assert result.status == "completed"
    metric = result.final.phases[0].analysis[0]
    assert (metric.successes, len(metric.measurements)) == (60, 20)
    history = await handle.fetch_history()
    reports = [
        sum(len(p.data) for p in e.workflow_execution_signaled_event_attributes.input.payloads)
        for e in history.events
        if e.workflow_execution_signaled_event_attributes.signal_name == "phase_progress"
    ]
    assert len(reports) >= 20
    assert max(reports) < 2500, sorted(reports)[-5:]


async def test_the_audit_trail_keeps_its_newest_entries_and_counts_the_rest(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()
    async with at_first_gate(time_skipping_env, world) as handle:
        for number in range(KEEP_AUDIT + 5):
            await handle.signal(LaunchWorkflow.approve, {"gate": f"g{number}", "approver": "x"})
        current = await wait_for(
            time_skipping_env, handle, lambda s: s.audit_dropped == 5, timeout=60
        )
        assert len(current.audit) == KEEP_AUDIT
        assert current.audit[0].payload == {"gate": "g5", "approver": "x"}
        assert current.audit[-1].payload == {"gate": f"g{KEEP_AUDIT + 4}", "approver": "x"}
        assert current.status == "waiting"
        await handle.signal(LaunchWorkflow.abort, {"reason": "done testing", "by": "carol"})
        result = await handle.result()
    # The abort's entry pushed one more out.
    assert result.final.audit_dropped == 6
    assert result.final.audit[-1].note == "rolling back"
