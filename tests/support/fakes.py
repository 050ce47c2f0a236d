"""Activities mocked by name, for workflow-logic tests on the time-skipping server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from schemas import routing_messages
from schemas.admission_messages import Admission, AdmissionRequest
from schemas.launch_messages import LaunchResult, PhaseEnd, PhaseEndRequest
from schemas.metrics_messages import MetricQuery, MetricReading
from schemas.notify_messages import Notification, NotificationResult
from schemas.plan import LaunchPlan
from tests.support.launches import start_launch
from tests.support.sealing import test_interceptors
from workers.main import WORKFLOWS
from workflows.launch import LaunchWorkflow


def activities_of(world: object) -> list[Callable[..., Any]]:
    """The `activity.defn` methods of `world`, bound to it."""
    return [
        getattr(world, name)
        for name in dir(type(world))
        if hasattr(getattr(type(world), name), "__temporal_activity_definition")
    ]


@dataclass
class FakeWorld:
    """What the mocked activities did, in order, and how they should answer."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    readings: Callable[[MetricQuery], MetricReading] = lambda q: MetricReading(value=0.0)
    restore_failures: int = 0
    exposure: float = 0.0
    # What the worker's admission finds wrong with every plan: none, unless a test says so.
    # Admissions are kept apart from `calls`, which lists what the launch did.
    admission_problems: list[str] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def activities(self) -> list[Callable[..., Any]]:
        """Every method of this world that is an activity: a subclass adds fakes by defining
        more `activity.defn` methods."""
        return activities_of(self)

    @activity.defn(name="admit_plan")
    async def admit_plan(self, request: AdmissionRequest) -> Admission:
        self.admitted.append(request.launch_id)
        return Admission(problems=list(self.admission_problems))

    @activity.defn(name="describe_phase_end")
    async def describe_phase_end(self, request: PhaseEndRequest) -> PhaseEnd:
        self.calls.append(("describe_phase_end", request.workflow_id))
        return PhaseEnd(how="terminated", reason="terminated in a test", identity="tests")

    @activity.defn(name="snapshot_exposure")
    async def snapshot_exposure(
        self, request: routing_messages.SnapshotRequest
    ) -> routing_messages.RouterSnapshot:
        self.calls.append(("snapshot_exposure", self.exposure))
        return routing_messages.RouterSnapshot(
            kind="flagd", existed=True, definition={"weight": self.exposure}
        )

    @activity.defn(name="set_exposure")
    async def set_exposure(
        self, request: routing_messages.ExposureRequest
    ) -> routing_messages.ExposureState:
        self.calls.append(("set_exposure", request.weight))
        self.exposure = request.weight
        return routing_messages.ExposureState(weight=request.weight, changed=True)

    @activity.defn(name="restore_exposure")
    async def restore_exposure(
        self, request: routing_messages.RestoreRequest
    ) -> routing_messages.ExposureState:
        if self.restore_failures > 0:
            self.restore_failures -= 1
            self.calls.append(("restore_exposure_failed", None))
            raise RuntimeError("flag file is read-only")
        assert request.snapshot.definition is not None
        self.exposure = request.snapshot.definition["weight"]
        self.calls.append(("restore_exposure", self.exposure))
        return routing_messages.ExposureState(weight=self.exposure, changed=True)

    @activity.defn(name="promote_exposure")
    async def promote_exposure(
        self, request: routing_messages.PromoteRequest
    ) -> routing_messages.ExposureState:
        self.calls.append(("promote_exposure", 100.0))
        self.exposure = 100.0
        return routing_messages.ExposureState(weight=100.0, changed=True)

    @activity.defn(name="query_metric")
    async def query_metric(self, request: MetricQuery) -> MetricReading:
        self.calls.append(("query_metric", request.metric))
        return self.readings(request)

    @activity.defn(name="send_notification")
    async def send_notification(self, note: Notification) -> NotificationResult:
        self.calls.append(("send_notification", note.event))
        return NotificationResult(delivered=[hook.name for hook in note.webhooks])


@asynccontextmanager
async def running_launch(
    client: Client,
    plan: LaunchPlan,
    world: FakeWorld,
    start_signal: tuple[str, Any] | None = None,
    *,
    workflows: Sequence[type] = (),
    **start: Any,
) -> AsyncIterator[WorkflowHandle[LaunchWorkflow, LaunchResult]]:
    """A launch of `plan` on a worker of its own whose activities are `world`'s fakes (see
    `start_launch` for `start_signal`, `launch_id`, `start_proof` and
    `continue_after_events`). `workflows` replace Phasegate's workflows of the same names."""
    task_queue = f"test-{uuid.uuid4()}"
    replaced = {_workflow_name(w) for w in workflows}
    async with Worker(
        client,
        interceptors=test_interceptors(),
        task_queue=task_queue,
        workflows=[*workflows, *(w for w in WORKFLOWS if _workflow_name(w) not in replaced)],
        activities=world.activities(),
    ):
        yield await start_launch(client, plan, task_queue, start_signal, **start)


def _workflow_name(cls: type) -> str:
    """The workflow type `cls` is registered as (its `workflow.defn` name)."""
    definition: Any = getattr(cls, "__temporal_workflow_definition")
    return str(definition.name)
