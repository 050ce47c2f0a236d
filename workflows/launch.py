"""The launch: run the plan's phases in order, take go/no-go decisions, roll back on failure.

People talk to this workflow only. It checks every `approve` / `reject` / `abort` (recording
refusals in the audit trail instead of failing), relays decisions to the phase that owns the
gate, and on a failed phase, a rejection, an abort or a gate timeout runs every registered
compensation in reverse order.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, CancelledError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from schemas.decision_messages import (
        AbortRequest,
        CompensationAction,
        Decision,
        DecisionRequest,
        DecisionVerb,
    )
    from schemas.launch_messages import (
        CompensationRecord,
        LaunchInput,
        LaunchResult,
        LaunchStatus,
        LaunchStatusValue,
        OpenGate,
        PhaseInput,
        PhaseState,
        PhaseStatusValue,
    )
    from workflows.audit import AuditTrail
    from workflows.gates import DecisionChecks
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
FINISHED = (LaunchStatusValue.COMPLETED, LaunchStatusValue.ROLLED_BACK)


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
        self._checks = DecisionChecks([g for phase in inp.plan.phases for g in phase.gate_ids()])
        self._notifier = Notifier(inp.launch_id, inp.plan)
        self._rollback = Rollback(self._notifier, self._publish)

    # --- the run ----------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: LaunchInput) -> LaunchResult:
        self._started_at = workflow.now()
        self._publish()
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

    async def _run_phase(self, inp: LaunchInput, index: int) -> None:
        phase = inp.plan.phases[index]
        self._child = await workflow.start_child_workflow(
            PHASE_WORKFLOWS[phase.kind],
            PhaseInput(launch_id=inp.launch_id, plan=inp.plan, phase_index=index),
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
            return f"aborted by {self._abort.by}: {self._abort.reason}"
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
        description='Go: approve the open gate. Input: {"gate": "<gate id>", "approver": "<name>", "comment": "..."}',
    )
    async def approve(self, payload: Any = None) -> None:
        await self._signal_decision("approve", payload)

    @workflow.signal(
        name="reject",
        description='No-go: reject the open gate and roll back. Input: {"gate": "<gate id>", "approver": "<name>", "comment": "..."}',
    )
    async def reject(self, payload: Any = None) -> None:
        await self._signal_decision("reject", payload)

    @workflow.signal(
        name="abort",
        description='Stop the launch now and roll back everything it changed. Input: {"reason": "...", "by": "<name>"}',
    )
    def abort(self, payload: Any = None) -> None:
        request = self._audit.parse("abort", AbortRequest, payload)
        if request is None:
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
        description='Try a failing undo again after fixing its cause. Input: {"compensation": "<id>", "by": "<name>"}',
    )
    def retry_compensation(self, payload: Any = None) -> None:
        self._compensation_signal("retry", payload)

    @workflow.signal(
        name="skip_compensation",
        description='Give up on a failing undo, on record. Input: {"compensation": "<id>", "by": "<name>", "comment": "why"}',
    )
    def skip_compensation(self, payload: Any = None) -> None:
        self._compensation_signal("skip", payload)

    @workflow.update(
        name="decide",
        description='Approve or reject a gate and get an immediate answer. Input: {"gate", "approver", "decision": "approve"|"reject", "comment"}',
    )
    async def decide(self, request: DecisionRequest) -> Decision:
        gate = self._open_gate()
        # The validator refused the update unless the gate is open and the decision named.
        assert gate is not None
        assert request.decision is not None
        decision = self._checks.take(request, request.decision, gate, "update")
        self._audit.record(
            f"decide:{request.decision}", request.model_dump(mode="json"), accepted=True
        )
        await self._relay(decision)
        return decision

    @decide.validator
    def _validate_decide(self, request: DecisionRequest) -> None:
        problem = self._checks.refusal(request, None, self._open_gate())
        if problem:
            raise DecisionRefused(problem)

    @workflow.signal(
        name=PROGRESS_SIGNAL, description="Internal: a phase workflow reports its state."
    )
    async def phase_progress(self, state: PhaseState) -> None:
        for index, known in enumerate(self._phases):
            if known.name == state.name:
                self._phases[index] = state
                self._publish()
        gate = state.open_gate
        if gate is not None and (gate.gate, gate.opened_at.isoformat()) not in self._announced:
            self._announced.add((gate.gate, gate.opened_at.isoformat()))
            await self._notifier.send(
                "gate_opened",
                f"gate {gate.gate} waits for a decision: {gate.question}",
                {
                    "gate": gate.gate,
                    "approvers": gate.approvers,
                    "deadline": gate.deadline.isoformat(),
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
        gate = self._open_gate()
        problem = self._checks.refusal(request, verb, gate)
        if problem or gate is None:
            self._audit.record(verb, payload, accepted=False, note=problem)
            return
        self._audit.record(verb, payload, accepted=True)
        await self._relay(self._checks.take(request, verb, gate, "signal"))

    async def _relay(self, decision: Decision) -> None:
        if self._child is None:
            return
        # Close the gate in the launch's view at once; the phase confirms it with its next
        # report (which replaces this view, should the phase have ignored the decision).
        for phase in self._phases:
            if phase.open_gate is not None and phase.open_gate.gate == decision.gate:
                phase.open_gate = None
                phase.status = PhaseStatusValue.RUNNING
                phase.decisions.append(decision)
        self._publish()
        await self._child.signal(RELAY_SIGNAL, decision)

    def _compensation_signal(self, action: UndoAction, payload: Any) -> None:
        handler = f"{action}_compensation"
        request = self._audit.parse(handler, CompensationAction, payload)
        if request is None:
            return
        problem = self._rollback.refusal(action, request, self._input.plan.approvals.approvers)
        if problem:
            self._audit.record(handler, payload, accepted=False, note=problem)
            return
        self._audit.record(handler, payload, accepted=True)
        self._rollback.act(action, request)

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
        return describe_gate(gate, self._input.launch_id) if gate is not None else ""

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
            phase=current.name if current else "",
            phase_index=self._phase_index,
            step=current.step if current else 0,
            exposure=exposure,
            open_gate=self._open_gate(),
            waiting_for=self._waiting_for(),
            phases=self._phases,
            decisions=[d for phase in self._phases for d in phase.decisions],
            audit=self._audit.entries,
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
