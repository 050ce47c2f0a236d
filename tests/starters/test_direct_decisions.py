"""A decision sent to the phase that waits at the gate (what `phasegate approve` does), on the
dev server with a real worker: checked as the launch checks one, counted without a relay, and
told to the launch, refusals included."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from benchmarks.counts import launch_histories, signals_named
from schemas.plan import LaunchPlan
from starters import launches
from tests.support.histories import replay
from tests.support.launches import gate_open, start_launch, wait_for
from tests.support.plans import make_plan
from workers.main import (
    WORKFLOW_RUNNER,
    activities,
    build_worker,
    load_worker_limits,
    worker_http,
)
from workers.sealing import SealInterceptor, load_keys
from workers.settings import Settings
from workflows.launch import LaunchWorkflow
from workflows.phase import RELAY_SIGNAL

pytestmark = pytest.mark.integration

GATE = "soft-launch.step-1"


def two_person_plan(flag_file: Path) -> LaunchPlan:
    return make_plan(
        flag_file=flag_file,
        phases=[
            {
                "name": "soft-launch",
                "kind": "soft_launch",
                "steps": [{"weight": 10, "approval": {"min_approvals": 2}}],
            },
            {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
        ],
    )


async def test_the_waiting_phase_takes_the_decision_itself_and_tells_the_launch(
    dev_env: WorkflowEnvironment, worker: str, tmp_path: Path
) -> None:
    client = dev_env.client
    launch = await start_launch(client, two_person_plan(tmp_path / "flags.json"), worker)
    await gate_open(dev_env, launch, GATE)

    with pytest.raises(launches.DecisionError) as stranger:
        await launches.decide(client, launch.id, GATE, "mallory", "approve")
    first = await launches.decide(client, launch.id, GATE, "alice", "approve", "looks fine")
    with pytest.raises(launches.DecisionError) as twice:
        await launches.decide(client, launch.id, GATE, "alice", "approve")
    counted = await wait_for(
        dev_env,
        launch,
        lambda s: s.open_gate is not None and s.open_gate.approvals == ["alice"],
    )
    second = await launches.decide(client, launch.id, GATE, "bob", "approve", "agreed")
    result = await launch.result()

    assert str(stranger.value).startswith("'mallory' may not decide gate 'soft-launch.step-1'")
    assert (first.outcome, first.pending, first.people) == ("approved", 1, ["alice"])
    assert (
        str(twice.value)
        == "'alice' already approved gate 'soft-launch.step-1'; another person must"
    )
    assert counted.status == "waiting"
    assert (second.outcome, second.pending, second.people) == ("approved", 0, ["alice", "bob"])
    assert result.status == "completed"
    [decision] = result.final.phases[0].decisions
    assert (decision.gate, decision.by, decision.source) == (GATE, "alice, bob", "update")
    # Every decision sent to the phase reached the launch's audit trail, taken or refused.
    audit = [
        (entry.handler, entry.accepted, entry.note[:22])
        for entry in result.final.audit
        if entry.handler.startswith("decide")
    ]
    assert audit == [
        ("decide:approve", False, "'mallory' may not deci"),
        ("decide:approve", True, "approval 1 of 2 (alice"),
        ("decide:approve", False, "'alice' already approv"),
        ("decide:approve", True, "approved by alice, bob"),
    ]
    # No vote went through the launch: nothing relayed, the phase took the updates itself.
    histories = await launch_histories(client, launch.id)
    relays = [
        event
        for events in histories.values()
        for event in events
        if event.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED
        and event.signal_external_workflow_execution_initiated_event_attributes.signal_name
        == RELAY_SIGNAL
    ]
    assert relays == []
    assert signals_named(histories[launch.id], "approve") == []
    accepted = [
        event
        for event in histories[f"{launch.id}.soft-launch"]
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    assert len(accepted) == 4
    # And the histories the updates wrote replay.
    await replay(
        [
            (workflow_id, (await client.get_workflow_handle(workflow_id).fetch_history()).to_json())
            for workflow_id in histories
        ]
    )


async def test_a_decision_for_a_phase_that_has_ended_goes_to_the_launch(
    dev_env: WorkflowEnvironment, worker: str, tmp_path: Path
) -> None:
    """A stale `phase` (the CLI read the status before the phase ended) costs nothing: the
    launch answers, here with the gate it actually waits at."""
    client = dev_env.client
    plan = make_plan(
        flag_file=tmp_path / "flags.json",
        phases=[
            {"name": "soft-launch", "kind": "soft_launch", "steps": [{"weight": 10}]},
            {
                "name": "full-launch",
                "kind": "full_launch",
                "steps": [{"weight": 100, "approval": True}],
            },
        ],
    )
    launch = await start_launch(client, plan, worker)
    await gate_open(dev_env, launch, "full-launch.step-1")

    with pytest.raises(launches.DecisionError) as wrong_gate:
        await launches.decide(
            client, launch.id, "soft-launch.step-1", "alice", "approve", phase="soft-launch"
        )
    taken = await launches.decide(
        client, launch.id, "full-launch.step-1", "alice", "approve", phase="soft-launch"
    )
    result = await launch.result()

    assert str(wrong_gate.value) == (
        "gate: unknown gate 'soft-launch.step-1'; this plan's gates are: full-launch.step-1"
    )
    assert (taken.outcome, taken.by) == ("approved", "alice")
    assert result.status == "completed"


async def test_the_phase_refuses_evidence_that_got_worse_as_the_launch_does(
    dev_env: WorkflowEnvironment, worker: str, tmp_path: Path
) -> None:
    client = dev_env.client
    launch = await start_launch(client, two_person_plan(tmp_path / "flags.json"), worker)
    await gate_open(dev_env, launch, GATE)

    with pytest.raises(launches.DecisionError) as unknown:
        await launches.decide(client, launch.id, GATE, "alice", "approve", evidence="ev-7")
    taken = await launches.decide(client, launch.id, GATE, "alice", "reject", "no", evidence="ev-0")
    result = await launch.result()

    assert str(unknown.value) == "evidence: 'ev-7' is not evidence this launch showed; now ev-0"
    assert (taken.outcome, taken.by) == ("rejected", "alice")
    assert result.status == "rolled_back"


async def test_a_message_that_reaches_a_phase_before_it_runs_leaves_its_reports_whole(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """The phase's first workflow task can carry a message (its worker was away): it is
    refused, and the phase's reports still reach the launch, which sees the gate and goes on."""
    client = dev_env.client
    task_queue = f"e2e-{uuid.uuid4()}"
    settings = Settings()
    limits = load_worker_limits(settings)
    plan = make_plan(
        flag_file=tmp_path / "flags.json",
        phases=[
            {
                "name": "soft-launch",
                "kind": "soft_launch",
                "steps": [{"weight": 10, "approval": True}],
            },
            {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
        ],
    )
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=settings.max_concurrent_activities
    ) as executor:
        async with worker_http(settings, limits) as http:
            # A worker for the launch only: its phase waits for a worker of its own.
            async with Worker(
                client,
                task_queue=task_queue,
                workflows=[LaunchWorkflow],
                activities=activities(http, client, settings=settings, limits=limits),
                interceptors=[SealInterceptor(load_keys(settings.worker_key_file))],
                activity_executor=executor,
                workflow_runner=WORKFLOW_RUNNER,
            ):
                launch = await start_launch(client, plan, task_queue)
                phase = client.get_workflow_handle(f"{launch.id}.soft-launch")
                for _ in range(400):
                    try:
                        await phase.describe()
                        break
                    except RPCError:
                        await asyncio.sleep(0.05)
                # In the phase's history before it has run a single line.
                await phase.signal(RELAY_SIGNAL, {"gate": GATE, "verb": "approve"})
            async with build_worker(
                client, http, executor, settings, task_queue=task_queue, limits=limits
            ):
                waiting = await gate_open(dev_env, launch, GATE, timeout=60)
                await launches.decide(client, launch.id, GATE, "alice", "approve")
                result = await launch.result()

    assert [e.note for e in waiting.audit if e.handler == "phase_progress"] == []
    refused = [e.note[:30] for e in waiting.audit if e.handler.endswith(":relay_decision")]
    assert refused == ["malformed: launch_run: Field r"]
    assert result.status == "completed"
    assert [e.note for e in result.final.audit if e.handler == "phase_progress"] == []
