"""The launch plan: what a release engineer writes in YAML, validated before anything starts.

Every model here is strict (unknown fields are errors) so a typo in a plan is caught by
`phasegate validate` instead of being silently ignored on launch day. Every model is bounded
too: a plan holds at most `MAX_PHASES` phases, `MAX_ANALYSES` analyses and `MAX_WEBHOOKS`
webhooks, each part has bounds of its own (see its module), and the launch the plan describes
must fit the history budget (`schemas/budget.py`), so no plan that validates can outgrow what
Temporal keeps of a workflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import BaseModel, Field, model_validator

from schemas.analysis_spec import ContinuousAnalysis, MetricSpec, Scoring, WatchWindow
from schemas.basics import Description, Name, StrictModel
from schemas.budget import budget_problems
from schemas.full_launch_spec import FullLaunchPhase
from schemas.gate_spec import ApprovalDefaults, GateSpec, ResolvedGate, group_problems
from schemas.infra_setup_spec import InfraSetupPhase
from schemas.migration_cutover_spec import MigrationCutoverPhase
from schemas.notification_spec import Webhook
from schemas.problems import (
    as_received,
    check_items,
    parse_document,
    raise_problems,
    read_document,
)
from schemas.security_validation_spec import SecurityValidationPhase
from schemas.soft_launch_spec import SoftLaunchPhase
from schemas.targets import FlagdRouter, Targets

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
MAX_PHASES = 20
MAX_ANALYSES = 20
MAX_WEBHOOKS = 10


class LaunchPlan(StrictModel):
    # Sections added after the first release: left out of the start proof's digest while unused.
    DIGEST_SKIPS_DEFAULTS: ClassVar[frozenset[str]] = frozenset(
        {"background_analysis", "watch", "scoring"}
    )

    service: Name
    version: Annotated[str, Field(min_length=1, max_length=128)]
    description: Description = ""
    targets: Targets
    approvals: ApprovalDefaults
    analysis: dict[Name, MetricSpec] = Field(default_factory=dict, max_length=MAX_ANALYSES)
    notifications: list[Webhook] = Field(default_factory=list, max_length=MAX_WEBHOOKS)
    phases: list[Phase] = Field(min_length=1, max_length=MAX_PHASES)
    # How a step's metrics combine into one verdict; without it, any failure fails the step.
    scoring: Scoring | None = None
    # Measured from the first exposure change until the launch ends: through bakes, while
    # gates wait, between phases.
    background_analysis: ContinuousAnalysis | None = None
    # Measured after the last phase; the launch completes when the window ends.
    watch: WatchWindow | None = None

    @model_validator(mode="after")
    def _references_resolve(self) -> LaunchPlan:
        check_items(self.phases, "phases", "phase", self._phase_problems)
        raise_problems(list(self._continuous_problems()))
        # Checked once the plan is otherwise sound: the estimate walks what it refers to.
        raise_problems(budget_problems(self))
        return self

    def _phase_problems(self, index: int, phase: Phase) -> Iterator[str]:
        """What a phase refers to that the plan does not define."""
        if self.approvals.identity == "none":
            for where, spec in _gates(phase, f"phases[{index}]"):
                yield from group_problems(spec.approvers, f"{where}.approvers")
        if self.targets.prometheus is None:
            for where, why in phase.prometheus_needs():
                yield f"phases[{index}].{where}: needs targets.prometheus {why}"
        defined = ", ".join(sorted(self.analysis)) or "none"
        for where, names in phase.analysis_references():
            for name in names:
                if name not in self.analysis:
                    yield f"phases[{index}].{where}: no analysis named {name!r} (defined: {defined})"
            if names and self.targets.prometheus is None:
                yield f"phases[{index}].{where}: needs targets.prometheus to query"

    def _continuous_problems(self) -> Iterator[str]:
        """What `background_analysis` and `watch` name that the plan does not define."""
        defined = ", ".join(sorted(self.analysis)) or "none"
        for where, spec in (
            ("background_analysis", self.background_analysis),
            ("watch", self.watch),
        ):
            if spec is None:
                continue
            for index, name in enumerate(spec.metrics):
                if name not in self.analysis:
                    yield f"{where}.metrics[{index}]: no analysis named {name!r} (defined: {defined})"
            if self.targets.prometheus is None:
                yield f"{where}: needs targets.prometheus to query"

    def gate(self, spec: GateSpec) -> ResolvedGate:
        """Fill a gate's missing fields from the plan's approval defaults."""
        defaults = self.approvals
        # A field the gate gives, even an odd one, is never replaced by the default.
        return ResolvedGate(
            approvers=spec.approvers if spec.approvers is not None else defaults.approvers,
            timeout=spec.timeout if spec.timeout is not None else defaults.timeout,
            on_timeout=spec.on_timeout if spec.on_timeout is not None else defaults.on_timeout,
            min_approvals=(
                spec.min_approvals if spec.min_approvals is not None else defaults.min_approvals
            ),
            allow_self_approval=defaults.allow_self_approval,
            description=spec.description,
        )


def parse_plan(text: str, *, source: str = "<plan>", base_dir: Path | None = None) -> LaunchPlan:
    """Parse and validate a plan; relative file paths are made absolute against `base_dir`."""
    plan = parse_document(
        text,
        LaunchPlan,
        source=source,
        document="plan",
        fields="service, version, phases",
        branches=PHASE_KINDS,
    )
    if base_dir is not None:
        plan = _resolve_paths(plan, base_dir)
    return as_received(plan, source=source, document="plan", branches=PHASE_KINDS)


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
    return parse_plan(read_document(path), source=str(path), base_dir=path.parent)


def _gates(model: BaseModel, where: str) -> Iterator[tuple[str, GateSpec]]:
    """Every gate a plan section declares, with its path."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for position, item in items:
            path = f"{where}.{name}" + ("" if position is None else f"[{position}]")
            if isinstance(item, GateSpec):
                yield path, item
            elif isinstance(item, BaseModel):
                yield from _gates(item, path)
