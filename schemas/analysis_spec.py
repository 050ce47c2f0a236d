"""Analysis: PromQL metrics with their success conditions, judged while exposure grows.

Bounds: a query is at most `MAX_TEXT` characters; a metric measures at most `MAX_COUNT` times,
at most `MAX_INTERVAL` apart, after at most `MAX_INITIAL_DELAY`; its limits stay below its
count, so a metric can always fail and Prometheus never answering is never a success. A
statistical comparison reads at most `MAX_POINTS` samples per variant per measurement.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from schemas.basics import (
    DAY,
    HOUR,
    Name,
    Query,
    StrictModel,
    one_of,
    show_duration,
    up_to,
)
from schemas.problems import raise_problems

MAX_COUNT = 500
MAX_INTERVAL = HOUR
MAX_INITIAL_DELAY = DAY
# A ratio or tolerance beyond this compares nothing a metric can mean.
MAX_RATIO = 1e6


class BaselineComparison(StrictModel):
    """Canary passes when canary <= baseline * max_ratio + tolerance (or >= for min_ratio)."""

    max_ratio: Annotated[float, Field(gt=0, le=MAX_RATIO)] | None = None
    min_ratio: Annotated[float, Field(gt=0, le=MAX_RATIO)] | None = None
    tolerance: Annotated[float, Field(ge=0, le=MAX_RATIO)] = 0.0

    @model_validator(mode="after")
    def _one_direction(self) -> BaselineComparison:
        problem = "give exactly one of `max_ratio` or `min_ratio`"
        return one_of(self, ("max_ratio", "min_ratio"), problem, exactly=True)


# Read from Prometheus per variant and measurement: bounds the range query's answer.
MAX_POINTS = 1000
MAX_COMPARE_WINDOW = HOUR
MAX_COMPARE_STEP = timedelta(minutes=5)
SHORTEST_STEP = timedelta(seconds=1)
# A Mann-Whitney U test needs a few samples a side before a p-value can mean anything.
FEWEST_SAMPLES = 3


class Comparison(StrictModel):
    """Canary against stable over the last `window`, as Kayenta's Mann-Whitney judge does.

    Each measurement reads one sample per `step` for each variant and tests whether the canary's
    samples are higher (or lower) than stable's. The canary fails only when the difference is
    both significant (p below 1 - `confidence`) and larger than allowed: its mean above
    stable's × `allowed_increase` + `tolerance`, or below stable's × `allowed_decrease` -
    `tolerance`. `tolerance` is in the metric's own unit, so a stable mean of 0 (no errors)
    still allows a little. Fewer than `min_samples` finite samples in either variant is no
    data, not a failure: low traffic is inconclusive. Write a rate as a ratio (errors over
    requests), so a window without requests is NaN, which is left out, rather than 0.
    """

    direction: Literal["increase", "decrease", "either"] = "increase"
    confidence: Annotated[float, Field(ge=0.5, le=0.9999)] = 0.95
    allowed_increase: Annotated[float, Field(ge=1, le=MAX_RATIO)] = 1.2
    allowed_decrease: Annotated[float, Field(gt=0, le=1)] = 0.8
    tolerance: Annotated[float, Field(ge=0, le=MAX_RATIO)] = 0.0
    min_samples: Annotated[int, Field(ge=FEWEST_SAMPLES, le=MAX_POINTS)] = 10
    window: Annotated[timedelta, up_to(MAX_COMPARE_WINDOW)] = timedelta(minutes=2)
    step: Annotated[timedelta, up_to(MAX_COMPARE_STEP)] = timedelta(seconds=5)

    @model_validator(mode="after")
    def _readable(self) -> Comparison:
        problems = []
        if self.step < SHORTEST_STEP:
            problems.append(f"step: must be at least {SHORTEST_STEP.total_seconds():g}s")
        elif self.step > self.window:
            problems.append(f"step: must be at most window ({show_duration(self.window)})")
        else:
            points = self.points
            if points > MAX_POINTS:
                problems.append(
                    f"window: {show_duration(self.window)} at step {show_duration(self.step)} "
                    f"reads {points} samples per variant, at most {MAX_POINTS}; "
                    "shorten the window or lengthen the step"
                )
            elif self.min_samples > points:
                problems.append(
                    f"min_samples: {self.min_samples} is more than the {points} samples "
                    f"window {show_duration(self.window)} at step {show_duration(self.step)} "
                    "reads, so the comparison could never judge"
                )
        raise_problems(problems)
        return self

    @property
    def alpha(self) -> float:
        """The p-value below which a difference counts as significant; rounded, so 95%
        confidence is exactly 0.05 and a p-value of 0.05 is not below it."""
        return round(1 - self.confidence, 10)

    @property
    def points(self) -> int:
        """How many samples per variant one read of `window` at `step` returns at most."""
        return int(self.window / self.step) + 1


class Scoring(StrictModel):
    """Combine a step's metrics into one score, Kayenta style.

    A failed critical metric fails the analysis outright; otherwise the score is the share of
    judged metrics (successful or failed; inconclusive ones are left out) that passed, 0..100.
    At least `pass_score` passes, at least `marginal_score` is inconclusive (a person decides),
    below it fails.
    """

    pass_score: Annotated[float, Field(ge=0, le=100)] = 95.0
    marginal_score: Annotated[float, Field(ge=0, le=100)] = 75.0

    @model_validator(mode="after")
    def _ordered(self) -> Scoring:
        if self.marginal_score > self.pass_score:
            raise ValueError(
                f"marginal_score: {self.marginal_score:g} must be at most "
                f"pass_score ({self.pass_score:g})"
            )
        return self


VARIANT_PLACEHOLDER = "{{variant}}"
Limit = Annotated[int, Field(ge=0, le=MAX_COUNT)]
# What a failed metric does: roll the launch back, or hold it and ask a person (a gate that
# shows the evidence; exposure holds, measuring goes on).
OnFailure = Literal["rollback", "pause"]


class MetricSpec(StrictModel):
    """One PromQL measurement, in the manner of an Argo Rollouts analysis metric."""

    # Fields added after the first release: left out of the start proof's digest while unused.
    DIGEST_SKIPS_DEFAULTS: ClassVar[frozenset[str]] = frozenset(
        {"on_failure", "compare", "critical"}
    )

    query: Query
    max: float | None = None
    min: float | None = None
    baseline: BaselineComparison | None = None
    interval: Annotated[timedelta, up_to(MAX_INTERVAL)] = timedelta(seconds=10)
    count: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 3
    initial_delay: Annotated[timedelta, up_to(MAX_INITIAL_DELAY, zero=True)] = timedelta(0)
    failure_limit: Limit = 0
    inconclusive_limit: Limit = 0
    consecutive_error_limit: Limit = 4
    on_failure: OnFailure = "rollback"
    # Canary against stable with a statistical test; `max`/`min` then apply to its median.
    compare: Comparison | None = None
    # With the plan's `scoring`, a non-critical metric's failure lowers the score instead of
    # failing the analysis at once. Without `scoring`, every metric is critical.
    critical: bool = True

    @model_validator(mode="after")
    def _has_condition(self) -> MetricSpec:
        problem = "give a success condition: `max`, `min`, `baseline` or `compare`"
        one_of(self, ("max", "min", "baseline", "compare"), problem)
        if self.baseline is not None and self.compare is not None:
            raise ValueError(
                "give `baseline` or `compare`, not both: both judge the canary against stable"
            )
        for field in ("baseline", "compare"):
            if VARIANT_PLACEHOLDER not in self.query and getattr(self, field) is not None:
                raise ValueError(
                    f"`{field}` compares variants, so the query must contain {VARIANT_PLACEHOLDER}"
                )
        raise_problems(
            [
                f"{limit}: must be below count ({self.count}), or the metric could never "
                + ("fail" if limit == "failure_limit" else "be inconclusive")
                for limit in ("failure_limit", "inconclusive_limit")
                if getattr(self, limit) >= self.count
            ]
        )
        return self


MAX_CONTINUOUS_METRICS = 20
MAX_WATCH = timedelta(days=30)


class ContinuousAnalysis(StrictModel):
    """Metrics measured every `interval` for as long as the launch runs, whatever it is doing.

    Each round measures every metric once. A metric whose failures pass `failure_limit` acts by
    `on_failure`; `inconclusive_limit` rounds in a row without a verdict (no data, Prometheus
    erroring) pause the launch, because nobody can say the canary is healthy.
    """

    metrics: Annotated[list[Name], Field(min_length=1, max_length=MAX_CONTINUOUS_METRICS)]
    interval: Annotated[timedelta, up_to(MAX_INTERVAL)] = timedelta(seconds=30)
    failure_limit: Limit = 0
    inconclusive_limit: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 5
    on_failure: OnFailure = "rollback"

    @model_validator(mode="after")
    def _distinct(self) -> ContinuousAnalysis:
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError("metrics: name each metric once")
        return self


class WatchWindow(ContinuousAnalysis):
    """After the last phase: keep measuring for `duration`; a failure rolls everything back."""

    duration: Annotated[timedelta, up_to(MAX_WATCH)]
