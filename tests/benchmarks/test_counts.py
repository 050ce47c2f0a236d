"""The benchmarks' counts of workflow tasks, events and signals, checked against real workflows
on the dev server: bare workflows whose histories are known event by event, and a launch whose
counts must add up across its own and its phases' histories."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from benchmarks.baseline import SequenceWorkflow, SignalThenActivityWorkflow, noop
from benchmarks.counts import (
    Counts,
    count_events,
    is_activity_start,
    launch_counts,
    launch_histories,
    signal_to_activity,
    signals_named,
    workflow_events,
)
from tests.support.launches import decide_gate, start_launch
from tests.support.plans import make_plan

pytestmark = pytest.mark.integration


@workflow.defn(name="CountedWorkflow")
class CountedWorkflow:
    """Continues as new once, then waits for an update, runs two local activities and a bare
    sequence of one activity as its child."""

    def __init__(self) -> None:
        self._going = False

    @workflow.update(name="go")
    def go(self) -> None:
        self._going = True

    @workflow.run
    async def run(self, first: bool) -> None:
        if first:
            workflow.continue_as_new(False)
        await workflow.wait_condition(lambda: self._going)
        for _ in range(2):
            await workflow.execute_local_activity(
                noop, start_to_close_timeout=timedelta(seconds=30)
            )
        await workflow.execute_child_workflow(
            SequenceWorkflow.run, 1, id=f"{workflow.info().workflow_id}.child"
        )


@pytest.fixture
async def bare_queue(dev_env: WorkflowEnvironment) -> AsyncIterator[str]:
    """A worker for the bare baseline workflows, on a task queue of its own."""
    task_queue = f"bare-{uuid.uuid4()}"
    async with Worker(
        dev_env.client,
        task_queue=task_queue,
        workflows=[SequenceWorkflow, SignalThenActivityWorkflow, CountedWorkflow],
        activities=[noop],
        # CountedWorkflow is defined in this test module, which the sandbox cannot re-import.
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        yield task_queue


async def first_task_completed(client: Client, workflow_id: str, run_id: str | None = None) -> None:
    """Wait until the workflow's first workflow task completed: it is waiting for its signal."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    async for event in handle.fetch_history_events(wait_new_event=True):
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            return


