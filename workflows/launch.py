"""The launch: run the plan's phases in order, take go/no-go decisions, roll back on failure.

People talk to this workflow, and to the phase waiting at a gate for that gate's decision
(`workflows/gates.py`). It checks every `approve` / `reject` / `abort` (recording refusals in
the audit trail instead of failing), relays votes to the phase that owns the gate, and on a
failed phase, a rejection, an abort or a gate timeout runs every registered compensation in
reverse order.

Who asks is proven, not typed, when the plan names an identity provider: the launch records
who started it from the starter's proof and takes every decision, abort and undo action only
with a proof bound to it (`workflows/gates.py`). Before anything changes the worker admits the
plan against its own limits (`activities/admission.py`); a refused launch changes nothing. Its
phases' reports count only when sealed by a Phasegate worker, in order and with an undo log
that only grows (`workflows/progress.py`).

Nothing a sender or a broken code path does leaves the launch stuck: a handler that fails
records a refusal (the update answers with an error), a phase that fails for any reason, is
terminated or times out is rolled back with the real reason, and the rollback itself goes on
past any error. Between phases the launch continues as new when its history grows long,
handing its next run everything its status shows and its checks remember.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    TerminatedError,
)
from temporalio.exceptions import TimeoutError as ServerTimeout
from temporalio.workflow import NondeterminismError

with workflow.unsafe.imports_passed_through():
    from activities.admission import ADMISSION_OPTIONS, AdmissionActivities
    from activities.approvals import ApprovalActivities
    from activities.options import SECOND, activity_options, summarized
    from activities.phase_end import PHASE_END_OPTIONS, PhaseEndActivities
    from approvals.proofs import Act, Person, plan_digest, proof_key_id
    from schemas.admission_messages import AdmissionRequest
    from schemas.analysis_spec import WatchWindow
    from schemas.decision_messages import (
        AbortRequest,
        AuthorityRequest,
        CompensationAction,
        Decision,
        DecisionRequest,
        DecisionVerb,
        GateVote,
        Hold,
        HoldAction,
        HoldRelay,
        HoldRequest,
    )
    from schemas.launch_messages import (
        AnalysisFinding,
        CompensationRecord,
        ContinuousInput,
        ContinuousOutcome,
        LaunchCarry,
        LaunchInput,
        LaunchResult,
        LaunchStatus,
        LaunchStatusValue,
        MetricResult,
        OpenGate,
        PhaseEnd,
        PhaseEndRequest,
        PhaseInput,
        PhaseReport,
        PhaseState,
        PhaseStatusValue,
        StopAnalysis,
    )
    from schemas.notification_spec import NotificationEvent
    from workflows.audit import AuditTrail
    from workflows.continuous import STOP_SIGNAL, forgive
    from workflows.evidence import EvidenceLog
    from workflows.gates import (
        NO_REQUEST,
        DecisionChecks,
        DecisionRefused,
        Refused,
        Trust,
        Vote,
        may_act,
    )
    from workflows.notifier import Notifier
    from workflows.phase import (
        HOLD_SIGNAL,
        KEEP_REASON_CHARS,
        PROGRESS_SIGNAL,
        RELAY_SIGNAL,
        failure_reason,
        internal_error,
    )
    from workflows.progress import merge_report, report_refusal
    from workflows.rollback import SIGNALS, Rollback, UndoAction
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
NO_HOLD = 'input: give a hold request: {"action": "pause"|"resume", "reason", ...}'


class PhaseEnded(Exception):
    """A phase ended without finishing its work: the reason the launch rolls back with."""


@workflow.defn(name="Launch")
class LaunchWorkflow:
    @workflow.init
    def __init__(self, inp: LaunchInput) -> None:
        # Made before any handler runs: a signal may arrive in the launch's first moment.
        # Only this launch's own previous run hands state on (continue-as-new): `carried` in
        # the input of a launch someone started is refused, never trusted.
        self._forged_carry = inp.carried is not None and workflow.info().continued_run_id is None
        carried = None if self._forged_carry else inp.carried
        self._input = inp
        self._status = LaunchStatusValue.RUNNING
        self._reason = ""
        self._phase_index = carried.next_phase - 1 if carried else -1
        self._phase_task: asyncio.Task[None] | None = None
        self._child: workflow.ChildWorkflowHandle[Any, PhaseState] | None = None
        self._abort: AbortRequest | None = None
        self._announced: set[tuple[str, str]] = set(carried.announced) if carried else set()
        self._started_at: datetime | None = carried.started_at if carried else None
        self._finished_at: datetime | None = None
        self._runs = carried.runs if carried else 1
        self._phases = (
            [phase.model_copy(deep=True) for phase in carried.phases]
            if carried
            else [
                PhaseState(name=p.name, kind=p.kind, steps=p.step_count()) for p in inp.plan.phases
            ]
        )
        self._view = LaunchView()
        self._audit = AuditTrail(
            self._publish,
            carried.audit if carried else None,
            carried.audit_dropped if carried else 0,
        )
        identity = inp.plan.approvals.authenticated
        self._trust = Trust(
            identity,
            carried.authority if carried else None,
            inp.launch_id,
            carried.run if carried else workflow.info().first_execution_run_id,
            carried.started_by if carried else inp.started_by if identity is None else "",
        )
        self._checks = DecisionChecks(
            [g for phase in inp.plan.phases for g in phase.gate_ids()], self._trust
        )
        self._evidence = EvidenceLog()
        self._reports_seen: dict[str, int] = dict(carried.reports_seen) if carried else {}
        self._key_reloads = carried.key_reloads if carried else 0
        if carried:
            self._checks.recall(carried.decisions)
            self._evidence.recall(carried.evidence, self._phases)
        self._notifier = Notifier(inp.launch_id, inp.plan)
        self._rollback = Rollback(self._notifier, self._publish)
        # Who holds exposure (a person, the health schedule or analysis), and the background
        # and watch results, kept across runs.
        self._hold: Hold | None = carried.paused if carried else None
        self._continuous: list[MetricResult] = (
            [result.model_copy(deep=True) for result in carried.background] if carried else []
        )
        self._analysis_children: dict[
            str, workflow.ChildWorkflowHandle[Any, ContinuousOutcome]
        ] = {}
        # Analyses to start again with their failures forgiven (a person resumed).
        self._restart: set[str] = set()
        self._quiet: dict[str, dict[str, int]] = {}
        self._background_task: asyncio.Task[None] | None = None
        # Why analysis stopped the launch ("" while it has not).
        self._halt = ""
        self._watch_ends: datetime | None = None

    # --- the run ----------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: LaunchInput) -> LaunchResult:
        carried = None if self._forged_carry else inp.carried
        first = carried.next_phase if carried else 0
        if carried is None:
            self._started_at = workflow.now()
            self._publish()
            problem = (
                "carried: only a launch continuing as new carries state; start without it"
                if self._forged_carry
                else await self._admission_problem(inp)
            )
            if problem:
                self._status = LaunchStatusValue.REFUSED
                self._reason = f"not started, nothing changed: {problem}"[:KEEP_REASON_CHARS]
                self._finished_at = workflow.now()
                self._publish()
                return await self._finish()
            await self._notify("launch_started", f"launch of {inp.plan.version} started")
        else:
            self._publish()
        continued: LaunchInput | None = None
        if inp.plan.background_analysis is not None:
            self._background_task = asyncio.create_task(self._background())
        try:
            for index in range(first, len(inp.plan.phases)):
                if not self._stopped() and index > first and self._history_is_long(inp):
                    # Every handler done first: what it changed goes to the next run.
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    if not self._stopped():
                        continued = self._continued(inp, index)
                        break
                await self._unless_held()
                self._phase_index = index
                self._phase_task = asyncio.create_task(self._run_phase(inp, index))
                try:
                    await self._phase_task
                finally:
                    self._phase_task = None
            if continued is None and inp.plan.watch is not None:
                await self._unless_held()
                self._phase_task = asyncio.create_task(self._watch(inp.plan.watch))
                try:
                    await self._phase_task
                finally:
                    self._phase_task = None
            if self._stopped():
                raise asyncio.CancelledError
        except BaseException as err:
            if not isinstance(err, Exception | asyncio.CancelledError):
                raise  # the worker evicting this workflow from its cache: nothing to undo
            reason = self._failure(err)
            await asyncio.shield(asyncio.ensure_future(self._roll_back(reason)))
            return await self._finish()
        await self._stop_analyses(None if continued is not None else "successful")
        if continued is not None:
            workflow.continue_as_new(continued)
        self._status = LaunchStatusValue.COMPLETED
        self._finished_at = workflow.now()
        self._publish()
        await self._notify("completed", f"{inp.plan.version} is live for every user")
        return await self._finish()

    def _stopped(self) -> bool:
        """Whether the launch is to roll back: aborted, or stopped by analysis."""
        return self._abort is not None or bool(self._halt)

    async def _unless_held(self) -> None:
        """Wait while the launch is paused; once it is stopped, go to the rollback."""
        await workflow.wait_condition(lambda: self._hold is None or self._stopped())
        if self._stopped():
            raise asyncio.CancelledError

    # --- analysis that never stops looking ---------------------------------------------

    async def _background(self) -> None:
        """Measure from the first exposure change until the launch ends. An error of this code
        stops the launch too: analysis that silently stopped would pass anything."""
        try:
            await workflow.wait_condition(
                lambda: any(phase.exposure is not None for phase in self._phases)
            )
            while not self._stopped():
                outcome = await self._analysis_run("background")
                if outcome.ended == "stopped":
                    if "background" not in self._restart:
                        return
                    self._restart.discard("background")
                    continue
                if (
                    outcome.finding is not None
                    and await self._act(outcome.finding, "background") == "rollback"
                ):
                    return
        except Exception as err:
            if isinstance(err, NondeterminismError):
                raise
            workflow.logger.error("background analysis of %s", self._input.launch_id, exc_info=err)
            self._stop_for(internal_error("background analysis", err))

    async def _watch(self, spec: WatchWindow) -> None:
        """After the last phase: measure until the window ends; a failure rolls back."""
        ends = workflow.now() + spec.duration
        self._watch_ends = ends
        self._status = LaunchStatusValue.WATCHING
        self._publish()
        while True:
            outcome = await self._analysis_run("watch", ends_at=ends)
            if outcome.ended == "window_over":
                break
            if outcome.ended == "stopped":
                if "watch" not in self._restart:
                    raise asyncio.CancelledError
                self._restart.discard("watch")
                continue
            if outcome.finding is not None:
                if outcome.finding.action == "rollback":
                    raise PhaseEnded(outcome.finding.reason)
                await self._act(outcome.finding, "watch")
        # A watch that ends paused waits for a person: resume completes, abort rolls back.
        await workflow.wait_condition(lambda: self._hold is None)
        self._publish()

    async def _analysis_run(
        self, label: Literal["background", "watch"], *, ends_at: datetime | None = None
    ) -> ContinuousOutcome:
        """Run the launch's background or watch analysis workflow to its end; take what it
        measured."""
        inp = self._input
        handle = await workflow.start_child_workflow(
            "ContinuousAnalysis",
            ContinuousInput(
                launch_id=inp.launch_id,
                launch_run=self._trust.run,
                plan=inp.plan,
                label=label,
                results=[r for r in self._continuous if r.phase == label],
                quiet=self._quiet.get(label, {}),
                ends_at=ends_at,
                held=self._hold is not None,
            ),
            id=f"{inp.launch_id}.analysis.{label}",
            result_type=ContinuousOutcome,
            static_summary=f"{label} analysis of {inp.plan.service} {inp.plan.version}",
        )
        self._analysis_children[label] = handle
        try:
            outcome: ContinuousOutcome = await handle
        finally:
            self._analysis_children.pop(label, None)
        self._continuous = [
            *(r for r in self._continuous if r.phase != label),
            *(r for r in outcome.results if r.phase == label),
        ]
        self._quiet[label] = dict(outcome.quiet)
        if label in self._restart:
            forgive(self._continuous, label)
            self._quiet[label] = {}
        self._publish()
        return outcome

    async def _act(self, finding: AnalysisFinding, label: str) -> str:
        """Take what a round found: stop the launch, or hold its exposure."""
        if finding.action == "rollback":
            self._stop_for(finding.reason)
            return "rollback"
        if self._hold is None and not self._stopped():
            self._hold = Hold(
                by=f"{label} analysis",
                reason=finding.reason[:KEEP_REASON_CHARS],
                at=workflow.now(),
                source="analysis",
                evidence=finding.reason[:KEEP_REASON_CHARS],
            )
            self._publish()
            await self._relay_hold()
        return "pause"

    def _stop_for(self, reason: str) -> None:
        """Roll the launch back for `reason`, wherever it is: a running phase (even at an open
        gate) is cancelled, and the launch does not start another."""
        if self._stopped() or self._status in (*FINISHED, LaunchStatusValue.ROLLING_BACK):
            return
        self._halt = reason[:KEEP_REASON_CHARS]
        if self._phase_task is not None:
            self._phase_task.cancel()

    async def _stop_analyses(self, verdict: Literal["successful", "cancelled"] | None) -> None:
        """End the background analysis and take its last results; mark what was still
        measuring with `verdict`."""
        await self._signal_analyses()
        task, self._background_task = self._background_task, None
        if task is not None and not task.done():
            if "background" not in self._analysis_children:
                task.cancel()  # still waiting for the first exposure change
            await asyncio.gather(task, return_exceptions=True)
        if verdict is not None:
            for result in self._continuous:
                if result.verdict == "running":
                    result.verdict = verdict

    async def _signal_analyses(self) -> None:
        """Ask every running background or watch analysis to end with what it measured."""
        for handle in list(self._analysis_children.values()):
            try:
                await handle.signal(STOP_SIGNAL, StopAnalysis(launch_run=self._trust.run))
            except Exception as err:
                if isinstance(err, NondeterminismError):
                    raise
                workflow.logger.info("analysis %s not stopped: %s", handle.id, err)

    async def _admission_problem(self, inp: LaunchInput) -> str:
        """Why the launch may not start, or "": its starter's proof does not hold, or the
        worker's limits refuse the plan. Nothing has changed yet, so an error of this code
        refuses the launch too."""
        try:
            problem = await self._check_starter(inp)
            return problem or await self._admit(inp)
        except Exception as err:
            if isinstance(err, NondeterminismError):
                raise
            workflow.logger.error("launch %s not admitted", inp.launch_id, exc_info=err)
            return internal_error("the launch's admission", err)

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

    async def _admit(self, inp: LaunchInput) -> str:
        """Why the worker's limits refuse the plan (every problem naming its field), or ""."""
        try:
            admission = await workflow.execute_activity_method(
                AdmissionActivities.admit_plan,
                AdmissionRequest(launch_id=inp.launch_id, plan=inp.plan),
                **summarized(ADMISSION_OPTIONS, "check the plan against the worker's limits"),
            )
        except ActivityError as err:
            return f"the worker could not check the plan: {failure_reason(err)}"
        return "; ".join(admission.problems)

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
                evidence=self._evidence.remember(),
                earlier_analysis=[r for known in self._phases[:index] for r in known.analysis],
            ),
            id=f"{inp.launch_id}.{phase.name}",
            result_type=PhaseState,
            static_summary=f"{phase.kind} {phase.name} of {inp.plan.service} {inp.plan.version}",
        )
        if self._hold is not None:
            await self._relay_hold()
        try:
            self._phases[index] = await self._child
        except ChildWorkflowError as err:
            cause = err.cause
            if isinstance(cause, CancelledError):
                if self._halt:
                    known = self._phases[index]
                    known.open_gate = None
                    known.reason = f"stopped by the launch: {self._halt}"[:KEEP_REASON_CHARS]
                raise
            raise PhaseEnded(await self._phase_failure(index, err)) from err
        finally:
            self._child = None
        self._publish()

    async def _phase_failure(self, index: int, err: ChildWorkflowError) -> str:
        """Why phase `index` failed, taking its final state when it sent one; a phase the
        server ended keeps the state of its last report, whose undos the launch runs."""
        known = self._phases[index]
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type == "PhaseFailed":
            try:
                self._phases[index] = PhaseState.model_validate(cause.details[0])
                return failure_reason(cause)
            except (IndexError, ValidationError) as bad:
                workflow.logger.error("phase %s sent no state", known.name, exc_info=bad)
        if isinstance(cause, TerminatedError | ServerTimeout):
            end = await self._phase_end(err, cause)
            if end.how == "timed_out":
                reason = f"phase {known.name} timed out on the server"
            else:
                by = f" (by {end.identity})" if end.identity else ""
                reason = f"phase {known.name} was terminated by the server: {end.reason or 'no reason given'}{by}"
        elif isinstance(cause, ApplicationError):
            reason = f"internal error in {known.name}: {cause.type}: {cause.message}"
        else:
            reason = f"phase {known.name} failed: {cause or err}"
        known.status = PhaseStatusValue.FAILED
        known.reason = reason[:KEEP_REASON_CHARS]
        known.open_gate = None
        return known.reason

    async def _phase_end(
        self, err: ChildWorkflowError, cause: TerminatedError | ServerTimeout
    ) -> PhaseEnd:
        """How the server ended the phase (its close event says who and why)."""
        fallback = PhaseEnd(how="terminated" if isinstance(cause, TerminatedError) else "timed_out")
        try:
            end = await workflow.execute_activity_method(
                PhaseEndActivities.describe_phase_end,
                PhaseEndRequest(workflow_id=err.workflow_id, run_id=err.run_id),
                **summarized(PHASE_END_OPTIONS, f"read how {err.workflow_id} ended"),
            )
        except ActivityError as failed:
            reason = (
                f"{cause.message or 'no reason'}; who and why not known: {failure_reason(failed)}"
            )
            return fallback.model_copy(update={"reason": reason})
        return end if end.how != "other" else fallback

    def _history_is_long(self, inp: LaunchInput) -> bool:
        """Whether to continue as new before the next phase."""
        info = workflow.info()
        limit = inp.continue_after_events
        return (limit > 0 and info.get_current_history_length() >= limit) or (
            info.is_continue_as_new_suggested()
        )

    def _continued(self, inp: LaunchInput, next_phase: int) -> LaunchInput:
        """The next run's input: the plan, and what this run knows, from phase `next_phase` on."""
        workflow.logger.info(
            "launch %s continues as new before phase %d (%d events so far)",
            inp.launch_id,
            next_phase,
            workflow.info().get_current_history_length(),
        )
        return LaunchInput(
            launch_id=inp.launch_id,
            plan=inp.plan,
            started_by=inp.started_by,
            continue_after_events=inp.continue_after_events,
            carried=LaunchCarry(
                next_phase=next_phase,
                runs=self._runs + 1,
                phases=self._phases,
                audit=self._audit.entries,
                audit_dropped=self._audit.dropped,
                started_at=self._started_at or workflow.now(),
                run=self._trust.run,
                started_by=self._trust.started_by,
                authority=self._trust.authority,
                announced=sorted(self._announced),
                reports_seen=self._reports_seen,
                key_reloads=self._key_reloads,
                decisions=self._checks.remember(),
                evidence=self._evidence.remember(),
                paused=self._hold,
                background=self._continuous,
            ),
        )

    def _failure(self, err: BaseException) -> str:
        try:
            if self._abort is not None:
                return f"aborted by {self._abort.by or 'an unnamed sender'}: {self._abort.reason}"
            if self._halt:
                return self._halt
            if isinstance(err, asyncio.CancelledError) or (
                isinstance(err, ChildWorkflowError) and isinstance(err.cause, CancelledError)
            ):
                return "the launch workflow was cancelled"
            if isinstance(err, PhaseEnded):
                return str(err)
            if isinstance(err, ApplicationError | ActivityError):
                return failure_reason(err)
            phase = self._phases[self._phase_index].name if self._phase_index >= 0 else "start"
            return internal_error(f"the launch at {phase}", err)
        except Exception as broken:
            return internal_error("the launch", broken)

    async def _roll_back(self, reason: str) -> None:
        """Run every undo; nothing here stops before the last one has run."""
        self._status = LaunchStatusValue.ROLLING_BACK
        self._reason = reason
        self._publish()
        await self._stop_analyses("cancelled")
        try:
            await self._rollback.run(self._compensations())
        except Exception as err:
            if isinstance(err, NondeterminismError):
                raise
            workflow.logger.error("rollback of %s", self._input.launch_id, exc_info=err)
            self._reason = f"{reason}; the rollback failed: {internal_error('rollback', err)}"
        failed = [r.id for r in self._compensations() if r.status == "failed"]
        if failed:
            self._reason = f"{self._reason}; not undone: {', '.join(failed)} (see their errors)"
        self._reason = self._reason[:KEEP_REASON_CHARS]
        self._status = LaunchStatusValue.ROLLED_BACK
        self._finished_at = workflow.now()
        self._publish()
        await self._notify("rolled_back", f"rolled back: {self._reason}")

    def _compensations(self) -> list[CompensationRecord]:
        return [record for phase in self._phases for record in phase.compensations]

    async def _notify(self, event: NotificationEvent, summary: str, details: Any = None) -> None:
        """Send a notification; one that cannot even be built is logged, never a reason to
        stop the launch."""
        try:
            await self._notifier.send(event, summary, details)
        except Exception as err:
            if isinstance(err, NondeterminismError):
                raise
            workflow.logger.error("notification %s not sent", event, exc_info=err)

    # --- people: signals, update, query -------------------------------------------------

    @contextmanager
    def _handling(self, handler: str, payload: Any, *, update: bool = False) -> Iterator[None]:
        """Run a handler's body; an error of this code is recorded as the refusal of what was
        sent, never let out: out of a signal handler it would fail the launch (or its workflow
        task, again and again). An update's own refusal is its answer, so it goes out."""
        try:
            yield
        except Exception as err:
            if isinstance(err, NondeterminismError) or (
                update and isinstance(err, ApplicationError)
            ):
                raise
            workflow.logger.error("%s not handled", handler, exc_info=err)
            try:
                self._audit.record(
                    handler, payload, accepted=False, note=internal_error(handler, err)
                )
            except Exception as unrecorded:
                workflow.logger.error("%s not recorded", handler, exc_info=unrecorded)

    @workflow.signal(
        name="approve",
        description='Go: approve the open gate. Input: {"gate": "<gate id>", "comment": "...", "proof": "<from the approval service>"}; with `identity: none`, "approver": "<name>" instead of the proof. The launch\'s details give the exact input.',
    )
    async def approve(self, payload: Any = None) -> None:
        with self._handling("approve", payload):
            await self._signal_decision("approve", payload)

    @workflow.signal(
        name="reject",
        description="No-go: reject the open gate and roll back. Input as for `approve`.",
    )
    async def reject(self, payload: Any = None) -> None:
        with self._handling("reject", payload):
            await self._signal_decision("reject", payload)

    @workflow.signal(
        name="abort",
        description='Stop the launch now and roll back everything it changed. Input: {"reason": "...", "proof": "<from the approval service>"}; with `identity: none`, "by": "<name>" instead of the proof.',
    )
    def abort(self, payload: Any = None) -> None:
        with self._handling("abort", payload):
            self._take_abort(payload)

    @workflow.signal(
        name="pause",
        description='Hold exposure where it is; analysis goes on and gates still take decisions. Input: {"reason": "...", "proof": "<from the approval service>"}; with `identity: none`, "by": "<name>" instead of the proof. `resume` goes on, `abort` rolls back.',
    )
    async def pause(self, payload: Any = None) -> None:
        with self._handling("pause", payload):
            request = self._audit.parse("pause", HoldRequest, payload)
            if request is not None:
                await self._change_hold("pause", "pause", request, payload)

    @workflow.signal(
        name="resume",
        description='Go on after a pause. Input: {"reason": "...", "proof": "<from the approval service>"}; with `identity: none`, "by": "<name>" instead of the proof.',
    )
    async def resume(self, payload: Any = None) -> None:
        with self._handling("resume", payload):
            request = self._audit.parse("resume", HoldRequest, payload)
            if request is not None:
                await self._change_hold("resume", "resume", request, payload)

    @workflow.update(
        name="hold",
        description='Pause or resume and get an immediate answer. Input: {"action": "pause"|"resume", "reason", "proof"} (with `identity: none`, "by" instead of the proof). Answers with the hold in force afterwards (null once resumed); a refusal is an error naming the field and is recorded in the audit trail.',
    )
    async def hold(self, request: HoldRequest | None = None) -> Hold | None:
        if not isinstance(request, HoldRequest) or request.action is None:
            raise DecisionRefused(NO_HOLD)
        handler = f"hold:{request.action}"
        payload = request.model_dump(mode="json")
        with self._handling(handler, payload, update=True):
            problem = await self._change_hold(request.action, handler, request, payload)
            if problem:
                raise DecisionRefused(problem)
            return self._hold
        raise DecisionRefused(f"internal error: {handler} could not be taken; nothing changed")

    @hold.validator
    def _hold_input(self, request: HoldRequest | None = None) -> None:
        if not isinstance(request, HoldRequest) or request.action is None:
            raise DecisionRefused(NO_HOLD)

    @workflow.signal(
        name="retry_compensation",
        description='Try a failing undo again after fixing its cause. Input: {"compensation": "<id>", "proof": "..."} (with `identity: none`, "by": "<name>").',
    )
    def retry_compensation(self, payload: Any = None) -> None:
        with self._handling("retry_compensation", payload):
            self._compensation_signal("retry", payload)

    @workflow.signal(
        name="skip_compensation",
        description='Give up on a failing undo, on record. Input: {"compensation": "<id>", "comment": "why", "proof": "..."} (with `identity: none`, "by": "<name>").',
    )
    def skip_compensation(self, payload: Any = None) -> None:
        with self._handling("skip_compensation", payload):
            self._compensation_signal("skip", payload)

    @workflow.signal(
        name="keep_writes",
        description='Keep the live writes a database restore would lose: it reverts, then runs the migration folder\'s carry_over.sql in the same transaction. Input: {"compensation": "<id>", "proof": "..."} (with `identity: none`, "by": "<name>"); optionally "rows": the count the status showed.',
    )
    def keep_writes(self, payload: Any = None) -> None:
        with self._handling("keep_writes", payload):
            self._compensation_signal("keep_writes", payload)

    @workflow.signal(
        name="drop_writes",
        description='Let a database restore drop the live writes it would lose (at most the rows the status shows), on record. Input: {"compensation": "<id>", "comment": "why", "proof": "..."} (with `identity: none`, "by": "<name>"); optionally "rows": the count the status showed.',
    )
    def drop_writes(self, payload: Any = None) -> None:
        with self._handling("drop_writes", payload):
            self._compensation_signal("drop_writes", payload)

    @workflow.update(
        name="decide",
        description='Approve or reject a gate and get an immediate answer. Input: {"gate", "decision": "approve"|"reject", "comment", "proof"} (with `identity: none`, "approver" instead of the proof). Answers with the vote\'s outcome; a refusal is an error naming the field and is recorded in the audit trail.',
    )
    async def decide(self, request: DecisionRequest | None = None) -> Decision:
        if not isinstance(request, DecisionRequest):
            raise DecisionRefused(NO_REQUEST)
        handler = f"decide:{request.decision or '?'}"
        payload = request.model_dump(mode="json")
        with self._handling(handler, payload, update=True):
            return await self._decide(handler, request, payload)
        # Only when the handler failed: its refusal is in the audit trail.
        raise DecisionRefused(f"internal error: {handler} could not be taken; nothing changed")

    @decide.validator
    def _decide_input(self, request: DecisionRequest | None = None) -> None:
        """Refuse an update whose input is no request at all (`null`, or none) before it is
        taken: such an update leaves no trace in the launch's history."""
        if not isinstance(request, DecisionRequest):
            raise DecisionRefused(NO_REQUEST)

    async def _decide(self, handler: str, request: DecisionRequest, payload: Any) -> Decision:
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
        with self._handling(PROGRESS_SIGNAL, payload):
            await self._take_report(payload)

    @workflow.query(
        name="status",
        description="The whole launch: phase, step, exposure, open gate, decisions, analysis, audit.",
    )
    def status(self) -> LaunchStatus:
        try:
            return self._snapshot()
        except Exception as err:
            return self._bare_snapshot(err)

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

    def _take_abort(self, payload: Any) -> None:
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

    def _abort_sender(self, request: AbortRequest) -> AbortRequest:
        """The abort with its sender proven: a Phasegate worker's sealed abort (the health
        schedule), or a person allowed to abort (the plan's approvers or the starter)."""
        if request.sealed:
            _fresh(request.sent_at, "abort")
            return request
        person = self._steward("abort", request.proof, request.by)
        return request.model_copy(update={"by": person.name})

    def _steward(self, act: Act, proof: str, declared: str) -> Person:
        """Who asks for `act` on the whole launch, allowed to: the plan's approvers or its
        starter (anyone named, when approvals are not authenticated)."""
        person = self._trust.person(act, "", proof, declared, workflow.now(), field="by")
        allowed = [*self._input.plan.approvals.approvers, self._trust.started_by]
        if self._trust.identity is not None and not may_act(person, allowed):
            raise Refused(
                f"{person.name!r} may not {act} this launch; the plan's approvers and its starter may"
            )
        return person

    async def _change_hold(
        self, action: HoldAction, handler: str, request: HoldRequest, payload: Any
    ) -> str:
        """Pause or resume for a proven sender; the refusal (recorded in the audit), or ""."""
        try:
            if request.action is not None and request.action != action:
                raise Refused(f"action: {handler} does not {request.action}; leave action out")
            hold = self._hold_sender(action, request)
            status = self._current_status()
            if self._stopped() or status in (
                *FINISHED,
                LaunchStatusValue.ROLLING_BACK,
                LaunchStatusValue.NEEDS_ATTENTION,
            ):
                raise Refused(f"ignored: the launch is already {status.value}")
            if action == "pause" and self._hold is not None:
                raise Refused(
                    f"ignored: already paused by {self._hold.by} ({self._hold.source}): "
                    f"{self._hold.reason}"
                )
            if action == "resume" and self._hold is None:
                raise Refused("ignored: the launch is not paused")
        except Refused as err:
            self._audit.record(handler, payload, accepted=False, note=str(err))
            return str(err)
        self._hold = hold
        if hold is None:
            self._restart.update(self._analysis_children)
            await self._signal_analyses()
        note = f"paused by {hold.by}" if hold is not None else "resumed"
        self._audit.record(handler, payload, accepted=True, note=note)
        self._publish()
        await self._relay_hold()
        return ""

    def _hold_sender(self, action: HoldAction, request: HoldRequest) -> Hold | None:
        """The hold after `action` by a proven sender: a Phasegate worker's sealed pause (the
        health schedule), or a person allowed to (the plan's approvers or the starter)."""
        if request.sealed:
            if action != "pause":
                raise Refused("seal: only a person resumes a launch")
            _fresh(request.sent_at, "pause")
            if not request.reason:
                raise Refused("reason: say why the launch pauses")
            by = request.by or "the health schedule"
            return Hold(by=by, reason=request.reason, at=workflow.now(), source="health")
        person = self._steward(action, request.proof, request.by)
        if action == "resume":
            return None
        if not request.reason:
            raise Refused("reason: say why the launch pauses")
        return Hold(by=person.name, reason=request.reason, at=workflow.now(), source="person")

    async def _relay_hold(self) -> None:
        """Tell the running phase to hold its exposure or go on."""
        if self._child is None:
            return
        relay = HoldRelay(launch_run=self._trust.run, hold=self._hold)
        try:
            await self._child.signal(HOLD_SIGNAL, relay)
        except Exception as err:
            if isinstance(err, NondeterminismError):
                raise
            # The phase has just ended: the launch holds before it starts the next one.
            workflow.logger.info("hold not relayed to the phase: %s", err)

    def _compensation_signal(self, action: UndoAction, payload: Any) -> None:
        handler = SIGNALS[action]
        request = self._audit.parse(handler, CompensationAction, payload)
        if request is None:
            return
        try:
            person = self._trust.person(
                handler,
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

    async def _take_report(self, payload: Any) -> None:
        report = self._audit.parse(PROGRESS_SIGNAL, PhaseReport, payload)
        if report is None:
            return
        index = next((i for i, p in enumerate(self._phases) if p.name == report.phase), None)
        problem = self._report_refusal(report, index)
        if problem or index is None:
            self._audit.record(
                PROGRESS_SIGNAL,
                {"phase": report.phase[:64], "seq": report.seq},
                accepted=False,
                note=problem,
            )
            return
        self._reports_seen[report.phase] = report.seq
        self._phases[index] = merge_report(self._phases[index], report)
        self._evidence.observe(self._phases)
        self._publish()
        gate = report.open_gate
        if gate is not None and (gate.gate, gate.opened_at.isoformat()) not in self._announced:
            self._announced.add((gate.gate, gate.opened_at.isoformat()))
            await self._notify(
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

    def _report_refusal(self, report: PhaseReport, index: int | None) -> str:
        """Why a phase report is not taken, or "": only this launch's own phases' sealed
        reports count, each once and in order, and a phase's undo log may only grow."""
        if not report.sealed:
            return "seal: not sent by a Phasegate worker; phase reports come only from the launch's own phases"
        if report.launch_run != self._trust.run:
            return "launch_run: a report for another run of this launch"
        if index is None:
            return f"phase: {report.phase[:64]!r} is not a phase of this launch"
        if report.seq <= self._reports_seen.get(report.phase, 0):
            return f"seq: report {report.seq} is not newer than the last one taken"
        return report_refusal(self._phases[index], report)

    # --- what the launch shows ----------------------------------------------------------

    def _open_gate(self) -> OpenGate | None:
        for phase in self._phases:
            if phase.open_gate is not None:
                return phase.open_gate
        return None

    def _current_status(self) -> LaunchStatusValue:
        if self._rollback.stuck is not None:
            return LaunchStatusValue.NEEDS_ATTENTION
        going = (LaunchStatusValue.RUNNING, LaunchStatusValue.WATCHING)
        if self._status in going and self._hold is not None:
            return LaunchStatusValue.PAUSED
        if self._status == LaunchStatusValue.RUNNING and self._open_gate() is not None:
            return LaunchStatusValue.WAITING
        return self._status

    def _waiting_for(self) -> str:
        if self._rollback.stuck is not None:
            return self._rollback.waiting_for()
        hold = self._hold
        if hold is not None and self._status in (
            LaunchStatusValue.RUNNING,
            LaunchStatusValue.WATCHING,
        ):
            launch = self._input.launch_id
            return (
                f"paused by {hold.by} ({hold.source}): {hold.reason} Exposure holds; analysis "
                f"goes on. To go on: `phasegate resume {launch}` (or signal `resume`); "
                f"to roll back: `phasegate abort {launch} -m REASON`."
            ) + (f" Meanwhile: {self._gate_wait()}" if self._open_gate() is not None else "")
        return self._gate_wait()

    def _gate_wait(self) -> str:
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
        if self._rollback.exposure is not None:
            exposure = self._rollback.exposure
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
            exposure_note=self._rollback.exposure_note,
            open_gate=self._open_gate(),
            waiting_for=self._waiting_for(),
            writes_at_risk=self._rollback.at_risk,
            paused=self._hold,
            background=self._continuous,
            watch_ends_at=self._watch_ends,
            phases=self._phases,
            decisions=[d for phase in self._phases for d in phase.decisions],
            audit=sorted(
                [*self._audit.entries, *(e for p in self._phases for e in p.refusals)],
                key=lambda entry: entry.at,
            ),
            audit_dropped=self._audit.dropped,
            compensations=self._compensations(),
            started_at=self._started_at,
            finished_at=self._finished_at,
        )

    def _bare_snapshot(self, err: Exception) -> LaunchStatus:
        """The launch's status without its details, when they cannot be put together."""
        workflow.logger.error("status of %s incomplete", self._input.launch_id, exc_info=err)
        plan = self._input.plan
        note = internal_error("status", err)
        return LaunchStatus(
            launch_id=self._input.launch_id,
            service=plan.service,
            version=plan.version,
            status=self._status,
            reason=f"{self._reason} ({note})" if self._reason else note,
            run_id=self._trust.run,
            phase_index=self._phase_index,
            started_at=self._started_at,
            finished_at=self._finished_at,
        )

    def _publish(self) -> None:
        """Show the latest state in the UI; it never stops what changed the state."""
        try:
            self._view.show(self._snapshot())
        except Exception as err:
            if isinstance(err, NondeterminismError):
                raise
            workflow.logger.error("launch %s not shown", self._input.launch_id, exc_info=err)

    async def _finish(self) -> LaunchResult:
        await workflow.wait_condition(workflow.all_handlers_finished)
        snapshot = self.status()
        return LaunchResult(
            launch_id=snapshot.launch_id,
            status=snapshot.status,
            reason=snapshot.reason,
            final=snapshot,
        )


def _fresh(sent_at: datetime | None, act: str) -> None:
    """Refuse an automated sender's sealed message that is not recent: a replayed one."""
    if sent_at is None or not workflow.now() - FRESH_SEAL <= sent_at <= workflow.now():
        raise Refused(f"sent_at: a sealed {act} must be fresh")


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
