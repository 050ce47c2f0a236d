"""The health profile: which checks a scheduled health validation runs, how often, whom it alerts.

Strict like the launch plan, so a typo is caught by `phasegate schedule create` before a
schedule exists, and bounded like it: at most `MAX_CHECKS` checks, `MAX_RECEIVERS` receivers,
`MAX_LIST` statuses, deployments or headers per check, runs at most `MAX_EVERY` apart.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from schemas.basics import (
    DAY,
    MINUTE,
    Description,
    FilePath,
    HttpUrl,
    Label,
    Name,
    Query,
    SecretRef,
    StrictModel,
    matching,
    one_of,
    up_to,
)
from schemas.problems import as_received, check_items, parse_document, read_document
from schemas.targets import PrometheusTarget

CheckStatus = Literal["pass", "warn", "fail"]
MAX_CHECKS = 50
MAX_RECEIVERS = 10
MAX_LIST = 20
MAX_EVERY = timedelta(days=30)
MAX_CHECK_TIMEOUT = 5 * MINUTE
MAX_EXPIRY = timedelta(days=366)
# An HTTP header name, as RFC 9110 spells a token.
HeaderName = Annotated[
    str,
    Field(min_length=1, max_length=256),
    matching(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", "must be an HTTP header name: no spaces or ':'"),
]
Headers = Annotated[dict[HeaderName, SecretRef], Field(max_length=MAX_LIST)]
CheckTimeout = Annotated[timedelta, up_to(MAX_CHECK_TIMEOUT)]
Expiry = Annotated[timedelta, up_to(MAX_EXPIRY)]
Count = Annotated[int, Field(ge=0, le=1_000_000)]

# The server refuses a shorter catch-up window.
MIN_CATCHUP_WINDOW = timedelta(seconds=10)


class Bounds(StrictModel):
    """A value is out of bounds when it is above `max` or below `min`."""

    max: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _has_a_bound(self) -> Bounds:
        return one_of(self, ("max", "min"), "give `max` and/or `min`")

    def breached_by(self, value: float) -> bool:
        return (self.max is not None and value > self.max) or (
            self.min is not None and value < self.min
        )


class _Check(StrictModel):
    name: Name
    critical: bool = False
    description: Description = ""


class PrometheusCheck(_Check):
    """An SLO as one PromQL expression that returns a single number."""

    kind: Literal["prometheus"]
    query: Query
    warn: Bounds | None = None
    fail: Bounds
    on_no_data: CheckStatus = "warn"
    on_error: CheckStatus = "warn"


class LatencyBounds(StrictModel):
    warn: CheckTimeout | None = None
    fail: CheckTimeout


class ExpiryBounds(StrictModel):
    """Certificate lifetime left: `warn` / `fail` when fewer than this remain."""

    warn: Expiry | None = None
    fail: Expiry


class HttpCheck(_Check):
    """An endpoint answering with the expected status, in time, with a certificate far from expiry."""

    kind: Literal["http"]
    url: HttpUrl
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=lambda: [200], min_length=1, max_length=MAX_LIST
    )
    timeout: CheckTimeout = timedelta(seconds=5)
    latency: LatencyBounds | None = None
    tls_expiry: ExpiryBounds | None = None
    ca_file: FilePath | None = None
    headers: Headers = Field(default_factory=dict)

    @model_validator(mode="after")
    def _tls_needs_https(self) -> HttpCheck:
        if self.tls_expiry is not None and not self.url.startswith("https://"):
            raise ValueError("tls_expiry needs an https:// url")
        return self


class KubernetesCheck(_Check):
    """Deployments serving their replicas: available vs desired, rollout state, restarts.

    Fails when fewer replicas are available than desired or, with `min_available`, only below
    that (fewer than desired but at least `min_available` warns). Restarts count every
    container of the Deployment's pods; either restart bound may be left out."""

    kind: Literal["kubernetes"]
    namespace: Name
    deployments: list[Name] = Field(min_length=1, max_length=MAX_LIST)
    min_available: Count | None = None
    max_restarts_warn: Count | None = None
    max_restarts_fail: Count | None = None
    on_error: CheckStatus = "warn"

    @model_validator(mode="after")
    def _restart_bounds_ordered(self) -> KubernetesCheck:
        warn, fail = self.max_restarts_warn, self.max_restarts_fail
        if warn is not None and fail is not None and warn > fail:
            raise ValueError("max_restarts_warn must not be above max_restarts_fail")
        if len(set(self.deployments)) != len(self.deployments):
            raise ValueError("deployments must not repeat a name")
        return self


