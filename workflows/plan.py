"""The launch plan: what a release engineer writes in YAML, validated before anything starts.

Every model here is strict (unknown fields are errors) so a typo in a plan is caught by
`phasegate validate` instead of being silently ignored on launch day.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _parse_duration(value: Any) -> Any:
    """Accept `30s`, `1h30m`, `500ms` or a number of seconds; leave ISO 8601 to pydantic."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text and _DURATION_PART.sub("", text) == "":
            seconds = sum(
                float(number) * _DURATION_UNITS[unit]
                for number, unit in _DURATION_PART.findall(text)
            )
            return timedelta(seconds=seconds)
        if not text.upper().startswith("P"):
            raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 5m, 1h30m or 500ms")
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


Duration = Annotated[timedelta, BeforeValidator(_parse_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(_parse_duration), AfterValidator(_positive)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", max_length=63)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(StrictModel):
    """Where a secret lives. Only the reference enters workflow history; activities resolve it."""

    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of `env` or `file`")
        return self


class PrometheusTarget(StrictModel):
    url: Annotated[str, Field(pattern=r"^https?://")]
    bearer_token: SecretRef | None = None
    timeout: PositiveDuration = timedelta(seconds=5)


class FlagdRouter(StrictModel):
    """Exposure through an OpenFeature flag in flagd's JSON format, in a file the service watches."""

    kind: Literal["flagd"] = "flagd"
    flag_file: str
    flag_key: Annotated[str, Field(min_length=1)]
    stable_variant: Name = "stable"
    canary_variant: Name = "canary"

    @model_validator(mode="after")
    def _distinct_variants(self) -> FlagdRouter:
        if self.stable_variant == self.canary_variant:
            raise ValueError("stable_variant and canary_variant must differ")
        return self


class _KubeRouter(StrictModel):
    namespace: Name
    stable_variant: Name = "stable"  # also the pods' `phasegate.dev/variant` label
    canary_variant: Name = "canary"

    @model_validator(mode="after")
    def _distinct_variants(self) -> _KubeRouter:
        if self.stable_variant == self.canary_variant:
            raise ValueError("stable_variant and canary_variant must differ")
        return self


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


class GateSpec(StrictModel):
    """A go/no-go decision. Fields left out take the plan's `approvals` defaults."""

    approvers: list[Annotated[str, Field(min_length=1)]] | None = None
    timeout: PositiveDuration | None = None
    on_timeout: Literal["reject", "approve"] | None = None
    description: str | None = None


def _gate_shorthand(value: Any) -> Any:
    """`approval: true` means a gate with the plan's defaults; `false` means none."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


Gate = Annotated[GateSpec | None, BeforeValidator(_gate_shorthand)]


class ApprovalDefaults(StrictModel):
    approvers: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    timeout: PositiveDuration = timedelta(hours=24)
    on_timeout: Literal["reject", "approve"] = "reject"


class BaselineComparison(StrictModel):
    """Canary passes when canary <= baseline * max_ratio + tolerance (or >= for min_ratio)."""

    max_ratio: Annotated[float, Field(gt=0)] | None = None
    min_ratio: Annotated[float, Field(gt=0)] | None = None
    tolerance: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _one_direction(self) -> BaselineComparison:
        if (self.max_ratio is None) == (self.min_ratio is None):
            raise ValueError("give exactly one of `max_ratio` or `min_ratio`")
        return self


VARIANT_PLACEHOLDER = "{{variant}}"


class MetricSpec(StrictModel):
    """One PromQL measurement, in the manner of an Argo Rollouts analysis metric."""

    query: Annotated[str, Field(min_length=1)]
    max: float | None = None
    min: float | None = None
    baseline: BaselineComparison | None = None
    interval: PositiveDuration = timedelta(seconds=10)
    count: Annotated[int, Field(ge=1, le=1000)] = 3
    initial_delay: Duration = timedelta(0)
    failure_limit: Annotated[int, Field(ge=0)] = 0
    inconclusive_limit: Annotated[int, Field(ge=0)] = 0
    consecutive_error_limit: Annotated[int, Field(ge=0)] = 4

    @model_validator(mode="after")
    def _has_condition(self) -> MetricSpec:
        if self.max is None and self.min is None and self.baseline is None:
            raise ValueError("give a success condition: `max`, `min` or `baseline`")
        if VARIANT_PLACEHOLDER not in self.query and self.baseline is not None:
            raise ValueError(
                f"`baseline` compares variants, so the query must contain {VARIANT_PLACEHOLDER}"
            )
        return self


class PhaseGates(StrictModel):
    before: Gate = None
    after: Gate = None


class ExposureStep(StrictModel):
    """Set the share of users on the new version, let it bake, analyse, optionally ask a person."""

    weight: Annotated[float, Field(ge=0, le=100)]
    pause: Duration | None = None
    analysis: list[str] = Field(default_factory=list)
    approval: Gate = None


class _ExposurePhase(StrictModel):
    name: Name
    gates: PhaseGates = PhaseGates()
    steps: list[ExposureStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _weights_never_decrease(self) -> _ExposurePhase:
        weights = [step.weight for step in self.steps]
        for index in range(1, len(weights)):
            if weights[index] < weights[index - 1]:
                raise ValueError(
                    f"step weights must not decrease: steps[{index}].weight is "
                    f"{weights[index]:g} after {weights[index - 1]:g}"
                )
        return self

    def analysis_references(self) -> list[tuple[str, list[str]]]:
        """(path within the phase, analysis names) for every place the phase runs analyses."""
        return [
            (f"steps[{index}].analysis", step.analysis) for index, step in enumerate(self.steps)
        ]

    def gate_ids(self) -> list[str]:
        """Every gate this phase can open, so decisions can be checked before they arrive."""
        ids = [f"{self.name}.before"] if self.gates.before is not None else []
        for number, step in enumerate(self.steps, start=1):
            if step.analysis:
                ids.append(f"{self.name}.step-{number}.analysis")
            if step.approval is not None:
                ids.append(f"{self.name}.step-{number}")
        if self.gates.after is not None:
            ids.append(f"{self.name}.after")
        return ids


class SoftLaunchPhase(_ExposurePhase):
    """Expose the new version to part of the users; never to all of them."""

    kind: Literal["soft_launch"]

    @model_validator(mode="after")
    def _partial_only(self) -> SoftLaunchPhase:
        if self.steps[-1].weight >= 100:
            raise ValueError("a soft launch stays below 100%; reach 100% in a full_launch phase")
        return self


class FullLaunchPhase(_ExposurePhase):
    """Take the new version to every user and make it the stable one."""

    kind: Literal["full_launch"]

    @model_validator(mode="after")
    def _reaches_everyone(self) -> FullLaunchPhase:
        if self.steps[-1].weight != 100:
            raise ValueError("a full launch must end with a step of weight 100")
        return self


# --- migration cutover -------------------------------------------------------------------

SqlIdentifier = Annotated[
    str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$", max_length=127)
]
ColumnName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*$", max_length=63)]


class TableCheck(StrictModel):
    """Rows of `table` in the source must reach `target_table` (default: the same name)."""

    table: SqlIdentifier
    target_table: SqlIdentifier | None = None
    columns: list[ColumnName] = Field(default_factory=list)  # checksummed; empty = count only


class InvariantCheck(StrictModel):
    """A query run on the target after migrating: it must return no rows, or one `true`."""

    name: Name
    query: Annotated[str, Field(min_length=1)]
    expect: Literal["no_rows", "true"] = "no_rows"


class VerificationSpec(StrictModel):
    tables: list[TableCheck] = Field(default_factory=list)
    invariants: list[InvariantCheck] = Field(default_factory=list)


class SqlSwitch(StrictModel):
    """SQL run on the target to send readers to the new schema (e.g. a view swap), and back."""

    forward: Annotated[str, Field(min_length=1)]
    backward: Annotated[str, Field(min_length=1)]


class CutoverSpec(StrictModel):
    """How traffic moves to the migrated data; every action here is undone on rollback."""

    gate: Gate = Field(default_factory=GateSpec)
    flag: FlagdRouter | None = None  # the flag is switched fully to its canary variant
    sql: SqlSwitch | None = None

    @model_validator(mode="after")
    def _has_action(self) -> CutoverSpec:
        if self.flag is None and self.sql is None:
            raise ValueError("give a cutover action: `flag`, `sql` or both")
        return self


class WatchSpec(StrictModel):
    """The plan's analyses run after cutover; a failure rolls the whole migration back."""

    analysis: list[str] = Field(min_length=1)


class MigrationCutoverPhase(StrictModel):
    """Back up, migrate, verify, cut over and watch a PostgreSQL migration; undo it all on failure."""

    kind: Literal["migration_cutover"]
    name: Name
    gates: PhaseGates = PhaseGates()
    source: SecretRef  # DSN of the database traffic uses now
    target: SecretRef | None = None  # DSN of the database the scripts change; default: source
    migrations: Annotated[str, Field(min_length=1)]  # folder of NNN_name.sql (+ NNN_name.down.sql)
    backup_dir: Annotated[str, Field(min_length=1)]
    ledger_table: SqlIdentifier = "phasegate_migrations"
    min_server_version: Annotated[int, Field(ge=90600)] | None = None  # server_version_num
    extensions: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    verify: VerificationSpec = VerificationSpec()
    cutover: CutoverSpec
    watch: WatchSpec | None = None

    @property
    def target_dsn(self) -> SecretRef:
        return self.target or self.source

    def analysis_references(self) -> list[tuple[str, list[str]]]:
        return [("watch.analysis", self.watch.analysis)] if self.watch else []

    def gate_ids(self) -> list[str]:
        ids = [f"{self.name}.before"] if self.gates.before is not None else []
        if self.cutover.gate is not None:
            ids.append(f"{self.name}.cutover")
        if self.watch is not None:
            ids.append(f"{self.name}.watch.analysis")
        if self.gates.after is not None:
            ids.append(f"{self.name}.after")
        return ids

    def with_paths_under(self, base_dir: Path) -> MigrationCutoverPhase:
        """The phase with its folders and flag file made absolute against the plan's folder."""

        def absolute(path: str) -> str:
            return path if Path(path).is_absolute() else str((base_dir / path).resolve())

        cutover = self.cutover
        if cutover.flag is not None:
            flag = cutover.flag.model_copy(update={"flag_file": absolute(cutover.flag.flag_file)})
            cutover = cutover.model_copy(update={"flag": flag})
        return self.model_copy(
            update={
                "migrations": absolute(self.migrations),
                "backup_dir": absolute(self.backup_dir),
                "cutover": cutover,
            }
        )


Severity = Literal["critical", "warning"]
HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
HttpsUrl = Annotated[str, Field(pattern=r"^https://")]
HttpUrl = Annotated[str, Field(pattern=r"^https?://")]
# A rate-limit burst never sends more than this many requests, whatever the plan says.
MAX_BURST = 500


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
    expiry_warning: PositiveDuration = timedelta(days=30)

    def aspects(self) -> list[str]:
        return ["protocol", "certificate", "hostname", "expiry"]

    def warning_aspects(self) -> list[str]:
        return self.aspects() if self.severity == "warning" else ["expiry"]


class HeaderCheck(SecurityCheck):
    """Security headers on one page; a check left at null/false is not judged."""

    url: HttpUrl
    hsts_min_max_age: Duration | None = timedelta(days=180)
    content_type_options: bool = True
    frame_protection: bool = True
    csp_directives: list[Annotated[str, Field(pattern=r"^[a-z-]+$")]] | None = None

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
    scheme: Annotated[str, Field(min_length=1)] = "Bearer"
    denied_status: list[Annotated[int, Field(ge=400, le=499)]] = Field(
        default_factory=lambda: [401, 403], min_length=1
    )

    def aspects(self) -> list[str]:
        return ["no-credentials", "bad-token", "valid-token"]


class RateLimitCheck(SecurityCheck):
    """A bounded burst is limited before more than `limit + margin` requests get through."""

    url: HttpUrl
    method: HttpMethod = "GET"
    token: SecretRef | None = None
    limit: Annotated[int, Field(ge=1)]
    margin: Annotated[int, Field(ge=0)] = 0
    status: Annotated[int, Field(ge=400, le=599)] = 429
    max_duration: PositiveDuration = timedelta(seconds=30)

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
    query: Annotated[str, Field(min_length=1)]
    within: PositiveDuration = timedelta(seconds=30)
    interval: PositiveDuration = timedelta(seconds=2)

    def aspects(self) -> list[str]:
        return ["recorded"]


class AccessRule(StrictModel):
    """One request a service account may or may not make, as Kubernetes authorizes it."""

    verb: Annotated[str, Field(pattern=r"^([a-z]+|\*)$")]
    resource: Annotated[str, Field(pattern=r"^([a-z]+|\*)$")]  # plural: secrets, pods
    group: str = ""  # API group: "" is the core group, e.g. apps, batch
    subresource: str = ""
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
    can: list[AccessRule] = Field(default_factory=list)
    cannot: list[AccessRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _rules(self) -> AuthorizationCheck:
        if not self.can and not self.cannot:
            raise ValueError("give at least one rule in `can` or `cannot`")
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
    required_secrets: list[Name] = Field(default_factory=list)
    min_length: Annotated[int, Field(ge=4)] = 12
    min_entropy: Annotated[float, Field(gt=0, le=8)] = 3.0  # bits per character
    allow: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)

    def aspects(self) -> list[str]:
        return ["literals", "secrets-exist"]


class SecurityValidationPhase(StrictModel):
    """Probe the deployed service; critical findings fail the launch, warnings need a waiver."""

    kind: Literal["security_validation"]
    name: Name
    gates: PhaseGates = PhaseGates()
    ca_file: str | None = None
    waivers: GateSpec = GateSpec()
    tls: list[TlsCheck] = Field(default_factory=list)
    headers: list[HeaderCheck] = Field(default_factory=list)
    authentication: list[AuthCheck] = Field(default_factory=list)
    rate_limits: list[RateLimitCheck] = Field(default_factory=list)
    audit: list[AuditCheck] = Field(default_factory=list)
    authorization: list[AuthorizationCheck] = Field(default_factory=list)
    secret_hygiene: list[SecretHygieneCheck] = Field(default_factory=list)

    @model_validator(mode="after")
    def _checks_are_named_once(self) -> SecurityValidationPhase:
        checks = self.checks()
        if not checks:
            raise ValueError(
                "give at least one check: tls, headers, authentication, rate_limits, audit, "
                "authorization or secret_hygiene"
            )
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
        return f"{self.name}.waive.{finding_id}"

    def analysis_references(self) -> list[tuple[str, list[str]]]:
        return []  # audit queries are checks of their own, not named analyses

    def gate_ids(self) -> list[str]:
        ids = [f"{self.name}.before"] if self.gates.before is not None else []
        for check in self.checks():
            ids.extend(self.waiver_gate(f"{check.id}.{a}") for a in check.warning_aspects())
        if self.gates.after is not None:
            ids.append(f"{self.name}.after")
        return ids


# --- infrastructure setup ----------------------------------------------------------------


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


Phase = Annotated[
    InfraSetupPhase
    | SecurityValidationPhase
    | SoftLaunchPhase
    | FullLaunchPhase
    | MigrationCutoverPhase,
    Field(discriminator="kind"),
]
PHASE_KINDS = (
    "infra_setup",
    "security_validation",
    "soft_launch",
    "full_launch",
    "migration_cutover",
)

NotificationEvent = Literal[
    "launch_started", "gate_opened", "completed", "rolled_back", "compensation_failed"
]


class Webhook(StrictModel):
    name: Name
    url: Annotated[str, Field(pattern=r"^https?://")]
    headers: dict[str, SecretRef] = Field(default_factory=dict)
    events: list[NotificationEvent] = Field(
        default_factory=lambda: [
            "launch_started",
            "gate_opened",
            "completed",
            "rolled_back",
            "compensation_failed",
        ]
    )


class LaunchPlan(StrictModel):
    service: Name
    version: Annotated[str, Field(min_length=1, max_length=128)]
    description: str = ""
    targets: Targets
    approvals: ApprovalDefaults
    analysis: dict[Name, MetricSpec] = Field(default_factory=dict)
    notifications: list[Webhook] = Field(default_factory=list)
    phases: list[Phase] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_resolve(self) -> LaunchPlan:
        problems: list[str] = []
        seen: set[str] = set()
        for index, phase in enumerate(self.phases):
            if phase.name in seen:
                problems.append(f"phases[{index}].name: {phase.name!r} is used by an earlier phase")
            seen.add(phase.name)
            if (
                isinstance(phase, SecurityValidationPhase)
                and phase.audit
                and self.targets.prometheus is None
            ):
                problems.append(
                    f"phases[{index}].audit: needs targets.prometheus to query for audit records"
                )
            if (
                isinstance(phase, InfraSetupPhase)
                and phase.prometheus_jobs
                and self.targets.prometheus is None
            ):
                problems.append(
                    f"phases[{index}].prometheus_jobs: needs targets.prometheus to query"
                )
            for where, names in phase.analysis_references():
                for name in names:
                    if name not in self.analysis:
                        problems.append(
                            f"phases[{index}].{where}: no analysis named "
                            f"{name!r} (defined: {', '.join(sorted(self.analysis)) or 'none'})"
                        )
                if names and self.targets.prometheus is None:
                    problems.append(f"phases[{index}].{where}: needs targets.prometheus to query")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def gate(self, spec: GateSpec) -> ResolvedGate:
        """Fill a gate's missing fields from the plan's approval defaults."""
        defaults = self.approvals
        return ResolvedGate(
            approvers=spec.approvers or defaults.approvers,
            timeout=spec.timeout or defaults.timeout,
            on_timeout=spec.on_timeout or defaults.on_timeout,
            description=spec.description,
        )


class ResolvedGate(StrictModel):
    approvers: list[str]
    timeout: timedelta
    on_timeout: Literal["reject", "approve"]
    description: str | None = None


class PlanError(ValueError):
    """A plan that cannot start; `problems` holds one `path: message` line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))


_MESSAGES = {
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "too_short": "must have at least {min_length} item(s)",
    "string_too_short": "must not be empty",
    "string_pattern_mismatch": "must match {pattern}",
    "union_tag_invalid": "must be one of: {expected_tags}",
    "union_tag_not_found": "is required",
}


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in PHASE_KINDS and isinstance(previous, int):
            pass  # the discriminator's branch name is not part of the user's path
        else:
            path += f".{part}" if path else str(part)
        previous = part
    return path or "(plan)"


def describe_errors(error: ValidationError) -> list[str]:
    """One `path: message` line per problem, in the plan's own terms."""
    lines: list[str] = []
    for item in error.errors():
        template = _MESSAGES.get(item["type"])
        context = {
            key: f"{value:g}" if isinstance(value, float) else value
            for key, value in (item.get("ctx") or {}).items()
        }
        if template is not None:
            message = template.format(**context)
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
        path = _path(tuple(item["loc"]))
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path += "." + str(context.get("discriminator", "kind")).strip("'")
        if item["type"] == "value_error" and message.startswith("phases["):
            lines.extend(message.split("; "))
            continue
        lines.append(f"{path}: {message}")
    return lines


def parse_plan(text: str, *, source: str = "<plan>", base_dir: Path | None = None) -> LaunchPlan:
    """Parse and validate a plan; relative file paths are made absolute against `base_dir`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise PlanError(source, [f"(yaml) {where}: {getattr(err, 'problem', err)}"]) from None
    if not isinstance(data, dict):
        raise PlanError(source, ["(plan): must be a mapping with service, version, phases, ..."])
    try:
        plan = LaunchPlan.model_validate(data)
    except ValidationError as err:
        raise PlanError(source, describe_errors(err)) from None
    if base_dir is not None:
        plan = _resolve_paths(plan, base_dir)
    return plan


def _resolve_paths(plan: LaunchPlan, base_dir: Path) -> LaunchPlan:
    """Files the plan names relative to itself (flag file, manifests, migration folders,
    CA bundles) become absolute, so the worker finds them wherever it runs from."""

    def absolute(path: str) -> str:
        return path if Path(path).is_absolute() else str((base_dir / path).resolve())

    def resolved(phase: Phase) -> Phase:
        if isinstance(phase, InfraSetupPhase):
            return phase.model_copy(update={"manifests": [absolute(p) for p in phase.manifests]})
        if isinstance(phase, MigrationCutoverPhase):
            return phase.with_paths_under(base_dir)
        if isinstance(phase, SecurityValidationPhase) and phase.ca_file is not None:
            return phase.model_copy(update={"ca_file": absolute(phase.ca_file)})
        return phase

    router = plan.targets.router
    if isinstance(router, FlagdRouter):
        router = router.model_copy(update={"flag_file": absolute(router.flag_file)})
    return plan.model_copy(
        update={
            "targets": plan.targets.model_copy(update={"router": router}),
            "phases": [resolved(phase) for phase in plan.phases],
        }
    )


def load_plan(path: Path) -> LaunchPlan:
    try:
        text = path.read_text()
    except OSError as err:
        raise PlanError(str(path), [f"(file): cannot read: {err.strerror}"]) from None
    return parse_plan(text, source=str(path), base_dir=path.parent)
