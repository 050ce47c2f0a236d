"""Go/no-go gates as a plan declares them, and the plan-wide approval rules: who may decide,
how people prove who they are, and how many distinct people a gate needs.

Bounds: a gate waits at most `MAX_GATE_TIMEOUT`; it names 1 to 64 approvers (an empty list is
refused, never replaced by the defaults) and needs at most 10 of them, never more people than
it names.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Discriminator, Field, Tag, model_validator

from schemas.basics import Description, StrictModel, matching, up_to


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
MAX_GATE_TIMEOUT = timedelta(days=30)
GateTimeout = Annotated[timedelta, up_to(MAX_GATE_TIMEOUT)]


def _enough_people(approvers: list[str] | None, min_approvals: int | None) -> None:
    """A quorum larger than the people a gate names by name could never be reached."""
    if approvers is None or min_approvals is None:
        return
    if any(a == "*" or a.startswith(GROUP_PREFIX) for a in approvers):
        return
    people = len(set(approvers))
    if min_approvals > people:
        raise ValueError(
            f"min_approvals: {min_approvals} people must approve, but approvers names only "
            f"{people}; name more people, a group:NAME or lower min_approvals"
        )


class GateSpec(StrictModel):
    """A go/no-go decision. Fields left out take the plan's `approvals` defaults."""

    approvers: Approvers | None = None
    timeout: GateTimeout | None = None
    on_timeout: Literal["reject", "approve"] | None = None
    min_approvals: MinApprovals | None = None
    description: Description | None = None

    @model_validator(mode="after")
    def _quorum_reachable(self) -> GateSpec:
        _enough_people(self.approvers, self.min_approvals)
        return self


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

    issuer: Annotated[
        str,
        Field(min_length=1, max_length=512),
        matching(r"https?://\S+", "must be an http:// or https:// URL without spaces"),
    ]
    name_claim: Annotated[str, Field(min_length=1, max_length=64)] = "email"
    groups_claim: Annotated[str, Field(min_length=1, max_length=64)] = "groups"


def _identity_kind(value: Any) -> str | None:
    if value == "none":
        return "<none>"
    return "<issuer>" if isinstance(value, dict | IdentitySpec) else None


class ApprovalDefaults(StrictModel):
    """`identity` is required: an issuer, or `none` to say in so many words that approvals
    are not authenticated (names are taken as typed; fine for a local demo, nowhere else)."""

    identity: Annotated[
        Annotated[Literal["none"], Tag("<none>")] | Annotated[IdentitySpec, Tag("<issuer>")],
        Discriminator(
            _identity_kind,
            custom_error_type="identity",
            custom_error_message="must be `none` or a mapping with an `issuer`",
        ),
    ]
    approvers: Approvers
    timeout: GateTimeout = timedelta(hours=24)
    on_timeout: Literal["reject", "approve"] = "reject"
    min_approvals: MinApprovals = 1
    allow_self_approval: bool = False

    @model_validator(mode="after")
    def _quorum_reachable(self) -> ApprovalDefaults:
        _enough_people(self.approvers, self.min_approvals)
        if self.identity == "none":
            problems = group_problems(self.approvers, "approvers")
            if problems:
                raise ValueError("; ".join(problems))
        return self

    @property
    def authenticated(self) -> IdentitySpec | None:
        return None if self.identity == "none" else self.identity


def group_problems(approvers: list[str] | None, where: str) -> list[str]:
    """With `identity: none` nobody proves a group: a `group:` approver could never be met
    (or would be met by anyone typing it as a name)."""
    return [
        f"{where}[{index}]: {approver!r} needs a proven identity; with `identity: none` name "
        "people or `*`"
        for index, approver in enumerate(approvers or [])
        if approver.startswith(GROUP_PREFIX)
    ]


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
