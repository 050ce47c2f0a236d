"""Go/no-go gates as a plan declares them, and the plan-wide approval defaults."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from schemas.basics import PositiveDuration, StrictModel


def gate_id(phase: str, *where: str | int) -> str:
    """The one spelling of a gate id: the phase's name, then where in the phase the gate is.
    A number is a step: `gate_id("soft-launch", "before")` is `soft-launch.before`,
    `gate_id("soft-launch", 2, "analysis")` is `soft-launch.step-2.analysis`."""
    return ".".join([phase, *(f"step-{part}" if isinstance(part, int) else part for part in where)])


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


class ResolvedGate(StrictModel):
    approvers: list[str]
    timeout: timedelta
    on_timeout: Literal["reject", "approve"]
    description: str | None = None


class PhaseGates(StrictModel):
    before: Gate = None
    after: Gate = None