HealthCheck = Annotated[PrometheusCheck | HttpCheck | KubernetesCheck, Field(discriminator="kind")]
CHECK_KINDS = ("prometheus", "http", "kubernetes")


def _catchup(value: timedelta) -> timedelta:
    if value < MIN_CATCHUP_WINDOW:
        raise ValueError(f"must be at least {MIN_CATCHUP_WINDOW.seconds}s (Temporal's minimum)")
    return value


class ScheduleSpec(StrictModel):
    """When runs start. Runs never pile up: `skip` drops a start while one runs, `buffer_one`
    keeps at most one waiting."""

    every: Annotated[timedelta, up_to(MAX_EVERY)] | None = None
    cron: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    jitter: Annotated[timedelta, up_to(DAY, zero=True)] = timedelta(0)
    overlap: Literal["skip", "buffer_one"] = "skip"
    catchup_window: Annotated[timedelta, up_to(MAX_EVERY, zero=True), AfterValidator(_catchup)] = (
        timedelta(minutes=1)
    )
    pause_on_failure: bool = False

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleSpec:
        problem = "give exactly one of `every` (e.g. 10s) or `cron`"
        return one_of(self, ("every", "cron"), problem, exactly=True)


class AlertReceiver(StrictModel):
    """A webhook: `alertmanager` posts Alertmanager's v2 alert list, `slack` a Slack message."""

    name: Name
    kind: Literal["alertmanager", "slack"]
    url: HttpUrl
    headers: Headers = Field(default_factory=dict)


class AlertSettings(StrictModel):
    receivers: list[AlertReceiver] = Field(default_factory=list, max_length=MAX_RECEIVERS)
    alert_on: Literal["fail", "warn"] = "fail"
    # Resend a still-firing alert after this long (Alertmanager forgets one after its
    # resolve_timeout); never when left out.
    repeat_after: Annotated[timedelta, up_to(MAX_EVERY)] | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> AlertSettings:
        names = [receiver.name for receiver in self.receivers]
        if len(names) != len(set(names)):
            raise ValueError("receiver names must be unique")
        return self


# What a failing critical check does to the launch a profile guards: stop it and roll back, or
# hold its exposure where it is until a person resumes it.
LaunchActionKind = Literal["abort", "pause"]


class LaunchLink(StrictModel):
    """A running launch this profile guards: a failing critical check aborts or pauses it.

    Sent once per incident: a failing run that finds the launch already paused, rolling back or
    finished sends nothing; a person's resume (or a passing run) lets the next failure act."""

    id: Label
    on_critical_failure: LaunchActionKind = "abort"


class HealthProfile(StrictModel):
    name: Name
    service: Name
    description: Description = ""
    prometheus: PrometheusTarget | None = None
    schedule: ScheduleSpec
    checks: list[HealthCheck] = Field(min_length=1, max_length=MAX_CHECKS)
    alerts: AlertSettings = AlertSettings()
    launch: LaunchLink | None = None

    @model_validator(mode="after")
    def _consistent(self) -> HealthProfile:
        check_items(self.checks, "checks", "check", self._check_problems)
        return self

    def _check_problems(self, index: int, check: HealthCheck) -> list[str]:
        if check.kind == "prometheus" and self.prometheus is None:
            return [f"checks[{index}]: a prometheus check needs `prometheus` to query"]
        return []

    @property
    def schedule_id(self) -> str:
        return f"health-{self.name}"

    @property
    def ledger_id(self) -> str:
        return f"health-alerts-{self.name}"


def parse_profile(
    text: str, *, source: str = "<profile>", base_dir: Path | None = None
) -> HealthProfile:
    """Parse and validate a profile; a relative `ca_file` is made absolute against `base_dir`."""
    profile = parse_document(
        text,
        HealthProfile,
        source=source,
        document="profile",
        fields="name, service, checks",
        branches=CHECK_KINDS,
    )
    if base_dir is None:
        return as_received(profile, source=source, document="profile", branches=CHECK_KINDS)
    checks = [
        check.model_copy(update={"ca_file": str((base_dir / check.ca_file).resolve())})
        if isinstance(check, HttpCheck) and check.ca_file and not Path(check.ca_file).is_absolute()
        else check
        for check in profile.checks
    ]
    profile = profile.model_copy(update={"checks": checks})
    return as_received(profile, source=source, document="profile", branches=CHECK_KINDS)


def load_profile(path: Path) -> HealthProfile:
    return parse_profile(read_document(path, "profile"), source=str(path), base_dir=path.parent)
