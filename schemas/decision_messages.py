"""What people send a launch, and what the launch decides.

A person asks with a `DecisionRequest` (the `approve` / `reject` signals, whose name says the
decision, or the `decide` update, whose payload does); the launch checks it and takes a
`Decision`, which it relays to the phase that owns the gate and which every status shows.
A gate's timeout takes a `Decision` of its own. `AbortRequest` and `CompensationAction` stop a
launch and act on an undo that keeps failing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from schemas.basics import Message

DecisionVerb = Literal["approve", "reject"]


class DecisionRequest(Message):
    """A person's go or no-go for one gate, as the CLI, the UI's signal or the update send it."""

    model_config = ConfigDict(extra="forbid")

    gate: str = Field(min_length=1)
    approver: str = Field(min_length=1)
    # Named by the `decide` update's payload; the `approve` / `reject` signals name it themselves.
    decision: DecisionVerb | None = None
    comment: str = ""
    id: str = ""


class Decision(Message):
    """A decision taken at a gate: by a person (through a signal or the update) or by its timeout."""

    gate: str
    outcome: Literal["approved", "rejected"]
    by: str
    comment: str = ""
    at: datetime
    source: Literal["signal", "update", "timeout"]


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
