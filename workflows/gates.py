"""Go/no-go gates: who asks, the launch's checks of every vote, and the phase's wait for them.

`DecisionChecks` take a vote only if its gate is open and undecided and the person may decide
it: with an identity provider in the plan, the person is whoever the proof
(`approvals/proofs.py`) names, bound to this launch, gate and decision; without one
(`identity: none`), the name as typed. A decision reaches the gate one of two ways:

- sent to the launch (the UI's `approve` / `reject` signals, its `decide` update): the launch
  checks it and relays the vote, sealed, to the phase that owns the gate, whose `GateKeeper`
  checks it again and counts it;
- sent to the phase that waits at the gate (its `decide` update; `phasegate approve` does
  this): the phase runs the same `DecisionChecks` with its own copy of the launch's trust and
  evidence (`GateKeeper.take_direct`), counts it, and tells the launch with its next report.

Either way the phase counts: one rejection closes the gate, `min_approvals` distinct people
open it, the starter only if the plan allows self-approval, each proof once. Refused votes are
recorded in the launch's audit trail, never acted on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from approvals.proofs import (
        Act,
        ApprovalAuthority,
        Binding,
        IdentityRule,
        Person,
        ProofRefused,
        check_proof,
    )
    from schemas.decision_messages import Decision, DecisionRequest, DecisionVerb, GateVote
    from schemas.gate_spec import GROUP_PREFIX, IdentitySpec, ResolvedGate
    from schemas.launch_messages import (
        AuditEntry,
        DecisionMemory,
        OpenGate,
        PhaseState,
        PhaseStatusValue,
    )

KEEP_REFUSALS = 50
KEEP_NOTE_CHARS = 1000


class Refused(Exception):
    """Why a request is not acted on; the message names the field at fault."""


class DecisionRefused(ApplicationError):
    """Why a decision cannot be taken: the `decide` update's answer (the launch's or a
    phase's), recorded in the audit trail."""

    def __init__(self, message: str) -> None:
        super().__init__(message, type="DecisionRefused", non_retryable=True)


NO_REQUEST = 'input: give a decision request: {"gate", "decision": "approve"|"reject", ...}'


class Trust:
    """How a launch knows who asks: the plan's identity provider (or none), the approval
    service's keys the workers trust, and the launch run proofs must be bound to."""

    def __init__(
        self,
        identity: IdentitySpec | None,
        authority: ApprovalAuthority | None,
        launch: str,
        run: str,
        started_by: str,
    ) -> None:
        self.identity = identity
        self.authority = authority
        self.launch = launch
        self.run = run
        self.started_by = started_by

    @property
    def issuer(self) -> str:
        """The identity provider approvals are proven at, or "" if names are taken as typed."""
        return self.identity.issuer if self.identity is not None else ""

    def person(
        self,
        act: Act,
        target: str,
        proof: str,
        declared: str,
        at: datetime,
        *,
        field: str = "approver",
    ) -> Person:
        """Who asks for `act` on `target`: the person `proof` names, checked at `at`, or with
        `identity: none` the name `declared` in the payload's `field`. `Refused` says why not."""
        if self.identity is None:
            if not declared.strip():
                raise Refused(
                    f"{field}: name yourself; this plan's approvals are not authenticated"
                )
            return Person(name=declared.strip(), groups=(), proof_id="", evidence="")
        if self.authority is None:
            raise Refused("proof: this launch has not loaded the approval service's keys")
        try:
            person = check_proof(
                proof,
                self.authority,
                IdentityRule(
                    self.identity.issuer, self.identity.name_claim, self.identity.groups_claim
                ),
                Binding(
                    launch=self.launch,
                    run="" if act == "start" else self.run,
                    act=act,
                    target=target,
                ),
                at,
            )
        except ProofRefused as err:
            raise Refused(str(err)) from None
        if declared.strip() and declared.strip() != person.name:
            raise Refused(
                f"{field}: the proof names {person.name!r}; a name in the payload never counts"
            )
        return person


def may_act(person: Person, allowed: Sequence[str]) -> bool:
    """Whether `allowed` (names, `group:NAME` entries, `*`) includes the person."""
    return (
        "*" in allowed
        or person.name in allowed
        or any(f"{GROUP_PREFIX}{group}" in allowed for group in person.groups)
    )


