"""Where a launch acts and measures: Prometheus, and the traffic routers that set exposure.

A URL that carries a credential (a token in its path or query, `user:password@`) is given as
a secret reference, `url: {env: NAME}` or `{file: PATH}`: only the reference enters workflow
history, and the activity that calls the URL resolves it.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.basics import Name, PositiveDuration, SecretRef, StrictModel

MAX_URL_LENGTH = 2048
MAX_PATH_LENGTH = 4096
MAX_KEY_LENGTH = 253
MAX_IMAGE_LENGTH = 512
MAX_CONTAINERS = 32
# A Prometheus query gets 20s in all (activities/metrics.py); a longer request timeout would
# never be reached.
MAX_PROMETHEUS_TIMEOUT = timedelta(seconds=15)
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


def _plain_url(value: str) -> str:
    """A URL written into the plan: http(s), a host, no credentials."""
    if len(value) > MAX_URL_LENGTH:
        raise PydanticCustomError("url_too_long", f"must be at most {MAX_URL_LENGTH} characters")
    if not re.match(r"^https?://", value):
        raise PydanticCustomError(
            "url_scheme", "must start with http:// or https:// (or be a secret reference)"
        )
    if _CONTROL_OR_SPACE.search(value):
        raise PydanticCustomError("url_characters", "must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise PydanticCustomError("url_invalid", "is not a valid URL") from None
    if "@" in parts.netloc:
        raise PydanticCustomError(
            "url_credentials",
            "must not carry credentials (user:password@): it would be copied into the history "
            "of every phase; give the whole URL as a secret reference instead, "
            "`url: {env: NAME}` or `url: {file: PATH}`",
        )
    if not parts.hostname:
        raise PydanticCustomError("url_host", "must name a host")
    return value


def _url_or_secret(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One message per problem, in the plan's terms, whichever form the URL takes."""
    if isinstance(value, SecretRef):
        return value
    if isinstance(value, dict):
        try:
            return SecretRef.model_validate(value)
        except ValidationError as err:
            problems = []
            for item in err.errors():
                where = ".".join(str(part) for part in item["loc"])
                why = str(item["msg"]).removeprefix("Value error, ")
                if item["type"] == "extra_forbidden":
                    why = "is not a known field of a secret reference (give `env` or `file`)"
                problems.append(f"{where}: {why}" if where else why)
            raise PydanticCustomError(
                "secret_ref", "{problems}", {"problems": "; ".join(problems)}
            ) from None
    if not isinstance(value, str):
        raise PydanticCustomError(
            "url_type", "must be an http(s):// URL or a secret reference `{env: NAME}`"
        )
    return handler(_plain_url(value))


# A URL as the plan gives it: a plain `https://...` string or a secret reference.
UrlOrSecret = Annotated[str | SecretRef, WrapValidator(_url_or_secret)]


def describe_url(url: str | SecretRef) -> str:
    """A URL as it may be shown: a plain one as written, a secret one by where it lives."""
    if isinstance(url, str):
        return url
    return f"<secret env:{url.env}>" if url.env is not None else f"<secret file:{url.file}>"


def _within_query_time(timeout: timedelta) -> timedelta:
    if timeout > MAX_PROMETHEUS_TIMEOUT:
        raise ValueError(
            f"must be at most {int(MAX_PROMETHEUS_TIMEOUT.total_seconds())}s: a query gets "
            "20s in all, retries included"
        )
    return timeout


class PrometheusTarget(StrictModel):
    url: UrlOrSecret
    bearer_token: SecretRef | None = None
    timeout: Annotated[PositiveDuration, AfterValidator(_within_query_time)] = timedelta(seconds=5)


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
    flag_file: Annotated[str, Field(min_length=1, max_length=MAX_PATH_LENGTH)]
    flag_key: Annotated[str, Field(min_length=1, max_length=MAX_KEY_LENGTH)]


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
    images: dict[Name, Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_LENGTH)]] = Field(
        min_length=1, max_length=MAX_CONTAINERS
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
