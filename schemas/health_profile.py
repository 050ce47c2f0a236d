"""The health profile: which checks a scheduled health validation runs, how often, whom it alerts.

Strict like the launch plan, so a typo is caught by `phasegate schedule create` before a
schedule exists.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from schemas.basics import Duration, Name, PositiveDuration, SecretRef, StrictModel, one_of
from schemas.problems import check_items, parse_document, read_document
from schemas.targets import PrometheusTarget

CheckStatus = Literal["pass", "warn", "fail"]

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
    description: str = ""


class PrometheusCheck(_Check):
    """An SLO as one PromQL expression that returns a single number."""

    kind: Literal["prometheus"]
    query: Annotated[str, Field(min_length=1)]
    warn: Bounds | None = None
    fail: Bounds
    on_no_data: CheckStatus = "warn"
    on_error: CheckStatus = "warn"


class LatencyBounds(StrictModel):
    warn: PositiveDuration | None = None
    fail: PositiveDuration


class ExpiryBounds(StrictModel):
    """Certificate lifetime left: `warn` / `fail` when fewer than this remain."""

    warn: PositiveDuration | None = None
    fail: PositiveDuration


class HttpCheck(_Check):
    """An endpoint answering with the expected status, in time, with a certificate far from expiry."""

    kind: Literal["http"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=lambda: [200]
    )
    timeout: PositiveDuration = timedelta(seconds=5)
    latency: LatencyBounds | None = None
    tls_expiry: ExpiryBounds | None = None
    ca_file: str | None = None
    headers: dict[str, SecretRef] = Field(default_factory=dict)

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
    deployments: list[Name] = Field(min_length=1)
    min_available: Annotated[int, Field(ge=0)] | None = None
    max_restarts_warn: Annotated[int, Field(ge=0)] | None = None
    max_restarts_fail: Annotated[int, Field(ge=0)] | None = None
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

    every: PositiveDuration | None = None
    cron: str | None = None
    jitter: Duration = timedelta(0)
    overlap: Literal["skip", "buffer_one"] = "skip"
    catchup_window: Annotated[Duration, AfterValidator(_catchup)] = timedelta(minutes=1)
    pause_on_failure: bool = False

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleSpec:
        problem = "give exactly one of `every` (e.g. 10s) or `cron`"
        return one_of(self, ("every", "cron"), problem, exactly=True)


class AlertReceiver(StrictModel):
    """A webhook: `alertmanager` posts Alertmanager's v2 alert list, `slack` a Slack message."""

    name: Name
    kind: Literal["alertmanager", "slack"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    headers: dict[str, SecretRef] = Field(default_factory=dict)


class AlertSettings(StrictModel):
    receivers: list[AlertReceiver] = Field(default_factory=list)
    alert_on: Literal["fail", "warn"] = "fail"
    # Resend a still-firing alert after this long (Alertmanager forgets one after its
    # resolve_timeout); never when left out.
    repeat_after: PositiveDuration | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> AlertSettings:
        names = [receiver.name for receiver in self.receivers]
        if len(names) != len(set(names)):
            raise ValueError("receiver names must be unique")
        return self


class LaunchLink(StrictModel):
    """A running launch this profile guards: a failing critical check aborts it.

    Launches have no pause; `abort` (stop and roll back) is the one action."""

    id: Annotated[str, Field(min_length=1)]
    on_critical_failure: Literal["abort"] = "abort"


class HealthProfile(StrictModel):
    name: Name
    service: Name
    description: str = ""
    prometheus: PrometheusTarget | None = None
    schedule: ScheduleSpec
    checks: list[HealthCheck] = Field(min_length=1)
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
        return profile
    checks = [
        check.model_copy(update={"ca_file": str((base_dir / check.ca_file).resolve())})
        if isinstance(check, HttpCheck) and check.ca_file and not Path(check.ca_file).is_absolute()
        else check
        for check in profile.checks
    ]
    return profile.model_copy(update={"checks": checks})


def load_profile(path: Path) -> HealthProfile:
    return parse_profile(read_document(path), source=str(path), base_dir=path.parent)
