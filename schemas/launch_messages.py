"""The launch and its phases: workflow inputs, state, results, and what the `status` query shows."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar, cast

from pydantic import Field

from approvals.proofs import ApprovalAuthority
from schemas.basics import Message
from schemas.decision_messages import Decision
from schemas.phase_spec import PhaseSpec
from schemas.plan import LaunchPlan
from schemas.probe_messages import Finding
from schemas.seal import Sealed

# Covariant: a soft launch's input is a phase input, as its phase is a phase.
P = TypeVar("P", bound=PhaseSpec, covariant=True)


class LaunchInput(Message):
    launch_id: str
    plan: LaunchPlan
    # Who starts the launch: a proof for the act `start` when the plan's approvals are
    # authenticated, a name as typed when they are not.
    start_proof: str = Field(default="", max_length=8192)
    started_by: str = Field(default="", max_length=128)


class PhaseInput(Message, Generic[P]):
    """What the launch gives a phase workflow: the whole plan, and which of its phases to run.
    `PhaseInput[SoftLaunchPhase]` is what the soft launch takes; its `phase` is of that kind."""

    launch_id: str
    plan: LaunchPlan
    phase_index: int
    # What the phase checks a relayed vote against: the launch's first run (proofs are bound
    # to it), who started the launch, and the approval service keys the workers trust.
    launch_run: str = ""
    started_by: str = ""
    authority: ApprovalAuthority | None = None

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
    # Refused before anything changed: the starter's proof did not hold.
    REFUSED = "refused"


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
    min_approvals: int = 1
    allow_self_approval: bool = False
    # Who approved so far, when the gate needs more than one person.
    approvals: list[str] = Field(default_factory=list)
    # The identity provider people prove who they are at, or "" when names are taken as typed.
    identity: str = ""


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
    # Votes relayed to this phase that it refused (a forged relay, a proof that no longer holds).
    refusals: list[AuditEntry] = Field(default_factory=list)


class PhaseReport(Sealed):
    """A phase's state, sent to its launch after a change. `seq` grows with every report, so
    the launch keeps only the newest; `launch_run` says which launch run it is for."""

    state: PhaseState
    seq: int
    launch_run: str


class LaunchStatus(Message):
    """What the `status` query returns: the whole state of one launch."""

    launch_id: str
    service: str
    version: str
    status: LaunchStatusValue
    reason: str = ""
    # The launch's first run, which approval proofs are bound to.
    run_id: str = ""
    # The identity provider approvals are proven at, or "" when names are taken as typed.
    identity: str = ""
    started_by: str = ""
    # The latest analysis evidence (`ev-N`): a decision may name it as what the person saw.
    evidence: str = ""
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
