"""Client-side launch operations: start, inspect, decide, pause, abort, list. No printing here.

Errors, all one clear line for the CLI to print:

    LaunchError            the server answered, but the operation cannot be done
    ├── LaunchNotFound     no launch with that id in this namespace
    ├── DecisionError      the `decide` update refused: unknown gate, not open, not an approver
    └── HoldError          the `hold` update refused: already paused, not paused, not allowed
    TemporalUnreachable    (workers.client) no server at the configured address
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.service import RPCError, RPCStatusCode

from schemas.decision_messages import (
    AbortRequest,
    CompensationAction,
    Decision,
    DecisionRequest,
    Hold,
    HoldAction,
    HoldRequest,
)
from schemas.gate_spec import GateSpec
from schemas.infra_setup_spec import InfraSetupPhase
from schemas.launch_messages import (
    LaunchInput,
    LaunchStatus,
    LaunchStatusValue,
    MetricResult,
    PhaseState,
    PhaseStatusValue,
)
from schemas.migration_cutover_spec import MigrationCutoverPhase
from schemas.plan import LaunchPlan, Phase, load_plan
from schemas.security_validation_spec import SecurityValidationPhase
from schemas.targets import FlagdRouter, describe_router
from workers.settings import Settings
from workflows.launch import LaunchWorkflow
from workflows.rollback import SIGNALS, UndoAction
from workflows.visibility import PHASE, SERVICE, STATUS

FINISHED = (LaunchStatusValue.COMPLETED, LaunchStatusValue.ROLLED_BACK)
LAUNCH_WORKFLOW_TYPE = "Launch"
# A query waits for a worker to answer; without one it would hang until the RPC deadline.
QUERY_TIMEOUT = timedelta(seconds=15)
# The launch's analyses that run in workflows of their own (`<launch>.analysis.<label>`).
ANALYSIS_LABELS = ("background", "watch")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class LaunchError(RuntimeError):
    """The server answered, but the launch operation cannot be done; the message says why."""


class LaunchRefused(LaunchError):
    """The server refused the call: the caller's token has no role that may do it. `answer`
    is the server's own answer, for a line saying what the token grants."""

    def __init__(self, message: str, answer: RPCError) -> None:
        super().__init__(message)
        self.answer = answer


class LaunchNotFound(LaunchError):
    """No launch with this id exists in the namespace."""


class DecisionError(LaunchError):
    """The launch refused a decision; the message is the workflow validator's own."""


class HoldError(LaunchError):
    """The launch refused a pause or resume; the message is the workflow validator's own."""


@dataclass(frozen=True)
class LaunchListing:
    """One launch as the visibility store sees it (search attributes, not a query)."""

    launch_id: str
    service: str
    status: str
    phase: str
    started_at: datetime | None
    closed_at: datetime | None
    execution: str


# --- plans and starting ------------------------------------------------------------------


def validate_plan(path: Path | str) -> LaunchPlan:
    """Load and validate a plan file; raises PlanError with one `path: message` per problem."""
    return load_plan(Path(path))


def new_launch_id(plan: LaunchPlan) -> str:
    """`{service}-{version}-{8 hex}`, with anything unsafe in a URL replaced by `-`."""
    raw = f"{plan.service}-{plan.version}-{uuid.uuid4().hex[:8]}"
    return _UNSAFE_ID_CHARS.sub("-", raw)


async def start_launch(
    client: Client,
    plan: LaunchPlan,
    *,
    settings: Settings,
    launch_id: str | None = None,
    start_proof: str = "",
    started_by: str = "",
) -> WorkflowHandle[LaunchWorkflow, Any]:
    """Start the launch workflow on `settings.task_queue`; the workflow id is the launch id.
    Who starts it: `start_proof` (for the act `start` on this launch id and the plan's digest)
    when the plan's approvals are authenticated, `started_by` when they are not."""
    launch_id = launch_id or new_launch_id(plan)
    with _translated(launch_id):
        return await client.start_workflow(
            LaunchWorkflow.run,
            LaunchInput(
                launch_id=launch_id, plan=plan, start_proof=start_proof, started_by=started_by
            ),
            id=launch_id,
            task_queue=settings.task_queue,
            static_summary=summarize_plan(plan),
            static_details=describe_plan(plan),
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SERVICE, plan.service),
                    SearchAttributePair(STATUS, LaunchStatusValue.RUNNING.value),
                    SearchAttributePair(PHASE, "starting"),
                ]
            ),
        )