async def continued_as(client: Client, workflow_id: str, run_id: str) -> str:
    """Wait until run `run_id` continued as new; the new run's id."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    async for event in handle.fetch_history_events(wait_new_event=True):
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            return event.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    raise AssertionError(f"run {run_id} of {workflow_id} ended without continuing as new")


@pytest.mark.parametrize("activities", [0, 1, 3])
async def test_a_bare_sequence_spends_one_task_per_activity_and_one_more(
    dev_env: WorkflowEnvironment, bare_queue: str, activities: int
) -> None:
    workflow_id = f"bare-{uuid.uuid4()}"
    await dev_env.client.execute_workflow(
        SequenceWorkflow.run, activities, id=workflow_id, task_queue=bare_queue
    )

    counted = await launch_counts(dev_env.client, workflow_id)

    # Started; per workflow task scheduled, started, completed; per activity scheduled,
    # started, completed; completed.
    expected = Counts(
        workflows=1,
        workflow_tasks=activities + 1,
        events=2 + 3 * (activities + 1) + 3 * activities,
        activities=activities,
    )
    assert counted == {workflow_id: expected, "total": expected}


async def test_a_signal_then_an_activity_is_one_signal_one_task_one_activity(
    dev_env: WorkflowEnvironment, bare_queue: str
) -> None:
    client = dev_env.client
    handle = await client.start_workflow(
        SignalThenActivityWorkflow.run, 1, id=f"bare-{uuid.uuid4()}", task_queue=bare_queue
    )
    await first_task_completed(client, handle.id)
    await handle.signal(SignalThenActivityWorkflow.go)
    assert await handle.result() == 1

    counted = await launch_counts(client, handle.id)
    histories = await launch_histories(client, handle.id)
    [signaled] = signals_named(histories[handle.id], "go")
    window = signal_to_activity(histories, signaled)

    assert counted["total"] == Counts(
        workflows=1, workflow_tasks=3, events=15, signals_received=1, activities=1
    )
    assert [EventType.Name(event.event_type) for event in window] == [
        "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED",
        "EVENT_TYPE_WORKFLOW_TASK_SCHEDULED",
        "EVENT_TYPE_WORKFLOW_TASK_STARTED",
        "EVENT_TYPE_WORKFLOW_TASK_COMPLETED",
        "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED",
        "EVENT_TYPE_ACTIVITY_TASK_STARTED",
    ]
    assert count_events(window) == Counts(
        workflow_tasks=1, events=6, signals_received=1, activities=1
    )


async def test_a_launch_is_counted_over_its_own_and_its_phases_histories(
    dev_env: WorkflowEnvironment, worker: str, tmp_path: Path
) -> None:
    client = dev_env.client
    plan = make_plan(
        targets={
            "prometheus": {"url": "http://127.0.0.1:9090"},
            "router": {
                "kind": "flagd",
                "flag_file": str(tmp_path / "flags.json"),
                "flag_key": "checkout-v2",
            },
        },
        phases=[
            {
                "name": "soft-launch",
                "kind": "soft_launch",
                "steps": [{"weight": 10}, {"weight": 20, "approval": True}],
            },
            {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
        ],
    )
    handle = await start_launch(client, plan, worker)
    await decide_gate(dev_env, handle, "soft-launch.step-2", "approve", "alice")
    assert (await handle.result()).status == "completed"

    counted = await launch_counts(client, handle.id)
    histories = await launch_histories(client, handle.id)
    phases = [f"{handle.id}.soft-launch", f"{handle.id}.full-launch"]

    assert list(counted) == [handle.id, *phases, "total"]
    for workflow_id, events in histories.items():
        # One run each: event ids run 1..n, so the last one is the number of events.
        assert counted[workflow_id].events == events[-1].event_id
        assert counted[workflow_id].workflow_tasks >= 1
    assert counted[handle.id].child_workflows == 2
    assert counted["total"] == sum((counted[w] for w in [handle.id, *phases]), Counts())
    assert counted["total"].workflows == 3
    # Every signal a workflow of the launch received was sent by another one, but `approve`.
    assert counted["total"].signals_received == counted["total"].signals_sent + 1
    # The exposure changes: 10%, 20%, 100% at least, each a (local) activity.
    assert counted["total"].local_activities >= 3

    [approved] = signals_named(histories[handle.id], "approve")
    window = signal_to_activity(histories, approved)
    assert window[0] == approved
    assert is_activity_start(window[-1])
    per_approval = count_events(window)
    assert per_approval.signals_received >= 1
    assert per_approval.workflow_tasks >= 1
    assert per_approval.events == len(window)


async def test_runs_children_local_activities_and_updates_are_all_counted(
    dev_env: WorkflowEnvironment, bare_queue: str
) -> None:
    client = dev_env.client
    handle = await client.start_workflow(
        CountedWorkflow.run, True, id=f"counted-{uuid.uuid4()}", task_queue=bare_queue
    )
    latest = await continued_as(client, handle.id, handle.first_execution_run_id or "")
    await first_task_completed(client, handle.id, latest)
    await client.get_workflow_handle(handle.id).execute_update(CountedWorkflow.go)
    await client.get_workflow_handle(handle.id).result()

    counted = await launch_counts(client, handle.id)
    child = f"{handle.id}.child"
    both_runs = await workflow_events(client, handle.id, handle.first_execution_run_id or "")
    second_run = await workflow_events(client, handle.id, latest)
    first_run = both_runs[: len(both_runs) - len(second_run)]

    assert list(counted) == [handle.id, child, "total"]
    # Both runs: the first one's events up to its continue-as-new, then the second's.
    assert first_run[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    assert len(first_run) == first_run[-1].event_id
    assert both_runs[len(first_run) :] == second_run
    assert counted[handle.id] == Counts(
        workflows=1,
        workflow_tasks=counted[handle.id].workflow_tasks,
        events=len(first_run) + second_run[-1].event_id,
        local_activities=2,
        updates=1,
        child_workflows=1,
    )
    assert counted[handle.id].workflow_tasks >= 3
    assert counted[child] == Counts(workflows=1, workflow_tasks=2, events=11, activities=1)
    assert counted["total"] == counted[handle.id] + counted[child]
