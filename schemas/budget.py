"""The history budget: an upper estimate of the workflow history a plan's launch writes, and
the check that refuses a plan whose launch could come near Temporal's limits.

Temporal warns at 10,240 events in one workflow's history and terminates the workflow at
51,200 events or 50 MB; one payload (an input, a signal, a result) may be at most 2 MB. A plan
passes only if its launch and each of its phase workflows stay within `MAX_EVENTS` events and
`MAX_BYTES` bytes, and no payload they send is larger than `MAX_PAYLOAD`.

How it counts: the estimate walks the plan as the workflows run it. Everything a workflow waits
for (an activity, a timer, a signal sent or received, an update, a child workflow) costs its
own events plus a workflow task (scheduled, started, completed) to react to it, and nothing is
assumed to share a workflow task, so the estimate is never below the real count. Every branch
is taken: each analysis opens its inconclusive gate, each gate takes the votes its quorum
needs plus `STRAY_VOTES` refused ones, each warning a probe can raise waits for a waiver, the
launch rolls back every undo. Every kept measurement, decision, finding and undo is counted at
its largest size. The launch's count covers all its phases in one history, although it may
continue as new between phases. A workflow task the server retries (a worker too slow to
answer, or restarted) costs events too: `RETRIED_TASKS` allows for one in twenty.

Checked against real runs: `tests/workflows/test_largest_plan.py` runs the largest plan the
budget allows on the time-skipping server (its soft launch writes about 94% of its estimate)
and `tests/schemas/test_budget.py` holds every committed history of every phase kind below
its estimate. Byte sizes are far above what real runs write; they bound what a hostile or
unlucky run could.

What the plan cannot say is assumed at its bound: an infra-setup phase applies at most
`MANIFEST_OBJECTS` objects of at most `OBJECT_BYTES` each from its manifests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schemas.analysis_spec import MetricSpec
from schemas.exposure_spec import ExposurePhase
from schemas.gate_spec import GateSpec
from schemas.infra_setup_spec import InfraSetupPhase
from schemas.migration_cutover_spec import MigrationCutoverPhase
from schemas.security_validation_spec import (
    AuditCheck,
    RateLimitCheck,
    SecurityValidationPhase,
)

if TYPE_CHECKING:
    from schemas.plan import LaunchPlan, Phase

KIB = 1024
MIB = 1024 * KIB

# The budget: well inside Temporal's limits (10,240 events warns; 51,200 events, 50 MB and a
# 2 MB payload fail).
MAX_EVENTS = 10_000
MAX_BYTES = 20 * MIB
MAX_PAYLOAD = 1792 * KIB
# A plan as the workers receive it (every default written out); it is copied into the
# launch's input, each phase's input and the launch's admission check.
MAX_PLAN_BYTES = 512 * KIB

# Events of one thing a workflow waits for, including the workflow task that reacts to it.
WORKFLOW_TASK = 3
START = 1 + WORKFLOW_TASK  # started, then its first workflow task
END = 1
ACTIVITY = 3 + WORKFLOW_TASK  # scheduled, started, completed (or failed, or timed out)
TIMER = 2 + WORKFLOW_TASK  # started, fired (or cancelled)
SIGNAL_OUT = 2 + WORKFLOW_TASK  # initiated, then signalled (or failed)
SIGNAL_IN = 1 + WORKFLOW_TASK
UPDATE = 2 + WORKFLOW_TASK  # accepted, completed
CHILD = 3 + 2 * WORKFLOW_TASK  # initiated, started, closed
SEARCH_ATTRIBUTES = 1

# Workflow tasks retried after a timeout or a failure, per workflow task counted.
RETRIED_TASKS = 0.05
# Refused votes a gate is assumed to see besides the ones its quorum needs.
STRAY_VOTES = 2
# An authenticated launch reloads the approval service's keys at most this often.
KEY_RELOADS = 5
# Pauses (each with its resume) a launch is assumed to see, a person's or analysis'.
HOLD_CYCLES = 5
# A background or watch analysis workflow continues as new past this many events
# (`workflows/continuous.py`), so its history stays below it plus one round.
CONTINUOUS_EVENTS = 4000

# Sizes in bytes, each at least the largest JSON the workflows write for the thing.
EVENT_BYTES = 512  # an event's own fields, beside its payload
REPORT_BYTES = 2 * KIB  # a phase report's small fields: status, counters, what it is doing
REASON_BYTES = 8 * KIB  # why a phase failed: 2,000 characters
MEASUREMENT_BYTES = 768  # one measurement; an error detail is cut at 500 characters
RESULT_BYTES = 512  # an analysis result without its measurements
KEPT_MEASUREMENTS = 20  # a result keeps its newest measurements
READING_BYTES = 6 * KIB  # a Prometheus reading: the query as sent, and an error cut short
DECISION_BYTES = 4 * KIB  # a decision: who, people, a comment of 2,000 characters
VOTE_BYTES = 16 * KIB  # a vote as sent and relayed: a proof of 8 KiB, a comment
FINDING_BYTES = 4 * KIB  # one finding of a probe, its evidence included
REFUSAL_BYTES = 2 * KIB  # one refused vote as a phase keeps it
KEPT_REFUSALS = 50
AUDIT_BYTES = 100 * 7 * KIB // 2  # the audit trail: 100 entries of 2 KiB payload, 1 KiB note
SNAPSHOT_BYTES = 16 * KIB  # the routing state an exposure undo restores
UNDO_BYTES = 1 * KIB  # an undo record beside what it restores: id, description
NOTIFY_BYTES = 8 * KIB  # a notification beside its webhooks
AUTHORITY_BYTES = 16 * KIB  # the approval service's keys, as a phase's input carries them
LAUNCH_INPUT_BYTES = 16 * KIB  # a launch's input beside its plan: the starter's proof
PROBE_BYTES = 8 * KIB  # a probe's request and report beside its check
MIGRATION_BYTES = 32 * KIB  # a migration's scripts, backup and tables as its activities see them
ACTIVITY_LINE_BYTES = 8 * KIB  # what a migration step says it did: versions, tables, counts
MANIFEST_OBJECTS = 20
OBJECT_BYTES = 6 * KIB
QUESTION_BYTES = 1 * KIB  # a gate's question, beside its description or analysis summary
ANALYSIS_SUMMARY_BYTES = 1 * KIB  # one metric in an inconclusive analysis' question


@dataclass
class History:
    """An upper estimate of one workflow's history."""

    events: int = 0
    bytes: int = 0

    def add(self, events: int, payload: int = 0) -> None:
        self.events += events
        self.bytes += events * EVENT_BYTES + payload

    def with_retried_tasks(self) -> History:
        """This history with room for workflow tasks the server retries."""
        extra = int(self.events * RETRIED_TASKS) + 2 * WORKFLOW_TASK
        return History(self.events + extra, self.bytes + extra * EVENT_BYTES)


