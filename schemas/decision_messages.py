"""What people send a launch, and what the launch decides.

A person asks with a `DecisionRequest` (the `approve` / `reject` signals, whose name says the
decision, or the `decide` update, whose payload does); the launch checks it and takes a
`Decision`, which it relays to the phase that owns the gate and which every status shows.
A gate's timeout takes a `Decision` of its own. `AbortRequest` and `CompensationAction` stop a
launch and act on an undo that keeps failing (or that would lose live writes).

When the plan names an identity provider, every request carries a `proof` from the approval
service (see `approvals/proofs.py`): the person's name and groups come from it, never from a
payload field. `GateVote` is how the launch hands an accepted vote to the phase that owns the
gate, sealed by the worker (`schemas/seal.py`) and with the proof, which the phase checks again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from approvals.proofs import ApprovalAuthority
from schemas.basics import Message
from schemas.seal import Sealed

DecisionVerb = Literal["approve", "reject"]

# Anything a person sends is bounded, so a payload cannot swell a launch's history.
GateId = Annotated[str, Field(min_length=1, max_length=256)]
Why = Annotated[str, Field(max_length=2000)]
RequestId = Annotated[str, Field(max_length=128)]
Proof = Annotated[str, Field(max_length=8192)]
EvidenceId = Annotated[str, Field(max_length=128)]


class DecisionRequest(Message):
    """A person's go or no-go for one gate, as the CLI, the UI's signal or the update send it."""

    model_config = ConfigDict(extra="forbid")

    gate: GateId
    # Only when the plan's approvals are not authenticated (`identity: none`); otherwise the
    # proof names the person, and a different name here is refused.
    approver: Annotated[str, Field(max_length=128)] = ""
    # Named by the `decide` update's payload; the `approve` / `reject` signals name it themselves.
    decision: DecisionVerb | None = None
    comment: Why = ""
    id: RequestId = ""
    # The analysis evidence the person looked at (`status` shows its id); if a measurement
    # failed or was inconclusive since, the decision is refused with the new evidence.
    evidence: EvidenceId = ""
    proof: Proof = ""


class Decision(Message):
    """A decision taken at a gate: by a person (through a signal or the update) or by its timeout."""

    gate: str
    outcome: Literal["approved", "rejected"]
    by: str
    comment: str = ""
    at: datetime
    source: Literal["signal", "update", "timeout"]
    # Everyone whose vote took the decision, and whether their names were proven.
    people: list[str] = Field(default_factory=list)
    authenticated: bool = False
    # Only in the `decide` update's answer: approvals the gate still needs after this one.
    pending: int = 0


class GateVote(Sealed):
    """One accepted vote, relayed by the launch to the phase that owns the gate."""

    # Bounded like the request it came from: anyone can send this signal, and a refusal
    # quotes what was sent.
    gate: GateId
    verb: DecisionVerb
    launch_run: Annotated[str, Field(max_length=128)]
    person: Annotated[str, Field(max_length=256)]
    proof: Proof = ""
    comment: Why = ""
    evidence: EvidenceId = ""
    at: datetime
    source: Literal["signal", "update"]
    # The keys the launch checked the proof with (it reloads them when a key rotates).
    authority: ApprovalAuthority | None = None


class AbortRequest(Sealed):
    """A person's abort (with a proof when approvals are authenticated), or an automated
    sender's (the health schedule), sealed by its worker and sent at `sent_at`."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[Why, Field(min_length=1)]
    by: Annotated[str, Field(max_length=128)] = ""
    id: RequestId = ""
    proof: Proof = ""
    sent_at: datetime | None = None


HoldAction = Literal["pause", "resume"]


class HoldRequest(Sealed):
    """A person's pause or resume (with a proof when approvals are authenticated), or an
    automated sender's (the health schedule), sealed by its worker and sent at `sent_at`.
    The `pause` / `resume` signals name the action themselves; the `hold` update's payload
    names it in `action`."""

    model_config = ConfigDict(extra="forbid")

    action: HoldAction | None = None
    reason: Why = ""
    by: Annotated[str, Field(max_length=128)] = ""
    id: RequestId = ""
    proof: Proof = ""
    sent_at: datetime | None = None


class Hold(Message):
    """Why exposure does not move: who paused the launch, when and why, with the evidence
    when analysis paused it."""

    by: str
    reason: str = ""
    at: datetime
    source: Literal["person", "analysis", "health"]
    evidence: str = ""


class HoldRelay(Sealed):
    """The launch telling its running phase to hold exposure (`hold` set) or go on (None)."""

    launch_run: Annotated[str, Field(max_length=128)]
    hold: Hold | None = None


class CompensationAction(Message):
    """Payload of `retry_compensation` / `skip_compensation` when an undo keeps failing, and of
    `keep_writes` / `drop_writes` when a database restore would lose live writes."""

    model_config = ConfigDict(extra="forbid")

    compensation: GateId
    by: Annotated[str, Field(max_length=128)] = ""
    comment: Why = ""
    id: RequestId = ""
    proof: Proof = ""
    # For `keep_writes` / `drop_writes`: the rows at risk the person saw in the status; the
    # decision is refused if the restore now reports another count.
    rows: Annotated[int, Field(ge=0, le=10**12)] | None = None


class AuthorityRequest(Message):
    """Ask the worker for the approval service's keys; `kid` is the unknown key that prompted it."""

    launch_id: str
    kid: str = ""
