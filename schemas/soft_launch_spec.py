"""The soft launch phase: part of the users, never all of them."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from schemas.exposure_spec import ExposurePhase


class SoftLaunchPhase(ExposurePhase):
    """Expose the new version to part of the users; never to all of them."""

    kind: Literal["soft_launch"]

    @model_validator(mode="after")
    def _partial_only(self) -> SoftLaunchPhase:
        if self.steps[-1].weight >= 100:
            raise ValueError(
                f"steps[{len(self.steps) - 1}].weight: a soft launch stays below 100%; "
                "reach 100% in a full_launch phase"
            )
        return self
