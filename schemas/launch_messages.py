"""The launch and its phases: workflow inputs, state, results, and what the `status` query shows."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar, cast

from pydantic import Field

from approvals.proofs import ApprovalAuthority
from schemas.basics import Message
from schemas.decision_messages import Decision, Hold
from schemas.migration_messages import WritesAtRiskReport
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
    # Between phases the launch continues as new once its history holds this many events
    # (0: when the server suggests it), so a long launch never nears the history limits.
    continue_after_events: int = Field(default=0, ge=0)
    # What the previous run handed on when the launch continued as new; None on the first run.
    carried: LaunchCarry | None = None


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
    # What the phase checks a decision sent to it directly against, as the launch would: the
    # analysis evidence the launch has shown so far and the results of the phases before it.
    evidence: EvidenceMemory | None = None
    earlier_analysis: list[MetricResult] = Field(default_factory=list)

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
    # Held by a person, the health schedule or analysis: exposure does not move until `resume`.
    PAUSED = "paused"
    # Every phase done; the post-launch watch window still measures and can still roll back.
    WATCHING = "watching"
    ROLLING_BACK = "rolling_back"
    NEEDS_ATTENTION = "needs_attention"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    # Refused before anything changed: the starter's proof or the worker's admission said no.
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
    """One signal or update as it arrived, and whether Phasegate acted on it. A large payload
    is kept as the start of its JSON text, with `payload_bytes` saying how large it was."""

    at: datetime
    handler: str
    payload: Any = None
    accepted: bool
    note: str = ""
    payload_bytes: int = 0


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
    # Votes relayed to this phase that it refused (a forged relay, a proof that no longer holds),
    # and every decision sent to the phase itself, taken or refused: the launch's audit trail
    # shows them with its own entries.
    refusals: list[AuditEntry] = Field(default_factory=list)


class MetricUpdate(Message):
    """An analysis result that changed since the phase's previous report: the result at
    `index` of the phase's analysis as it is now, with only the measurements taken since."""

    index: int = Field(ge=0)
    result: MetricResult


class PhaseReport(Sealed):
    """What changed in a phase since its previous report, sent to its launch.

    The phase's small fields come as they are now; of its lists only what is new. A list the
    phase only appends to says where its new items start (`*_from`), so the launch can tell
    that it missed a report. `seq` grows with every report, so the launch takes each once and
    in order; `launch_run` says which launch run it is for.
    """

    phase: Annotated[str, Field(max_length=128)]
    seq: int
    launch_run: Annotated[str, Field(max_length=128)]
    status: PhaseStatusValue
    step: int = 0
    steps: int = 0
    exposure: float | None = None
    activity: str = ""
    reason: str = ""
    open_gate: OpenGate | None = None
    decisions_from: int = Field(default=0, ge=0)
    decisions: list[Decision] = Field(default_factory=list)
    analysis: list[MetricUpdate] = Field(default_factory=list)
    findings_from: int = Field(default=0, ge=0)
    findings: list[Finding] = Field(default_factory=list)
    compensations_from: int = Field(default=0, ge=0)
    compensations: list[CompensationRecord] = Field(default_factory=list)
    refusals: list[AuditEntry] = Field(default_factory=list)


class PhaseEndRequest(Message):
    """Ask the server how a phase workflow the launch did not see finish ended."""

    workflow_id: str
    run_id: str = ""


class PhaseEnd(Message):
    """How the server ended a phase workflow: terminated (by whom, why) or timed out."""

    how: Literal["terminated", "timed_out", "other"]
    reason: str = ""
    identity: str = ""


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
    # The exposure in force: after an undo of the exposure ran, the weight it restored.
    exposure: float | None = None
    # Why `exposure` may not be what the router serves (an exposure undo failed or was skipped).
    exposure_note: str = ""
    open_gate: OpenGate | None = None
    waiting_for: str = ""
    # While the rollback waits on a database restore that would lose live writes: what.
    writes_at_risk: WritesAtRiskReport | None = None
    # While the launch is paused: who paused it and why; exposure holds, analysis goes on.
    paused: Hold | None = None
    # Background analysis (from the first exposure change) and the post-launch watch.
    background: list[MetricResult] = Field(default_factory=list)
    watch_ends_at: datetime | None = None
    phases: list[PhaseState] = Field(default_factory=list)
    decisions: list[Decision] = Field(default_factory=list)
    audit: list[AuditEntry] = Field(default_factory=list)
    # Audit entries no longer kept (the trail keeps the newest).
    audit_dropped: int = 0
    compensations: list[CompensationRecord] = Field(default_factory=list)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class DecisionMemory(Message):
    """What the launch's decision checks remember: request ids and proofs spent, gates decided
    (each as gate id and the time it opened)."""

    seen_ids: list[str] = Field(default_factory=list)
    spent_proofs: list[str] = Field(default_factory=list)
    decided: list[tuple[str, str]] = Field(default_factory=list)


class EvidenceMemory(Message):
    """The analysis evidence the launch showed: the current id, and for each id seen how many
    measurements had failed or were inconclusive."""

    current: str = "ev-0"
    bad: dict[str, int] = Field(default_factory=lambda: {"ev-0": 0})


class LaunchCarry(Message):
    """What a launch hands its next run when it continues as new between phases: everything
    its status shows and everything its checks remember."""

    next_phase: int = Field(ge=0)
    runs: int = Field(default=1, ge=1)
    phases: list[PhaseState]
    audit: list[AuditEntry] = Field(default_factory=list)
    audit_dropped: int = 0
    started_at: datetime
    run: str
    started_by: str = ""
    authority: ApprovalAuthority | None = None
    announced: list[tuple[str, str]] = Field(default_factory=list)
    reports_seen: dict[str, int] = Field(default_factory=dict)
    key_reloads: int = 0
    decisions: DecisionMemory = Field(default_factory=DecisionMemory)
    evidence: EvidenceMemory = Field(default_factory=EvidenceMemory)
    paused: Hold | None = None
    background: list[MetricResult] = Field(default_factory=list)


class AnalysisFinding(Message):
    """What continuous analysis asks the launch to do, and why (with the evidence)."""

    action: Literal["rollback", "pause"]
    reason: str


class ContinuousInput(Message):
    """What the launch gives its background or watch analysis workflow."""

    launch_id: str
    launch_run: str
    plan: LaunchPlan
    label: Literal["background", "watch"]
    # The results so far (kept across restarts and continue-as-new).
    results: list[MetricResult] = Field(default_factory=list)
    # Rounds in a row each metric gave no verdict.
    quiet: dict[str, int] = Field(default_factory=dict)
    # The watch window's end; the background runs until the launch stops it.
    ends_at: datetime | None = None
    # The launch is held already: only a finding that asks for a rollback ends the run.
    held: bool = False
    rounds: int = 0


class ContinuousOutcome(Message):
    """How a background or watch analysis run ended: with a finding for the launch, at the
    end of the watch window, or stopped by the launch."""

    results: list[MetricResult] = Field(default_factory=list)
    quiet: dict[str, int] = Field(default_factory=dict)
    finding: AnalysisFinding | None = None
    ended: Literal["finding", "window_over", "stopped"]


class StopAnalysis(Sealed):
    """The launch ending its background or watch analysis, sealed by its worker."""

    launch_run: Annotated[str, Field(max_length=128)]


class LaunchResult(Message):
    launch_id: str
    status: LaunchStatusValue
    reason: str = ""
    final: LaunchStatus


# `LaunchInput` names `LaunchCarry`, defined after it.
LaunchInput.model_rebuild()