@dataclass
class PhaseEstimate:
    """What one phase workflow writes, and what it hands its launch."""

    history: History = field(default_factory=History)
    reports: int = 0  # progress signals to the launch
    report_bytes: int = 0
    state_bytes: int = 0  # its final state: the phase's result
    listed_bytes: int = 0  # of which decisions and undos, which the launch's status lists again
    gates: int = 0
    votes: int = 0  # votes the launch relays to it
    undos: list[int] = field(default_factory=list)  # bytes of each undo the launch may run


@dataclass
class Estimate:
    """An upper estimate of the history of a plan's launch and of each of its phases."""

    plan_bytes: int
    launch: History
    phases: list[PhaseEstimate]
    result_bytes: int  # the launch's result: its final status
    # One run of a background or watch analysis workflow (empty when the plan has neither).
    continuous: History = field(default_factory=History)


def _size(value: object) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


class _PhaseRun:
    """Walks one phase as its workflow runs it, adding up what each step writes."""

    def __init__(self, plan: LaunchPlan, phase: Phase, plan_bytes: int) -> None:
        self.plan = plan
        self.out = PhaseEstimate()
        self.out.state_bytes = REPORT_BYTES
        self._stray_votes = 0
        self._router = _size(plan.targets.router.model_dump(mode="json"))
        prometheus = plan.targets.prometheus
        self._prometheus = _size(prometheus.model_dump(mode="json")) if prometheus else 0
        self.history.add(START, plan_bytes + AUTHORITY_BYTES)
        self.report()

    @property
    def history(self) -> History:
        return self.out.history

    def report(self, extra: int = 0) -> None:
        size = REPORT_BYTES + extra
        self.out.reports += 1
        self.out.report_bytes += size
        self.history.add(SIGNAL_OUT, size)

    def activity(self, payload: int = 0) -> None:
        self.history.add(ACTIVITY, payload)

    def timer(self) -> None:
        self.history.add(TIMER)

    def undo(self, size: int) -> None:
        """An undo registered (and reported) before its change."""
        self.out.state_bytes += size
        self.out.listed_bytes += size
        self.out.undos.append(size)
        self.report(size)

    def gate(self, spec: GateSpec | None, question: int = QUESTION_BYTES) -> None:
        """Open a gate, take its votes (and some refused ones), close it."""
        if spec is None:
            return
        gate = self.plan.gate(spec)
        shown = _size(gate.approvers) + (len(gate.description or "") * 4 or question) + 2 * KIB
        votes = gate.min_approvals + STRAY_VOTES
        self.report(shown)  # announced
        self.timer()  # its timeout
        for _ in range(votes):
            self.history.add(SIGNAL_IN, VOTE_BYTES)
            self.report(shown + REFUSAL_BYTES)
        self.report(DECISION_BYTES)  # closed
        self.out.state_bytes += DECISION_BYTES
        self.out.listed_bytes += DECISION_BYTES
        self.out.gates += 1
        self.out.votes += votes
        self._stray_votes += STRAY_VOTES

    def analysis(self, names: list[str]) -> None:
        """The named metrics side by side, then the inconclusive gate."""
        if not names:
            return
        self.report()
        for name in names:
            self.metric(self.plan.analysis[name])
        self.gate(GateSpec(), QUESTION_BYTES + ANALYSIS_SUMMARY_BYTES * len(names))

    def metric(self, spec: MetricSpec) -> None:
        query = self._prometheus + _size(spec.model_dump(mode="json")) + 256
        if spec.initial_delay:
            self.timer()
        for number in range(spec.count):
            if number:
                self.timer()
            self.activity(query + READING_BYTES)
            self.report(RESULT_BYTES + MEASUREMENT_BYTES)
        self.out.state_bytes += (
            RESULT_BYTES + min(spec.count, KEPT_MEASUREMENTS) * MEASUREMENT_BYTES
        )

    def finish(self, phase: Phase) -> PhaseEstimate:
        self.gate(phase.gates.after)
        self.report(REASON_BYTES)  # the last state, with why it failed, if it did
        self.out.state_bytes += REASON_BYTES
        # the phase keeps its newest refusals of votes
        self.out.state_bytes += min(KEPT_REFUSALS, self._stray_votes) * REFUSAL_BYTES
        self.history.add(END, self.out.state_bytes)
        self.out.history = self.history.with_retried_tasks()
        return self.out

    # --- each kind, in the order its workflow works ---------------------------------------

    def exposure(self, phase: ExposurePhase) -> None:
        self.activity(self._router + SNAPSHOT_BYTES)  # snapshot the routing state
        self.undo(self._router + SNAPSHOT_BYTES + UNDO_BYTES)
        for step in phase.steps:
            self.activity(self._router)  # set the exposure
            self.report()
            if step.pause is not None:
                self.report()
                self.timer()
            self.analysis(step.analysis)
            self.gate(step.approval)
        if phase.kind == "full_launch":
            self.activity(self._router)  # promote
            self.report()
        # each pause and resume relayed by the launch: held before the next change, reported
        for _ in range(2 * HOLD_CYCLES):
            self.history.add(SIGNAL_IN, REPORT_BYTES)
            self.report()

    def infra_setup(self, phase: InfraSetupPhase) -> None:
        objects = (MANIFEST_OBJECTS if phase.manifests else 0) + 1  # and the namespace
        manifests = objects * OBJECT_BYTES + _size(phase.manifests)
        self.activity(manifests)
        for secret in [None] * objects + list(phase.secrets):
            size = OBJECT_BYTES if secret is None else _size(secret.model_dump(mode="json"))
            self.activity(size)  # snapshot
            self.undo(size + UNDO_BYTES)
            self.activity(size)  # apply
        self.report()
        self.activity(manifests)  # the rollout
        if phase.prometheus_jobs:
            self.report()
            self.activity(self._prometheus + _size(phase.prometheus_jobs))

    def security_validation(self, phase: SecurityValidationPhase) -> None:
        self.report()
        findings = 0
        for check in phase.checks():
            request = _size(check.model_dump(mode="json")) + PROBE_BYTES
            findings += len(check.aspects())
            if isinstance(check, AuditCheck):
                self.activity(self._prometheus + request)  # the reading before
                self.activity(request)  # the audited request
                for _ in range(check.polls):
                    self.timer()
                    self.activity(self._prometheus + request)
            elif isinstance(check, RateLimitCheck):
                self.report()
                self.activity(request)
            else:
                self.activity(request)
        self.out.state_bytes += findings * FINDING_BYTES
        self.report(findings * FINDING_BYTES)
        waiver = phase.waiver_spec()
        for check in phase.checks():
            for _ in check.aspects():  # any aspect may fail as a warning
                self.gate(waiver, QUESTION_BYTES + FINDING_BYTES)
                self.report(FINDING_BYTES)

    def migration_cutover(self, phase: MigrationCutoverPhase) -> None:
        where = _size(phase.model_dump(mode="json", include={"source", "target", "migrations"}))
        tables = _size(phase.verify.model_dump(mode="json"))
        request = where + tables + MIGRATION_BYTES  # what an activity is sent and answers
        undo = where + MIGRATION_BYTES + UNDO_BYTES  # what an undo records
        for _ in range(4):  # preflight, backup, migrate, verify: announced, then run
            self.report(ACTIVITY_LINE_BYTES)
            self.activity(request)
        self.undo(undo)  # restore the database
        self.gate(phase.cutover.gate)
        self.report()  # cutover
        self.undo(undo + tables)  # guard writes since cutover
        if phase.cutover.flag is not None:
            flag = _size(phase.cutover.flag.model_dump(mode="json"))
            self.activity(flag + SNAPSHOT_BYTES)
            self.undo(flag + SNAPSHOT_BYTES + UNDO_BYTES)
            self.activity(flag)
        if phase.cutover.sql is not None:
            sql = _size(phase.cutover.sql.model_dump(mode="json"))
            self.undo(undo + sql)
            self.activity(request + sql)
        self.report()
        if phase.watch is not None:
            self.report()
            self.analysis(phase.watch.analysis)


