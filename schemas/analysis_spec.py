"""Analysis: PromQL metrics with their success conditions, judged while exposure grows."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field, model_validator

from schemas.basics import Duration, PositiveDuration, StrictModel, one_of


class BaselineComparison(StrictModel):
    """Canary passes when canary <= baseline * max_ratio + tolerance (or >= for min_ratio)."""

    max_ratio: Annotated[float, Field(gt=0)] | None = None
    min_ratio: Annotated[float, Field(gt=0)] | None = None
    tolerance: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _one_direction(self) -> BaselineComparison:
        problem = "give exactly one of `max_ratio` or `min_ratio`"
        return one_of(self, ("max_ratio", "min_ratio"), problem, exactly=True)


VARIANT_PLACEHOLDER = "{{variant}}"


class MetricSpec(StrictModel):
    """One PromQL measurement, in the manner of an Argo Rollouts analysis metric."""

    query: Annotated[str, Field(min_length=1)]
    max: float | None = None
    min: float | None = None
    baseline: BaselineComparison | None = None
    interval: PositiveDuration = timedelta(seconds=10)
    count: Annotated[int, Field(ge=1, le=1000)] = 3
    initial_delay: Duration = timedelta(0)
    failure_limit: Annotated[int, Field(ge=0)] = 0
    inconclusive_limit: Annotated[int, Field(ge=0)] = 0
    consecutive_error_limit: Annotated[int, Field(ge=0)] = 4

    @model_validator(mode="after")
    def _has_condition(self) -> MetricSpec:
        problem = "give a success condition: `max`, `min` or `baseline`"
        one_of(self, ("max", "min", "baseline"), problem)
        if VARIANT_PLACEHOLDER not in self.query and self.baseline is not None:
            raise ValueError(
                f"`baseline` compares variants, so the query must contain {VARIANT_PLACEHOLDER}"
            )
        return self
