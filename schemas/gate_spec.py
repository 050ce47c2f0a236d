"""Go/no-go gates as a plan declares them, and the plan-wide approval rules: who may decide,
how people prove who they are, and how many distinct people a gate needs."""

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


# A person by the name their proof carries, `group:NAME` for everyone in a group, or `*`.
Approver = Annotated[str, Field(min_length=1, max_length=256)]
Approvers = Annotated[list[Approver], Field(min_length=1, max_length=64)]
MinApprovals = Annotated[int, Field(ge=1, le=10)]
GROUP_PREFIX = "group:"


class GateSpec(StrictModel):
    """A go/no-go decision. Fields left out take the plan's `approvals` defaults."""

    approvers: Approvers | None = None
    timeout: PositiveDuration | None = None
    on_timeout: Literal["reject", "approve"] | None = None
    min_approvals: MinApprovals | None = None
    description: Annotated[str, Field(max_length=2000)] | None = None


def _gate_shorthand(value: Any) -> Any:
    """`approval: true` means a gate with the plan's defaults; `false` means none."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


Gate = Annotated[GateSpec | None, BeforeValidator(_gate_shorthand)]


class IdentitySpec(StrictModel):
    """Where people sign in, and which of their ID token's claims carry their name and groups.
    Decisions then count only with a proof from an approval service the workers trust."""

    issuer: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=512)]
    name_claim: Annotated[str, Field(min_length=1, max_length=64)] = "email"
    groups_claim: Annotated[str, Field(min_length=1, max_length=64)] = "groups"


class ApprovalDefaults(StrictModel):
    """`identity` is required: an issuer, or `none` to say in so many words that approvals
    are not authenticated (names are taken as typed; fine for a local demo, nowhere else)."""

    identity: Literal["none"] | IdentitySpec
    approvers: Approvers
    timeout: PositiveDuration = timedelta(hours=24)
    on_timeout: Literal["reject", "approve"] = "reject"
    min_approvals: MinApprovals = 1
    allow_self_approval: bool = False

    @property
    def authenticated(self) -> IdentitySpec | None:
        return None if self.identity == "none" else self.identity


class ResolvedGate(StrictModel):
    approvers: list[str]
    timeout: timedelta
    on_timeout: Literal["reject", "approve"]
    min_approvals: int = 1
    allow_self_approval: bool = False
    description: str | None = None


class PhaseGates(StrictModel):
    before: Gate = None
    after: Gate = None
