"""What people send a launch, and what the launch decides.

A person asks with a `DecisionRequest` (the `approve` / `reject` signals, whose name says the
decision, or the `decide` update, whose payload does); the launch checks it and takes a
`Decision`, which it relays to the phase that owns the gate and which every status shows.
A gate's timeout takes a `Decision` of its own. `AbortRequest` and `CompensationAction` stop a
launch and act on an undo that keeps failing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from schemas.basics import Message

DecisionVerb = Literal["approve", "reject"]

# Anything a person sends is bounded, so a payload cannot swell a launch's history.
GateId = Annotated[str, Field(min_length=1, max_length=256)]
Who = Annotated[str, Field(min_length=1, max_length=128)]
Why = Annotated[str, Field(max_length=2000)]
RequestId = Annotated[str, Field(max_length=128)]


class DecisionRequest(Message):
    """A person's go or no-go for one gate, as the CLI, the UI's signal or the update send it."""

    model_config = ConfigDict(extra="forbid")

    gate: GateId
    approver: Who
    # Named by the `decide` update's payload; the `approve` / `reject` signals name it themselves.
    decision: DecisionVerb | None = None
    comment: Why = ""
    id: RequestId = ""


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

    reason: Annotated[Why, Field(min_length=1)]
    by: Who
    id: RequestId = ""


class CompensationAction(Message):
    """Payload of `retry_compensation` / `skip_compensation` when an undo keeps failing."""

    model_config = ConfigDict(extra="forbid")

    compensation: GateId
    by: Who
    comment: Why = ""
    id: RequestId = ""
