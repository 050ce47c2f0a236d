"""Acting on many launches at once: select the running launches a filter matches (service,
phase, open gate, status), then approve, reject, abort, pause or resume each of them under a
bounded concurrency, and count what was done, what the launch refused and what failed.
"Stop the line" aborts every running launch of a service. No printing here.

Each launch is acted on as `phasegate approve` (or abort, pause, ...) acts on one: its status
is read at that moment (its open gate, whether its approvals are authenticated), then the same
update or signal is sent, with a proof of its own when the launch's approvals are proven.

Errors raised before anything is sent, one line naming the option:

    BulkInputError     a filter, bound or comment that cannot be used (nothing was sent)

A launch that cannot be acted on is an outcome, never an error: `refused` (the launch said no:
the update's own refusal, or no open gate) or `failed` (not found, closed meanwhile, no proof).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import ValidationError
from temporalio.client import Client

from approvals.proofs import Act
from schemas.decision_messages import AbortRequest, DecisionRequest, HoldRequest
from schemas.launch_messages import LaunchStatus, LaunchStatusValue
from schemas.problems import describe_errors
from starters import launches
from starters.proof_client import ProofUnavailable
from workflows.visibility import PHASE

BulkAction = Literal["approve", "reject", "abort", "pause", "resume"]
Outcome = Literal["done", "refused", "failed"]

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
DEFAULT_CONCURRENCY = 16
MAX_CONCURRENCY = 64

# The spelling of a service or phase name (schemas.basics.Name) and of a gate id: phase names
# and step parts joined by dots (`soft-launch.before`, `soft-launch.step-2`).
_NAME = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
NAME_PATTERN = re.compile(rf"^{_NAME}$")
GATE_PATTERN = re.compile(rf"^{_NAME}(?:\.{_NAME})*$")
_NAME_MAX = 63
_GATE_MAX = 255

# What the summary calls a done act: `approved 37, refused 2 (no open gate), failed 0`.
DONE_WORDS: dict[BulkAction, str] = {
    "approve": "approved",
    "reject": "rejected",
    "abort": "abort sent",
    "pause": "paused",
    "resume": "resumed",
}

NO_OPEN_GATE = "no open gate"


class BulkInputError(ValueError):
    """A filter, bound or comment that cannot be used; the message names the option."""


# A proof for one act on one launch: (its status, the act, the target gate or "", the
# evidence the person saw) -> the proof. Raises ProofUnavailable saying why not.
Prover = Callable[[LaunchStatus, Act, str, str], Awaitable[str]]


@dataclass(frozen=True)
class LaunchOutcome:
    """What became of one launch: done (with what was recorded), refused or failed (why)."""

    launch_id: str
    outcome: Outcome
    detail: str


@dataclass
class BulkResult:
    """Every launch's outcome, in the order they ended, and the counts a summary shows."""

    action: BulkAction
    outcomes: list[LaunchOutcome] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)

    @property
    def done(self) -> int:
        return self.count("done")

    @property
    def refused(self) -> int:
        return self.count("refused")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def clean(self) -> bool:
        """Every launch was acted on: nothing refused, nothing failed."""
        return self.refused == 0 and self.failed == 0

    def summary(self) -> str:
        """`approved 37, refused 2 (no open gate), failed 0`: each reason with its count."""
        return (
            f"{DONE_WORDS[self.action]} {self.done}, "
            f"refused {self.refused}{_reasons(self, 'refused')}, "
            f"failed {self.failed}{_reasons(self, 'failed')}"
        )


def _reasons(result: BulkResult, outcome: Outcome) -> str:
    counted = Counter(o.detail for o in result.outcomes if o.outcome == outcome)
    if not counted:
        return ""
    if len(counted) == 1:
        return f" ({next(iter(counted))})"
    return " (" + "; ".join(f"{n}× {reason}" for reason, n in counted.most_common()) + ")"


# --- selecting -------------------------------------------------------------------------


