"""The infrastructure setup phase: Kubernetes objects applied and rolled out.

Bounds: at most `MAX_MANIFESTS` manifest files, `MAX_SECRETS` Secrets of at most
`MAX_SECRET_KEYS` keys each, `MAX_JOBS` Prometheus jobs; a rollout waited for at most
`MAX_ROLLOUT_TIMEOUT`, scrape targets at most `MAX_TARGETS_TIMEOUT`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, model_validator

from schemas.basics import (
    HOUR,
    FilePath,
    Label,
    Name,
    SecretRef,
    StrictModel,
    matching,
    one_of,
    unique,
    up_to,
)
from schemas.phase_spec import PhaseSpec
from schemas.problems import raise_problems

MAX_MANIFESTS = 50
MAX_SECRETS = 20
MAX_SECRET_KEYS = 50
MAX_JOBS = 20
MAX_ROLLOUT_TIMEOUT = timedelta(hours=6)
MAX_TARGETS_TIMEOUT = HOUR

# A key of a Secret's data, as Kubernetes allows it.
SecretKey = Annotated[
    str,
    Field(min_length=1, max_length=253),
    matching(r"[-._a-zA-Z0-9]+", "must be a Secret key: letters, digits, '-', '_' and '.'"),
]


class SecretSpec(StrictModel):
    """A Secret the infra-setup phase applies; values are references, resolved by the worker."""

    name: Name
    type: Label = "Opaque"
    data: dict[SecretKey, SecretRef] = Field(min_length=1, max_length=MAX_SECRET_KEYS)


class InfraSetupPhase(PhaseSpec):
    """Create or update the service's Kubernetes objects and wait until they are rolled out."""

    kind: Literal["infra_setup"]
    namespace: Name
    manifests: list[FilePath] = Field(default_factory=list, max_length=MAX_MANIFESTS)
    secrets: list[SecretSpec] = Field(default_factory=list, max_length=MAX_SECRETS)
    rollout_timeout: Annotated[timedelta, up_to(MAX_ROLLOUT_TIMEOUT)] = timedelta(minutes=5)
    prometheus_jobs: list[Label] = Field(default_factory=list, max_length=MAX_JOBS)
    targets_timeout: Annotated[timedelta, up_to(MAX_TARGETS_TIMEOUT)] = timedelta(minutes=2)

    @model_validator(mode="after")
    def _has_something(self) -> InfraSetupPhase:
        one_of(self, ("manifests", "secrets"), "give `manifests` and/or `secrets` to apply")
        raise_problems(
            unique(self.secrets, "secrets", key=lambda secret: secret.name)
            + unique(self.manifests, "manifests")
        )
        return self

    def prometheus_needs(self) -> list[tuple[str, str]]:
        return [("prometheus_jobs", "to query")] if self.prometheus_jobs else []
