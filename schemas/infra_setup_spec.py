"""The infrastructure setup phase: Kubernetes objects applied and rolled out."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, model_validator

from schemas.basics import Name, PositiveDuration, SecretRef, StrictModel, one_of
from schemas.phase_spec import PhaseSpec


class SecretSpec(StrictModel):
    """A Secret the infra-setup phase applies; values are references, resolved by the worker."""

    name: Name
    type: str = "Opaque"
    data: dict[Annotated[str, Field(min_length=1)], SecretRef] = Field(min_length=1)


class InfraSetupPhase(PhaseSpec):
    """Create or update the service's Kubernetes objects and wait until they are rolled out."""

    kind: Literal["infra_setup"]
    namespace: Name
    manifests: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    secrets: list[SecretSpec] = Field(default_factory=list)
    rollout_timeout: PositiveDuration = timedelta(minutes=5)
    prometheus_jobs: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    targets_timeout: PositiveDuration = timedelta(minutes=2)

    @model_validator(mode="after")
    def _has_something(self) -> InfraSetupPhase:
        return one_of(self, ("manifests", "secrets"), "give `manifests` and/or `secrets` to apply")

    def prometheus_needs(self) -> list[tuple[str, str]]:
        return [("prometheus_jobs", "to query")] if self.prometheus_jobs else []
