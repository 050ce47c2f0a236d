"""The full launch phase: every user, then the new version becomes stable."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from schemas.exposure_spec import ExposurePhase


class FullLaunchPhase(ExposurePhase):
    """Take the new version to every user and make it the stable one."""

    kind: Literal["full_launch"]

    @model_validator(mode="after")
    def _reaches_everyone(self) -> FullLaunchPhase:
        if self.steps[-1].weight != 100:
            raise ValueError(
                f"steps[{len(self.steps) - 1}].weight: a full launch must end with a step of "
                "weight 100"
            )
        return self