def summarize_plan(plan: LaunchPlan) -> str:
    """One line: `Launch checkout 2.0.0: soft-launch 1% → 10%, then full-launch 50% → 100%`."""
    phases = ", then ".join(_phase_summary(phase) for phase in plan.phases)
    return f"Launch {plan.service} {plan.version}: {phases}"


def _phase_summary(phase: Phase) -> str:
    if isinstance(phase, MigrationCutoverPhase):
        return f"{phase.name} migration and cutover"
    if isinstance(phase, SecurityValidationPhase):
        return f"{phase.name} ({len(phase.checks())} security checks)"
    if isinstance(phase, InfraSetupPhase):
        return f"{phase.name} (namespace {phase.namespace})"
    return f"{phase.name} {' → '.join(_weight(step.weight) for step in phase.steps)}"


def describe_plan(plan: LaunchPlan) -> str:
    """The plan in plain words, one line per phase, for the Temporal UI's details."""
    router = plan.targets.router
    approvals = plan.approvals
    lines = [f"Launch {plan.service} {plan.version}."]
    if plan.description:
        lines.append(plan.description.strip())
    where = f" in {router.flag_file}" if isinstance(router, FlagdRouter) else ""
    lines.append(f"Exposure through {describe_router(router)}{where}.")
    lines.append(
        f"Approvers: {', '.join(approvals.approvers)}; an undecided gate will "
        f"{approvals.on_timeout} after {_duration(approvals.timeout)}."
    )
    for number, phase in enumerate(plan.phases, start=1):
        kind = phase.kind.replace("_", " ")
        if isinstance(phase, SecurityValidationPhase):
            checks = ", ".join(check.id for check in phase.checks())
            lines.append(
                f"{number}. {phase.name} ({kind}): probe {checks}; a critical finding rolls "
                f"back; each warning needs a waiver ({_gate_words(plan, phase.waivers)}, with a reason)."
            )
            continue
        steps = []
        if isinstance(phase, MigrationCutoverPhase):
            steps.append(
                f"back up, apply {phase.migrations}, verify, cut over"
                + (f" after {_gate_words(plan, phase.cutover.gate)}" if phase.cutover.gate else "")
                + (f", watch {', '.join(phase.watch.analysis)}" if phase.watch else "")
            )
        if isinstance(phase, InfraSetupPhase):
            steps.append(
                f"apply {len(phase.manifests)} manifest file(s) and {len(phase.secrets)} "
                f"secret(s) to namespace {phase.namespace}, wait for the rollout"
            )
        for step in getattr(phase, "steps", []):
            words = _weight(step.weight)
            if step.pause:
                words += f" for {_duration(step.pause)}"
            if step.analysis:
                words += f", analysed by {', '.join(step.analysis)}"
            if step.approval is not None:
                words += f", then {_gate_words(plan, step.approval)}"
            steps.append(words)
        line = f"{number}. {phase.name} ({kind}): "
        if phase.gates.before is not None:
            line += f"{_gate_words(plan, phase.gates.before)}; "
        line += "; ".join(steps)
        if phase.gates.after is not None:
            line += f"; finally {_gate_words(plan, phase.gates.after)}"
        lines.append(line + ".")
    return "\n".join(lines)


def gate_ids(plan: LaunchPlan) -> list[str]:
    """Every gate the plan can open, in the order they open."""
    return [gate for phase in plan.phases for gate in phase.gate_ids()]


# --- looking at a launch -----------------------------------------------------------------


async def get_status(client: Client, launch_id: str) -> LaunchStatus:
    """The launch's whole state; a completed launch answers from its result, without a worker."""
    status, _ = await _read_status(client, launch_id)
    return status


async def follow_launch(
    client: Client, launch_id: str, *, interval: float = 1.0
) -> AsyncIterator[LaunchStatus]:
    """Yield the status every `interval` seconds until the launch finishes (last one included)."""
    while True:
        status, closed = await _read_status(client, launch_id)
        yield status
        # A launch terminated from outside is closed without finishing: it will not move again.
        if status.status in FINISHED or closed:
            return
        await asyncio.sleep(interval)


def ui_link(settings: Settings, launch_id: str) -> str:
    base = settings.ui_url.rstrip("/")
    namespace = quote(settings.temporal_namespace, safe="")
    return f"{base}/namespaces/{namespace}/workflows/{quote(launch_id, safe='')}"


