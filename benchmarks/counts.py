"""What a launch spends on the server: workflow tasks, history events and signals, counted from
the histories of the launch and of every child workflow it started (all runs, continue-as-new
included), per workflow and in total.

Times move with the machine; these counts move only when what the workflows do changes, so
they say where a launch's time goes and whether a change spent fewer round trips.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

# The marker the SDK records for each local activity's result (patches record others).
LOCAL_ACTIVITY_MARKER = "core_local_activity"


@dataclass(frozen=True)
class Counts:
    """What one or more workflow histories hold."""

    workflows: int = 0
    workflow_tasks: int = 0
    events: int = 0
    signals_received: int = 0
    signals_sent: int = 0
    activities: int = 0
    local_activities: int = 0
    updates: int = 0
    child_workflows: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            *(
                getattr(self, name) + getattr(other, name)
                for name in (f.name for f in dataclasses.fields(self))
            )
        )

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# Which event adds to which count; every event adds to `events`, and a local activity's marker
# to `local_activities`.
_COUNTED: dict[int, str] = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "workflow_tasks",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "signals_received",
    EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED: "signals_sent",
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "activities",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "updates",
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED: "child_workflows",
}


def count_events(events: Iterable[HistoryEvent], *, workflows: int = 0) -> Counts:
    """The counts of `events`, as `workflows` workflows' worth (0 for a slice of a history)."""
    tally = dict.fromkeys((f.name for f in dataclasses.fields(Counts)), 0)
    tally["workflows"] = workflows
    for event in events:
        tally["events"] += 1
        name = _COUNTED.get(event.event_type)
        if name is not None:
            tally[name] += 1
        elif (
            event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and event.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
        ):
            tally["local_activities"] += 1
    return Counts(**tally)


async def workflow_events(client: Client, workflow_id: str, run_id: str = "") -> list[HistoryEvent]:
    """Every event of a workflow from run `run_id` (empty: the latest run) through each
    continue-as-new that follows it."""
    events: list[HistoryEvent] = []
    run = run_id or None
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run).fetch_history()
        events.extend(history.events)
        last = history.events[-1]
        if last.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            return events
        run = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id


async def launch_histories(client: Client, workflow_id: str) -> dict[str, list[HistoryEvent]]:
    """The events of a workflow and of every child workflow it (or a child) started, by
    workflow id, the workflow itself first."""
    first = await first_run(client, workflow_id)
    found = {workflow_id: await workflow_events(client, workflow_id, first)}
    pending = [workflow_id]
    while pending:
        for event in found[pending.pop()]:
            if event.event_type != EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
                continue
            child = event.child_workflow_execution_started_event_attributes.workflow_execution
            if child.workflow_id not in found:
                found[child.workflow_id] = await workflow_events(
                    client, child.workflow_id, child.run_id
                )
                pending.append(child.workflow_id)
    return found


async def first_run(client: Client, workflow_id: str) -> str:
    """The run a workflow id started with: the latest run's `first_execution_run_id`."""
    described = await client.get_workflow_handle(workflow_id).describe()
    return described.raw_description.workflow_execution_info.first_run_id or described.run_id


async def launch_counts(client: Client, workflow_id: str) -> dict[str, Counts]:
    """Counts per workflow of a launch (or any workflow) and its children, plus `total`."""
    histories = await launch_histories(client, workflow_id)
    per_workflow = {wid: count_events(events, workflows=1) for wid, events in histories.items()}
    return {**per_workflow, "total": sum(per_workflow.values(), Counts())}


def event_time(event: HistoryEvent) -> datetime:
    return event.event_time.ToDatetime()


def between(
    histories: dict[str, list[HistoryEvent]], start: datetime, end: datetime
) -> list[HistoryEvent]:
    """The events of all `histories` the server recorded at `start` or later, up to `end`, in
    the order it recorded them."""
    found = [
        event
        for events in histories.values()
        for event in events
        if start <= event_time(event) <= end
    ]
    return sorted(found, key=event_time)


def signal_to_activity(
    histories: dict[str, list[HistoryEvent]], signaled: HistoryEvent
) -> list[HistoryEvent]:
    """The events of all `histories` from `signaled` (a WorkflowExecutionSignaled event) up to
    and including the first ActivityTaskStarted after it, in any of them, or the first local
    activity's marker (recorded with the workflow task that ran it): what a signal costs until
    the work it released begins."""
    start = event_time(signaled)
    started = [
        event_time(event)
        for events in histories.values()
        for event in events
        if is_activity_start(event) and event_time(event) > start
    ]
    if not started:
        raise ValueError(f"no activity started after the signal recorded at {start.isoformat()}")
    return between(histories, start, min(started))


def is_activity_start(event: HistoryEvent) -> bool:
    """An activity starting, or a local activity's marker."""
    return event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED or (
        event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and event.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
    )


def updates_taken(events: Sequence[HistoryEvent], name: str) -> list[HistoryEvent]:
    """For each update `name` a workflow accepted, the WorkflowTaskScheduled event of the
    workflow task that took it: where the update's cost in the history begins."""
    taken = []
    for index, event in enumerate(events):
        if (
            event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
            and event.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
            == name
        ):
            scheduled = [
                earlier
                for earlier in events[:index]
                if earlier.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
            ]
            if scheduled:
                taken.append(scheduled[-1])
    return taken


def signals_named(events: Iterable[HistoryEvent], name: str) -> list[HistoryEvent]:
    """The WorkflowExecutionSignaled events of signal `name`, in history order."""
    return [
        event
        for event in events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        and event.workflow_execution_signaled_event_attributes.signal_name == name
    ]
