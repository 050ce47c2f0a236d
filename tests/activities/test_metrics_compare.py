"""The statistical judge against a real Prometheus scraping the demo service under load: a
healthy canary passes, an injected error rate fails with its evidence, a canary with too
little traffic is no data."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from activities.flags import FlagdFileRouter
from activities.metrics import MetricsActivities
from devstack.demo import DemoStack
from schemas.analysis_spec import MetricSpec
from schemas.metrics_messages import MetricQuery, MetricReading
from schemas.targets import PrometheusTarget
from workflows.analysis import classify

pytestmark = pytest.mark.integration

# The example plan's error rate, over windows short enough for a test: a window without
# requests is 0/0, NaN, and left out.
ERROR_RATE = (
    'sum(rate(demo_request_errors_total{variant="{{variant}}"}[2s]))'
    ' / sum(rate(demo_requests_total{variant="{{variant}}"}[2s]))'
)
# 11 samples a variant (10s at 1s), 8 needed; 2 points of error rate allowed when stable has 0.
COMPARE = {"window": "10s", "step": "1s", "min_samples": 8, "tolerance": 0.02}
FULL_WINDOW = 11


def compare_query(stack: DemoStack) -> MetricQuery:
    return MetricQuery(
        prometheus=PrometheusTarget(url=stack.prometheus.url),
        metric="error-rate",
        spec=MetricSpec.model_validate({"query": ERROR_RATE, "compare": COMPARE}),
        canary_variant="canary",
        stable_variant="stable",
    )


def read_until(
    stack: DemoStack, done: Callable[[MetricReading], bool], timeout: float = 60.0
) -> MetricReading:
    """Read the comparison until `done` says so; the last reading when time runs out."""
    activities = MetricsActivities()
    deadline = time.monotonic() + timeout
    while True:
        reading = activities.query_metric(compare_query(stack))
        assert reading.error == ""
        if done(reading) or time.monotonic() > deadline:
            return reading
        time.sleep(0.5)


def canary_samples(reading: MetricReading) -> int:
    assert reading.comparison is not None
    return reading.comparison.canary_samples


def set_exposure(stack: DemoStack, weight: float) -> None:
    FlagdFileRouter().set_weight(stack.router, weight, "")


def test_a_healthy_canary_passes_with_its_evidence(clean_stack: DemoStack) -> None:
    set_exposure(clean_stack, 50)
    reading = read_until(clean_stack, lambda r: canary_samples(r) == FULL_WINDOW)
    comparison = reading.comparison
    assert comparison is not None
    assert (comparison.canary_samples, comparison.stable_samples) == (FULL_WINDOW, FULL_WINDOW)
    assert comparison.outcome == "pass"
    assert (reading.value, reading.baseline) == (comparison.canary_median, comparison.stable_median)
    assert reading.query.startswith('sum(rate(demo_request_errors_total{variant="canary"}')
    measurement = classify(compare_query(clean_stack).spec, reading, datetime.now(UTC))
    assert measurement.outcome == "success"
    assert "n=11 canary, 11 stable" in measurement.detail


def test_an_injected_error_rate_fails_with_its_evidence(clean_stack: DemoStack) -> None:
    set_exposure(clean_stack, 50)
    clean_stack.set_faults(error_rate=0.3)
    reading = read_until(
        clean_stack, lambda r: r.comparison is not None and r.comparison.outcome == "high"
    )
    comparison = reading.comparison
    assert comparison is not None
    assert comparison.outcome == "high", comparison.detail
    assert comparison.canary_mean is not None
    assert comparison.canary_mean > 0.02  # above stable (0) + tolerance
    assert comparison.stable_mean == 0
    assert comparison.p_value is not None
    assert comparison.p_value < 0.05
    measurement = classify(compare_query(clean_stack).spec, reading, datetime.now(UTC))
    assert measurement.outcome == "failure"
    assert "vs stable 0" in measurement.detail
    assert "higher than allowed (above 0.02, p < 0.05)" in measurement.detail
    assert f"p={comparison.p_value:.2g}" in measurement.detail


def test_a_canary_with_too_little_traffic_is_no_data_not_a_failure(
    clean_stack: DemoStack,
) -> None:
    # The canary idle for a whole window first, so every canary sample read below is new.
    assert canary_samples(read_until(clean_stack, lambda r: canary_samples(r) == 0)) == 0
    # 0.2% of users: about one request every 12s at the stack's 40/s, failing half the time.
    set_exposure(clean_stack, 0.2)
    clean_stack.set_faults(error_rate=0.5)
    reading = read_until(clean_stack, lambda r: canary_samples(r) >= 1)
    comparison = reading.comparison
    assert comparison is not None
    assert 1 <= comparison.canary_samples < 8
    assert comparison.stable_samples == FULL_WINDOW
    assert comparison.outcome == "nodata"
    assert comparison.p_value is None
    measurement = classify(compare_query(clean_stack).spec, reading, datetime.now(UTC))
    assert measurement.outcome == "inconclusive"
    assert measurement.detail == (
        f"too few samples to judge: n={comparison.canary_samples} canary, 11 stable (need 8 each)"
    )
