"""Activities mocked by name, for workflow-logic tests on the time-skipping server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from schemas import routing_messages
from schemas.launch_messages import LaunchInput, LaunchStatus
from schemas.metrics_messages import MetricQuery, MetricReading
from schemas.notify_messages import Notification, NotificationResult
from schemas.plan import LaunchPlan
from workers.main import WORKFLOWS
from workflows.launch import LaunchWorkflow

# Workflow time skipped per poll: far below any gate timeout a test relies on.
POLL_SKIP = timedelta(milliseconds=500)


@dataclass
class FakeWorld:
    """What the mocked activities did, in order, and how they should answer."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    readings: Callable[[MetricQuery], MetricReading] = lambda q: MetricReading(value=0.0)
    restore_failures: int = 0
    exposure: float = 0.0

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def activities(self) -> list[Callable[..., Any]]:
        world = self

        @activity.defn(name="snapshot_exposure")
        async def snapshot_exposure(
            request: routing_messages.SnapshotRequest,
        ) -> routing_messages.RouterSnapshot:
            world.calls.append(("snapshot_exposure", world.exposure))
            return routing_messages.RouterSnapshot(
                kind="flagd", existed=True, definition={"weight": world.exposure}
            )

        @activity.defn(name="set_exposure")
        async def set_exposure(
            request: routing_messages.ExposureRequest,
        ) -> routing_messages.ExposureState:
            world.calls.append(("set_exposure", request.weight))
            world.exposure = request.weight
            return routing_messages.ExposureState(weight=request.weight, changed=True)

        @activity.defn(name="restore_exposure")
        async def restore_exposure(
            request: routing_messages.RestoreRequest,
        ) -> routing_messages.ExposureState:
            if world.restore_failures > 0:
                world.restore_failures -= 1
                world.calls.append(("restore_exposure_failed", None))
                raise RuntimeError("flag file is read-only")
            assert request.snapshot.definition is not None
            world.exposure = request.snapshot.definition["weight"]
            world.calls.append(("restore_exposure", world.exposure))
            return routing_messages.ExposureState(weight=world.exposure, changed=True)

        @activity.defn(name="promote_exposure")
        async def promote_exposure(
            request: routing_messages.PromoteRequest,
        ) -> routing_messages.ExposureState:
            world.calls.append(("promote_exposure", 100.0))
            world.exposure = 100.0
            return routing_messages.ExposureState(weight=100.0, changed=True)

        @activity.defn(name="query_metric")
        async def query_metric(request: MetricQuery) -> MetricReading:
            world.calls.append(("query_metric", request.metric))
            return world.readings(request)

        @activity.defn(name="send_notification")
        async def send_notification(note: Notification) -> NotificationResult:
            world.calls.append(("send_notification", note.event))
            return NotificationResult(delivered=[hook.name for hook in note.webhooks])

        return [
            snapshot_exposure,
            set_exposure,
            restore_exposure,
            promote_exposure,
            query_metric,
            send_notification,
        ]


@asynccontextmanager
async def running_launch(
    client: Client, plan: LaunchPlan, world: FakeWorld
) -> AsyncIterator[WorkflowHandle[LaunchWorkflow, Any]]:
    task_queue = f"test-{uuid.uuid4()}"
    async with Worker(
        client, task_queue=task_queue, workflows=list(WORKFLOWS), activities=world.activities()
    ):
        launch_id = f"launch-{uuid.uuid4()}"
        handle = await client.start_workflow(
            LaunchWorkflow.run,
            LaunchInput(launch_id=launch_id, plan=plan),
            id=launch_id,
            task_queue=task_queue,
        )
        yield handle


async def status(handle: WorkflowHandle[LaunchWorkflow, Any]) -> LaunchStatus:
    return await handle.query(LaunchWorkflow.status)


async def wait_for(
    env: WorkflowEnvironment,
    handle: WorkflowHandle[LaunchWorkflow, Any],
    predicate: Callable[[LaunchStatus], bool],
    *,
    timeout: float = 20.0,
) -> LaunchStatus:
    """Poll the `status` query until `predicate` holds, letting workflow time move on meanwhile."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current = await status(handle)
        if predicate(current):
            return current
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"timed out waiting; last status: {current.model_dump_json(indent=1)}"
            )
        if env.supports_time_skipping:
            await env.sleep(POLL_SKIP)
        else:
            await asyncio.sleep(0.05)


async def gate_open(
    env: WorkflowEnvironment, handle: WorkflowHandle[LaunchWorkflow, Any], gate: str
) -> LaunchStatus:
    return await wait_for(
        env, handle, lambda s: s.open_gate is not None and s.open_gate.gate == gate
    )