def vote_refusal(gate: OpenGate, verb: DecisionVerb, person: Person, started_by: str) -> str:
    """Why `person` may not cast this vote at `gate` (as it stands), or ""."""
    if not may_act(person, gate.approvers):
        return f"{person.name!r} may not decide gate {gate.gate!r}; approvers: {', '.join(gate.approvers)}"
    if verb == "approve":
        if person.name == started_by and not gate.allow_self_approval:
            return (
                f"{person.name!r} started this launch and may not approve its gates "
                "(four eyes; the plan's `approvals.allow_self_approval: true` allows it)"
            )
        if person.name in gate.approvals:
            return f"{person.name!r} already approved gate {gate.gate!r}; another person must"
    return ""


@dataclass(frozen=True)
class Vote:
    verb: DecisionVerb
    person: Person


class DecisionChecks:
    """Which votes the launch takes: for an open, undecided gate, from a person who may cast
    them, each request id and proof once (signals are delivered at least once)."""

    def __init__(self, known_gates: list[str], trust: Trust) -> None:
        self._known = known_gates
        self.trust = trust
        self._seen_ids: set[str] = set()
        self._spent_proofs: set[str] = set()
        self._decided: set[tuple[str, str]] = set()

    def remember(self) -> DecisionMemory:
        """What a launch's next run must go on refusing: ids and proofs spent, gates decided."""
        return DecisionMemory(
            seen_ids=sorted(self._seen_ids),
            spent_proofs=sorted(self._spent_proofs),
            decided=sorted(self._decided),
        )

    def recall(self, memory: DecisionMemory) -> None:
        self._seen_ids = set(memory.seen_ids)
        self._spent_proofs = set(memory.spent_proofs)
        self._decided = set(memory.decided)

    def check(
        self,
        request: DecisionRequest,
        verb: DecisionVerb | None,
        gate: OpenGate | None,
        now: datetime,
    ) -> Vote:
        """The vote `request` casts at `now`, or `Refused`. `verb` is what the signal says
        (None for the update, whose payload says it)."""
        if verb is None and request.decision is None:
            raise Refused("decision: give `approve` or `reject`")
        if verb is not None and request.decision not in (None, verb):
            raise Refused(
                f"decision: the `{verb}` signal cannot carry decision {request.decision!r}"
            )
        wanted: DecisionVerb = verb or request.decision or "reject"
        if request.gate not in self._known:
            known = ", ".join(self._known) or "none"
            raise Refused(f"gate: unknown gate {request.gate!r}; this plan's gates are: {known}")
        if request.id and request.id in self._seen_ids:
            raise Refused(f"id: decision {request.id} was already taken")
        if gate is None or gate.gate != request.gate:
            instead = f"the open gate is {gate.gate!r}" if gate else "no gate is open now"
            raise Refused(f"gate: {request.gate!r} is not open; {instead}")
        if (gate.gate, gate.opened_at.isoformat()) in self._decided:
            raise Refused(f"gate: {request.gate!r} was already decided")
        person = self.trust.person(wanted, request.gate, request.proof, request.approver, now)
        if person.proof_id and person.proof_id in self._spent_proofs:
            raise Refused("proof: already used; ask for a fresh one")
        if self.trust.identity is not None and person.evidence != request.evidence:
            raise Refused(
                f"evidence: the proof was made for evidence {person.evidence or 'none'!r}, "
                f"the request names {request.evidence or 'none'!r}"
            )
        problem = vote_refusal(gate, wanted, person, self.trust.started_by)
        if problem:
            raise Refused(problem)
        if gate.needs_reason and not request.comment.strip():
            raise Refused(f"comment: gate {request.gate!r} needs the reason for the decision")
        return Vote(wanted, person)

    def take(
        self,
        request: DecisionRequest,
        vote: Vote,
        gate: OpenGate,
        source: Literal["signal", "update"],
        now: datetime,
    ) -> GateVote:
        """Spend the request id and proof of a vote `check` allowed, and count it in the
        launch's view of the gate; the returned vote goes to the phase."""
        if request.id:
            self._seen_ids.add(request.id)
        if vote.person.proof_id:
            self._spent_proofs.add(vote.person.proof_id)
        if vote.verb == "approve":
            gate.approvals.append(vote.person.name)
        if vote.verb == "reject" or len(gate.approvals) >= gate.min_approvals:
            self._decided.add((gate.gate, gate.opened_at.isoformat()))
        return GateVote(
            gate=gate.gate,
            verb=vote.verb,
            launch_run=self.trust.run,
            person=vote.person.name,
            proof=request.proof,
            comment=request.comment,
            evidence=request.evidence,
            at=now,
            source=source,
            authority=self.trust.authority,
        )

    def closes(self, gate: OpenGate, vote: GateVote) -> Decision | None:
        """The decision `vote` takes at `gate`, if it is the one that closes it."""
        if vote.verb == "approve" and len(gate.approvals) < gate.min_approvals:
            return None
        return _decision(gate, vote, self.trust.identity is not None)


