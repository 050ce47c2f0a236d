"""Exposure steps, shared by the soft and the full launch."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    Field,
    model_validator,
)

from schemas.basics import (
    Duration,
    Name,
    StrictModel,
)
from schemas.gate_spec import Gate, PhaseGates


class ExposureStep(StrictModel):
    """Set the share of users on the new version, let it bake, analyse, optionally ask a person."""

    weight: Annotated[float, Field(ge=0, le=100)]
    pause: Duration | None = None
    analysis: list[str] = Field(default_factory=list)
    approval: Gate = None


class ExposurePhase(StrictModel):
    name: Name
    gates: PhaseGates = PhaseGates()
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
        """(path within the phase, analysis names) for every place the phase runs analyses."""
        return [
            (f"steps[{index}].analysis", step.analysis) for index, step in enumerate(self.steps)
        ]

    def gate_ids(self) -> list[str]:
        """Every gate this phase can open, so decisions can be checked before they arrive."""
        ids = [f"{self.name}.before"] if self.gates.before is not None else []
        for number, step in enumerate(self.steps, start=1):
            if step.analysis:
                ids.append(f"{self.name}.step-{number}.analysis")
            if step.approval is not None:
                ids.append(f"{self.name}.step-{number}")
        if self.gates.after is not None:
            ids.append(f"{self.name}.after")
        return ids
