"""The infrastructure setup phase: Kubernetes objects applied and rolled out."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import (
    Field,
    model_validator,
)

from schemas.basics import (
    Name,
    PositiveDuration,
    SecretRef,
    StrictModel,
)
from schemas.gate_spec import PhaseGates


class SecretSpec(StrictModel):
    """A Secret the infra-setup phase applies; values are references, resolved by the worker."""

    name: Name
    type: str = "Opaque"
    data: dict[Annotated[str, Field(min_length=1)], SecretRef] = Field(min_length=1)


class InfraSetupPhase(StrictModel):
    """Create or update the service's Kubernetes objects and wait until they are rolled out."""

    kind: Literal["infra_setup"]
    name: Name
    gates: PhaseGates = PhaseGates()
    namespace: Name
    manifests: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    secrets: list[SecretSpec] = Field(default_factory=list)
    rollout_timeout: PositiveDuration = timedelta(minutes=5)
    prometheus_jobs: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    targets_timeout: PositiveDuration = timedelta(minutes=2)

    @model_validator(mode="after")
    def _has_something(self) -> InfraSetupPhase:
        if not self.manifests and not self.secrets:
            raise ValueError("give `manifests` and/or `secrets` to apply")
        return self

    def analysis_references(self) -> list[tuple[str, list[str]]]:
        return []

    def gate_ids(self) -> list[str]:
        ids = [f"{self.name}.before"] if self.gates.before is not None else []
        return ids + ([f"{self.name}.after"] if self.gates.after is not None else [])
