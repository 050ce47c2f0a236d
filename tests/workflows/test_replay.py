"""Replay: histories of every workflow replay cleanly against the current code.

Fresh histories come from running the main scenarios; committed ones in tests/histories/
catch a code change that would break launches already running. Re-record them on purpose
with `PHASEGATE_RECORD_HISTORIES=1 pytest tests/workflows/test_replay.py`.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from schemas.metrics_messages import MetricReading
from schemas.plan import LaunchPlan
from tests.support.fakes import FakeWorld, running_launch
from tests.support.histories import HISTORIES, committed, replay, save_history
from tests.support.launches import decide_gate, gate_open, wait_for
from tests.support.plans import exposure_only, make_plan
from workflows.launch import LaunchWorkflow

Scenario = Callable[[WorkflowEnvironment, WorkflowHandle[LaunchWorkflow, Any]], Awaitable[None]]


async def approve_everything(
    env: WorkflowEnvironment, handle: WorkflowHandle[LaunchWorkflow, Any]
) -> None:
    for gate in ("soft-launch.before", "soft-launch.step-2"):
        await decide_gate(env, handle, gate, "approve", "alice")


async def reject_at_step_two(
    env: WorkflowEnvironment, handle: WorkflowHandle[LaunchWorkflow, Any]
) -> None:
    await decide_gate(env, handle, "soft-launch.before", "approve", "alice")
    await gate_open(env, handle, "soft-launch.step-2")
    await handle.signal(LaunchWorkflow.approve, "malformed")
    await handle.signal(LaunchWorkflow.reject, {"gate": "soft-launch.step-2", "approver": "bob"})


async def abort_in_soft_launch(
    env: WorkflowEnvironment, handle: WorkflowHandle[LaunchWorkflow, Any]
) -> None:
    await gate_open(env, handle, "soft-launch.before")
    await handle.signal(LaunchWorkflow.abort, {"reason": "incident", "by": "carol"})


async def let_it_run(env: WorkflowEnvironment, handle: WorkflowHandle[LaunchWorkflow, Any]) -> None:
    """No one intervenes: the analysis fails and the launch rolls itself back."""


async def pause_and_resume_under_watch(
    env: WorkflowEnvironment, handle: WorkflowHandle[LaunchWorkflow, Any]
) -> None:
    """Background analysis through a bake, a person pausing and resuming, then the watch."""
    await wait_for(env, handle, lambda s: s.exposure == 20)
    await handle.signal(LaunchWorkflow.pause, {"reason": "checking", "by": "carol"})
    await wait_for(env, handle, lambda s: s.status == "paused")
    await handle.signal(LaunchWorkflow.resume, {"reason": "fine", "by": "alice"})


SCENARIOS: dict[str, tuple[Scenario, FakeWorld]] = {
    "completed": (approve_everything, FakeWorld()),
    "rejected": (reject_at_step_two, FakeWorld()),
    "aborted": (abort_in_soft_launch, FakeWorld()),
    "analysis_failed": (let_it_run, FakeWorld(readings=lambda q: MetricReading(value=0.9))),
    "watched": (pause_and_resume_under_watch, FakeWorld()),
}
PLANS: dict[str, Callable[[], LaunchPlan]] = {
    "analysis_failed": lambda: exposure_only(
        [{"weight": 5, "analysis": ["error-rate"]}, {"weight": 100}]
    ),
    "watched": lambda: exposure_only(
        [{"weight": 20, "pause": "10m"}, {"weight": 100}],
        background_analysis={"metrics": ["error-rate"], "interval": "1m"},
        watch={"metrics": ["error-rate"], "duration": "30m", "interval": "5m"},
    ),
}


async def record(env: WorkflowEnvironment, name: str) -> list[tuple[str, str]]:
    """Run a scenario; return (workflow id, history JSON) for the launch and each phase."""
    scenario, world = SCENARIOS[name]
    plan = PLANS[name]() if name in PLANS else make_plan()
    async with running_launch(env.client, plan, world) as handle:
        await scenario(env, handle)
        await handle.result()
        final = await wait_for(env, handle, lambda s: s.finished_at is not None)
    ids = [handle.id] + [
        f"{handle.id}.{phase.name}" for phase in final.phases if phase.status != "pending"
    ]
    # The background and watch analysis workflows, when the plan has them.
    ids += [
        f"{handle.id}.analysis.{label}"
        for label in ("background", "watch")
        if any(result.phase == label for result in final.background)
    ]
    histories = []
    for workflow_id in ids:
        history = await env.client.get_workflow_handle(workflow_id).fetch_history()
        histories.append((workflow_id, history.to_json()))
    return histories


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_fresh_histories_replay(time_skipping_env: WorkflowEnvironment, name: str) -> None:
    histories = await record(time_skipping_env, name)
    assert len(histories) >= 2  # the launch and at least one phase
    await replay(histories)
    if os.environ.get("PHASEGATE_RECORD_HISTORIES"):
        HISTORIES.mkdir(exist_ok=True)
        for index, (workflow_id, text) in enumerate(histories):
            kind = (
                "launch"
                if index == 0
                else workflow_id.removeprefix(f"{histories[0][0]}.").replace(".", "-")
            )
            save_history(HISTORIES / f"{name}.{kind}.json", workflow_id, text)


async def test_committed_histories_replay() -> None:
    files = sorted(HISTORIES.glob("*.json"))
    assert len(files) >= len(SCENARIOS) * 2, (
        "record: PHASEGATE_RECORD_HISTORIES=1 pytest tests/workflows/test_replay.py"
    )
    await replay(committed(files))
