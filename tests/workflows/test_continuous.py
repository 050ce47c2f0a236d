"""Background analysis, the post-launch watch window, and pause / resume, on the time-skipping
server with every activity mocked by name (the `hold` update is tested on the dev server)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from schemas.decision_messages import Hold, HoldRequest
from schemas.launch_messages import MetricResult
from schemas.metrics_messages import MetricQuery, MetricReading
from tests.support.fakes import FakeWorld, running_launch
from tests.support.launches import gate_open, wait_for
from tests.support.plans import exposure_only, make_plan
from workflows.launch import LaunchWorkflow

BACKGROUND = {"metrics": ["error-rate"], "interval": "1m"}


class Turning:
    """Readings that are healthy for the first `healthy` queries of a metric, then `bad`."""

    def __init__(self, healthy: int, bad: MetricReading | None = None) -> None:
        self.healthy = healthy
        self.bad = bad or MetricReading(value=0.5, baseline=0.0)
        self.count = 0

    def __call__(self, query: MetricQuery) -> MetricReading:
        self.count += 1
        return MetricReading(value=0.0) if self.count <= self.healthy else self.bad


async def measured_live(env: WorkflowEnvironment, launch_id: str) -> list[MetricResult]:
    """What the launch's background analysis workflow has measured so far."""
    child = env.client.get_workflow_handle(f"{launch_id}.analysis.background")
    live: list[MetricResult] = await child.query("status", result_type=list[MetricResult])
    return live


def weights(world: FakeWorld) -> list[Any]:
    return [w for n, w in world.calls if n == "set_exposure"]


