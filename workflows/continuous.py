"""Analysis that never stops looking: the background rounds and the post-launch watch window.

Step analysis measures at the end of a step. Background analysis measures every `interval`
from the first exposure change until the launch ends, through bakes, while gates wait and
between phases; the watch window measures after the last phase, when there is no step left to
analyse. Each round measures every metric once, judged by the same code as step analysis
(`workflows/analysis.py`); a metric that fails more often than `failure_limit` asks for a
rollback or a pause, and `inconclusive_limit` rounds in a row without a verdict ask for a
pause, because nobody can say the canary is healthy.

The rounds run in a workflow of their own (`ContinuousAnalysis`, a child of the launch), which
continues as new when its history grows: a launch that waits at a gate for days writes one
child start and one result into its own history, not a timer and a query every interval. The
run ends with a finding the launch must act on, when the watch window is over, or when the
launch stops it; while the launch is held, only a finding that asks for a rollback ends it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.metrics import METRICS_OPTIONS, MetricsActivities
    from activities.options import summarized
    from schemas.analysis_spec import ContinuousAnalysis
    from schemas.launch_messages import (
        AnalysisFinding,
        ContinuousInput,
        ContinuousOutcome,
        MetricResult,
        StopAnalysis,
    )
    from schemas.metrics_messages import MetricQuery, MetricReading
    from schemas.plan import LaunchPlan
    from workflows.analysis import classify, record, summarize

Label = Literal["background", "watch"]
Action = Literal["rollback", "pause"]
STOP_SIGNAL = "stop_analysis"
# Continue as new after this many events, well before Temporal's warning at 10,240.
CONTINUE_AFTER_EVENTS = 4000


@dataclass(frozen=True)
class Finding:
    """What a round asks the launch to do, and why (with the measurements' evidence)."""

    action: Action
    reason: str


class ContinuousAnalysisRun:
    """One metric result per metric (`phase` = the label, `step` 0), kept across rounds and
    across runs of the launch; `round` measures them all once and says what to do."""

    def __init__(
        self,
        plan: LaunchPlan,
        spec: ContinuousAnalysis,
        label: Label,
        results: list[MetricResult],
    ) -> None:
        self._plan = plan
        self.spec = spec
        self.label = label
        self.results = results
        known = {r.metric for r in results if r.phase == label}
        for name in spec.metrics:
            if name not in known:
                results.append(MetricResult(phase=label, step=0, metric=name))
        # Rounds in a row each metric gave no verdict (no data, Prometheus erroring).
        self.quiet: dict[str, int] = {}

    def _mine(self) -> list[MetricResult]:
        return [r for r in self.results if r.phase == self.label and r.metric in self.spec.metrics]

    async def round(self) -> Finding | None:
        """Measure every metric once; the finding the round asks the launch to act on."""
        mine = self._mine()
        readings = await asyncio.gather(*(self._read(r.metric) for r in mine))
        failing: list[MetricResult] = []
        blind: list[MetricResult] = []
        for result, reading in zip(mine, readings, strict=True):
            spec = self._plan.analysis[result.metric]
            measurement = classify(spec, reading, workflow.now())
            record(result, measurement)
            judged = measurement.outcome in ("success", "failure")
            self.quiet[result.metric] = 0 if judged else self.quiet.get(result.metric, 0) + 1
            if self.quiet[result.metric] >= self.spec.inconclusive_limit:
                blind.append(result)
            if result.failures > self.spec.failure_limit:
                result.verdict = "failed"
                failing.append(result)
            elif result.verdict != "failed":
                result.verdict = "running"
        what = "background analysis" if self.label == "background" else "watch window"
        if failing:
            pause = self.spec.on_failure == "pause" or all(
                self._plan.analysis[r.metric].on_failure == "pause" for r in failing
            )
            return Finding("pause" if pause else "rollback", f"{what} failed: {summarize(failing)}")
        if blind:
            return Finding(
                "pause",
                f"{what} inconclusive for {self.spec.inconclusive_limit} rounds in a row: "
                + summarize(blind),
            )
        return None

    async def _read(self, name: str) -> MetricReading:
        prometheus = self._plan.targets.prometheus
        assert prometheus is not None  # the plan's validation requires it
        router = self._plan.targets.router
        query = MetricQuery(
            prometheus=prometheus,
            metric=name,
            spec=self._plan.analysis[name],
            canary_variant=router.canary_variant,
            stable_variant=router.stable_variant,
        )
        try:
            return await workflow.execute_activity_method(
                MetricsActivities.query_metric,
                query,
                **summarized(METRICS_OPTIONS, f"{self.label} analysis: {name}"),
            )
        except ActivityError as err:
            return MetricReading(error=str(err.cause or err))


def forgive(results: list[MetricResult], label: str) -> None:
    """A person resumed after a finding: count failures afresh (the measurements stay)."""
    for result in results:
        if result.phase == label:
            result.failures = 0
            result.consecutive_errors = 0
            result.verdict = "running"


def continuous_spec(inp: ContinuousInput) -> ContinuousAnalysis:
    spec = inp.plan.background_analysis if inp.label == "background" else inp.plan.watch
    if spec is None:
        raise ValueError(f"the plan has no {inp.label} analysis")
    return spec


@workflow.defn(name="ContinuousAnalysis")
class ContinuousAnalysisWorkflow:
    """Background or watch analysis of one launch, measured round after round."""

    def __init__(self) -> None:
        self._stop = False
        self._launch_run = ""
        self._early: list[Any] = []
        self._run: ContinuousAnalysisRun | None = None
        self._label = ""

    @workflow.run
    async def run(self, inp: ContinuousInput) -> ContinuousOutcome:
        parent = workflow.info().parent
        if parent is None or parent.workflow_id != inp.launch_id:
            raise ApplicationError(
                f"continuous analysis runs only as a child of launch {inp.launch_id!r}",
                type="NotAChildOfItsLaunch",
                non_retryable=True,
            )
        self._launch_run = inp.launch_run
        for payload in self._early:
            self._take_stop(payload)
        self._early.clear()
        spec = continuous_spec(inp)
        run = ContinuousAnalysisRun(inp.plan, spec, inp.label, inp.results)
        run.quiet = dict(inp.quiet)
        self._run, self._label = run, inp.label
        rounds = inp.rounds

        def outcome(
            ended: Literal["finding", "window_over", "stopped"],
            finding: Finding | None = None,
        ) -> ContinuousOutcome:
            return ContinuousOutcome(
                results=run.results,
                quiet=run.quiet,
                finding=None
                if finding is None
                else AnalysisFinding(action=finding.action, reason=finding.reason),
                ended=ended,
            )

        try:
            while not self._stop:
                wait = spec.interval
                if inp.ends_at is not None:
                    left = inp.ends_at - workflow.now()
                    if left <= timedelta(0):
                        return outcome("window_over")
                    wait = min(wait, left)
                self._show(rounds)
                if await self._stopped_within(wait):
                    break
                finding = await run.round()
                rounds += 1
                if finding is not None and (finding.action == "rollback" or not inp.held):
                    self._show(rounds, finding.reason)
                    return outcome("finding", finding)
                if workflow.info().get_current_history_length() > CONTINUE_AFTER_EVENTS or (
                    workflow.info().is_continue_as_new_suggested()
                ):
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    workflow.continue_as_new(
                        inp.model_copy(
                            update={"results": run.results, "quiet": run.quiet, "rounds": rounds}
                        )
                    )
        except asyncio.CancelledError:
            # The launch ended (or was cancelled): what was measured is the answer.
            return outcome("stopped")
        return outcome("stopped")

    async def _stopped_within(self, wait: timedelta) -> bool:
        try:
            await workflow.wait_condition(lambda: self._stop, timeout=wait)
        except TimeoutError:
            return False
        return True

    def _show(self, rounds: int, finding: str = "") -> None:
        run = self._run
        if run is None:
            return
        lines = [f"{self._label} analysis: {rounds} round(s)"]
        lines += [
            f"{r.metric}: {r.successes} ok, {r.failures} failed, "
            f"{r.inconclusive + r.errors} without a verdict"
            + (f" (last: {r.last.detail})" if r.last is not None and r.last.detail else "")
            for r in run.results
            if r.phase == self._label
        ]
        if finding:
            lines.append(f"Finding: {finding}")
        workflow.set_current_details("\n".join(lines))

    @workflow.signal(
        name=STOP_SIGNAL,
        description="Internal: the launch ending this analysis, sealed by its worker; "
        "anything else sent here is refused.",
    )
    def stop_analysis(self, payload: Any = None) -> None:
        if not self._launch_run:
            self._early = [*self._early, payload][-8:]
            return
        self._take_stop(payload)

    def _take_stop(self, payload: Any) -> None:
        try:
            stop = StopAnalysis.model_validate(payload)
        except ValidationError:
            workflow.logger.warning("refused a malformed %s", STOP_SIGNAL)
            return
        if not stop.sealed or stop.launch_run != self._launch_run:
            workflow.logger.warning("refused an unsealed or foreign %s", STOP_SIGNAL)
            return
        self._stop = True

    @workflow.query(name="status", description="The measurements so far, metric by metric.")
    def status(self) -> list[MetricResult]:
        run = self._run
        return [] if run is None else [r for r in run.results if r.phase == self._label]
