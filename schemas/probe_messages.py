"""What the security probes take and return: one check of the plan and the trust bundle in,
the findings out. Secrets stay `SecretRef`s; the probe resolves them."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import Field

from schemas.basics import Message, SecretRef
from schemas.security_validation_spec import (
    AuthCheck,
    AuthorizationCheck,
    HeaderCheck,
    HttpMethod,
    RateLimitCheck,
    SecretHygieneCheck,
    SecurityCheck,
    TlsCheck,
)

C = TypeVar("C", bound=SecurityCheck)


class CheckProbe(Message, Generic[C]):
    """One check of the plan for its probe, with the trust bundle for HTTPS (unused by the
    Kubernetes checks)."""

    check: C
    ca_file: str | None = None


TlsProbe = CheckProbe[TlsCheck]
HeaderProbe = CheckProbe[HeaderCheck]
AuthProbe = CheckProbe[AuthCheck]
RateLimitProbe = CheckProbe[RateLimitCheck]
AuthorizationProbe = CheckProbe[AuthorizationCheck]
HygieneProbe = CheckProbe[SecretHygieneCheck]


class ProbeRequest(Message):
    """One request to an endpoint, e.g. to make an audited endpoint write its audit record."""

    url: str
    method: HttpMethod = "GET"
    token: SecretRef | None = None
    where: str = ""
    ca_file: str | None = None


class ProbeResponse(Message):
    status: int | None = None
    error: str = ""


class CheckReport(Message):
    findings: list[Finding] = Field(default_factory=list)


class Finding(Message):
    """One judged aspect of a security check: what was probed, the verdict and the evidence."""

    id: str
    check: str
    target: str
    severity: Literal["critical", "warning"]
    passed: bool
    evidence: str
    waived_by: str = ""
    waiver_reason: str = ""
