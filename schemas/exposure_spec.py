"""Exposure steps, shared by the soft and the full launch."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from schemas.basics import Duration, StrictModel
from schemas.gate_spec import Gate, gate_id
from schemas.phase_spec import PhaseSpec


class ExposureStep(StrictModel):
    """Set the share of users on the new version, let it bake, analyse, optionally ask a person."""

    weight: Annotated[float, Field(ge=0, le=100)]
    pause: Duration | None = None
    analysis: list[str] = Field(default_factory=list)
    approval: Gate = None


class ExposurePhase(PhaseSpec):
    """Steps of growing exposure; soft and full launch differ in where they may end."""

    steps: list[ExposureStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _weights_never_decrease(self) -> ExposurePhase:
        weights = [step.weight for step in self.steps]
        for index in range(1, len(weights)):
            if weights[index] < weights[index - 1]:
                raise ValueError(
                    f"step weights must not decrease: steps[{index}].weight is "
                    f"{weights[index]:g} after {weights[index - 1]:g}"
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