async def list_launches(
    client: Client,
    *,
    service: str | None = None,
    status: str | None = None,
    limit: int = 50,
) -> list[LaunchListing]:
    """Launches newest first, filtered on the Phasegate search attributes."""
    listings: list[LaunchListing] = []
    with _translated(None):
        async for execution in client.list_workflows(
            launch_query(service=service, status=status), limit=limit
        ):
            attributes = execution.typed_search_attributes
            listings.append(
                LaunchListing(
                    launch_id=execution.id,
                    service=attributes.get(SERVICE) or "",
                    status=attributes.get(STATUS) or "",
                    phase=attributes.get(PHASE) or "",
                    started_at=execution.start_time,
                    closed_at=execution.close_time,
                    execution=execution.status.name.lower() if execution.status else "",
                )
            )
    return listings


def launch_query(*, service: str | None = None, status: str | None = None) -> str:
    """A visibility query: `WorkflowType = 'Launch' AND PhasegateService = 'checkout' ...`."""
    clauses = [f"WorkflowType = {_quoted(LAUNCH_WORKFLOW_TYPE)}"]
    if service:
        clauses.append(f"{SERVICE.name} = {_quoted(service)}")
    if status:
        clauses.append(f"{STATUS.name} = {_quoted(status)}")
    return " AND ".join(clauses)


# --- acting on a launch ------------------------------------------------------------------


async def decide(
    client: Client,
    launch_id: str,
    gate: str,
    approver: str,
    decision: Literal["approve", "reject"],
    comment: str = "",
    *,
    proof: str = "",
    evidence: str = "",
    phase: str | None = None,
) -> Decision:
    """Approve or reject a gate through the `decide` update and return what was recorded (its
    `pending` says how many more approvals the gate needs). The person is `approver` when the
    plan's approvals are not authenticated, whoever `proof` names when they are.

    The decision goes to the workflow of the phase that owns the gate (`phase`, by default
    the one the gate id names: `soft-launch.step-2` is soft-launch's), which waits there and
    checks it exactly as the launch would: one workflow task and no relay between approving
    and the next step. Where the phase cannot take it (it is not running, or the proof's key
    is newer than the keys the phase holds), it goes to the launch, which relays it; with
    `phase=""` it goes to the launch at once."""
    request = DecisionRequest(
        gate=gate,
        approver=approver,
        decision=decision,
        comment=comment,
        id=str(uuid.uuid4()),
        evidence=evidence,
        proof=proof,
    )
    owner = gate.split(".", 1)[0] if phase is None else phase
    if owner:
        try:
            return await _decide_at_phase(client, f"{launch_id}.{owner}", request)
        except _AskTheLaunch:
            pass
    handle = client.get_workflow_handle_for(LaunchWorkflow.run, launch_id)
    with _translated(launch_id):
        try:
            # By name: the SDK's stubs type an `async def` update's result as a coroutine.
            taken: Decision = await handle.execute_update("decide", request, result_type=Decision)
            return taken
        except WorkflowUpdateFailedError as err:
            raise DecisionError(_refusal(err)) from None
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            raise LaunchError(_NO_ANSWER.format(launch_id=launch_id)) from None


# An update the server gave up waiting for (no worker took it in time); it may still be taken.
_NO_ANSWER = (
    "{launch_id} did not answer in time (no worker took it, or the workers are overloaded); "
    "it may still be taken: check `phasegate status` before sending it again"
)


class _AskTheLaunch(Exception):
    """The phase cannot take the decision; its launch can."""


# Refusals of a phase that its launch may not share: the phase takes no decisions itself (not
# started, or started without the launch's evidence), or the proof was signed with a key the
# launch would load first.
_LAUNCH_DECIDES = ("gate: this phase takes decisions through its launch", "proof: signed with key")


async def _decide_at_phase(client: Client, workflow_id: str, request: DecisionRequest) -> Decision:
    handle = client.get_workflow_handle(workflow_id)
    try:
        taken: Decision = await handle.execute_update("decide", request, result_type=Decision)
        return taken
    except WorkflowUpdateFailedError as err:
        refusal = _refusal(err)
        cause = err.cause
        unknown = isinstance(cause, ApplicationError) and cause.type != "DecisionRefused"
        if unknown or refusal.startswith(_LAUNCH_DECIDES):
            raise _AskTheLaunch from None
        raise DecisionError(refusal) from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise LaunchError(_NO_ANSWER.format(launch_id=workflow_id)) from None
    except RPCError as err:
        # Not running any more (or not started yet): the launch knows where the gate is.
        if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            raise _AskTheLaunch from None
        raise _launch_error(err, workflow_id) from None


