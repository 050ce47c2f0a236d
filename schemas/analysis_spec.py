"""Analysis: PromQL metrics with their success conditions, judged while exposure grows.

Bounds: a query is at most `MAX_TEXT` characters; a metric measures at most `MAX_COUNT` times,
at most `MAX_INTERVAL` apart, after at most `MAX_INITIAL_DELAY`; its limits stay below its
count, so a metric can always fail and Prometheus never answering is never a success.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field, model_validator

from schemas.basics import (
    DAY,
    HOUR,
    Query,
    StrictModel,
    one_of,
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


VARIANT_PLACEHOLDER = "{{variant}}"
Limit = Annotated[int, Field(ge=0, le=MAX_COUNT)]


class MetricSpec(StrictModel):
    """One PromQL measurement, in the manner of an Argo Rollouts analysis metric."""

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

    @model_validator(mode="after")
    def _has_condition(self) -> MetricSpec:
        problem = "give a success condition: `max`, `min` or `baseline`"
        one_of(self, ("max", "min", "baseline"), problem)
        if VARIANT_PLACEHOLDER not in self.query and self.baseline is not None:
            raise ValueError(
                f"`baseline` compares variants, so the query must contain {VARIANT_PLACEHOLDER}"
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
