"""Activities mocked by name, for workflow-logic tests on the time-skipping server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from schemas import migration_messages, routing_messages
from schemas.admission_messages import Admission, AdmissionRequest
from schemas.launch_messages import LaunchResult, PhaseEnd, PhaseEndRequest
from schemas.metrics_messages import MetricQuery, MetricReading
from schemas.notify_messages import Notification, NotificationResult
from schemas.plan import LaunchPlan
from tests.support.launches import start_launch
from tests.support.sealing import test_interceptors
from workers.main import WORKFLOW_RUNNER, WORKFLOWS
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
    # Every notification sent, as the launch built it.
    notifications: list[Notification] = field(default_factory=list)

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
        self.notifications.append(note)
        return NotificationResult(delivered=[hook.name for hook in note.webhooks])


@dataclass
class MigrationFakeWorld(FakeWorld):
    """FakeWorld plus the PostgreSQL activities of a migration that goes to plan, up to its
    undo: each `restore_database` attempt finds the next of `at_risk` (none once they run out)
    live-written rows a revert would lose, and fails with `WritesAtRisk` unless the person's
    decision in the request covers them: `carry_over` keeps them all, `drop` at most its
    `at_most_rows`. Before any of that, an attempt raises the next of `restore_errors`.
    `restores` holds every restore request, in order."""

    at_risk: list[migration_messages.WritesAtRiskReport] = field(default_factory=list)
    restore_errors: list[Exception] = field(default_factory=list)
    restores: list[migration_messages.RestoreDatabaseRequest] = field(default_factory=list)

    @activity.defn(name="preflight_migration")
    async def preflight_migration(
        self, request: dict[str, Any]
    ) -> migration_messages.PreflightReport:
        self.calls.append(("preflight_migration", None))
        return migration_messages.PreflightReport(
            source_version="15",
            target_version="15",
            database_bytes=1,
            free_bytes=2,
            scripts=[
                migration_messages.MigrationScript(
                    version="001", name="split_orders", sha256="x", has_down=True
                )
            ],
        )

    @activity.defn(name="backup_database")
    async def backup_database(self, request: dict[str, Any]) -> migration_messages.BackupRecord:
        self.calls.append(("backup_database", None))
        return migration_messages.BackupRecord(
            path="/srv/backups/checkout.dump.enc",
            sha256="abc",
            size_bytes=1,
            entries=1,
            database="checkout",
            fingerprint=migration_messages.DatabaseFingerprint(schema_hash="s"),
        )

    @activity.defn(name="apply_migrations")
    async def apply_migrations(self, request: dict[str, Any]) -> migration_messages.MigrateResult:
        self.calls.append(("apply_migrations", None))
        return migration_messages.MigrateResult()

    @activity.defn(name="verify_migration")
    async def verify_migration(
        self, request: dict[str, Any]
    ) -> migration_messages.VerificationReport:
        self.calls.append(("verify_migration", None))
        return migration_messages.VerificationReport()

    @activity.defn(name="restore_database")
    async def restore_database(
        self, request: migration_messages.RestoreDatabaseRequest
    ) -> migration_messages.RestoreReport:
        self.restores.append(request)
        decided = request.writes
        self.calls.append(("restore_database", decided.action if decided else None))
        if self.restore_errors:
            raise self.restore_errors.pop(0)
        found = self.at_risk.pop(0) if self.at_risk else None
        if found is None:
            return migration_messages.RestoreReport(method="down_scripts")
        if decided is not None and decided.action == "carry_over":
            return migration_messages.RestoreReport(method=found.method, carried_over=found.rows)
        if decided is not None and found.rows <= decided.at_most_rows:
            return migration_messages.RestoreReport(method=found.method, dropped=found)
        raise ApplicationError(
            f"reverting would lose {found.rows} live-written row(s), saved in {found.saved}; "
            "nothing was changed",
            found.model_dump(mode="json"),
            type="WritesAtRisk",
            non_retryable=True,
        )


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
        workflow_runner=WORKFLOW_RUNNER,
        task_queue=task_queue,
        workflows=[*workflows, *(w for w in WORKFLOWS if _workflow_name(w) not in replaced)],
        activities=world.activities(),
    ):
        yield await start_launch(client, plan, task_queue, start_signal, **start)


def _workflow_name(cls: type) -> str:
    """The workflow type `cls` is registered as (its `workflow.defn` name)."""
    definition: Any = getattr(cls, "__temporal_workflow_definition")
    return str(definition.name)
