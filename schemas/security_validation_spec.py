"""The security validation phase: probes of the deployed service and their severity policy.

Bounds: at most `MAX_CHECKS_PER_KIND` checks of each kind and `MAX_CHECKS` in all; an audit
polls at most `MAX_AUDIT_POLLS` times; a burst sends at most `MAX_BURST` requests; lists of
rules, statuses and names hold at most `MAX_RULES` items.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, model_validator

from schemas.basics import (
    LONGEST,
    MINUTE,
    FilePath,
    HttpsUrl,
    HttpUrl,
    Label,
    Name,
    Query,
    SecretRef,
    StrictModel,
    one_of,
    up_to,
)
from schemas.gate_spec import GateSpec, gate_id
from schemas.phase_spec import PhaseSpec

Severity = Literal["critical", "warning"]
HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
# A rate-limit burst never sends more than this many requests, whatever the plan says.
MAX_BURST = 500
MAX_CHECKS_PER_KIND = 20
MAX_CHECKS = 50
MAX_AUDIT_POLLS = 60
MAX_RULES = 50


class SecurityCheck(StrictModel):
    """One probe of the deployed service; each aspect it judges becomes a finding `<id>.<aspect>`."""

    id: Name
    severity: Severity = "critical"

    def aspects(self) -> list[str]:
        raise NotImplementedError

    def warning_aspects(self) -> list[str]:
        """The aspects whose failure is a warning (waivable) rather than critical."""
        return self.aspects() if self.severity == "warning" else []


class TlsCheck(SecurityCheck):
    """Protocol versions offered, certificate chain and validity, hostname, days to expiry."""

    url: HttpsUrl
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    expiry_warning: Annotated[timedelta, up_to(timedelta(days=366))] = timedelta(days=30)

    def aspects(self) -> list[str]:
        return ["protocol", "certificate", "hostname", "expiry"]

    def warning_aspects(self) -> list[str]:
        return self.aspects() if self.severity == "warning" else ["expiry"]


class HeaderCheck(SecurityCheck):
    """Security headers on one page; a check left at null/false is not judged."""

    url: HttpUrl
    hsts_min_max_age: Annotated[timedelta, up_to(LONGEST, zero=True)] | None = timedelta(days=180)
    content_type_options: bool = True
    frame_protection: bool = True
    csp_directives: list[Annotated[str, Field(pattern=r"^[a-z-]+$", max_length=64)]] | None = Field(
        default=None, max_length=MAX_RULES
    )

    def aspects(self) -> list[str]:
        wanted = {
            "hsts": self.hsts_min_max_age is not None,
            "content-type-options": self.content_type_options,
            "frame-protection": self.frame_protection,
            "csp": self.csp_directives is not None,
        }
        return [aspect for aspect, on in wanted.items() if on]

    @model_validator(mode="after")
    def _judges_something(self) -> HeaderCheck:
        if not self.aspects():
            raise ValueError("every header check is switched off; enable at least one")
        return self


class AuthCheck(SecurityCheck):
    """A protected endpoint refuses no credentials and a bad token, and accepts a valid one."""

    url: HttpUrl
    method: HttpMethod = "GET"
    token: SecretRef
    scheme: Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", max_length=64)] = (
        "Bearer"
    )
    denied_status: list[Annotated[int, Field(ge=400, le=499)]] = Field(
        default_factory=lambda: [401, 403], min_length=1, max_length=MAX_RULES
    )

    def aspects(self) -> list[str]:
        return ["no-credentials", "bad-token", "valid-token"]


class RateLimitCheck(SecurityCheck):
    """A bounded burst is limited before more than `limit + margin` requests get through."""

    url: HttpUrl
    method: HttpMethod = "GET"
    token: SecretRef | None = None
    limit: Annotated[int, Field(ge=1)]  # limit + margin + 1 is at most MAX_BURST
    margin: Annotated[int, Field(ge=0)] = 0
    status: Annotated[int, Field(ge=400, le=599)] = 429
    max_duration: Annotated[timedelta, up_to(10 * MINUTE)] = timedelta(seconds=30)

    @model_validator(mode="after")
    def _bounded(self) -> RateLimitCheck:
        if self.burst > MAX_BURST:
            raise ValueError(
                f"limit + margin + 1 = {self.burst} requests; a burst is capped at {MAX_BURST}"
            )
        return self

    @property
    def burst(self) -> int:
        """Requests sent at most: one past the most the endpoint may let through."""
        return self.limit + self.margin + 1

    def aspects(self) -> list[str]:
        return ["limited"]


class AuditCheck(SecurityCheck):
    """A request to an audited endpoint shows up in a PromQL query (the value goes up)."""

    url: HttpUrl
    method: HttpMethod = "GET"
    token: SecretRef | None = None
    query: Query
    within: Annotated[timedelta, up_to(60 * MINUTE)] = timedelta(seconds=30)
    interval: Annotated[timedelta, up_to(5 * MINUTE)] = timedelta(seconds=2)

    @model_validator(mode="after")
    def _bounded_polls(self) -> AuditCheck:
        if self.polls > MAX_AUDIT_POLLS:
            raise ValueError(
                f"interval: `within` / `interval` = {self.polls} polls; at most "
                f"{MAX_AUDIT_POLLS}, so make the interval longer"
            )
        return self

    @property
    def polls(self) -> int:
        """How many times the audit query is read after the request, at most."""
        return -(-self.within // self.interval)

    def aspects(self) -> list[str]:
        return ["recorded"]


class AccessRule(StrictModel):
    """One request a service account may or may not make, as Kubernetes authorizes it."""

    verb: Annotated[str, Field(pattern=r"^([a-z]+|\*)$", max_length=63)]
    resource: Annotated[str, Field(pattern=r"^([a-z]+|\*)$", max_length=63)]  # plural: pods
    # API group: "" is the core group, e.g. apps, batch
    group: Annotated[str, Field(pattern=r"^[a-z0-9.-]*$", max_length=253)] = ""
    subresource: Annotated[str, Field(pattern=r"^[a-z]*$", max_length=63)] = ""
    namespace: Name | None = None  # None: in every namespace (cluster-wide)

    def label(self) -> str:
        where = f"in-{self.namespace}" if self.namespace else "cluster-wide"
        resource = self.resource.replace("*", "all")
        sub = f"-{self.subresource}" if self.subresource else ""
        return f"{self.verb.replace('*', 'all')}-{resource}{sub}-{where}"


class AuthorizationCheck(SecurityCheck):
    """SubjectAccessReviews for a service account: what it needs is allowed, the rest refused."""

    service_account: Name
    namespace: Name
    can: list[AccessRule] = Field(default_factory=list, max_length=MAX_RULES)
    cannot: list[AccessRule] = Field(default_factory=list, max_length=MAX_RULES)

    @model_validator(mode="after")
    def _rules(self) -> AuthorizationCheck:
        one_of(self, ("can", "cannot"), "give at least one rule in `can` or `cannot`")
        aspects = self.aspects()
        repeated = sorted({a for a in aspects if aspects.count(a) > 1})
        if repeated:
            raise ValueError(f"rules given twice: {', '.join(repeated)}")
        return self

    def aspects(self) -> list[str]:
        return [f"can-{rule.label()}" for rule in self.can] + [
            f"cannot-{rule.label()}" for rule in self.cannot
        ]


class SecretHygieneCheck(SecurityCheck):
    """No credential-looking literal in the namespace's ConfigMaps or Deployment env, and every
    Secret the plan or a Deployment refers to exists."""

    namespace: Name
    required_secrets: list[Name] = Field(default_factory=list, max_length=MAX_RULES)
    min_length: Annotated[int, Field(ge=4, le=1024)] = 12
    min_entropy: Annotated[float, Field(gt=0, le=8)] = 3.0  # bits per character
    allow: list[Label] = Field(default_factory=list, max_length=MAX_RULES)

    def aspects(self) -> list[str]:
        return ["literals", "secrets-exist"]


class SecurityValidationPhase(PhaseSpec):
    """Probe the deployed service; critical findings fail the launch, warnings need a waiver."""

    kind: Literal["security_validation"]
    ca_file: FilePath | None = None
    waivers: GateSpec = GateSpec()
    tls: list[TlsCheck] = Field(default_factory=list, max_length=MAX_CHECKS_PER_KIND)
    headers: list[HeaderCheck] = Field(default_factory=list, max_length=MAX_CHECKS_PER_KIND)
    authentication: list[AuthCheck] = Field(default_factory=list, max_length=MAX_CHECKS_PER_KIND)
    rate_limits: list[RateLimitCheck] = Field(default_factory=list, max_length=MAX_CHECKS_PER_KIND)
    audit: list[AuditCheck] = Field(default_factory=list, max_length=MAX_CHECKS_PER_KIND)
    authorization: list[AuthorizationCheck] = Field(
        default_factory=list, max_length=MAX_CHECKS_PER_KIND
    )
    secret_hygiene: list[SecretHygieneCheck] = Field(
        default_factory=list, max_length=MAX_CHECKS_PER_KIND
    )

    @model_validator(mode="after")
    def _checks_are_named_once(self) -> SecurityValidationPhase:
        checks = self.checks()
        if not checks:
            raise ValueError(
                "give at least one check: tls, headers, authentication, rate_limits, audit, "
                "authorization or secret_hygiene"
            )
        if len(checks) > MAX_CHECKS:
            raise ValueError(f"{len(checks)} checks; a phase runs at most {MAX_CHECKS}")
        ids = [check.id for check in checks]
        repeated = sorted({name for name in ids if ids.count(name) > 1})
        if repeated:
            raise ValueError(f"check ids must be unique in a phase: {', '.join(repeated)}")
        if self.waivers.on_timeout == "approve":
            raise ValueError("waivers.on_timeout: a finding is waived only by a person; use reject")
        return self

    def waiver_spec(self) -> GateSpec:
        """The waiver gates: never approved by a timeout, whatever the plan's defaults say."""
        return self.waivers.model_copy(update={"on_timeout": "reject"})

    def checks(self) -> list[SecurityCheck]:
        return [
            *self.tls,
            *self.headers,
            *self.authentication,
            *self.rate_limits,
            *self.audit,
            *self.authorization,
            *self.secret_hygiene,
        ]

    def waiver_gate(self, finding_id: str) -> str:
        return gate_id(self.name, "waive", finding_id)

    def work_gate_ids(self) -> list[str]:
        # Audit queries are checks of their own, not named analyses: no analysis references.
        return [
            self.waiver_gate(f"{check.id}.{aspect}")
            for check in self.checks()
            for aspect in check.warning_aspects()
        ]

    def prometheus_needs(self) -> list[tuple[str, str]]:
        return [("audit", "to query for audit records")] if self.audit else []

    def step_count(self) -> int:
        return len(self.checks())
