"""Analysis: PromQL measurements on a schedule, judged like Argo Rollouts judges its metrics.

Each metric runs its own loop (interval × count). A measurement is judged by a threshold
(`max`, `min`, `baseline`) or by the statistical judge (`compare`: canary against stable with
a Mann-Whitney U test, its evidence in the measurement's detail). A metric fails when its
failures pass the failure limit; it is inconclusive when Prometheus keeps erroring or has no
data. One failed critical metric stops the others at once, so a bad canary is rolled back as
fast as it is seen; with the plan's `scoring`, the metrics' verdicts combine into a score.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.metrics import METRICS_OPTIONS, MetricsActivities
    from schemas.analysis_spec import MetricSpec, Scoring
    from schemas.launch_messages import Measurement, MetricResult, PhaseState
    from schemas.metrics_messages import MetricQuery, MetricReading
    from schemas.plan import LaunchPlan

Verdict = Literal["successful", "failed", "inconclusive"]
# A result keeps its newest measurements (its counts keep the rest), each detail this short.
KEEP_MEASUREMENTS = 20
KEEP_DETAIL_CHARS = 500


def classify(spec: MetricSpec, reading: MetricReading, at: datetime) -> Measurement:
    """Judge one reading against the metric's success condition."""
    if reading.error:
        return Measurement(at=at, outcome="error", detail=reading.error[:KEEP_DETAIL_CHARS])
    if spec.compare is not None:
        return _classify_comparison(spec, reading, at)
    value = reading.value
    if value is None:
        return Measurement(at=at, outcome="inconclusive", detail="no data for the canary")
    if spec.baseline is not None and reading.baseline is None:
        return Measurement(
            at=at, value=value, outcome="inconclusive", detail="no data for the stable baseline"
        )
    problems = _bound_problems(spec, value)
    if spec.baseline is not None and reading.baseline is not None:
        rule, baseline = spec.baseline, reading.baseline
        if rule.max_ratio is not None:
            limit = baseline * rule.max_ratio + rule.tolerance
            if value > limit:
                problems.append(
                    f"canary {value:.4g} > baseline {baseline:.4g} × {rule.max_ratio:g} + {rule.tolerance:g}"
                )
        elif rule.min_ratio is not None:
            limit = baseline * rule.min_ratio - rule.tolerance
            if value < limit:
                problems.append(
                    f"canary {value:.4g} < baseline {baseline:.4g} × {rule.min_ratio:g} - {rule.tolerance:g}"
                )
    return Measurement(
        at=at,
        value=value,
        baseline=reading.baseline,
        outcome="failure" if problems else "success",
        detail="; ".join(problems),
    )


def _bound_problems(spec: MetricSpec, value: float) -> list[str]:
    problems: list[str] = []
    if spec.max is not None and value > spec.max:
        problems.append(f"{value:.4g} > max {spec.max:g}")
    if spec.min is not None and value < spec.min:
        problems.append(f"{value:.4g} < min {spec.min:g}")
    return problems


def _classify_comparison(spec: MetricSpec, reading: MetricReading, at: datetime) -> Measurement:
    """The statistical judge's outcome as a measurement; its evidence is the detail, whatever
    the outcome. `max` and `min`, when given too, bound the canary's median."""
    comparison = reading.comparison
    if comparison is None:
        return Measurement(
            at=at, outcome="inconclusive", detail="no comparison of canary and stable was read"
        )
    detail = comparison.detail[:KEEP_DETAIL_CHARS]
    if comparison.outcome == "nodata":
        outcome: Literal["success", "failure", "inconclusive"] = "inconclusive"
    elif comparison.outcome != "pass":
        outcome = "failure"
    else:
        problems = (
            _bound_problems(spec, comparison.canary_median)
            if comparison.canary_median is not None
            else []
        )
        outcome = "failure" if problems else "success"
        detail = "; ".join([*problems, detail])[:KEEP_DETAIL_CHARS]
    return Measurement(
        at=at,
        value=comparison.canary_median,
        baseline=comparison.stable_median,
        outcome=outcome,
        detail=detail,
    )


def taken(result: MetricResult) -> int:
    """How many measurements `result` has taken, kept or not."""
    return result.successes + result.failures + result.inconclusive + result.errors


def record(result: MetricResult, measurement: Measurement) -> None:
    if measurement.outcome == "success":
        result.successes += 1
    elif measurement.outcome == "failure":
        result.failures += 1
    elif measurement.outcome == "inconclusive":
        result.inconclusive += 1
    else:
        result.errors += 1
    result.consecutive_errors = (
        result.consecutive_errors + 1 if measurement.outcome == "error" else 0
    )
    result.measurements = [*result.measurements, measurement][-KEEP_MEASUREMENTS:]


