"""What every phase workflow shares: its state, progress reports to the launch, gates, undo log.

A phase reports what changed to the parent launch (`workflows/progress.py`) before every undo
is registered, before anything that waits (a bake, a measurement, a gate, a hold) and when it
ends, so the rollback always knows every registered compensation, even if the phase dies
mid-step, and the launch's `status` query and the UI show the open gate and the exposure held
while anything waits. Between two instant steps the launch's copy may be a step behind;
`phasegate status` reads the running phase itself. An error the phase's code
did not expect fails the phase like any other failure, with its state, so the launch rolls back
everything it registered; it never leaves the phase retrying a workflow task forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, FailureError
from temporalio.workflow import NondeterminismError

with workflow.unsafe.imports_passed_through():
    from schemas.decision_messages import Decision, DecisionRequest, Hold, HoldRelay
    from schemas.gate_spec import GateSpec, gate_id
    from schemas.launch_messages import AuditEntry, PhaseInput, PhaseState, PhaseStatusValue
    from schemas.phase_spec import PhaseSpec
    from workflows.analysis import run_analysis, summarize
    from workflows.compensation import CompensationLog
    from workflows.evidence import EvidenceLog
    from workflows.gates import (
        KEEP_NOTE_CHARS,
        KEEP_REFUSALS,
        NO_REQUEST,
        DecisionChecks,
        DecisionRefused,
        GateKeeper,
        Refused,
        Trust,
    )
    from workflows.progress import ReportedSoFar
    from workflows.visibility import describe_gate, percent

PROGRESS_SIGNAL = "phase_progress"
RELAY_SIGNAL = "relay_decision"
HOLD_SIGNAL = "relay_hold"
# Launches started since this patch report a change only people watching need (exposure, what
# the phase does now) with the phase's next report rather than a report of its own.
LEAN_PROGRESS = "progress-rides-along"
# Since this patch a phase sends no report before it knows which run of its launch it reports
# to: one sent earlier would be refused, and the launch would refuse every later one as a gap.
REPORTS_AFTER_START = "reports-after-start"
# Hold relays kept when they arrive before the phase's run has begun (only the launch sends
# them, at most a few).
KEEP_EARLY_HOLDS = 8
# Errors of the workflow code itself (a bug, a value it cannot handle). Raised outside
# `run_phase`'s own handling (e.g. in a handler) they fail the phase workflow, which the launch
# rolls back, instead of its workflow task, which the server would retry forever. Temporal's
# NondeterminismError is none of these: a replay that no longer fits keeps retrying until the
# fixed code is deployed.
UNEXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ArithmeticError,
    AssertionError,
    AttributeError,
    LookupError,
    NameError,
    TypeError,
    ValueError,
)
KEEP_REASON_CHARS = 2000


class GateRejected(ApplicationError):
    def __init__(self, decision: Decision) -> None:
        by = "the gate's timeout" if decision.source == "timeout" else decision.by
        comment = f": {decision.comment}" if decision.comment else ""
        super().__init__(
            f"gate {decision.gate} rejected by {by}{comment}",
            type="GateRejected",
            non_retryable=True,
        )


class PhaseWorkflow:
    """Base class of the phase workflows; subclasses implement `body`."""

    def __init__(self) -> None:
        self.state = PhaseState(name="", kind="")
        self.gates = GateKeeper(self.state, self)
        self.compensations = CompensationLog(self.state, self.report_delivered)
        self._launch_id = ""
        self._launch_run = ""
        self._reported = ReportedSoFar()
        self._unsent = False
        self._sender: asyncio.Task[None] | None = None
        self._closed = False
        # While set, exposure does not change: the launch is paused.
        self.hold: Hold | None = None
        self._early_holds: list[HoldRelay] = []
        # The launch's checks of a decision sent to this phase itself, once the phase runs.
        self._checks: DecisionChecks | None = None
        self._evidence = EvidenceLog()
        self._earlier: list[PhaseState] = []

    @workflow.signal(
        name=RELAY_SIGNAL,
        description="Internal: a vote the launch checked, sealed by its worker. People send "
        "`approve` / `reject` to the launch workflow, or this phase's `decide` update, instead; "
        "anything else sent here is refused.",
    )
    async def relay_decision(self, payload: Any = None) -> None:
        try:
            await self.gates.receive(payload)
        except Exception as err:
            if isinstance(err, NondeterminismError):
                raise
            workflow.logger.error("relayed vote not handled", exc_info=err)
            self.gates.refuse(None, internal_error("relay_decision", err))
            await self.report()

    @workflow.update(
        name="decide",
        description="Approve or reject this phase's open gate and get an immediate answer: "
        "checked exactly as the launch checks a decision, one hop sooner (`phasegate approve` "
        'sends it here). Input: {"gate", "decision": "approve"|"reject", "comment", "proof"} '
        '(with `identity: none`, "approver" instead of the proof). A refusal is an error naming '
        "the field, recorded in the launch's audit trail.",
    )
    async def decide(self, request: DecisionRequest | None = None) -> Decision:
        if not isinstance(request, DecisionRequest):
            raise DecisionRefused(NO_REQUEST)
        try:
            if self._checks is None:
                raise Refused(
                    "gate: this phase takes decisions through its launch (it has not started, "
                    "or its launch did not hand it the evidence); send the decision to the launch"
                )
            decision = self.gates.take_direct(self._checks, self._check_evidence, request)
        except Exception as err:
            if isinstance(err, NondeterminismError):
                raise
            # An error of this code is the update's refusal too: let out of the handler, it
            # would fail the phase's workflow task again and again.
            why = str(err) if isinstance(err, Refused) else internal_error("decide", err)
            self.gates.record_request(request, accepted=False, note=why)
            await self.report()
            raise DecisionRefused(why) from None
        if decision.pending:
            await self.report()
        else:
            # The gate closes: the phase reports it as soon as its wait wakes.
            self.note_change()
        return decision

    @decide.validator
    def _decide_input(self, request: DecisionRequest | None = None) -> None:
        if not isinstance(request, DecisionRequest):
            raise DecisionRefused(NO_REQUEST)

    def _check_evidence(self, seen: str) -> None:
        """The launch's evidence check, over the phases before this one and this one."""
        self._evidence.observe([*self._earlier, self.state])
        self._evidence.check(seen)

    @workflow.signal(
        name=HOLD_SIGNAL,
        description="Internal: the launch holding this phase's exposure (paused) or letting it go on, "
        "sealed by its worker. People send `pause` / `resume` to the launch workflow instead; "
        "anything else sent here is refused.",
    )
    async def relay_hold(self, payload: Any = None) -> None:
        try:
            relay = HoldRelay.model_validate(payload)
        except ValidationError as err:
            self._refuse_hold(f"not a hold relay: {err.error_count()} problem(s)")
            await self.report()
            return
        if not self._launch_run:
            # Arrived before the phase's run began: checked as soon as it knows its launch.
            self._early_holds = [*self._early_holds, relay][-KEEP_EARLY_HOLDS:]
            return
        self._take_hold(relay)
        await self.report()

    def _take_hold(self, relay: HoldRelay) -> None:
        if not relay.sealed:
            self._refuse_hold("seal: not sent by a Phasegate worker; people pause the launch")
        elif relay.launch_run != self._launch_run:
            self._refuse_hold("launch_run: a hold for another run of this launch")
        else:
            self.hold = relay.hold
            self.note_change()

    def _refuse_hold(self, why: str) -> None:
        workflow.logger.warning("refused a hold relay: %s", why)
        entry = AuditEntry(
            at=workflow.now(),
            handler=f"{self.state.name}:{HOLD_SIGNAL}",
            payload=None,
            accepted=False,
            note=why[:KEEP_NOTE_CHARS],
        )
        self.state.refusals = [*self.state.refusals, entry][-KEEP_REFUSALS:]

    async def holding(self) -> None:
        """Before an exposure change: wait while the launch is paused."""
        if self.hold is None:
            return
        before = self.state.activity
        while (hold := self.hold) is not None:
            self.state.activity = (
                f"paused by {hold.by}: {hold.reason} (exposure holds; `resume` goes on)"
            )[:KEEP_REASON_CHARS]
            await self.report()
            await workflow.wait_condition(lambda: self.hold is not hold)
        self.state.activity = before
        await self.report()

    @workflow.query(
        name="status", description="This phase's state: step, exposure, open gate, analysis."
    )
    def status(self) -> PhaseState:
        return self.state

    async def report(self) -> None:
        """Tell the launch about the latest state without waiting for it to arrive.

        One report is in flight at a time; changes made meanwhile go out together in the next
        one, so a busy step costs the launch a handful of signals, not one per change, and the
        phase never waits on the launch to go on with its work.
        """
        workflow.set_current_details(self._details())
        if workflow.info().parent is None or self._closed:
            return
        if not self._launch_run and workflow.patched(REPORTS_AFTER_START):
            # Not started yet (a message came first): the first report, once the phase knows
            # which run of its launch it reports to, carries this too.
            self._unsent = True
            return
        # Every evidence id the launch can show comes with a report: remember each.
        self._evidence.observe([*self._earlier, self.state])
        self._unsent = True
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_reports())

    def note_change(self) -> None:
        """Record that the state changed; the next report (or the phase's result) carries it."""
        workflow.set_current_details(self._details())
        if not self._closed:
            self._unsent = True

    async def progress(self) -> None:
        """Tell of a change only people watching need (exposure, what the phase does now).

        It rides along with the phase's next report, which goes out before anything that
        waits (a bake, a measurement, a gate, a hold) and before every undo is registered,
        or with the phase's result; meanwhile `phasegate status` reads the running phase
        itself. So a run of instant steps costs the launch no signal per step.
        """
        if workflow.patched(LEAN_PROGRESS):
            self.note_change()
        else:
            await self.report()

    async def report_delivered(self) -> None:
        """Report and wait until the launch has the state, e.g. before a change whose undo it
        must know of."""
        await self.report()
        while self._sender is not None and not self._sender.done():
            await asyncio.shield(self._sender)

    async def _send_reports(self) -> None:
        parent = workflow.info().parent
        assert parent is not None
        launch = workflow.get_external_workflow_handle(parent.workflow_id)
        while self._unsent and not self._closed:
            self._unsent = False
            report = self._reported.next_report(self.state, self.gates.refused, self._launch_run)
            try:
                await launch.signal(PROGRESS_SIGNAL, report)
            except FailureError as err:
                # The launch has closed (e.g. it finished its rollback after an abort): there
                # is nobody left to tell, and this phase's result says the rest.
                workflow.logger.info("progress report not delivered to %s: %s", launch.id, err)
                return

    def _details(self) -> str:
        if self.state.open_gate is not None:
            authority = self.gates.trust.authority
            return describe_gate(
                self.state.open_gate,
                self._launch_id,
                self._launch_run,
                service=authority.issuer if authority is not None else "",
            )
        step = f"step {self.state.step}/{self.state.steps}, " if self.state.step else ""
        return f"{self.state.name}: {self.state.status.value}, {step}{percent(self.state.exposure)}. {self.state.activity}"

    async def require(
        self,
        gate: str,
        spec: GateSpec,
        question: str,
        inp: PhaseInput[PhaseSpec],
        *,
        needs_reason: bool = False,
    ) -> Decision:
        """Open a gate and raise `GateRejected` unless a person (or the plan's timeout) says go.

        With `needs_reason` the launch refuses a decision whose comment is empty.
        """
        decision = await self.gates.decide(
            gate, inp.plan.gate(spec), question, needs_reason=needs_reason
        )
        if decision.outcome != "approved":
            raise GateRejected(decision)
        return decision

    async def analyse(
        self, inp: PhaseInput[PhaseSpec], names: list[str], *, where: str, gate: str, go_on: str
    ) -> None:
        """Run the named analyses for the current step: a failure fails the phase (the launch
        rolls back without asking); an inconclusive result asks a person at `gate`."""
        verdict, results = await run_analysis(
            inp.plan, self.state, self.state.step, names, self.report
        )
        failed = [result for result in results if result.verdict == "failed"]
        if failed and all(inp.plan.analysis[r.metric].on_failure == "pause" for r in failed):
            # Every failed metric asks a person instead: exposure holds at the gate.
            self.state.activity = f"analysis {where} failed: exposure holds, waiting for a person"
            await self.require(
                gate,
                GateSpec(),
                f"Analysis {where} failed ({summarize(results)}). Exposure holds. "
                f"Approve to {go_on}, reject to roll back.",
                inp,
            )
            return
        if verdict == "failed":
            raise ApplicationError(
                f"analysis failed {where}: {summarize(results)}",
                type="AnalysisFailed",
                non_retryable=True,
            )
        if verdict == "inconclusive":
            self.state.activity = f"analysis {where} inconclusive: waiting for a person"
            await self.require(
                gate,
                GateSpec(),
                f"Analysis {where} was inconclusive ({summarize(results)}). "
                f"Approve to {go_on}, reject to roll back.",
                inp,
            )

    async def run_phase(
        self, inp: PhaseInput[PhaseSpec], body: Callable[[], Awaitable[None]]
    ) -> PhaseState:
        parent = workflow.info().parent
        if parent is None or parent.workflow_id != inp.launch_id:
            # Only a launch runs a phase: started on its own, nobody would check its gates.
            raise ApplicationError(
                f"a {inp.phase.kind} phase runs only as a child of launch {inp.launch_id!r}",
                type="NotAChildOfItsLaunch",
                non_retryable=True,
            )
        phase = inp.phase
        self._launch_id = inp.launch_id
        self._launch_run = inp.launch_run
        for relay in self._early_holds:
            self._take_hold(relay)
        self._early_holds.clear()
        self.gates.trust = Trust(
            inp.plan.approvals.authenticated,
            inp.authority,
            inp.launch_id,
            inp.launch_run,
            inp.started_by,
        )
        self._earlier = [PhaseState(name="earlier", kind="", analysis=list(inp.earlier_analysis))]
        if inp.evidence is not None:
            self._evidence.recall(inp.evidence, [*self._earlier, self.state])
        # A phase its launch started without the evidence (a launch begun on an earlier
        # version) cannot check a decision as the launch would: those go to the launch.
        if inp.evidence is not None:
            self._checks = DecisionChecks(inp.phase.gate_ids(), self.gates.trust)
        self.state.name, self.state.kind = phase.name, phase.kind
        self.state.steps = phase.step_count()
        self.state.status = PhaseStatusValue.RUNNING
        await self.progress()
        try:
            await self._phase_gate(
                inp,
                "before",
                phase.gates.before,
                f"Start {phase.name} of {inp.plan.service} {inp.plan.version}?",
            )
            await body()
            await self._phase_gate(
                inp, "after", phase.gates.after, f"{phase.name} is done; go on to the next phase?"
            )
        except asyncio.CancelledError:
            self.state.status = PhaseStatusValue.CANCELLED
            self.state.reason = "cancelled by the launch (abort or analysis)"
            self.state.open_gate = None
            await asyncio.shield(asyncio.ensure_future(self.report_delivered()))
            raise
        except Exception as err:
            if isinstance(err, NondeterminismError):
                raise
            if isinstance(err, ApplicationError | ActivityError):
                reason = failure_reason(err)
            else:
                workflow.logger.error("phase %s: internal error", phase.name, exc_info=err)
                reason = internal_error(phase.name, err)
            self.state.status = PhaseStatusValue.FAILED
            self.state.reason = reason
            self.state.open_gate = None
            await self._close()
            raise ApplicationError(
                self.state.reason, self.state, type="PhaseFailed", non_retryable=True
            ) from err
        self.state.status = PhaseStatusValue.COMPLETED
        self.state.activity = "done"
        await self._close()
        return self.state

    async def _phase_gate(
        self, inp: PhaseInput[PhaseSpec], where: str, spec: GateSpec | None, question: str
    ) -> None:
        """The phase's own gate before or after its work, where the plan asks for one."""
        if spec is not None:
            await self.require(gate_id(inp.phase.name, where), spec, question, inp)

    async def _close(self) -> None:
        """The phase is over: its result (or failure details) carries the final state to the
        launch, so no more reports are sent; the one in flight, if any, lands first."""
        self._closed = True
        workflow.set_current_details(self._details())
        while self._sender is not None and not self._sender.done():
            await asyncio.shield(self._sender)


def failure_reason(err: BaseException) -> str:
    """Why something failed, in one bounded line."""
    if isinstance(err, ActivityError):
        cause = err.cause
        why = cause.message if isinstance(cause, ApplicationError) else cause
        return f"activity {err.activity_type} failed: {why}"[:KEEP_REASON_CHARS]
    if isinstance(err, ApplicationError):
        return err.message[:KEEP_REASON_CHARS]
    return str(err)[:KEEP_REASON_CHARS]


def internal_error(where: str, err: BaseException) -> str:
    """An error of Phasegate's own workflow code, in one bounded line saying where."""
    return f"internal error in {where}: {type(err).__name__}: {err}"[:KEEP_REASON_CHARS]