async def hold(
    client: Client,
    launch_id: str,
    action: HoldAction,
    reason: str = "",
    by: str = "",
    proof: str = "",
) -> Hold | None:
    """Pause the launch (exposure holds where it is, analysis goes on) or resume it, through the
    `hold` update, and return the launch's hold after it: who paused it and why, or None once
    resumed. A launch already paused, or not paused, refuses with a `HoldError`."""
    request = HoldRequest(action=action, reason=reason, by=by, id=str(uuid.uuid4()), proof=proof)
    handle = client.get_workflow_handle_for(LaunchWorkflow.run, launch_id)
    with _translated(launch_id):
        try:
            # By name, and read back here: the answer is a hold or null.
            taken: Any = await handle.execute_update("hold", request)
        except WorkflowUpdateFailedError as err:
            raise HoldError(_refusal(err)) from None
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            raise LaunchError(_NO_ANSWER.format(launch_id=launch_id)) from None
    return None if taken is None else Hold.model_validate(taken)


async def pause(client: Client, launch_id: str, reason: str, by: str = "", proof: str = "") -> None:
    """Ask the launch to hold its exposure where it is (signal; no answer): analysis goes on."""
    await _send_hold(client, launch_id, "pause", HoldRequest(reason=reason, by=by, proof=proof))


async def resume(
    client: Client, launch_id: str, reason: str = "", by: str = "", proof: str = ""
) -> None:
    """Ask a paused launch to go on from where it held (signal; no answer)."""
    await _send_hold(client, launch_id, "resume", HoldRequest(reason=reason, by=by, proof=proof))


async def abort(client: Client, launch_id: str, reason: str, by: str = "", proof: str = "") -> None:
    """Ask the launch to stop and roll back; a fresh id makes a resent signal harmless."""
    request = AbortRequest(reason=reason, by=by, id=str(uuid.uuid4()), proof=proof)
    handle = client.get_workflow_handle_for(LaunchWorkflow.run, launch_id)
    with _translated(launch_id):
        await handle.signal(LaunchWorkflow.abort, request)


async def act_on_compensation(
    client: Client,
    launch_id: str,
    action: UndoAction,
    compensation: str,
    by: str = "",
    comment: str = "",
    proof: str = "",
    rows: int | None = None,
) -> None:
    """Act on an undo the rollback waits on: try it again once its cause is fixed (`retry`),
    give it up on record (`skip`), or, for a database restore that would lose live writes,
    keep them (`keep_writes`) or drop them on record (`drop_writes`), `rows` being the count
    the person saw. The launch refuses a skip or a drop without a comment."""
    request = CompensationAction(
        compensation=compensation,
        by=by,
        comment=comment,
        id=str(uuid.uuid4()),
        proof=proof,
        rows=rows,
    )
    handle = client.get_workflow_handle_for(LaunchWorkflow.run, launch_id)
    with _translated(launch_id):
        await handle.signal(SIGNALS[action], request)


# --- small private helpers ---------------------------------------------------------------


async def _send_hold(
    client: Client, launch_id: str, signal: HoldAction, request: HoldRequest
) -> None:
    # A fresh id makes a resent signal harmless.
    request = request.model_copy(update={"id": str(uuid.uuid4())})
    handle = client.get_workflow_handle_for(LaunchWorkflow.run, launch_id)
    with _translated(launch_id):
        await handle.signal(signal, request)


def _refusal(err: WorkflowUpdateFailedError) -> str:
    """An update's refusal as one line: the workflow validator's own message."""
    cause = err.cause
    message = cause.message if isinstance(cause, FailureError) else str(cause)
    return " ".join(message.split())


