"""What people send a launch: gate decisions, aborts, and actions on a failing undo."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import (
    ConfigDict,
    Field,
)

from schemas.basics import (
    Message,
)


class GateDecision(Message):
    """Payload of the `approve` / `reject` signals and of the `decide` update."""

    model_config = ConfigDict(extra="forbid")

    gate: str = Field(min_length=1)
    approver: str = Field(min_length=1)
    comment: str = ""
    id: str = ""


class DecideRequest(GateDecision):
    decision: Literal["approve", "reject"]


class AbortRequest(Message):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1)
    by: str = Field(min_length=1)
    id: str = ""


class CompensationAction(Message):
    """Payload of `retry_compensation` / `skip_compensation` when an undo keeps failing."""

    model_config = ConfigDict(extra="forbid")

    compensation: str = Field(min_length=1)
    by: str = Field(min_length=1)
    comment: str = ""
    id: str = ""


class RelayedDecision(Message):
    """A validated decision the launch workflow forwards to the phase that owns the gate."""

    gate: str
    outcome: Literal["approved", "rejected"]
    by: str
    comment: str = ""
    at: datetime
    source: Literal["signal", "update"]
