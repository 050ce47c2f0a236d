"""The statistical judge in the analysis loop: how a comparison becomes a measurement, how the
plan's scoring combines critical and non-critical metrics, and what a launch does with both
(time-skipping server, activities mocked by name)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.judge import compare_samples
from schemas.analysis_spec import Comparison, MetricSpec, Scoring
from schemas.launch_messages import MetricResult
from schemas.metrics_messages import MetricQuery, MetricReading
from tests.support.fakes import FakeWorld, running_launch
from tests.support.launches import gate_open
from tests.support.plans import exposure_only
from workflows.analysis import analysis_score, classify, combine, judge, record
from workflows.launch import LaunchWorkflow

AT = datetime(2026, 1, 1, tzinfo=UTC)
QUERY = 'sum(rate(errors{variant="{{variant}}"}[10s])) / sum(rate(requests{variant="{{variant}}"}[10s]))'
COMPARE = Comparison(min_samples=4)
HEALTHY = compare_samples(COMPARE, [1.0, 1.1, 0.9, 1.0], [1.0, 0.9, 1.1, 1.0])
DOUBLED = compare_samples(COMPARE, [2.0, 2.1, 2.2, 2.3], [1.0, 1.1, 1.2, 1.3])
TOO_FEW = compare_samples(COMPARE, [2.0], [1.0, 1.1, 1.2, 1.3])


def compared(**spec: Any) -> MetricSpec:
    return MetricSpec.model_validate({"query": QUERY, "compare": {"min_samples": 4}, **spec})


def reading(comparison: Any) -> MetricReading:
    return MetricReading(
        value=comparison.canary_median,
        baseline=comparison.stable_median,
        comparison=comparison,
    )


# --- classify: a comparison becomes a measurement with its evidence ----------------------


def test_a_canary_higher_than_allowed_is_a_failure_with_its_evidence() -> None:
    measurement = classify(compared(), reading(DOUBLED), AT)
    assert measurement.outcome == "failure"
    assert measurement.value == pytest.approx(2.15)
    assert measurement.baseline == pytest.approx(1.15)
    assert measurement.detail == DOUBLED.detail
    assert "n=4 canary, 4 stable" in measurement.detail
    assert "p=0.014" in measurement.detail
    assert "(×1.87)" in measurement.detail


def test_a_passing_comparison_is_a_success_that_still_shows_its_evidence() -> None:
    measurement = classify(compared(), reading(HEALTHY), AT)
    assert measurement.outcome == "success"
    assert measurement.detail.startswith("canary mean 1 vs stable 1 (×1), medians 1 vs 1, p=")


def test_too_few_samples_is_inconclusive_not_a_failure() -> None:
    measurement = classify(compared(), reading(TOO_FEW), AT)
    assert measurement.outcome == "inconclusive"
    assert measurement.detail == "too few samples to judge: n=1 canary, 4 stable (need 4 each)"


def test_max_bounds_a_compared_canary_that_passes_the_test() -> None:
    measurement = classify(compared(max=0.5), reading(HEALTHY), AT)
    assert measurement.outcome == "failure"
    assert measurement.detail.startswith("1 > max 0.5; canary mean 1 vs stable 1")


def test_a_reading_without_a_comparison_or_with_an_error_is_never_a_success() -> None:
    assert classify(compared(), MetricReading(value=1.0), AT).outcome == "inconclusive"
    errored = classify(compared(), MetricReading(error="ConnectionError: refused"), AT)
    assert (errored.outcome, errored.detail) == ("error", "ConnectionError: refused")


def test_failure_limit_applies_to_comparisons_as_to_thresholds() -> None:
    spec = compared(count=3, failure_limit=1)
    result = MetricResult(phase="soft", step=1, metric="error-rate")
    record(result, classify(spec, reading(DOUBLED), AT))
    assert judge(spec, result, finished=False) is None
    record(result, classify(spec, reading(DOUBLED), AT))
    assert judge(spec, result, finished=False) == "failed"


# --- scoring: Kayenta's combination of critical and non-critical metrics -------------------


def results(**verdicts: str) -> list[MetricResult]:
    return [
        MetricResult.model_validate({"phase": "p", "step": 1, "metric": name, "verdict": verdict})
        for name, verdict in verdicts.items()
    ]


def test_the_score_is_the_share_of_judged_metrics_that_passed() -> None:
    assert analysis_score(results(a="successful", b="failed", c="successful")) == pytest.approx(
        200 / 3
    )
    # Inconclusive metrics are not judged; with none judged there is no score.
    assert analysis_score(results(a="successful", b="inconclusive")) == 100
    assert analysis_score(results(a="inconclusive")) is None


@pytest.mark.parametrize(
    ("verdicts", "critical", "expected"),
    [
        # a failed critical metric fails whatever the score
        ({"a": "failed", "b": "successful", "c": "successful"}, {"a"}, "failed"),
        # an inconclusive critical metric: nobody can say the canary is healthy
        ({"a": "inconclusive", "b": "successful"}, {"a"}, "inconclusive"),
        # 2 of 3 pass: 66.7 is below pass 95 but above marginal 60
        ({"a": "successful", "b": "failed", "c": "successful"}, {"a"}, "inconclusive"),
        # 1 of 3 pass: 33.3 is below marginal
        ({"a": "successful", "b": "failed", "c": "failed"}, {"a"}, "failed"),
        # 3 of 3 pass; a non-critical inconclusive metric is left out
        ({"a": "successful", "b": "successful", "c": "inconclusive"}, {"a"}, "successful"),
        # nothing judged at all
        ({"b": "inconclusive"}, set(), "inconclusive"),
    ],
)
def test_scoring_combines_verdicts_like_kayenta(
    verdicts: dict[str, str], critical: set[str], expected: str
) -> None:
    scoring = Scoring(pass_score=95, marginal_score=60)
    assert combine(scoring, critical, results(**verdicts)) == expected


def test_without_scoring_any_failure_fails_and_any_inconclusive_holds() -> None:
    everyone = {"a", "b"}
    assert combine(None, everyone, results(a="successful", b="failed")) == "failed"
    assert combine(None, everyone, results(a="successful", b="inconclusive")) == "inconclusive"
    assert combine(None, everyone, results(a="successful", b="successful")) == "successful"


# --- launches ------------------------------------------------------------------------------


def three_metrics(**scoring: float) -> Any:
    analysis = {
        "error-rate": {"query": QUERY, "compare": {"min_samples": 4}, "count": 3},
        "latency": {"query": "q", "max": 0.3, "count": 3, "critical": False},
        "saturation": {"query": "q", "max": 0.9, "count": 3, "critical": False},
    }
    names = list(analysis)
    return exposure_only(
        [{"weight": 5, "analysis": names}, {"weight": 100}], analysis=analysis, scoring=scoring
    )


def readings(query: MetricQuery) -> MetricReading:
    """A healthy comparison; latency above its max; saturation fine."""
    if query.metric == "error-rate":
        return reading(HEALTHY)
    return MetricReading(value=0.5)


async def test_a_failing_non_critical_metric_lowers_the_score_without_stopping_the_others(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=readings)
    plan = three_metrics(pass_score=60, marginal_score=40)
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        result = await handle.result()
    assert result.status == "completed"
    verdicts = {m.metric: (m.verdict, m.successes) for m in result.final.phases[0].analysis}
    # 2 of 3 passed: 66.7 >= 60. The critical comparison measured all its three times.
    assert verdicts == {
        "error-rate": ("successful", 3),
        "latency": ("failed", 0),
        "saturation": ("successful", 3),
    }
    assert world.exposure == 100


async def test_a_score_below_marginal_rolls_back(time_skipping_env: WorkflowEnvironment) -> None:
    world = FakeWorld(readings=readings)
    plan = three_metrics(pass_score=95, marginal_score=75)
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        result = await handle.result()
    assert result.status == "rolled_back"
    assert "analysis failed at full-launch step 1 (5%)" in result.reason
    assert "latency failed" in result.reason
    assert world.exposure == 0.0


async def test_a_critical_comparison_failing_rolls_back_with_its_evidence(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=lambda q: reading(DOUBLED))
    analysis = {"error-rate": {"query": QUERY, "compare": {"min_samples": 4}, "count": 3}}
    plan = exposure_only(
        [{"weight": 5, "analysis": ["error-rate"]}, {"weight": 100}], analysis=analysis
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        result = await handle.result()
    assert result.status == "rolled_back"
    assert DOUBLED.detail in result.reason
    assert world.names().count("query_metric") == 1
    assert world.exposure == 0.0


async def test_a_low_traffic_canary_is_inconclusive_and_waits_for_a_person(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=lambda q: reading(TOO_FEW))
    analysis = {
        "error-rate": {
            "query": QUERY,
            "compare": {"min_samples": 4},
            "count": 3,
            "inconclusive_limit": 1,
        }
    }
    plan = exposure_only(
        [{"weight": 1, "analysis": ["error-rate"]}, {"weight": 100}], analysis=analysis
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        waiting = await gate_open(time_skipping_env, handle, "full-launch.step-1.analysis")
        assert waiting.exposure == 1
        metric = waiting.phases[0].analysis[0]
        assert (metric.verdict, metric.failures, metric.inconclusive) == ("inconclusive", 0, 3)
        assert "too few samples to judge" in metric.measurements[-1].detail
        await handle.signal(
            LaunchWorkflow.reject,
            {"gate": "full-launch.step-1.analysis", "approver": "alice", "comment": "no traffic"},
        )
        result = await handle.result()
    assert result.status == "rolled_back"
    assert world.exposure == 0.0
