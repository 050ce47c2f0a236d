"""The launch: run the plan's phases in order, take go/no-go decisions, roll back on failure.

People talk to this workflow only. It validates every `approve` / `reject` / `abort`
(recording refusals in the audit trail instead of failing), relays decisions to the phase
that owns the gate, and on a failed phase, a rejection, an abort or a gate timeout runs
every registered compensation in reverse order.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
)

with workflow.unsafe.imports_passed_through():
    from activities.notify import NOTIFY_OPTIONS, NotifyActivities
    from schemas.decision_messages import (
        AbortRequest,
        CompensationAction,
        DecideRequest,
        GateDecision,
        RelayedDecision,
    )
    from schemas.launch_messages import (
        AuditEntry,
        CompensationRecord,
        Decision,
        LaunchInput,
        LaunchResult,
        LaunchStatus,
        LaunchStatusValue,
        OpenGate,
        PhaseInput,
        PhaseState,
        PhaseStatusValue,
    )
    from schemas.notification_spec import NotificationEvent
    from schemas.notify_messages import Notification
    from workflows.compensation import compensation_options
    from workflows.full_launch import FullLaunchWorkflow
    from workflows.infra_setup import InfraSetupWorkflow
    from workflows.migration_cutover import MigrationCutoverWorkflow
    from workflows.phase import PROGRESS_SIGNAL, RELAY_SIGNAL, failure_reason
    from workflows.security_validation import SecurityValidationWorkflow
    from workflows.soft_launch import SoftLaunchWorkflow
    from workflows.visibility import PHASE, SERVICE, STATUS, describe_gate, percent

PHASE_WORKFLOWS: dict[str, Any] = {
    "infra_setup": InfraSetupWorkflow.run,
    "soft_launch": SoftLaunchWorkflow.run,
    "full_launch": FullLaunchWorkflow.run,
    "migration_cutover": MigrationCutoverWorkflow.run,
    "security_validation": SecurityValidationWorkflow.run,
}
FINISHED = (LaunchStatusValue.COMPLETED, LaunchStatusValue.ROLLED_BACK)
KEEP_AUDIT = 200
M = TypeVar("M", bound=BaseModel)


class DecisionRefused(ApplicationError):
    """Why a decision cannot be taken; raised by the `decide` validator, recorded for signals."""

    def __init__(self, message: str) -> None:
        super().__init__(message, type="DecisionRefused", non_retryable=True)


@workflow.defn(name="Launch")
class LaunchWorkflow:
    def __init__(self) -> None:
        self._input: LaunchInput | None = None
        self._status = LaunchStatusValue.RUNNING
        self._reason = ""
        self._phases: list[PhaseState] = []
        self._phase_index = -1
        self._phase_task: asyncio.Task[None] | None = None
        self._child: workflow.ChildWorkflowHandle[Any, Any] | None = None
        self._indexed: tuple[str, str, str] | None = None
        self._abort: AbortRequest | None = None
        self._audit: list[AuditEntry] = []
        self._seen_ids: set[str] = set()
        self._decided: set[tuple[str, str]] = set()
        self._compensation_action: tuple[str, CompensationAction] | None = None
        self._stuck: CompensationRecord | None = None
        self._announced: set[tuple[str, str]] = set()
        self._started_at: datetime | None = None
        self._finished_at: datetime | None = None

    # --- the run ----------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: LaunchInput) -> LaunchResult:
        self._input = inp
        self._started_at = workflow.now()
        self._phases = [
            PhaseState(name=p.name, kind=p.kind, steps=len(getattr(p, "steps", ())))
            for p in inp.plan.phases
        ]
        self._publish()
        await self._notify("launch_started", f"launch of {inp.plan.version} started")
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
        await self._notify("completed", f"{inp.plan.version} is live for every user")
        return await self._finish()

    async def _run_phase(self, inp: LaunchInput, index: int) -> None:
        phase = inp.plan.phases[index]
        self._child = await workflow.start_child_workflow(
            PHASE_WORKFLOWS[phase.kind],
            PhaseInput(launch_id=inp.launch_id, plan=inp.plan, phase_index=index),
            id=f"{inp.launch_id}.{phase.name}",
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

    # --- rollback ---------------------------------------------------------------------

    async def _roll_back(self, reason: str) -> None:
        self._status = LaunchStatusValue.ROLLING_BACK
        self._reason = reason
        self._publish()
        for record in reversed(self._compensations()):
            if record.status not in ("done", "skipped"):
                await self._compensate(record)
        self._status = LaunchStatusValue.ROLLED_BACK
        self._finished_at = workflow.now()
        self._publish()
        await self._notify("rolled_back", f"rolled back: {reason}")

    async def _compensate(self, record: CompensationRecord) -> None:
        """Run one undo until it succeeds, or until a person explicitly skips it."""
        while True:
            record.attempts += 1
            try:
                await workflow.execute_activity(
                    record.activity,
                    record.input,
                    summary=record.description,
                    **compensation_options(record),
                )
                record.status, record.error = "done", ""
                self._publish()
                return
            except ActivityError as err:
                record.status, record.error = "failed", failure_reason(err)
            self._stuck = record
            self._status = LaunchStatusValue.NEEDS_ATTENTION
            self._publish()
            await self._notify(
                "compensation_failed",
                f"undo {record.id} keeps failing ({record.error}); the rollback waits for a person",
                {"compensation": record.id, "description": record.description},
            )
            await workflow.wait_condition(lambda: self._compensation_action is not None)
            assert self._compensation_action is not None
            action, request = self._compensation_action
            self._compensation_action = None
            self._stuck = None
            self._status = LaunchStatusValue.ROLLING_BACK
            if action == "skip":
                record.status = "skipped"
                record.resolved_by = f"skipped by {request.by}: {request.comment}".rstrip(": ")
                self._publish()
                return
            record.resolved_by = f"retry requested by {request.by}"

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
        request = self._parse("abort", AbortRequest, payload)
        if request is None:
            return
        if (
            self._status in FINISHED
            or self._abort is not None
            or self._status
            in (
                LaunchStatusValue.ROLLING_BACK,
                LaunchStatusValue.NEEDS_ATTENTION,
            )
        ):
            self._record(
                "abort",
                payload,
                accepted=False,
                note=f"ignored: the launch is already {self._status.value}",
            )
            return
        self._abort = request
        self._record("abort", payload, accepted=True, note="rolling back")
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
    async def decide(self, request: DecideRequest) -> Decision:
        relayed = self._relayed(request, request.decision, "update")
        self._record(f"decide:{request.decision}", request.model_dump(mode="json"), accepted=True)
        await self._relay(relayed)
        return Decision(**relayed.model_dump())

    @decide.validator
    def _validate_decide(self, request: DecideRequest) -> None:
        problem = self._refusal(request)
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
            await self._notify(
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

    async def _signal_decision(self, handler: str, payload: Any) -> None:
        request = self._parse(handler, GateDecision, payload)
        if request is None:
            return
        problem = self._refusal(request)
        if problem:
            self._record(handler, payload, accepted=False, note=problem)
            return
        self._record(handler, payload, accepted=True)
        await self._relay(self._relayed(request, handler, "signal"))

    def _refusal(self, request: GateDecision) -> str:
        """Why this decision cannot be taken now, or "" if it can."""
        assert self._input is not None
        known = [gate for phase in self._input.plan.phases for gate in phase.gate_ids()]
        if request.gate not in known:
            return f"unknown gate {request.gate!r}; this plan's gates are: {', '.join(known) or 'none'}"
        if request.id and request.id in self._seen_ids:
            return f"duplicate: decision {request.id} was already taken"
        gate = self._open_gate()
        if gate is None or gate.gate != request.gate:
            now = f"the open gate is {gate.gate!r}" if gate else "no gate is open now"
            return f"gate {request.gate!r} is not open; {now}"
        if (gate.gate, gate.opened_at.isoformat()) in self._decided:
            return f"gate {request.gate!r} was already decided"
        if "*" not in gate.approvers and request.approver not in gate.approvers:
            return f"{request.approver!r} may not decide gate {request.gate!r}; approvers: {', '.join(gate.approvers)}"
        if gate.needs_reason and not request.comment.strip():
            return f"gate {request.gate!r} needs a comment giving the reason for the decision"
        return ""

    def _relayed(self, request: GateDecision, decision: str, source: str) -> RelayedDecision:
        gate = self._open_gate()
        assert gate is not None
        self._decided.add((gate.gate, gate.opened_at.isoformat()))
        if request.id:
            self._seen_ids.add(request.id)
        return RelayedDecision(
            gate=request.gate,
            outcome="approved" if decision == "approve" else "rejected",
            by=request.approver,
            comment=request.comment,
            at=workflow.now(),
            source="update" if source == "update" else "signal",
        )

    async def _relay(self, decision: RelayedDecision) -> None:
        if self._child is None:
            return
        # Close the gate in the launch's view at once; the phase confirms it with its next
        # report (which replaces this view, should the phase have ignored the decision).
        for phase in self._phases:
            if phase.open_gate is not None and phase.open_gate.gate == decision.gate:
                phase.open_gate = None
                phase.status = PhaseStatusValue.RUNNING
                phase.decisions.append(Decision(**decision.model_dump()))
        self._publish()
        await self._child.signal(RELAY_SIGNAL, decision)

    def _compensation_signal(self, action: str, payload: Any) -> None:
        handler = f"{action}_compensation"
        request = self._parse(handler, CompensationAction, payload)
        if request is None:
            return
        assert self._input is not None
        stuck = self._stuck
        if stuck is None or stuck.id != request.compensation:
            waiting = f"the stuck undo is {stuck.id!r}" if stuck else "no undo is waiting"
            self._record(
                handler,
                payload,
                accepted=False,
                note=f"{request.compensation!r} is not waiting; {waiting}",
            )
            return
        if (
            request.by not in self._input.plan.approvals.approvers
            and "*" not in self._input.plan.approvals.approvers
        ):
            self._record(
                handler,
                payload,
                accepted=False,
                note=f"{request.by!r} is not one of the plan's approvers",
            )
            return
        if action == "skip" and not request.comment:
            self._record(
                handler, payload, accepted=False, note="skipping an undo needs a comment saying why"
            )
            return
        self._record(handler, payload, accepted=True)
        self._compensation_action = (action, request)

    def _parse(self, handler: str, model: type[M], payload: Any) -> M | None:
        try:
            return model.model_validate(payload)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in err.errors()
            )
            self._record(handler, payload, accepted=False, note=f"malformed: {problems}")
            return None

    def _record(self, handler: str, payload: Any, *, accepted: bool, note: str = "") -> None:
        if accepted is False:
            workflow.logger.warning("refused %s: %s", handler, note)
        self._audit = [
            *self._audit,
            AuditEntry(
                at=workflow.now(),
                handler=handler,
                payload=_printable(payload),
                accepted=accepted,
                note=note,
            ),
        ][-KEEP_AUDIT:]
        self._publish()

    # --- what the launch shows ----------------------------------------------------------

    def _open_gate(self) -> OpenGate | None:
        for phase in self._phases:
            if phase.open_gate is not None:
                return phase.open_gate
        return None

    def _waiting_for(self) -> str:
        assert self._input is not None
        launch_id = self._input.launch_id
        if self._stuck is not None:
            record = self._stuck
            return (
                f"Rollback blocked: undo {record.id} ({record.description}) keeps failing: {record.error}\n"
                f"Fix the cause, then send the signal `retry_compensation` with input "
                f'`{{"compensation": "{record.id}", "by": "NAME"}}`, or give it up on record with '
                f'`skip_compensation` and `{{"compensation": "{record.id}", "by": "NAME", "comment": "why"}}`.'
            )
        gate = self._open_gate()
        if gate is not None:
            return describe_gate(gate, launch_id)
        return ""

    def _snapshot(self) -> LaunchStatus:
        assert self._input is not None
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
            status=LaunchStatusValue.WAITING
            if self._status == LaunchStatusValue.RUNNING and self._open_gate() is not None
            else self._status,
            reason=self._reason,
            phase=current.name if current else "",
            phase_index=self._phase_index,
            step=current.step if current else 0,
            exposure=exposure,
            open_gate=self._open_gate(),
            waiting_for=self._waiting_for(),
            phases=self._phases,
            decisions=[d for phase in self._phases for d in phase.decisions],
            audit=self._audit,
            compensations=self._compensations(),
            started_at=self._started_at,
            finished_at=self._finished_at,
        )

    def _publish(self) -> None:
        """Keep search attributes and the UI's current details in step with the state."""
        snapshot = self._snapshot()
        indexed = (snapshot.service, snapshot.phase or "starting", snapshot.status.value)
        if indexed != self._indexed:
            # Only on change: every upsert is an event and a visibility write.
            self._indexed = indexed
            workflow.upsert_search_attributes(
                [
                    SERVICE.value_set(indexed[0]),
                    PHASE.value_set(indexed[1]),
                    STATUS.value_set(indexed[2]),
                ]
            )
        headline = f"{snapshot.service} {snapshot.version}: {snapshot.status.value}"
        if snapshot.phase:
            headline += f" in {snapshot.phase} (step {snapshot.step}, {percent(snapshot.exposure)})"
        if snapshot.reason:
            headline += f"\nReason: {snapshot.reason}"
        if snapshot.waiting_for:
            headline += "\n" + snapshot.waiting_for
        workflow.set_current_details(headline)

    async def _finish(self) -> LaunchResult:
        await workflow.wait_condition(workflow.all_handlers_finished)
        snapshot = self._snapshot()
        return LaunchResult(
            launch_id=snapshot.launch_id,
            status=snapshot.status,
            reason=snapshot.reason,
            final=snapshot,
        )

    async def _notify(
        self, event: NotificationEvent, summary: str, details: dict[str, Any] | None = None
    ) -> None:
        assert self._input is not None
        plan = self._input.plan
        if not any(event in hook.events for hook in plan.notifications):
            return
        note = Notification(
            event=event,
            launch_id=self._input.launch_id,
            service=plan.service,
            version=plan.version,
            summary=summary,
            details=details or {},
            webhooks=plan.notifications,
        )
        try:
            await workflow.execute_activity_method(
                NotifyActivities.send_notification, note, **NOTIFY_OPTIONS
            )
        except ActivityError as err:
            workflow.logger.warning("notification %s not sent: %s", event, err)


def _printable(payload: Any) -> Any:
    """Keep an audit entry small and JSON-friendly whatever a sender put in it."""
    text = (
        repr(payload)
        if not isinstance(payload, dict | list | str | int | float | bool | type(None))
        else None
    )
    if text is not None:
        return text[:500]
    if isinstance(payload, str):
        return payload[:500]
    return payload
