"""The statistical judge on known samples: hand-computed Mann-Whitney cases, the allowed change,
too few samples, and its error rates over many seeded canaries."""

from __future__ import annotations

import math
import random

import pytest

from activities.judge import compare_samples
from schemas.analysis_spec import Comparison


def spec(**knobs: object) -> Comparison:
    return Comparison.model_validate({"min_samples": 3, **knobs})


def error_rates(rng: random.Random, rate: float, samples: int, requests: int = 100) -> list[float]:
    """Each sample the share of `requests` that failed, each failing with chance `rate`."""
    return [sum(rng.random() < rate for _ in range(requests)) / requests for _ in range(samples)]


def test_a_canary_above_every_stable_sample_is_high_with_the_exact_p_value() -> None:
    # Four canary samples above all four stable ones: U = 16, the largest of C(8, 4) = 70
    # equally likely rankings, so the one-sided p-value is 1/70.
    result = compare_samples(spec(), [4, 5, 6, 7], [0, 1, 2, 3])
    assert result.p_value == pytest.approx(1 / 70)
    assert (result.canary_median, result.stable_median) == (5.5, 1.5)
    assert (result.canary_mean, result.stable_mean) == (5.5, 1.5)
    assert result.effect == pytest.approx(5.5 / 1.5)
    assert result.outcome == "high"
    assert result.detail == (
        "canary mean 5.5 vs stable 1.5 (×3.67), medians 5.5 vs 1.5, p=0.014 "
        "(n=4 canary, 4 stable): higher than allowed (above 1.8, p < 0.05)"
    )


def test_either_direction_tests_both_sides() -> None:
    # Two of the 70 rankings are as extreme as this one when either side counts.
    result = compare_samples(spec(direction="either"), [4, 5, 6, 7], [0, 1, 2, 3])
    assert result.p_value == pytest.approx(2 / 70)
    assert result.outcome == "high"
    lower = compare_samples(spec(direction="either"), [0, 1, 2, 3], [4, 5, 6, 7])
    assert lower.p_value == pytest.approx(2 / 70)
    assert lower.outcome == "low"


def test_the_smallest_p_value_of_three_samples_a_side_is_not_below_five_percent() -> None:
    # One ranking of C(6, 3) = 20 puts all canary samples on top: p = 1/20, not below 0.05.
    result = compare_samples(spec(), [4, 5, 6], [1, 2, 3])
    assert result.p_value == pytest.approx(1 / 20)
    assert result.outcome == "pass"
    assert "no significant difference (p ≥ 0.05)" in result.detail
    assert compare_samples(spec(confidence=0.9), [4, 5, 6], [1, 2, 3]).outcome == "high"


def test_only_the_bad_direction_fails() -> None:
    assert compare_samples(spec(), [0, 1, 2, 3], [4, 5, 6, 7]).outcome == "pass"
    assert compare_samples(spec(direction="decrease"), [0, 1, 2, 3], [4, 5, 6, 7]).outcome == "low"
    assert compare_samples(spec(direction="decrease"), [4, 5, 6, 7], [0, 1, 2, 3]).outcome == "pass"


def test_a_significant_change_within_the_allowed_increase_passes() -> None:
    # Every canary sample is higher, but only by 10%: below allowed_increase 1.2.
    canary, stable = [11.0, 11.1, 11.2, 11.3], [10.0, 10.1, 10.2, 10.3]
    result = compare_samples(spec(), canary, stable)
    assert result.p_value == pytest.approx(1 / 70)
    assert result.outcome == "pass"
    assert "a significant difference within the allowed change" in result.detail
    assert compare_samples(spec(allowed_increase=1.05), canary, stable).outcome == "high"


def test_a_stable_mean_of_zero_judges_against_the_tolerance() -> None:
    stable = [0.0] * 10
    canary = [0.0] * 5 + [0.01] * 5  # some errors where stable had none
    strict = compare_samples(spec(), canary, stable)
    assert strict.effect is None
    assert strict.outcome == "high"
    assert "canary mean 0.005 vs stable 0, medians 0.005 vs 0" in strict.detail
    tolerant = compare_samples(spec(tolerance=0.01), canary, stable)
    assert tolerant.outcome == "pass"


def test_identical_samples_everywhere_pass_with_p_one() -> None:
    result = compare_samples(spec(), [0.0] * 20, [0.0] * 20)
    assert (result.p_value, result.outcome) == (1.0, "pass")


def test_below_min_samples_is_no_data_not_a_failure() -> None:
    result = compare_samples(spec(min_samples=10), [1.0] * 9, [0.0] * 40)
    assert result.outcome == "nodata"
    assert result.p_value is None
    assert result.detail == "too few samples to judge: n=9 canary, 40 stable (need 10 each)"
    assert compare_samples(spec(min_samples=10), [], []).outcome == "nodata"


def test_nan_and_infinite_samples_are_left_out() -> None:
    canary = [math.nan, 4, math.inf, 5, 6, -math.inf, 7]
    result = compare_samples(spec(), canary, [0, 1, math.nan, 2, 3])
    assert (result.canary_samples, result.stable_samples) == (4, 4)
    assert result.p_value == pytest.approx(1 / 70)
    # Windows without requests (NaN) can leave too few samples to judge.
    assert compare_samples(spec(min_samples=5), canary, [0, 1, 2, 3, 4]).outcome == "nodata"


def test_the_same_samples_always_get_the_same_verdict() -> None:
    rng = random.Random(7)
    canary, stable = error_rates(rng, 0.02, 30), error_rates(rng, 0.01, 30)
    assert compare_samples(spec(), canary, stable) == compare_samples(spec(), canary, stable)


def test_identical_distributions_fail_no_more_often_than_the_confidence_allows() -> None:
    # With no allowed change, only the test decides: it says "high" for about 5% of healthy
    # canaries at 95% confidence. 400 seeded trials: expected 20, at most 33 (3 sd above).
    bare = spec(allowed_increase=1.0, min_samples=10)
    guarded = spec(min_samples=10)
    bare_failures = guarded_failures = 0
    for seed in range(400):
        rng = random.Random(seed)
        canary = [rng.gauss(1.0, 0.2) for _ in range(30)]
        stable = [rng.gauss(1.0, 0.2) for _ in range(30)]
        bare_failures += compare_samples(bare, canary, stable).outcome != "pass"
        guarded_failures += compare_samples(guarded, canary, stable).outcome != "pass"
    assert 5 <= bare_failures <= 33
    # Allowing a 20% increase as well leaves almost none: a healthy mean is rarely that far off.
    assert guarded_failures <= 4


def test_a_doubled_error_rate_is_caught_and_a_healthy_one_rarely_is() -> None:
    judge = spec(min_samples=10, confidence=0.95, tolerance=0.002)
    caught = false_alarms = 0
    for seed in range(200):
        rng = random.Random(seed)
        stable = error_rates(rng, 0.02, 40)
        caught += compare_samples(judge, error_rates(rng, 0.04, 40), stable).outcome == "high"
        false_alarms += compare_samples(judge, error_rates(rng, 0.02, 40), stable).outcome != "pass"
    assert caught >= 190  # at least 95%
    assert false_alarms <= 10  # at most 5%: the confidence level