def _phase(plan: LaunchPlan, phase: Phase, plan_bytes: int) -> PhaseEstimate:
    run = _PhaseRun(plan, phase, plan_bytes)
    run.gate(phase.gates.before)
    if isinstance(phase, ExposurePhase):
        run.exposure(phase)
    elif isinstance(phase, InfraSetupPhase):
        run.infra_setup(phase)
    elif isinstance(phase, SecurityValidationPhase):
        run.security_validation(phase)
    elif isinstance(phase, MigrationCutoverPhase):
        run.migration_cutover(phase)
    return run.finish(phase)


def estimate(plan: LaunchPlan) -> Estimate:
    """The upper estimate of what `plan`'s launch writes, workflow by workflow."""
    plan_bytes = len(plan.model_dump_json().encode())
    phases = [_phase(plan, phase, plan_bytes) for phase in plan.phases]
    webhooks = _size([hook.model_dump(mode="json") for hook in plan.notifications])
    notify = NOTIFY_BYTES + webhooks if plan.notifications else 0

    launch = History()
    launch.add(START, LAUNCH_INPUT_BYTES + plan_bytes)
    launch.add(ACTIVITY, plan_bytes)  # the worker's admission of the plan
    if plan.approvals.authenticated is not None:
        launch.add(ACTIVITY * (1 + KEY_RELOADS), AUTHORITY_BYTES * (1 + KEY_RELOADS))
    if notify:
        launch.add(ACTIVITY * 3, notify * 3)  # started; completed or rolled back; undo failed
    launch.add(SEARCH_ATTRIBUTES * (2 + 3 * len(phases)))
    for phase in phases:
        launch.add(CHILD, plan_bytes + AUTHORITY_BYTES + phase.state_bytes)
        launch.add(ACTIVITY)  # how the phase ended, when the launch did not see it end
        launch.add(SIGNAL_IN * phase.reports, phase.report_bytes)
        # each gate: announced by webhook, the launch waiting and then running again
        launch.add((ACTIVITY if notify else 0) * phase.gates, notify * phase.gates)
        launch.add(SEARCH_ATTRIBUTES * 2 * phase.gates)
        # each vote: taken as an update (or a signal), relayed to the phase
        launch.add((UPDATE + SIGNAL_OUT + SEARCH_ATTRIBUTES) * phase.votes, 2 * VOTE_BYTES)
        # each undo run in the rollback, and a person's retry or skip of it
        for undo in phase.undos:
            launch.add(ACTIVITY + SIGNAL_IN, undo + VOTE_BYTES)
    # each pause and resume: taken (a signal or an update), relayed to the phase, and the
    # analyses stopped and started again with what they measured
    launch.add((UPDATE + SIGNAL_OUT + 2 * SEARCH_ATTRIBUTES) * 2 * HOLD_CYCLES, VOTE_BYTES)
    continuous_results = 0
    continuous = History()
    for spec in (plan.background_analysis, plan.watch):
        if spec is None:
            continue
        results = len(spec.metrics) * (RESULT_BYTES + KEPT_MEASUREMENTS * MEASUREMENT_BYTES)
        continuous_results += results
        runs = 2 + 2 * HOLD_CYCLES
        launch.add((CHILD + SIGNAL_OUT) * runs, runs * (plan_bytes + 2 * results))
        query = len(spec.metrics) * (READING_BYTES + 1 * KIB)
        run = History(
            CONTINUOUS_EVENTS + TIMER + len(spec.metrics) * ACTIVITY + END,
            (CONTINUOUS_EVENTS + TIMER) * EVENT_BYTES + 2 * (plan_bytes + results) + query,
        )
        if run.events > continuous.events:
            continuous = run
    states = sum(phase.state_bytes + phase.listed_bytes for phase in phases)
    result = LAUNCH_INPUT_BYTES + states + AUDIT_BYTES + continuous_results
    launch.add(END, result)
    return Estimate(
        plan_bytes=plan_bytes,
        launch=launch.with_retried_tasks(),
        phases=phases,
        result_bytes=result,
        continuous=continuous,
    )


