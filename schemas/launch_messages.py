"""The launch and its phases: workflow inputs, state, results, and what the `status` query shows."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar, cast

from pydantic import Field

from schemas.basics import Message
from schemas.decision_messages import Decision
from schemas.phase_spec import PhaseSpec
from schemas.plan import LaunchPlan
from schemas.probe_messages import Finding

# Covariant: a soft launch's input is a phase input, as its phase is a phase.
P = TypeVar("P", bound=PhaseSpec, covariant=True)


class LaunchInput(Message):
    launch_id: str
    plan: LaunchPlan


class PhaseInput(Message, Generic[P]):
    """What the launch gives a phase workflow: the whole plan, and which of its phases to run.
    `PhaseInput[SoftLaunchPhase]` is what the soft launch takes; its `phase` is of that kind."""

    launch_id: str
    plan: LaunchPlan
    phase_index: int

    @property
    def phase(self) -> P:
        phase = self.plan.phases[self.phase_index]
        kind = self.__pydantic_generic_metadata__["args"]
        if kind and not isinstance(phase, kind[0]):
            raise TypeError(
                f"phases[{self.phase_index}] is a {phase.kind} phase, not {kind[0].__name__}"
            )
        return cast(P, phase)


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
