"""Exposure steps, shared by the soft and the full launch.

Bounds: at most `MAX_STEPS` steps, weights strictly increasing within (0, 100], a pause of at
most `MAX_PAUSE`, at most `MAX_STEP_ANALYSES` analyses per step, each named once.
"""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise
from typing import Annotated

from pydantic import Field, model_validator

from schemas.basics import Name, StrictModel, unique, up_to
from schemas.gate_spec import Gate, gate_id
from schemas.phase_spec import PhaseSpec
from schemas.problems import raise_problems

MAX_STEPS = 100
MAX_STEP_ANALYSES = 10
MAX_PAUSE = timedelta(days=7)


class ExposureStep(StrictModel):
    """Set the share of users on the new version, let it bake, analyse, optionally ask a person."""

    weight: Annotated[float, Field(gt=0, le=100)]
    pause: Annotated[timedelta, up_to(MAX_PAUSE, zero=True)] | None = None
    analysis: list[Name] = Field(default_factory=list, max_length=MAX_STEP_ANALYSES)
    approval: Gate = None

    @model_validator(mode="after")
    def _analyses_named_once(self) -> ExposureStep:
        raise_problems(unique(self.analysis, "analysis"))
        return self


class ExposurePhase(PhaseSpec):
    """Steps of growing exposure; soft and full launch differ in where they may end."""

    steps: list[ExposureStep] = Field(min_length=1, max_length=MAX_STEPS)

    @model_validator(mode="after")
    def _weights_increase(self) -> ExposurePhase:
        raise_problems(
            [
                f"steps[{index}].weight: must be above {before.weight:g} (the weight of "
                f"steps[{index - 1}]); each step exposes more users than the one before"
                for index, (before, step) in enumerate(pairwise(self.steps), start=1)
                if step.weight <= before.weight
            ]
        )
        return self

    def analysis_references(self) -> list[tuple[str, list[str]]]:
        return [
            (f"steps[{index}].analysis", step.analysis) for index, step in enumerate(self.steps)
        ]

    def work_gate_ids(self) -> list[str]:
        ids = []
        for number, step in enumerate(self.steps, start=1):
            if step.analysis:
                ids.append(gate_id(self.name, number, "analysis"))
            if step.approval is not None:
                ids.append(gate_id(self.name, number))
        return ids

    def step_count(self) -> int:
        return len(self.steps)
