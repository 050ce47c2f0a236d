"""Health activities mocked by name: scripted check values, receivers that can be down."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.alerts import AlertLedgerActivities
from activities.launch_state import LaunchStateActivities
from schemas.health_messages import (
    AlertBatch,
    HealthReport,
    HealthRunInput,
    HttpProbe,
    HttpProbeResult,
)
from schemas.health_profile import HealthProfile
from schemas.kube_messages import DeploymentHealth, DeploymentHealthReport, DeploymentHealthRequest
from schemas.metrics_messages import MetricQuery, MetricReading
from tests.support.fakes import FakeWorld, activities_of
from tests.support.sealing import test_interceptors
from workers.main import WORKFLOW_RUNNER, WORKFLOWS
from workflows.health import HealthValidationWorkflow


@dataclass
class HealthWorld:
    """What the checks measure now, which receivers are down, and every batch that got through."""

    values: dict[str, float | None] = field(default_factory=dict)
    probe: HttpProbeResult = field(
        default_factory=lambda: HttpProbeResult(status_code=200, latency_seconds=0.01)
    )
    # What the API server says of each Deployment by name; a name left out is not found.
    deployments: dict[str, DeploymentHealth] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    sent: list[AlertBatch] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    ledgers: set[str] = field(default_factory=set)
    launch_world: FakeWorld = field(default_factory=FakeWorld)

    def received(self, receiver: str) -> list[tuple[str, str]]:
        """(check, firing|resolved) in the order `receiver` got them."""
        return [
            (alert.check, alert.status)
            for batch in self.sent
            if batch.receiver.name == receiver
            for alert in batch.alerts
        ]

    def activities(self) -> list[Callable[..., Any]]:
        launch_fakes = [
            fake
            for fake in self.launch_world.activities()
            if getattr(fake, "__temporal_activity_definition").name != "query_metric"
        ]
        return [*activities_of(self), *launch_fakes]

    @activity.defn(name="query_metric")
    async def query_metric(self, request: MetricQuery) -> MetricReading:
        if request.metric not in self.values:
            return self.launch_world.readings(request)
        value = self.values[request.metric]
        return MetricReading(value=value, query=request.spec.query)

    @activity.defn(name="probe_http")
    async def probe_http(self, probe: HttpProbe) -> HttpProbeResult:
        return self.probe

    @activity.defn(name="check_deployment_health")
    async def check_deployment_health(
        self, request: DeploymentHealthRequest
    ) -> DeploymentHealthReport:
        return DeploymentHealthReport(
            namespace=request.namespace,
            deployments=[
                self.deployments.get(name, DeploymentHealth(name=name, found=False))
                for name in request.deployments
            ],
        )

    @activity.defn(name="send_alerts")
    async def send_alerts(self, batch: AlertBatch) -> int:
        name = batch.receiver.name
        self.attempts[name] = self.attempts.get(name, 0) + 1
        if name in self.down:
            raise ApplicationError(f"connection refused by {batch.receiver.url}")
        self.sent.append(batch)
        return len(batch.alerts)


async def retire(client: Client, ledger_id: str) -> None:
    handle = client.get_workflow_handle(ledger_id)
    try:
        await handle.signal("retire")
    except RPCError:
        return  # never started (no receivers) or already closed
    for _ in range(200):
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"ledger {ledger_id} did not retire")


@asynccontextmanager
async def health_worker(client: Client, world: HealthWorld) -> AsyncIterator[str]:
    task_queue = f"health-{uuid.uuid4()}"
    # The ledger and the guarded launch are reached through Temporal itself, so those
    # activities are the real ones.
    ledger = AlertLedgerActivities(client)
    launch_state = LaunchStateActivities(client)
    async with Worker(
        client,
        interceptors=test_interceptors(),
        workflow_runner=WORKFLOW_RUNNER,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=[*world.activities(), ledger.record_in_ledger, launch_state.read_launch_state],
    ):
        try:
            yield task_queue
        finally:
            # A ledger left running, or terminated in the middle of a task, can hold the shared
            # test server's time skipping for every later test: retire it and let it finish.
            for ledger_id in world.ledgers:
                await retire(client, ledger_id)


async def run_once(
    env: WorkflowEnvironment,
    task_queue: str,
    profile: HealthProfile,
    world: HealthWorld,
    *,
    runs_per_history: int = 200,
) -> HealthReport:
    """One run, as a schedule would start it.

    Automatic time skipping stays off while it runs: with it, the test server jumps to the
    ledger's (default, ten-year) execution timeout whenever everything is idle for a moment.
    Time between runs moves with `env.sleep`.
    """
    world.ledgers.add(profile.ledger_id)
    with env.auto_time_skipping_disabled():
        return await env.client.execute_workflow(
            HealthValidationWorkflow.run,
            HealthRunInput(profile=profile, ledger_runs_per_history=runs_per_history),
            id=f"{profile.schedule_id}-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
