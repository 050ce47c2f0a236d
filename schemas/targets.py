"""Where a launch acts and measures: Prometheus, and the traffic routers that set exposure."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, model_validator

from schemas.basics import Name, PositiveDuration, SecretRef, StrictModel


class PrometheusTarget(StrictModel):
    url: Annotated[str, Field(pattern=r"^https?://")]
    bearer_token: SecretRef | None = None
    timeout: PositiveDuration = timedelta(seconds=5)


class _VariantRouter(StrictModel):
    """A router between two variants; their names are also the `variant` label of metrics."""

    stable_variant: Name = "stable"
    canary_variant: Name = "canary"

    @model_validator(mode="after")
    def _distinct_variants(self) -> _VariantRouter:
        if self.stable_variant == self.canary_variant:
            raise ValueError("stable_variant and canary_variant must differ")
        return self


class FlagdRouter(_VariantRouter):
    """Exposure through an OpenFeature flag in flagd's JSON format, in a file the service watches."""

    kind: Literal["flagd"] = "flagd"
    flag_file: str
    flag_key: Annotated[str, Field(min_length=1)]


class _KubeRouter(_VariantRouter):
    """A router of Kubernetes objects; the variant names are also the pods' `phasegate.dev/variant`
    label."""

    namespace: Name


class ReplicaCanaryRouter(_KubeRouter):
    """A canary Deployment scaled against the stable one so the ready pods match the weight
    (Argo Rollouts' basic canary). The Service in front selects the pods of both."""

    kind: Literal["kube_replicas"]
    stable: Name  # the stable Deployment
    canary: Name | None = None  # default `<stable>-canary`
    images: dict[Annotated[str, Field(min_length=1)], Annotated[str, Field(min_length=1)]] = Field(
        min_length=1
    )  # container name -> the new version's image

    @property
    def canary_name(self) -> str:
        return self.canary or f"{self.stable}-canary"


class IngressCanaryRouter(_KubeRouter):
    """nginx ingress canary: a copy of the stable Ingress sending `canary-weight` percent of the
    requests to the canary Service."""

    kind: Literal["nginx_ingress"]
    ingress: Name  # the stable Ingress
    canary_service: Name  # the Service in front of the new version
    canary_ingress: Name | None = None  # default `<ingress>-canary`

    @property
    def canary_name(self) -> str:
        return self.canary_ingress or f"{self.ingress}-canary"


TrafficRouter = Annotated[
    FlagdRouter | ReplicaCanaryRouter | IngressCanaryRouter, Field(discriminator="kind")
]


def describe_router(router: FlagdRouter | ReplicaCanaryRouter | IngressCanaryRouter) -> str:
    if isinstance(router, ReplicaCanaryRouter):
        return f"Deployments {router.namespace}/{router.stable} and {router.canary_name}"
    if isinstance(router, IngressCanaryRouter):
        return f"Ingress {router.namespace}/{router.canary_name}"
    return f"flagd flag {router.flag_key}"


class Targets(StrictModel):
    prometheus: PrometheusTarget | None = None
    router: TrafficRouter
