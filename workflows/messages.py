"""Every message that crosses a boundary: workflow inputs and state, signals, activity I/O.

Each activity takes one model and returns one model, so fields can be added without
breaking running workflows. Secrets never appear here, only `SecretRef`s.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from phasegate.workflows.plan import (
    LaunchPlan,
    MetricSpec,
    NotificationEvent,
    PrometheusTarget,
    ResolvedGate,
    TrafficRouter,
    Webhook,
)

TASK_QUEUE = "phasegate"


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- launch and phase state -------------------------------------------------------------


class LaunchInput(Message):
    launch_id: str
    plan: LaunchPlan


class PhaseInput(Message):
    launch_id: str
    plan: LaunchPlan
    phase_index: int

    @property
    def phase(self) -> Any:
        return self.plan.phases[self.phase_index]


class LaunchStatusValue(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"
    ROLLING_BACK = "rolling_back"
    NEEDS_ATTENTION = "needs_attention"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"


class PhaseStatusValue(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class OpenGate(Message):
    """A gate waiting for a person: everything the UI and CLI need to act on it."""

    gate: str
    phase: str
    question: str
    approvers: list[str]
    opened_at: datetime
    deadline: datetime
    on_timeout: Literal["reject", "approve"]
    needs_reason: bool = False


class Decision(Message):
    gate: str
    outcome: Literal["approved", "rejected"]
    by: str
    comment: str = ""
    at: datetime
    source: Literal["signal", "update", "timeout"]


class AuditEntry(Message):
    """One signal or update as it arrived, and whether Phasegate acted on it."""

    at: datetime
    handler: str
    payload: Any = None
    accepted: bool
    note: str = ""


class CompensationRecord(Message):
    """How to undo one change: registered before the change is made."""

    id: str
    phase: str
    activity: str
    input: dict[str, Any]
    description: str
    timeout_seconds: float | None = None
    heartbeat_seconds: float | None = None
    status: Literal["pending", "done", "failed", "skipped"] = "pending"
    attempts: int = 0
    error: str = ""
    resolved_by: str = ""


class Measurement(Message):
    at: datetime
    value: float | None = None
    baseline: float | None = None
    outcome: Literal["success", "failure", "inconclusive", "error"]
    detail: str = ""


class MetricResult(Message):
    phase: str
    step: int
    metric: str
    verdict: Literal["running", "successful", "failed", "inconclusive", "cancelled"] = "running"
    successes: int = 0
    failures: int = 0
    inconclusive: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    measurements: list[Measurement] = Field(default_factory=list)

    @property
    def last(self) -> Measurement | None:
        return self.measurements[-1] if self.measurements else None


class Finding(Message):
    """One judged aspect of a security check: what was probed, the verdict and the evidence."""

    id: str
    check: str
    target: str
    severity: Literal["critical", "warning"]
    passed: bool
    evidence: str
    waived_by: str = ""
    waiver_reason: str = ""


class PhaseState(Message):
    name: str
    kind: str
    status: PhaseStatusValue = PhaseStatusValue.PENDING
    step: int = 0
    steps: int = 0
    exposure: float | None = None
    activity: str = ""
    open_gate: OpenGate | None = None
    decisions: list[Decision] = Field(default_factory=list)
    analysis: list[MetricResult] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    compensations: list[CompensationRecord] = Field(default_factory=list)
    reason: str = ""


class LaunchStatus(Message):
    """What the `status` query returns: the whole state of one launch."""

    launch_id: str
    service: str
    version: str
    status: LaunchStatusValue
    reason: str = ""
    phase: str = ""
    phase_index: int = -1
    step: int = 0
    exposure: float | None = None
    open_gate: OpenGate | None = None
    waiting_for: str = ""
    phases: list[PhaseState] = Field(default_factory=list)
    decisions: list[Decision] = Field(default_factory=list)
    audit: list[AuditEntry] = Field(default_factory=list)
    compensations: list[CompensationRecord] = Field(default_factory=list)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class LaunchResult(Message):
    launch_id: str
    status: LaunchStatusValue
    reason: str = ""
    final: LaunchStatus


# --- signals and updates ----------------------------------------------------------------


class GateDecision(Message):
    """Payload of the `approve` / `reject` signals and of the `decide` update."""

    model_config = ConfigDict(extra="forbid")

    gate: str = Field(min_length=1)
    approver: str = Field(min_length=1)
    comment: str = ""
    id: str = ""


class DecideRequest(GateDecision):
    decision: Literal["approve", "reject"]


class AbortRequest(Message):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1)
    by: str = Field(min_length=1)
    id: str = ""


class CompensationAction(Message):
    """Payload of `retry_compensation` / `skip_compensation` when an undo keeps failing."""

    model_config = ConfigDict(extra="forbid")

    compensation: str = Field(min_length=1)
    by: str = Field(min_length=1)
    comment: str = ""
    id: str = ""


class RelayedDecision(Message):
    """A validated decision the launch workflow forwards to the phase that owns the gate."""

    gate: str
    outcome: Literal["approved", "rejected"]
    by: str
    comment: str = ""
    at: datetime
    source: Literal["signal", "update"]


# --- activities: traffic routing ----------------------------------------------------------


class RouterSnapshot(Message):
    """The routing state before a phase touched it, enough to put it back exactly."""

    kind: str
    existed: bool
    definition: dict[str, Any] | None = None


class SnapshotRequest(Message):
    router: TrafficRouter


class ExposureRequest(Message):
    router: TrafficRouter
    weight: float
    launch_id: str = ""


class ExposureState(Message):
    weight: float
    changed: bool


class RestoreRequest(Message):
    router: TrafficRouter
    snapshot: RouterSnapshot


class PromoteRequest(Message):
    router: TrafficRouter
    launch_id: str = ""


# --- activities: metrics ----------------------------------------------------------------


class MetricQuery(Message):
    prometheus: PrometheusTarget
    metric: str
    spec: MetricSpec
    canary_variant: str
    stable_variant: str


class MetricReading(Message):
    value: float | None = None
    baseline: float | None = None
    error: str = ""
    query: str = ""


# --- activities: notifications ---------------------------------------------------------


class Notification(Message):
    event: NotificationEvent
    launch_id: str
    service: str
    version: str
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)
    webhooks: list[Webhook]


class NotificationResult(Message):
    delivered: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict)


def gate_question(gate: ResolvedGate, default: str) -> str:
    return gate.description or default


def seconds(value: timedelta) -> float:
    return value.total_seconds()
