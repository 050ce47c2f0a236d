"""The statistical judge's plan fields: `compare` on a metric, `critical`, the plan's `scoring`.
Every knob is bounded, and each bad value gets one problem line naming its field."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
import yaml

from schemas.plan import parse_plan
from tests.support.plans import plan_dict, plan_problems

QUERY = 'sum(rate(errors{variant="{{variant}}"}[10s])) / sum(rate(requests{variant="{{variant}}"}[10s]))'


def with_metric(**spec: Any) -> dict[str, Any]:
    return plan_dict(analysis={"error-rate": {"query": QUERY, "count": 3, **spec}})


def compare_problems(**compare: Any) -> list[str]:
    return plan_problems(with_metric(compare=compare))


def test_a_comparison_with_defaults_is_a_success_condition() -> None:
    plan = parse_plan(yaml.safe_dump(with_metric(compare={}, critical=False)))
    metric = plan.analysis["error-rate"]
    assert metric.compare is not None
    assert (metric.compare.direction, metric.compare.confidence) == ("increase", 0.95)
    assert metric.compare.alpha == 0.05
    assert (metric.compare.window, metric.compare.step) == (
        timedelta(minutes=2),
        timedelta(seconds=5),
    )
    assert metric.compare.points == 25
    assert metric.critical is False
    assert plan.scoring is None


def test_a_comparison_reads_its_knobs_from_the_plan() -> None:
    compare = {
        "direction": "either",
        "confidence": 0.99,
        "allowed_increase": 1.5,
        "allowed_decrease": 0.5,
        "tolerance": 0.01,
        "min_samples": 20,
        "window": "5m",
        "step": "10s",
    }
    plan = parse_plan(yaml.safe_dump(with_metric(compare=compare)))
    spec = plan.analysis["error-rate"].compare
    assert spec is not None
    assert spec.model_dump(mode="json") == {
        **compare,
        "window": "PT5M",
        "step": "PT10S",
    }
    assert spec.alpha == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("compare", "problem"),
    [
        ({"confidence": 0.4}, "compare.confidence: must be >= 0.5"),
        ({"confidence": 1}, "compare.confidence: must be <= 0.9999"),
        ({"confidence": math.nan}, "compare.confidence: must be a finite number"),
        ({"allowed_increase": 0.9}, "compare.allowed_increase: must be >= 1"),
        ({"allowed_increase": math.inf}, "compare.allowed_increase: must be a finite number"),
        ({"allowed_decrease": 0}, "compare.allowed_decrease: must be > 0"),
        ({"allowed_decrease": 1.1}, "compare.allowed_decrease: must be <= 1"),
        ({"tolerance": -0.1}, "compare.tolerance: must be >= 0"),
        ({"tolerance": 1e7}, "compare.tolerance: must be <= 1e+06"),
        ({"min_samples": 2}, "compare.min_samples: must be >= 3"),
        ({"min_samples": 10**9}, "compare.min_samples: must be <= 1000"),
        (
            {"direction": "up"},
            "compare.direction: Input should be 'increase', 'decrease' or 'either'",
        ),
        ({"window": "2h"}, "compare.window: must be at most 1h"),
        ({"window": 0}, "compare.window: must be longer than 0s"),
        ({"step": "10m"}, "compare.step: must be at most 5m"),
        ({"step": "500ms"}, "compare.step: must be at least 1s"),
        ({"window": "30s", "step": "1m"}, "compare.step: must be at most window (30s)"),
        (
            {"window": "1h", "step": "1s"},
            "compare.window: 1h at step 1s reads 3601 samples per variant, at most 1000; "
            "shorten the window or lengthen the step",
        ),
        (
            {"window": "30s", "step": "10s", "min_samples": 5},
            "compare.min_samples: 5 is more than the 4 samples window 30s at step 10s reads, so "
            "the comparison could never judge",
        ),
        ({"p": 0.05}, "compare.p: is not a known field"),
    ],
)
def test_a_bad_knob_gets_one_problem_naming_it(compare: dict[str, Any], problem: str) -> None:
    assert compare_problems(**compare) == [f"analysis.error-rate.{problem}"]


def test_compare_needs_the_variant_in_its_query() -> None:
    data = plan_dict(analysis={"error-rate": {"query": "sum(rate(errors[1m]))", "compare": {}}})
    assert plan_problems(data) == [
        "analysis.error-rate: `compare` compares variants, so the query must contain {{variant}}"
    ]


def test_compare_and_baseline_are_not_given_together() -> None:
    data = with_metric(compare={}, baseline={"max_ratio": 1.5})
    assert plan_problems(data) == [
        "analysis.error-rate: give `baseline` or `compare`, not both: both judge the canary "
        "against stable"
    ]


def test_a_metric_without_any_condition_names_compare_too() -> None:
    assert plan_problems(with_metric()) == [
        "analysis.error-rate: give a success condition: `max`, `min`, `baseline` or `compare`"
    ]


def test_max_may_bound_a_compared_metric() -> None:
    plan = parse_plan(yaml.safe_dump(with_metric(compare={}, max=0.05)))
    assert plan.analysis["error-rate"].max == 0.05


def test_scoring_reads_its_thresholds() -> None:
    plan = parse_plan(yaml.safe_dump(plan_dict(scoring={"pass_score": 90, "marginal_score": 50})))
    assert plan.scoring is not None
    assert (plan.scoring.pass_score, plan.scoring.marginal_score) == (90, 50)
    defaults = parse_plan(yaml.safe_dump(plan_dict(scoring={}))).scoring
    assert defaults is not None
    assert (defaults.pass_score, defaults.marginal_score) == (95, 75)


@pytest.mark.parametrize(
    ("scoring", "problem"),
    [
        ({"pass_score": 101}, "scoring.pass_score: must be <= 100"),
        ({"marginal_score": -1}, "scoring.marginal_score: must be >= 0"),
        ({"pass_score": math.nan}, "scoring.pass_score: must be a finite number"),
        (
            {"pass_score": 60, "marginal_score": 70},
            "scoring.marginal_score: 70 must be at most pass_score (60)",
        ),
        ({"fail_score": 1}, "scoring.fail_score: is not a known field"),
    ],
)
def test_bad_scoring_gets_one_problem_naming_it(scoring: dict[str, Any], problem: str) -> None:
    assert plan_problems(plan_dict(scoring=scoring)) == [problem]