async def test_a_fault_during_a_bake_rolls_back_before_the_bake_ends(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=Turning(healthy=3))
    plan = exposure_only(
        [{"weight": 20, "pause": "1h"}, {"weight": 100}], background_analysis=BACKGROUND
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        result = await handle.result()

    assert result.status == "rolled_back"
    assert result.reason.startswith("background analysis failed: error-rate failed")
    assert "0.5 > max 0.05" in result.reason
    assert weights(world) == [20]
    assert world.calls[-1] == ("restore_exposure", 0.0)
    background = result.final.background
    assert [(r.phase, r.metric, r.successes, r.failures) for r in background] == [
        ("background", "error-rate", 3, 1)
    ]
    assert background[0].verdict == "failed"
    # Four rounds a minute apart: caught 4 minutes into an hour's bake.
    assert result.final.finished_at is not None
    assert result.final.started_at is not None
    assert result.final.finished_at - result.final.started_at < timedelta(minutes=10)


async def test_a_fault_while_a_gate_waits_rolls_back_without_anyone_deciding(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=Turning(healthy=2))
    plan = exposure_only(
        [{"weight": 50, "approval": True}, {"weight": 100}], background_analysis=BACKGROUND
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        result = await handle.result()

    assert result.status == "rolled_back"
    assert result.reason.startswith("background analysis failed")
    phase = result.final.phases[0]
    assert phase.open_gate is None
    assert result.final.open_gate is None
    assert phase.reason.startswith("stopped by the launch: background analysis failed")
    assert result.final.decisions == []
    assert weights(world) == [50]
    assert world.exposure == 0.0


async def test_background_analysis_waits_for_the_first_exposure_change(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=Turning(healthy=100))
    plan = make_plan(
        phases=[
            {
                "name": "full-launch",
                "kind": "full_launch",
                "gates": {"before": True},
                "steps": [{"weight": 10, "pause": "5m"}, {"weight": 100}],
            }
        ],
        background_analysis=BACKGROUND,
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await gate_open(time_skipping_env, handle, "full-launch.before")
        await time_skipping_env.sleep(timedelta(minutes=30))
        before = await handle.query(LaunchWorkflow.status)
        assert "query_metric" not in world.names()
        assert before.background == []
        await handle.signal(
            LaunchWorkflow.approve, {"gate": "full-launch.before", "approver": "alice"}
        )
        result = await handle.result()
    assert result.status == "completed"
    measured = result.final.background[0]
    # A round a minute through the 5-minute bake, and none once the launch is over.
    assert 4 <= measured.successes <= 5
    assert measured.verdict == "successful"


async def test_the_watch_window_keeps_measuring_and_completes_when_it_ends(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=Turning(healthy=100))
    plan = exposure_only(
        [{"weight": 100}],
        watch={"metrics": ["error-rate"], "duration": "1h", "interval": "10m"},
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        watching = await wait_for(time_skipping_env, handle, lambda s: s.status == "watching")
        assert watching.watch_ends_at is not None
        assert watching.exposure == 100
        result = await handle.result()
    assert result.status == "completed"
    watch = result.final.background[0]
    assert (watch.phase, watch.successes, watch.verdict) == ("watch", 6, "successful")
    assert "restore_exposure" not in world.names()


async def test_a_failure_in_the_watch_window_rolls_back_to_the_previous_version(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=Turning(healthy=2), exposure=0.0)
    plan = exposure_only(
        [{"weight": 50}, {"weight": 100}],
        watch={"metrics": ["error-rate"], "duration": "1h", "interval": "10m"},
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        result = await handle.result()
    assert result.status == "rolled_back"
    assert result.reason.startswith("watch window failed: error-rate failed")
    assert "promote_exposure" in world.names()
    assert world.calls[-1] == ("restore_exposure", 0.0)
    assert result.final.phases[0].status == "completed"


async def test_pause_holds_exposure_past_the_bake_until_resumed(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=Turning(healthy=1000))
    plan = exposure_only(
        [{"weight": 20, "pause": "10m"}, {"weight": 100}], background_analysis=BACKGROUND
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await wait_for(time_skipping_env, handle, lambda s: s.exposure == 20)
        await handle.signal(LaunchWorkflow.pause, {"reason": "checking dashboards", "by": "carol"})
        paused = await wait_for(time_skipping_env, handle, lambda s: s.status == "paused")
        assert paused.paused is not None
        assert (paused.paused.by, paused.paused.source) == ("carol", "person")
        assert "checking dashboards" in paused.waiting_for
        assert "phasegate resume" in paused.waiting_for
        await time_skipping_env.sleep(timedelta(hours=1))
        held = await wait_for(
            time_skipping_env, handle, lambda s: "paused by carol" in s.phases[0].activity
        )
        assert held.status == "paused"
        assert weights(world) == [20]
        # Analysis goes on while paused, in the launch's background analysis workflow.
        live = await measured_live(time_skipping_env, handle.id)
        assert live[0].successes >= 30
        await handle.signal(LaunchWorkflow.pause, {"reason": "again", "by": "bob"})
        await handle.signal(LaunchWorkflow.resume, {"reason": "dashboards fine", "by": "alice"})
        result = await handle.result()
    assert result.status == "completed"
    assert weights(world) == [20, 100]
    notes = [(e.handler, e.accepted, e.note) for e in result.final.audit]
    assert ("pause", True, "paused by carol") in notes
    assert any(h == "pause" and not ok and "already paused by carol" in n for h, ok, n in notes)
    assert ("resume", True, "resumed") in notes


async def test_pause_and_resume_refuse_what_they_cannot_take(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()
    plan = exposure_only([{"weight": 20, "approval": True}, {"weight": 100}])
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await gate_open(time_skipping_env, handle, "full-launch.step-1")
        await handle.signal(LaunchWorkflow.resume, {"by": "alice"})
        await handle.signal(LaunchWorkflow.pause, {"by": "alice"})
        await handle.signal(LaunchWorkflow.pause, {"reason": "why", "by": "alice", "extra": 1})
        await handle.signal(LaunchWorkflow.pause, {"reason": float("nan")})
        waiting = await wait_for(time_skipping_env, handle, lambda s: len(s.audit) >= 4)
        assert waiting.status == "waiting"
        assert waiting.paused is None
        await handle.signal(
            LaunchWorkflow.approve, {"gate": "full-launch.step-1", "approver": "alice"}
        )
        result = await handle.result()
    assert result.status == "completed"
    refusals = [e.note for e in result.final.audit if not e.accepted]
    assert any("not paused" in note for note in refusals)
    assert any(note.startswith("reason:") for note in refusals)
    assert any("extra" in note for note in refusals)
    assert not any(e.accepted for e in result.final.audit if e.handler in ("pause", "resume"))


async def test_analysis_that_pauses_holds_until_a_person_resumes(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    readings = Turning(healthy=2)
    world = FakeWorld(readings=readings)
    plan = exposure_only(
        [{"weight": 20, "pause": "10m"}, {"weight": 100}],
        background_analysis={**BACKGROUND, "on_failure": "pause"},
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        paused = await wait_for(time_skipping_env, handle, lambda s: s.status == "paused")
        assert paused.paused is not None
        assert paused.paused.source == "analysis"
        assert "background analysis failed" in paused.paused.evidence
        await time_skipping_env.sleep(timedelta(hours=1))
        assert weights(world) == [20]
        readings.healthy = 10**6  # the canary recovers; a person looked and goes on
        await handle.signal(LaunchWorkflow.resume, {"reason": "was a blip", "by": "bob"})
        result = await handle.result()
    assert result.status == "completed"
    assert weights(world) == [20, 100]


async def test_background_without_data_pauses_rather_than_passing(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=lambda q: MetricReading(value=None))
    plan = exposure_only(
        [{"weight": 20, "pause": "1h"}, {"weight": 100}],
        background_analysis={**BACKGROUND, "inconclusive_limit": 3},
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        paused = await wait_for(time_skipping_env, handle, lambda s: s.status == "paused")
        assert paused.paused is not None
        assert "inconclusive for 3 rounds in a row" in paused.paused.reason
        await handle.signal(LaunchWorkflow.abort, {"reason": "no metrics", "by": "alice"})
        result = await handle.result()
    assert result.status == "rolled_back"
    assert world.exposure == 0.0


async def test_a_failing_step_analysis_that_pauses_opens_its_gate(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=lambda q: MetricReading(value=0.5))
    analysis = {
        "error-rate": {
            "query": 'sum(rate(errors{variant="{{variant}}"}[10s]))',
            "max": 0.05,
            "interval": "5s",
            "count": 3,
            "on_failure": "pause",
        }
    }
    plan = exposure_only(
        [{"weight": 5, "analysis": ["error-rate"]}, {"weight": 100}], analysis=analysis
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        waiting = await gate_open(time_skipping_env, handle, "full-launch.step-1.analysis")
        assert waiting.open_gate is not None
        assert "failed" in waiting.open_gate.question
        assert "0.5 > max 0.05" in waiting.open_gate.question
        assert weights(world) == [5]
        await handle.signal(
            LaunchWorkflow.reject,
            {"gate": "full-launch.step-1.analysis", "approver": "alice", "comment": "real"},
        )
        result = await handle.result()
    assert result.status == "rolled_back"
    assert world.exposure == 0.0


async def test_the_hold_update_answers_at_once(dev_env: WorkflowEnvironment) -> None:
    world = FakeWorld()
    plan = exposure_only([{"weight": 20, "approval": True}, {"weight": 100}])
    async with running_launch(dev_env.client, plan, world) as handle:
        await gate_open(dev_env, handle, "full-launch.step-1")
        hold = await handle.execute_update(
            "hold",
            HoldRequest(action="pause", reason="incident elsewhere", by="alice"),
            result_type=Hold,
        )
        assert hold is not None
        assert (hold.by, hold.reason, hold.source) == ("alice", "incident elsewhere", "person")
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                "hold", HoldRequest(action="pause", reason="again", by="bob"), result_type=Hold
            )
        assert "already paused by alice" in str(refused.value.cause)
        # A gate still takes its decision while paused; the next change waits for `resume`.
        await handle.signal(
            LaunchWorkflow.approve, {"gate": "full-launch.step-1", "approver": "bob"}
        )
        paused = await wait_for(
            dev_env, handle, lambda s: s.open_gate is None and s.status == "paused"
        )
        assert paused.paused is not None
        assert weights(world) == [20]
        resumed = await handle.execute_update(
            "hold", HoldRequest(action="resume", by="bob"), result_type=Hold
        )
        assert resumed is None
        result = await handle.result()
    assert result.status == "completed"
    assert weights(world) == [20, 100]