_ADVICE = "use fewer phases, steps, metrics, checks or gates, or a smaller count"


def budget_problems(plan: LaunchPlan) -> list[str]:
    """Why `plan`'s launch could come near Temporal's history limits: one problem per workflow
    over budget, naming its phase; empty when the whole launch fits."""
    found = estimate(plan)
    if found.plan_bytes > MAX_PLAN_BYTES:
        return [
            f"as the workers receive it the plan is {found.plan_bytes // KIB} KiB; at most "
            f"{MAX_PLAN_BYTES // KIB} KiB: {_ADVICE}"
        ]
    problems = []
    for index, phase in enumerate(found.phases):
        problems += _over(f"phases[{index}]", "", phase.history, phase.state_bytes)
    problems += _over("phases", "the launch, over all its phases, ", found.launch, 0)
    if found.result_bytes > MAX_PAYLOAD:
        problems.append(
            f"phases: the launch's final status would be about {found.result_bytes // KIB} KiB; "
            f"at most {MAX_PAYLOAD // KIB} KiB: {_ADVICE}"
        )
    return problems


def _over(path: str, who: str, history: History, result: int) -> list[str]:
    problems = []
    if history.events > MAX_EVENTS:
        problems.append(
            f"{path}: {who}would write about {history.events} history events; at most "
            f"{MAX_EVENTS}: {_ADVICE}"
        )
    if history.bytes > MAX_BYTES:
        problems.append(
            f"{path}: {who}would write about {history.bytes // MIB} MB of history; at most "
            f"{MAX_BYTES // MIB} MB: {_ADVICE}"
        )
    if result > MAX_PAYLOAD:
        problems.append(
            f"{path}: its final state would be about {result // KIB} KiB; at most "
            f"{MAX_PAYLOAD // KIB} KiB: {_ADVICE}"
        )
    return problems