def check_filter(
    *,
    service: str | None = None,
    phase: str | None = None,
    status: str | None = None,
    gate: str | None = None,
    limit: int = DEFAULT_LIMIT,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> None:
    """Raise `BulkInputError` naming the first option that cannot be used."""
    for option, value in (("--service", service), ("--phase", phase)):
        if value is not None and (len(value) > _NAME_MAX or not NAME_PATTERN.match(value)):
            raise BulkInputError(
                f"{option}: a name is lowercase letters, digits and '-', starting and ending "
                f"with a letter or digit, at most {_NAME_MAX} characters"
            )
    if gate is not None and (len(gate) > _GATE_MAX or not GATE_PATTERN.match(gate)):
        raise BulkInputError(
            "--gate: a gate id is a phase name and where in the phase, joined by dots "
            "(e.g. soft-launch.before)"
        )
    known = [value.value for value in LaunchStatusValue]
    if status is not None and status not in known:
        raise BulkInputError(f"--status: one of {', '.join(known)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise BulkInputError(f"--limit: between 1 and {MAX_LIMIT}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise BulkInputError(f"--concurrency: between 1 and {MAX_CONCURRENCY}")


def selection_query(
    *, service: str | None = None, phase: str | None = None, status: str | None = None
) -> str:
    """The visibility query for running launches matching the filter (checked beforehand:
    names hold no quote)."""
    query = launches.launch_query(service=service, status=status)
    if phase:
        query += f" AND {PHASE.name} = '{phase}'"
    return query + " AND ExecutionStatus = 'Running'"


async def select_launches(
    client: Client,
    *,
    service: str | None = None,
    phase: str | None = None,
    status: str | None = None,
    gate: str | None = None,
    limit: int = DEFAULT_LIMIT,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> list[str]:
    """The ids of the running launches the filter matches, newest first, at most `limit` of
    them. A gate is not a search attribute: with `gate`, each launch the rest of the filter
    matches is asked for its open gate (at most `concurrency` at once), and those whose open
    gate is another, or that closed meanwhile, are left out."""
    check_filter(
        service=service,
        phase=phase,
        status=status,
        gate=gate,
        limit=limit,
        concurrency=concurrency,
    )
    query = selection_query(service=service, phase=phase, status=status)
    # The server's own errors (unreachable, search attributes not registered) go to the caller
    # as they are: `phasegate` turns them into one line.
    ids = [execution.id async for execution in client.list_workflows(query, limit=limit)]
    if gate is None:
        return ids
    bound = asyncio.Semaphore(concurrency)

    async def at_gate(launch_id: str) -> bool:
        async with bound:
            try:
                current = await launches.get_status(client, launch_id)
            except launches.LaunchRefused:
                raise  # not allowed to look: say so rather than match nothing
            except launches.LaunchError:
                return False  # closed meanwhile, or no worker answered for it
        return current.open_gate is not None and current.open_gate.gate == gate

    kept = await asyncio.gather(*(at_gate(launch_id) for launch_id in ids))
    return [launch_id for launch_id, keep in zip(ids, kept, strict=True) if keep]


# --- acting ----------------------------------------------------------------------------


def check_request(action: BulkAction, comment: str, by: str) -> None:
    """Raise `BulkInputError` when the comment or name cannot be sent (too long, or no reason
    for an abort or a pause), before any launch is touched."""
    if action in ("abort", "pause") and not comment.strip():
        raise BulkInputError(f"-m REASON: {action} needs its reason, kept with every launch")
    try:
        if action == "approve" or action == "reject":
            DecisionRequest(gate="g", approver=by, decision=action, comment=comment)
        elif action == "abort":
            AbortRequest(reason=comment, by=by)
        else:
            HoldRequest(action=action, reason=comment, by=by)
    except ValidationError as err:
        raise BulkInputError("; ".join(describe_errors(err, document="request"))) from None


async def bulk_act(
    client: Client,
    action: BulkAction,
    selection: Iterable[str],
    *,
    comment: str = "",
    by: str = "",
    prove: Prover | None = None,
    gate: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_outcome: Callable[[LaunchOutcome], None] | None = None,
) -> BulkResult:
    """Act on every launch of `selection`, at most `concurrency` at once, and count the outcomes
    (`on_outcome` hears each one as it ends). `comment` is the decision's comment or the
    abort's or pause's reason. Who acts: `by` on launches whose approvals are not authenticated,
    `prove`'s proof (one per launch and act) on those whose are. Approve and reject decide the
    launch's open gate at that moment (`gate`, when given, must still be the one open)."""
    check_filter(gate=gate, concurrency=concurrency)
    check_request(action, comment, by)
    result = BulkResult(action)
    bound = asyncio.Semaphore(concurrency)

    async def one(launch_id: str) -> None:
        async with bound:
            outcome = await _act(client, action, launch_id, comment, by, prove, gate)
        result.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    await asyncio.gather(*(one(launch_id) for launch_id in dict.fromkeys(selection)))
    return result


async def stop_the_line(
    client: Client,
    service: str,
    reason: str,
    *,
    by: str = "",
    prove: Prover | None = None,
    limit: int = MAX_LIMIT,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_outcome: Callable[[LaunchOutcome], None] | None = None,
) -> BulkResult:
    """Abort every running launch of `service`: each stops and rolls back what it changed."""
    check_request("abort", reason, by)
    selected = await select_launches(client, service=service, limit=limit, concurrency=concurrency)
    return await bulk_act(
        client,
        "abort",
        selected,
        comment=reason,
        by=by,
        prove=prove,
        concurrency=concurrency,
        on_outcome=on_outcome,
    )


async def _act(
    client: Client,
    action: BulkAction,
    launch_id: str,
    comment: str,
    by: str,
    prove: Prover | None,
    gate: str | None,
) -> LaunchOutcome:
    def ended(outcome: Outcome, detail: str) -> LaunchOutcome:
        return LaunchOutcome(launch_id, outcome, detail)

    try:
        status = await launches.get_status(client, launch_id)
        if status.status in launches.FINISHED:
            return ended("failed", f"already {status.status.value.replace('_', ' ')}")
        target, phase = "", ""
        if action in ("approve", "reject"):
            if status.open_gate is None:
                return ended("refused", NO_OPEN_GATE)
            target, phase = status.open_gate.gate, status.open_gate.phase
            if gate is not None and target != gate:
                return ended("refused", f"gate {gate} is no longer open ({target} is)")
        evidence = status.evidence if action in ("approve", "reject") else ""
        # As `phasegate approve` does: the evidence seen goes with a proof, which names it.
        name, proof, seen = by, "", ""
        if status.identity:
            if prove is None:
                return ended("failed", f"approvals are proven at {status.identity}: no proof")
            name, proof, seen = "", await prove(status, action, target, evidence), evidence
        elif not by:
            return ended("failed", "approvals are not authenticated: a name is needed")
        done = await _send(client, action, launch_id, (phase, target), comment, name, proof, seen)
        return ended("done", done)
    except (launches.DecisionError, launches.HoldError) as err:
        return ended("refused", str(err))
    except (launches.LaunchError, ProofUnavailable) as err:
        return ended("failed", str(err))


async def _send(
    client: Client,
    action: BulkAction,
    launch_id: str,
    open_gate: tuple[str, str],
    comment: str,
    by: str,
    proof: str,
    evidence: str,
) -> str:
    """Send the act; what the launch recorded, in a few words. A decision goes to the open
    gate's phase (`open_gate` is its phase and gate), as `phasegate approve` sends it."""
    if action == "approve" or action == "reject":
        phase, gate = open_gate
        taken = await launches.decide(
            client,
            launch_id,
            gate,
            by,
            action,
            comment,
            proof=proof,
            evidence=evidence,
            phase=phase,
        )
        if taken.pending > 0:
            return f"counted at {taken.gate}; {taken.pending} more approval(s) needed"
        return f"{taken.outcome} {taken.gate} as {taken.by}"
    if action == "abort":
        await launches.abort(client, launch_id, comment, by, proof)
        return "abort sent; the launch rolls back"
    held = await launches.hold(client, launch_id, action, comment, by, proof)
    if action == "pause":
        return f"paused as {held.by}" if held is not None else "resumed again meanwhile"
    return "resumed" if held is None else f"paused again by {held.by}"