def judge(spec: MetricSpec, result: MetricResult, *, finished: bool) -> Verdict | None:
    """The metric's verdict so far, or None while it still needs measurements."""
    if result.failures > spec.failure_limit:
        return "failed"
    if result.consecutive_errors > spec.consecutive_error_limit:
        return "inconclusive"
    if not finished:
        return None
    return (
        "inconclusive"
        if result.inconclusive + result.errors > spec.inconclusive_limit
        else "successful"
    )


async def _measure(
    plan: LaunchPlan,
    name: str,
    result: MetricResult,
    report: Callable[[], Awaitable[None]],
) -> None:
    spec = plan.analysis[name]
    assert plan.targets.prometheus is not None
    router = plan.targets.router
    query = MetricQuery(
        prometheus=plan.targets.prometheus,
        metric=name,
        spec=spec,
        canary_variant=router.canary_variant,
        stable_variant=router.stable_variant,
    )
    if spec.initial_delay:
        await workflow.sleep(spec.initial_delay)
    for number in range(spec.count):
        if number:
            await workflow.sleep(spec.interval)
        try:
            reading = await workflow.execute_activity_method(
                MetricsActivities.query_metric, query, **METRICS_OPTIONS
            )
        except ActivityError as err:
            reading = MetricReading(error=str(err.cause or err))
        record(result, classify(spec, reading, workflow.now()))
        verdict = judge(spec, result, finished=number + 1 == spec.count)
        if verdict is not None:
            result.verdict = verdict
        await report()
        if verdict is not None:
            return


async def run_analysis(
    plan: LaunchPlan,
    state: PhaseState,
    step: int,
    names: list[str],
    report: Callable[[], Awaitable[None]],
) -> tuple[Verdict, list[MetricResult]]:
    """Run the named metrics side by side; stop them all as soon as a critical one fails."""
    scoring = plan.scoring
    # Without scoring every metric is critical: the first failure decides.
    critical = {name for name in names if scoring is None or plan.analysis[name].critical}
    results = [MetricResult(phase=state.name, step=step, metric=name) for name in names]
    state.analysis.extend(results)
    tasks = [
        asyncio.create_task(_measure(plan, name, result, report))
        for name, result in zip(names, results, strict=True)
    ]
    pending = list(tasks)
    try:
        while pending:
            _, pending = await workflow.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(result.verdict == "failed" and result.metric in critical for result in results):
                break
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if result.verdict == "running":
                result.verdict = "cancelled"
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return combine(scoring, critical, results), results


def combine(scoring: Scoring | None, critical: set[str], results: list[MetricResult]) -> Verdict:
    """One verdict from the metrics' verdicts.

    Without scoring: any failure fails, else any inconclusive metric makes it inconclusive.
    With scoring (Kayenta's way): a failed critical metric fails, an inconclusive critical one
    makes it inconclusive; otherwise the score (the share of judged metrics that passed;
    inconclusive non-critical ones are left out) against `pass_score` and `marginal_score`
    decides. With no metric judged at all, nobody can say: inconclusive.
    """
    verdicts = {result.verdict for result in results}
    if scoring is None:
        if "failed" in verdicts:
            return "failed"
        if "inconclusive" in verdicts:
            return "inconclusive"
        return "successful"
    if any(result.verdict == "failed" and result.metric in critical for result in results):
        return "failed"
    if any(result.verdict == "inconclusive" and result.metric in critical for result in results):
        return "inconclusive"
    score = analysis_score(results)
    if score is None:
        return "inconclusive"
    if score >= scoring.pass_score:
        return "successful"
    if score >= scoring.marginal_score:
        return "inconclusive"
    return "failed"


def analysis_score(results: list[MetricResult]) -> float | None:
    """100 × the metrics that passed over those judged (passed or failed); None if none was."""
    judged = [result for result in results if result.verdict in ("successful", "failed")]
    if not judged:
        return None
    passed = sum(result.verdict == "successful" for result in judged)
    return 100 * passed / len(judged)


def summarize(results: list[MetricResult]) -> str:
    parts = []
    for result in results:
        last = result.last
        detail = f": {last.detail}" if last and last.detail else ""
        parts.append(
            f"{result.metric} {result.verdict} ({result.successes} ok, {result.failures} failed, "
            f"{result.inconclusive} no data, {result.errors} errors){detail}"
        )
    return "; ".join(parts)
