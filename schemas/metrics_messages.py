"""Metrics activities: a PromQL reading for canary and baseline, and Prometheus targets up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.analysis_spec import MetricSpec
from schemas.basics import Message
from schemas.targets import PrometheusTarget


class MetricQuery(Message):
    prometheus: PrometheusTarget
    metric: str
    spec: MetricSpec
    canary_variant: str
    stable_variant: str


class ComparisonResult(Message):
    """Canary against stable over one window: the evidence and what it says.

    `effect` is the canary's mean over stable's (None when stable's is 0); `outcome` is
    "high" or "low" when the canary differs significantly (`p_value`) and by more than allowed,
    "nodata" when either variant has too few samples to judge. `detail` says all of it in one
    line.
    """

    canary_samples: int
    stable_samples: int
    canary_median: float | None = None
    stable_median: float | None = None
    canary_mean: float | None = None
    stable_mean: float | None = None
    p_value: float | None = None
    effect: float | None = None
    outcome: Literal["pass", "high", "low", "nodata"]
    detail: str = ""


class MetricReading(Message):
    value: float | None = None
    baseline: float | None = None
    error: str = ""
    query: str = ""
    # Set when the metric compares variants statistically; `value` and `baseline` are then
    # the canary's and stable's medians.
    comparison: ComparisonResult | None = None


class TargetsUpRequest(Message):
    prometheus: PrometheusTarget
    jobs: list[str]


class TargetsUp(Message):
    up: dict[str, int] = Field(default_factory=dict)
