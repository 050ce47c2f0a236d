"""Metrics activities: a PromQL reading for canary and baseline, and Prometheus targets up."""

from __future__ import annotations

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


class MetricReading(Message):
    value: float | None = None
    baseline: float | None = None
    error: str = ""
    query: str = ""


class TargetsUpRequest(Message):
    prometheus: PrometheusTarget
    jobs: list[str]


class TargetsUp(Message):
    up: dict[str, int] = Field(default_factory=dict)