async def _read_status(client: Client, launch_id: str) -> tuple[LaunchStatus, bool]:
    """The status, and whether the workflow execution is closed."""
    handle = client.get_workflow_handle_for(LaunchWorkflow.run, launch_id)
    with _translated(launch_id):
        execution = (await handle.describe()).status
        if execution == WorkflowExecutionStatus.COMPLETED:
            return (await handle.result()).final, True
        try:
            status = await handle.query(LaunchWorkflow.status, rpc_timeout=QUERY_TIMEOUT)
        except WorkflowQueryFailedError as err:
            raise LaunchError(f"launch {launch_id} could not answer its status: {err}") from None
    running = execution == WorkflowExecutionStatus.RUNNING
    if running and status.status not in FINISHED:
        status = await _with_live_phase(client, status)
        status = await _with_live_analysis(client, status)
    return status, not running


async def _with_live_phase(client: Client, status: LaunchStatus) -> LaunchStatus:
    """The status with the running phase's exposure, step and activity as they are now: a
    phase tells its launch of them with its next report (before anything that waits), so
    between two instant steps the launch's own copy may be a step behind."""
    if status.status not in (LaunchStatusValue.RUNNING, LaunchStatusValue.PAUSED):
        return status
    index = status.phase_index
    if not 0 <= index < len(status.phases):
        return status
    known = status.phases[index]
    if known.status != PhaseStatusValue.RUNNING:
        return status
    child = client.get_workflow_handle(f"{status.launch_id}.{known.name}")
    try:
        live = await child.query("status", result_type=PhaseState, rpc_timeout=QUERY_TIMEOUT)
    except (RPCError, WorkflowQueryFailedError):
        return status  # not started yet, or just ended: the launch's own copy stands
    if live.name != known.name or live.status != PhaseStatusValue.RUNNING:
        return status
    phase = known.model_copy(
        update={"step": live.step, "exposure": live.exposure, "activity": live.activity}
    )
    phases = [*status.phases[:index], phase, *status.phases[index + 1 :]]
    update: dict[str, Any] = {"phases": phases, "step": live.step}
    if live.exposure is not None and status.exposure_note == "":
        update["exposure"] = live.exposure
    return status.model_copy(update=update)


async def _with_live_analysis(client: Client, status: LaunchStatus) -> LaunchStatus:
    """The status with what its background and watch analyses measured so far: they run in
    workflows of their own, and the launch learns their results when a run ends."""
    background = list(status.background)
    for label in ANALYSIS_LABELS:
        child = client.get_workflow_handle(f"{status.launch_id}.analysis.{label}")
        try:
            if (await child.describe()).status != WorkflowExecutionStatus.RUNNING:
                continue
            live = await child.query(
                "status", result_type=list[MetricResult], rpc_timeout=QUERY_TIMEOUT
            )
        except (RPCError, WorkflowQueryFailedError):
            continue  # not started yet, or just ended: the launch's own copy stands
        background = [*(r for r in background if r.phase != label), *live]
    return status.model_copy(update={"background": background})


@contextmanager
def _translated(launch_id: str | None) -> Iterator[None]:
    """Turn the server's RPC errors into one line that says what to do."""
    try:
        yield
    except RPCError as err:
        raise _launch_error(err, launch_id) from None


def _launch_error(err: RPCError, launch_id: str | None) -> LaunchError:
    message = err.message
    subject = f"launch {launch_id}" if launch_id else "listing launches"
    if err.status == RPCStatusCode.NOT_FOUND:
        if "already completed" in message:
            return LaunchError(f"{subject} has already finished; nothing more can be sent to it")
        return LaunchNotFound(
            f"no launch {launch_id} in this namespace: check the id with `phasegate list`"
        )
    if err.status == RPCStatusCode.ALREADY_EXISTS:
        return LaunchError(f"{subject} already exists: pick another --id")
    if err.status == RPCStatusCode.PERMISSION_DENIED:
        return LaunchRefused(f"{subject}: Temporal said PERMISSION_DENIED: {message}", err)
    if "search attribute" in message.lower():
        return LaunchError(
            f"{subject}: the Phasegate search attributes are not registered on this server "
            f"({message}); `phasegate dev` registers them"
        )
    if err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.FAILED_PRECONDITION):
        return LaunchError(
            f"{subject} did not answer ({message}): is a worker running? start one with "
            "`phasegate worker`"
        )
    return LaunchError(f"{subject}: Temporal said {err.status.name}: {message}")


def _quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _weight(weight: float) -> str:
    return f"{weight:g}%"


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds == 0:
        return f"{value.total_seconds() * 1000:g}ms"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def _gate_words(plan: LaunchPlan, spec: GateSpec) -> str:
    gate = plan.gate(spec)
    return f"wait for {' or '.join(gate.approvers)} to approve"