def _decision(gate: OpenGate, vote: GateVote, authenticated: bool) -> Decision:
    people = list(gate.approvals) if vote.verb == "approve" else [vote.person]
    return Decision(
        gate=gate.gate,
        outcome="approved" if vote.verb == "approve" else "rejected",
        by=", ".join(people),
        comment=vote.comment,
        at=vote.at,
        source=vote.source,
        people=people,
        authenticated=authenticated,
    )


class Reporter(Protocol):
    """How a gate tells the launch about itself (implemented by `PhaseWorkflow`)."""

    async def report(self) -> None: ...

    async def report_delivered(self) -> None: ...

    def note_change(self) -> None: ...


class GateKeeper:
    """The phase's side of a gate: open it, count the votes the launch relays (checking each
    again), and close it on a rejection, a quorum or the timeout."""

    def __init__(self, state: PhaseState, reporter: Reporter) -> None:
        self._state = state
        self._reporter = reporter
        self._decided: Decision | None = None
        # Whether a vote at the open gate came to this phase itself rather than through the
        # launch: then the launch learns of it from the phase's next report.
        self._direct = False
        self._spent_proofs: set[str] = set()
        self.trust = Trust(None, None, "", "", "")
        # Relayed votes refused so far (the state keeps only the newest `KEEP_REFUSALS`).
        self.refused = 0

    async def receive(self, payload: Any) -> None:
        """Count a relayed vote, or record why not and tell the launch at once."""
        try:
            vote = GateVote.model_validate(payload)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "input"
            self.refuse(None, f"malformed: {where}: {first['msg']}")
            await self._reporter.report()
            return
        try:
            self._count(vote)
        except Refused as err:
            self.refuse(vote, str(err))
            await self._reporter.report()

    def _count(self, vote: GateVote) -> None:
        gate = self._state.open_gate
        if not vote.sealed:
            raise Refused(
                "seal: not relayed by the launch; people decide through the launch or this "
                "phase's `decide` update"
            )
        if gate is None or gate.gate != vote.gate or self._decided is not None:
            raise Refused(f"gate: {vote.gate!r} is not waiting in this phase")
        if vote.launch_run != self.trust.run:
            raise Refused("launch_run: relayed for another run of this launch")
        now = workflow.now()
        if vote.at > now or vote.at < gate.opened_at:
            raise Refused("at: the vote's time is outside the gate's opening")
        if vote.authority is not None and self.trust.identity is not None:
            self.trust.authority = vote.authority
        person = self.trust.person(vote.verb, vote.gate, vote.proof, vote.person, vote.at)
        if person.proof_id and person.proof_id in self._spent_proofs:
            raise Refused("proof: already counted")
        problem = vote_refusal(gate, vote.verb, person, self.trust.started_by)
        if problem:
            raise Refused(problem)
        if person.proof_id:
            self._spent_proofs.add(person.proof_id)
        if vote.verb == "approve":
            gate.approvals.append(person.name)
            if len(gate.approvals) < gate.min_approvals:
                self._reporter.note_change()
                return
        self._decided = _decision(gate, vote, self.trust.identity is not None)

    def take_direct(
        self, checks: DecisionChecks, evidence: Callable[[str], None], request: DecisionRequest
    ) -> Decision:
        """A person's decision sent to this phase itself (its `decide` update), checked exactly
        as the launch checks one before relaying it: `checks` are the launch's checks with this
        phase's trust, `evidence` the launch's evidence check. Counted, it answers with the
        decision (or the approvals the gate still needs); otherwise `Refused` says why."""
        now = workflow.now()
        gate = self._state.open_gate
        if gate is not None and self._decided is not None:
            raise Refused(f"gate: {request.gate!r} was already decided")
        vote = checks.check(request, None, gate, now)
        evidence(request.evidence)
        assert gate is not None
        proof_id = vote.person.proof_id
        if proof_id and proof_id in self._spent_proofs:
            raise Refused("proof: already used; ask for a fresh one")
        counted = checks.take(request, vote, gate, "update", now)
        if proof_id:
            self._spent_proofs.add(proof_id)
        self._direct = True
        decision = checks.closes(gate, counted)
        self.record_request(
            request,
            accepted=True,
            note=f"{decision.outcome} by {decision.by}"
            if decision is not None
            else f"approval {len(gate.approvals)} of {gate.min_approvals} "
            f"({', '.join(gate.approvals)})",
        )
        if decision is None:
            return Decision(
                gate=gate.gate,
                outcome="approved",
                by=vote.person.name,
                comment=counted.comment,
                at=now,
                source="update",
                people=list(gate.approvals),
                authenticated=self.trust.identity is not None,
                pending=gate.min_approvals - len(gate.approvals),
            )
        self._decided = decision
        return decision

    def record_request(self, request: DecisionRequest, *, accepted: bool, note: str) -> None:
        """Put a decision sent to this phase itself in the launch's audit trail (through the
        phase's next report), taken or refused, as the launch records one sent to it."""
        if not accepted:
            workflow.logger.warning("refused a decision: %s", note)
        self.refused += 1
        entry = AuditEntry(
            at=workflow.now(),
            handler=f"decide:{request.decision or '?'}",
            payload={
                "gate": request.gate,
                "decision": request.decision,
                "approver": request.approver,
                "comment": request.comment[:KEEP_NOTE_CHARS],
                "evidence": request.evidence,
                "phase": self._state.name,
            },
            accepted=accepted,
            note=note[:KEEP_NOTE_CHARS],
        )
        self._state.refusals = [*self._state.refusals, entry][-KEEP_REFUSALS:]

    def refuse(self, vote: GateVote | None, why: str) -> None:
        """Record why a relayed vote is not counted; the next report tells the launch."""
        workflow.logger.warning("refused a relayed vote: %s", why)
        self.refused += 1
        entry = AuditEntry(
            at=workflow.now(),
            handler=f"{self._state.name}:relay_decision",
            payload=None
            if vote is None
            else {"gate": vote.gate[:256], "verb": vote.verb, "person": vote.person[:128]},
            accepted=False,
            note=why[:KEEP_NOTE_CHARS],
        )
        self._state.refusals = [*self._state.refusals, entry][-KEEP_REFUSALS:]

    async def decide(
        self, gate_id: str, gate: ResolvedGate, question: str, *, needs_reason: bool = False
    ) -> Decision:
        """Open the gate, wait for its votes or the timeout, and return what was decided."""
        now = workflow.now()
        self._decided = None
        self._direct = False
        self._state.open_gate = OpenGate(
            gate=gate_id,
            phase=self._state.name,
            question=gate.description or question,
            approvers=list(gate.approvers),
            opened_at=now,
            deadline=now + gate.timeout,
            on_timeout=gate.on_timeout,
            needs_reason=needs_reason,
            min_approvals=gate.min_approvals,
            allow_self_approval=gate.allow_self_approval,
            identity=self.trust.issuer,
        )
        self._state.status = PhaseStatusValue.WAITING
        # Announced only once the launch knows of it, so a decision that follows the
        # announcement is never refused as "not open".
        await self._reporter.report_delivered()
        try:
            await workflow.wait_condition(
                lambda: self._decided is not None,
                timeout=gate.timeout,
                timeout_summary=f"gate {gate_id} times out",
            )
            assert self._decided is not None
            decision = self._decided
        except TimeoutError:
            decision = Decision(
                gate=gate_id,
                outcome="approved" if gate.on_timeout == "approve" else "rejected",
                by="timeout",
                comment=f"no decision within {gate.timeout}; the plan says {gate.on_timeout}",
                at=workflow.now(),
                source="timeout",
            )
        self._state.decisions.append(decision)
        self._state.open_gate = None
        self._decided = None
        self._state.status = PhaseStatusValue.RUNNING
        direct, self._direct = self._direct, False
        if decision.source == "timeout" or direct:
            # The launch learns of a timeout, and of a decision sent to the phase itself,
            # from this report.
            await self._reporter.report()
        else:
            # The launch relayed the vote that closed the gate and has closed it in its view;
            # the change rides along with the phase's next report instead of delaying the step.
            self._reporter.note_change()
        return decision
