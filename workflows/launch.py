"""The launch: run the plan's phases in order, take go/no-go decisions, roll back on failure.

People talk to this workflow only. It checks every `approve` / `reject` / `abort` (recording
refusals in the audit trail instead of failing), relays votes to the phase that owns the
gate, and on a failed phase, a rejection, an abort or a gate timeout runs every registered
compensation in reverse order.

Who asks is proven, not typed, when the plan names an identity provider: the launch records
who started it from the starter's proof and takes every decision, abort and undo action only
with a proof bound to it (`workflows/gates.py`). Its phases' reports count only when sealed by
a Phasegate worker, newest first and with an undo log that only grows.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
)

with workflow.unsafe.imports_passed_through():
    from activities.approvals import ApprovalActivities
    from activities.options import SECOND, activity_options, summarized
    from approvals.proofs import plan_digest, proof_key_id
    from schemas.decision_messages import (
        AbortRequest,
        AuthorityRequest,
        CompensationAction,
        Decision,
        DecisionRequest,
        DecisionVerb,
        GateVote,
    )
    from schemas.launch_messages import (
        CompensationRecord,
        LaunchInput,
        LaunchResult,
        LaunchStatus,
        LaunchStatusValue,
        OpenGate,
        PhaseInput,
        PhaseReport,
        PhaseState,
        PhaseStatusValue,
    )
    from workflows.audit import AuditTrail
    from workflows.evidence import EvidenceLog
    from workflows.gates import DecisionChecks, Refused, Trust, Vote, may_act
    from workflows.notifier import Notifier
    from workflows.phase import PROGRESS_SIGNAL, RELAY_SIGNAL, failure_reason
    from workflows.rollback import Rollback, UndoAction
    from workflows.visibility import LaunchView, describe_gate

# The workflow type each phase kind runs as (registered by workers/main.py).
PHASE_WORKFLOWS = {
    "infra_setup": "InfraSetup",
    "security_validation": "SecurityValidation",
    "soft_launch": "SoftLaunch",
    "full_launch": "FullLaunch",
    "migration_cutover": "MigrationCutover",
}
FINISHED = (LaunchStatusValue.COMPLETED, LaunchStatusValue.ROLLED_BACK, LaunchStatusValue.REFUSED)
AUTHORITY_OPTIONS = activity_options(30 * SECOND, attempts=5, longest_retry=10 * SECOND)
# How old an automated sender's sealed abort may be when it arrives.
FRESH_SEAL = timedelta(minutes=10)
# How often a proof naming an unknown key may make the launch reload the service's keys.
KEY_RELOADS = 5


class DecisionRefused(ApplicationError):
    """Why a decision cannot be taken; raised by the `decide` validator, recorded for signals."""

    def __init__(self, message: str) -> None:
        super().__init__(message, type="DecisionRefused", non_retryable=True)


@workflow.defn(name="Launch")
class LaunchWorkflow:
    @workflow.init
    def __init__(self, inp: LaunchInput) -> None:
        # Made before any handler runs: a signal may arrive in the launch's first moment.
        self._input = inp
        self._status = LaunchStatusValue.RUNNING
        self._reason = ""
        self._phase_index = -1
        self._phase_task: asyncio.Task[None] | None = None
        self._child: workflow.ChildWorkflowHandle[Any, PhaseState] | None = None
        self._abort: AbortRequest | None = None
        self._announced: set[tuple[str, str]] = set()
        self._started_at: datetime | None = None
        self._finished_at: datetime | None = None
        self._phases = [
            PhaseState(name=p.name, kind=p.kind, steps=p.step_count()) for p in inp.plan.phases
        ]
        self._view = LaunchView()
        self._audit = AuditTrail(self._publish)
        self._trust = Trust(
            inp.plan.approvals.authenticated,
            None,
            inp.launch_id,
            workflow.info().first_execution_run_id,
            inp.started_by if inp.plan.approvals.authenticated is None else "",
        )
        self._checks = DecisionChecks(
            [g for phase in inp.plan.phases for g in phase.gate_ids()], self._trust
        )
        self._evidence = EvidenceLog()
        self._reports_seen: dict[str, int] = {}
        self._key_reloads = 0
        self._notifier = Notifier(inp.launch_id, inp.plan)
        self._rollback = Rollback(self._notifier, self._publish)

    # --- the run ----------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: LaunchInput) -> LaunchResult:
        self._started_at = workflow.now()
        self._publish()
        problem = await self._check_starter(inp)
        if problem:
            self._status = LaunchStatusValue.REFUSED
            self._reason = f"not started, nothing changed: {problem}"
            self._finished_at = workflow.now()
            self._publish()
            return await self._finish()
        await self._notifier.send("launch_started", f"launch of {inp.plan.version} started")
        try:
            for index in range(len(inp.plan.phases)):
                if self._abort is not None:
                    raise asyncio.CancelledError
                self._phase_index = index
                self._phase_task = asyncio.create_task(self._run_phase(inp, index))
                try:
                    await self._phase_task
                finally:
                    self._phase_task = None
        except BaseException as err:
            if not isinstance(err, Exception | asyncio.CancelledError):
                raise  # the worker evicting this workflow from its cache: nothing to undo
            reason = self._failure(err)
            await asyncio.shield(asyncio.ensure_future(self._roll_back(reason)))
            return await self._finish()
        self._status = LaunchStatusValue.COMPLETED
        self._finished_at = workflow.now()
        self._publish()
        await self._notifier.send("completed", f"{inp.plan.version} is live for every user")
        return await self._finish()

    async def _check_starter(self, inp: LaunchInput) -> str:
        """Why the launch may not start (its starter's proof does not hold), or ""."""
        if self._trust.identity is None:
            return ""
        try:
            await self._load_keys("")
        except ActivityError as err:
            return f"the approval service's keys could not be loaded: {failure_reason(err)}"
        try:
            person = self._trust.person(
                "start", plan_digest(inp.plan), inp.start_proof, inp.started_by, workflow.now()
            )
        except Refused as err:
            return f"start_proof: {str(err).removeprefix('proof: ')}"
        self._trust.started_by = person.name
        return ""

    async def _load_keys(self, kid: str) -> None:
        """Load the approval service's keys the workers trust (again, if `kid` is new)."""
        self._trust.authority = await workflow.execute_activity_method(
            ApprovalActivities.approval_authority,
            AuthorityRequest(launch_id=self._input.launch_id, kid=kid[:128]),
            **summarized(
                AUTHORITY_OPTIONS,
                "load the approval service's keys" + (f" (new key {kid[:32]})" if kid else ""),
            ),
        )

    async def _run_phase(self, inp: LaunchInput, index: int) -> None:
        phase = inp.plan.phases[index]
        self._child = await workflow.start_child_workflow(
            PHASE_WORKFLOWS[phase.kind],
            PhaseInput(
                launch_id=inp.launch_id,
                plan=inp.plan,
                phase_index=index,
                launch_run=self._trust.run,
                started_by=self._trust.started_by,
                authority=self._trust.authority,
            ),
            id=f"{inp.launch_id}.{phase.name}",
            result_type=PhaseState,
            static_summary=f"{phase.kind} {phase.name} of {inp.plan.service} {inp.plan.version}",
        )
        try:
            self._phases[index] = await self._child
        except ChildWorkflowError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.details:
                self._phases[index] = PhaseState.model_validate(cause.details[0])
            raise
        finally:
            self._child = None
        self._publish()

    def _failure(self, err: BaseException) -> str:
        if self._abort is not None:
            return f"aborted by {self._abort.by or 'an unnamed sender'}: {self._abort.reason}"
        if isinstance(err, asyncio.CancelledError) or (
            isinstance(err, ChildWorkflowError) and isinstance(err.cause, CancelledError)
        ):
            return "the launch workflow was cancelled"
        if isinstance(err, ChildWorkflowError) and err.cause is not None:
            return failure_reason(err.cause)
        return failure_reason(err)

    async def _roll_back(self, reason: str) -> None:
        self._status = LaunchStatusValue.ROLLING_BACK
        self._reason = reason
        self._publish()
        await self._rollback.run(self._compensations())
        self._status = LaunchStatusValue.ROLLED_BACK
        self._finished_at = workflow.now()
        self._publish()
        await self._notifier.send("rolled_back", f"rolled back: {reason}")

    def _compensations(self) -> list[CompensationRecord]:
        return [record for phase in self._phases for record in phase.compensations]

    # --- people: signals, update, query -------------------------------------------------

    @workflow.signal(
        name="approve",
        description='Go: approve the open gate. Input: {"gate": "<gate id>", "comment": "...", "proof": "<from the approval service>"}; with `identity: none`, "approver": "<name>" instead of the proof. The launch\'s details give the exact input.',
    )
    async def approve(self, payload: Any = None) -> None:
        await self._signal_decision("approve", payload)

    @workflow.signal(
        name="reject",
        description="No-go: reject the open gate and roll back. Input as for `approve`.",
    )
    async def reject(self, payload: Any = None) -> None:
        await self._signal_decision("reject", payload)

    @workflow.signal(
        name="abort",
        description='Stop the launch now and roll back everything it changed. Input: {"reason": "...", "proof": "<from the approval service>"}; with `identity: none`, "by": "<name>" instead of the proof.',
    )
    def abort(self, payload: Any = None) -> None:
        request = self._audit.parse("abort", AbortRequest, payload)
        if request is None:
            return
        try:
            request = self._abort_sender(request)
        except Refused as err:
            self._audit.record("abort", payload, accepted=False, note=str(err))
            return
        status = self._current_status()
        if (
            status in FINISHED
            or self._abort is not None
            or status in (LaunchStatusValue.ROLLING_BACK, LaunchStatusValue.NEEDS_ATTENTION)
        ):
            note = f"ignored: the launch is already {status.value}"
            self._audit.record("abort", payload, accepted=False, note=note)
            return
        self._abort = request
        self._audit.record("abort", payload, accepted=True, note="rolling back")
        if self._phase_task is not None:
            self._phase_task.cancel()

    @workflow.signal(
        name="retry_compensation",
        description='Try a failing undo again after fixing its cause. Input: {"compensation": "<id>", "proof": "..."} (with `identity: none`, "by": "<name>").',
    )
    def retry_compensation(self, payload: Any = None) -> None:
        self._compensation_signal("retry", payload)

    @workflow.signal(
        name="skip_compensation",
        description='Give up on a failing undo, on record. Input: {"compensation": "<id>", "comment": "why", "proof": "..."} (with `identity: none`, "by": "<name>").',
    )
    def skip_compensation(self, payload: Any = None) -> None:
        self._compensation_signal("skip", payload)

    @workflow.update(
        name="decide",
        description='Approve or reject a gate and get an immediate answer. Input: {"gate", "decision": "approve"|"reject", "comment", "proof"} (with `identity: none`, "approver" instead of the proof). Answers with the vote\'s outcome; a refusal is an error naming the field and is recorded in the audit trail.',
    )
    async def decide(self, request: DecisionRequest) -> Decision:
        handler = f"decide:{request.decision or '?'}"
        payload = request.model_dump(mode="json")
        try:
            vote, gate = await self._vote(request, None)
        except Refused as err:
            self._audit.record(handler, payload, accepted=False, note=str(err))
            raise DecisionRefused(str(err)) from None
        relayed = self._checks.take(request, vote, gate, "update", workflow.now())
        decision = self._checks.closes(gate, relayed)
        self._audit.record(handler, payload, accepted=True, note=_counted(gate, decision))
        await self._relay(relayed, decision)
        return decision or _pending(gate, relayed)

    @workflow.signal(
        name=PROGRESS_SIGNAL,
        description="Internal: a phase workflow's report, sealed by its worker; anything else sent here is refused.",
    )
    async def phase_progress(self, payload: Any = None) -> None:
        report = self._audit.parse(PROGRESS_SIGNAL, PhaseReport, payload)
        if report is None:
            return
        problem = self._report_refusal(report)
        if problem:
            self._audit.record(
                PROGRESS_SIGNAL,
                {"phase": report.state.name[:64], "seq": report.seq},
                accepted=False,
                note=problem,
            )
            return
        state = report.state
        self._reports_seen[state.name] = report.seq
        for index, known in enumerate(self._phases):
            if known.name == state.name:
                self._phases[index] = state
        self._evidence.observe(self._phases)
        self._publish()
        gate = state.open_gate
        if gate is not None and (gate.gate, gate.opened_at.isoformat()) not in self._announced:
            self._announced.add((gate.gate, gate.opened_at.isoformat()))
            await self._notifier.send(
                "gate_opened",
                f"gate {gate.gate} waits for a decision: {gate.question}"
                + (
                    f" (approvals proven at {gate.identity})"
                    if gate.identity
                    else " (approvals are NOT authenticated: names are taken as typed)"
                ),
                {
                    "gate": gate.gate,
                    "approvers": gate.approvers,
                    "min_approvals": gate.min_approvals,
                    "deadline": gate.deadline.isoformat(),
                    "authenticated": bool(gate.identity),
                    "identity": gate.identity or "none",
                    "launch_run": self._trust.run,
                },
            )

    @workflow.query(
        name="status",
        description="The whole launch: phase, step, exposure, open gate, decisions, analysis, audit.",
    )
    def status(self) -> LaunchStatus:
        return self._snapshot()

    # --- decisions --------------------------------------------------------------------

    async def _signal_decision(self, verb: DecisionVerb, payload: Any) -> None:
        request = self._audit.parse(verb, DecisionRequest, payload)
        if request is None:
            return
        try:
            vote, gate = await self._vote(request, verb)
        except Refused as err:
            self._audit.record(verb, payload, accepted=False, note=str(err))
            return
        relayed = self._checks.take(request, vote, gate, "signal", workflow.now())
        decision = self._checks.closes(gate, relayed)
        self._audit.record(verb, payload, accepted=True, note=_counted(gate, decision))
        await self._relay(relayed, decision)

    async def _vote(
        self, request: DecisionRequest, verb: DecisionVerb | None
    ) -> tuple[Vote, OpenGate]:
        """The vote `request` casts at the open gate, or `Refused`; a proof signed with a key
        the launch has not loaded yet is checked again once the keys are reloaded."""
        for attempt in range(2):
            gate = self._open_gate()
            try:
                vote = self._checks.check(request, verb, gate, workflow.now())
                self._evidence.check(request.evidence)
            except Refused as err:
                if attempt == 0 and await self._reloaded_keys(request.proof, str(err)):
                    continue
                raise
            assert gate is not None
            return vote, gate
        raise Refused("proof: signed with a key the approval service no longer publishes")

    async def _reloaded_keys(self, proof: str, problem: str) -> bool:
        """Whether `proof` named a key the launch had not loaded (the approval service rotated
        its key) and reloading the keys found it; then the request is checked once more."""
        kid = proof_key_id(proof)
        authority = self._trust.authority
        if (
            not kid
            or authority is None
            or authority.key(kid) is not None
            or self._key_reloads >= KEY_RELOADS
            or not problem.startswith("proof: signed with key")
        ):
            return False
        self._key_reloads += 1
        try:
            await self._load_keys(kid)
        except ActivityError as err:
            # In a signal handler an escaping error would fail the launch: refuse the vote.
            workflow.logger.warning("approval service keys not reloaded: %s", failure_reason(err))
            return False
        return self._trust.authority is not None and self._trust.authority.key(kid) is not None

    async def _relay(self, vote: GateVote, decision: Decision | None) -> None:
        if self._child is None:
            return
        if decision is not None:
            # Close the gate in the launch's view at once; the phase confirms it with its next
            # report (which replaces this view, should the phase have refused the vote).
            for phase in self._phases:
                if phase.open_gate is not None and phase.open_gate.gate == decision.gate:
                    phase.open_gate = None
                    phase.status = PhaseStatusValue.RUNNING
                    phase.decisions.append(decision)
        self._publish()
        await self._child.signal(RELAY_SIGNAL, vote)

    def _abort_sender(self, request: AbortRequest) -> AbortRequest:
        """The abort with its sender proven: a Phasegate worker's sealed abort (the health
        schedule), or a person allowed to abort (the plan's approvers or the starter)."""
        if request.sealed:
            sent_at = request.sent_at
            if sent_at is None or not workflow.now() - FRESH_SEAL <= sent_at <= workflow.now():
                raise Refused("sent_at: a sealed abort must be fresh")
            return request
        person = self._trust.person(
            "abort", "", request.proof, request.by, workflow.now(), field="by"
        )
        allowed = [*self._input.plan.approvals.approvers, self._trust.started_by]
        if self._trust.identity is not None and not may_act(person, allowed):
            raise Refused(
                f"{person.name!r} may not abort this launch; the plan's approvers and its starter may"
            )
        return request.model_copy(update={"by": person.name})

    def _compensation_signal(self, action: UndoAction, payload: Any) -> None:
        handler = f"{action}_compensation"
        request = self._audit.parse(handler, CompensationAction, payload)
        if request is None:
            return
        try:
            person = self._trust.person(
                "retry_compensation" if action == "retry" else "skip_compensation",
                request.compensation,
                request.proof,
                request.by,
                workflow.now(),
                field="by",
            )
            if not may_act(person, self._input.plan.approvals.approvers):
                raise Refused(f"{person.name!r} is not one of the plan's approvers")
            problem = self._rollback.refusal(action, request)
            if problem:
                raise Refused(problem)
        except Refused as err:
            self._audit.record(handler, payload, accepted=False, note=str(err))
            return
        self._audit.record(handler, payload, accepted=True, note=f"by {person.name}")
        self._rollback.act(action, request, person.name)

    def _report_refusal(self, report: PhaseReport) -> str:
        """Why a phase report is not taken, or "": only this launch's own phases' sealed
        reports count, newest first, and a phase's undo log may only grow."""
        if not report.sealed:
            return "seal: not sent by a Phasegate worker; phase reports come only from the launch's own phases"
        if report.launch_run != self._trust.run:
            return "launch_run: a report for another run of this launch"
        known = next((p for p in self._phases if p.name == report.state.name), None)
        if known is None:
            return f"state.name: {report.state.name[:64]!r} is not a phase of this launch"
        if report.seq <= self._reports_seen.get(known.name, 0):
            return f"seq: report {report.seq} is not newer than the last one taken"
        before = [(r.id, r.activity, r.input) for r in known.compensations]
        after = [(r.id, r.activity, r.input) for r in report.state.compensations]
        if after[: len(before)] != before:
            return "state.compensations: a phase's undo log may only grow"
        return ""

    # --- what the launch shows ----------------------------------------------------------

    def _open_gate(self) -> OpenGate | None:
        for phase in self._phases:
            if phase.open_gate is not None:
                return phase.open_gate
        return None

    def _current_status(self) -> LaunchStatusValue:
        if self._rollback.stuck is not None:
            return LaunchStatusValue.NEEDS_ATTENTION
        if self._status == LaunchStatusValue.RUNNING and self._open_gate() is not None:
            return LaunchStatusValue.WAITING
        return self._status

    def _waiting_for(self) -> str:
        if self._rollback.stuck is not None:
            return self._rollback.waiting_for()
        gate = self._open_gate()
        if gate is None:
            return ""
        authority = self._trust.authority
        return describe_gate(
            gate,
            self._input.launch_id,
            self._trust.run,
            self._evidence.current,
            authority.issuer if authority is not None else "",
        )

    def _snapshot(self) -> LaunchStatus:
        plan = self._input.plan
        current = (
            self._phases[self._phase_index] if 0 <= self._phase_index < len(self._phases) else None
        )
        exposure = next(
            (p.exposure for p in reversed(self._phases) if p.exposure is not None), None
        )
        return LaunchStatus(
            launch_id=self._input.launch_id,
            service=plan.service,
            version=plan.version,
            status=self._current_status(),
            reason=self._reason,
            run_id=self._trust.run,
            identity=self._trust.issuer,
            started_by=self._trust.started_by,
            evidence=self._evidence.current,
            phase=current.name if current else "",
            phase_index=self._phase_index,
            step=current.step if current else 0,
            exposure=exposure,
            open_gate=self._open_gate(),
            waiting_for=self._waiting_for(),
            phases=self._phases,
            decisions=[d for phase in self._phases for d in phase.decisions],
            audit=sorted(
                [*self._audit.entries, *(e for p in self._phases for e in p.refusals)],
                key=lambda entry: entry.at,
            ),
            compensations=self._compensations(),
            started_at=self._started_at,
            finished_at=self._finished_at,
        )

    def _publish(self) -> None:
        self._view.show(self._snapshot())

    async def _finish(self) -> LaunchResult:
        await workflow.wait_condition(workflow.all_handlers_finished)
        snapshot = self._snapshot()
        return LaunchResult(
            launch_id=snapshot.launch_id,
            status=snapshot.status,
            reason=snapshot.reason,
            final=snapshot,
        )


def _counted(gate: OpenGate, decision: Decision | None) -> str:
    if decision is not None:
        return f"{decision.outcome} by {decision.by}"
    return f"approval {len(gate.approvals)} of {gate.min_approvals} ({', '.join(gate.approvals)})"


def _pending(gate: OpenGate, vote: GateVote) -> Decision:
    """The update's answer to an approval the gate counted but that does not close it yet."""
    return Decision(
        gate=gate.gate,
        outcome="approved",
        by=vote.person,
        comment=vote.comment,
        at=vote.at,
        source=vote.source,
        people=list(gate.approvals),
        authenticated=gate.identity != "",
        pending=gate.min_approvals - len(gate.approvals),
    )
