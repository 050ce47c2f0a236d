"""What the security probes take and return: one check of the plan and the trust bundle in,
the findings out. Secrets stay `SecretRef`s; the probe resolves them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.basics import Message, SecretRef
from schemas.security_validation_spec import (
    AuthCheck,
    AuthorizationCheck,
    HeaderCheck,
    HttpMethod,
    RateLimitCheck,
    SecretHygieneCheck,
    TlsCheck,
)


class TlsProbe(Message):
    check: TlsCheck
    ca_file: str | None = None


class HeaderProbe(Message):
    check: HeaderCheck
    ca_file: str | None = None


class AuthProbe(Message):
    check: AuthCheck
    ca_file: str | None = None


class RateLimitProbe(Message):
    check: RateLimitCheck
    ca_file: str | None = None


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


class AuthorizationProbe(Message):
    check: AuthorizationCheck


class HygieneProbe(Message):
    check: SecretHygieneCheck


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
