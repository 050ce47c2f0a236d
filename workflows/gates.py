"""Go/no-go gates: the launch's checks of every decision, and the phase's wait for one.

People never signal a phase directly: the launch's `DecisionChecks` refuse a decision unless
its gate is one the plan can open, is open now and undecided, and the approver may decide it;
the launch then relays the taken `Decision` to the phase, whose `GateKeeper` opened the gate
and waits for that decision or the gate's timeout.
"""

from __future__ import annotations

from typing import Literal, Protocol

from temporalio import workflow

from schemas.decision_messages import Decision, DecisionRequest, DecisionVerb
from schemas.gate_spec import ResolvedGate
from schemas.launch_messages import OpenGate, PhaseState, PhaseStatusValue


class DecisionChecks:
    """Which decisions the launch takes: each gate once, by an allowed approver, each request
    id once (signals are delivered at least once)."""

    def __init__(self, known_gates: list[str]) -> None:
        self._known = known_gates
        self._seen_ids: set[str] = set()
        self._decided: set[tuple[str, str]] = set()

    def refusal(
        self, request: DecisionRequest, verb: DecisionVerb | None, gate: OpenGate | None
    ) -> str:
        """Why `request` cannot be taken now as `verb`, or "" if it can. `verb` is what the
        signal says (None for the update, whose payload says it)."""
        if verb is None and request.decision is None:
            return "decision: give `approve` or `reject`"
        if verb is not None and request.decision not in (None, verb):
            return f"decision: the `{verb}` signal cannot carry decision {request.decision!r}"
        if request.gate not in self._known:
            known = ", ".join(self._known) or "none"
            return f"unknown gate {request.gate!r}; this plan's gates are: {known}"
        if request.id and request.id in self._seen_ids:
            return f"duplicate: decision {request.id} was already taken"
        if gate is None or gate.gate != request.gate:
            now = f"the open gate is {gate.gate!r}" if gate else "no gate is open now"
            return f"gate {request.gate!r} is not open; {now}"
        if (gate.gate, gate.opened_at.isoformat()) in self._decided:
            return f"gate {request.gate!r} was already decided"
        if "*" not in gate.approvers and request.approver not in gate.approvers:
            return f"{request.approver!r} may not decide gate {request.gate!r}; approvers: {', '.join(gate.approvers)}"
        if gate.needs_reason and not request.comment.strip():
            return f"gate {request.gate!r} needs a comment giving the reason for the decision"
        return ""

    def take(
        self,
        request: DecisionRequest,
        verb: DecisionVerb,
        gate: OpenGate,
        source: Literal["signal", "update"],
    ) -> Decision:
        """Take a decision `refusal` allowed: the gate and the request id are spent."""
        self._decided.add((gate.gate, gate.opened_at.isoformat()))
        if request.id:
            self._seen_ids.add(request.id)
        return Decision(
            gate=request.gate,
            outcome="approved" if verb == "approve" else "rejected",
            by=request.approver,
            comment=request.comment,
            at=workflow.now(),
            source=source,
        )


class Reporter(Protocol):
    """How a gate tells the launch about itself (implemented by `PhaseWorkflow`)."""

    async def report(self) -> None: ...

    async def report_delivered(self) -> None: ...

    def note_change(self) -> None: ...


class GateKeeper:
    def __init__(self, state: PhaseState, reporter: Reporter) -> None:
        self._state = state
        self._reporter = reporter
        self._relayed: Decision | None = None

    def receive(self, decision: Decision) -> None:
        gate = self._state.open_gate
        if gate is None or gate.gate != decision.gate or self._relayed is not None:
            workflow.logger.info(
                "ignoring a decision for %s: that gate is not waiting", decision.gate
            )
            return
        self._relayed = decision

    async def decide(
        self, gate_id: str, gate: ResolvedGate, question: str, *, needs_reason: bool = False
    ) -> Decision:
        """Open the gate, wait for a person or the timeout, and return what was decided."""
        now = workflow.now()
        self._relayed = None
        self._state.open_gate = OpenGate(
            gate=gate_id,
            phase=self._state.name,
            question=gate.description or question,
            approvers=list(gate.approvers),
            opened_at=now,
            deadline=now + gate.timeout,
            on_timeout=gate.on_timeout,
            needs_reason=needs_reason,
        )
        self._state.status = PhaseStatusValue.WAITING
        # Announced only once the launch knows of it, so a decision that follows the
        # announcement is never refused as "not open".
        await self._reporter.report_delivered()
        try:
            await workflow.wait_condition(
                lambda: self._relayed is not None,
                timeout=gate.timeout,
                timeout_summary=f"gate {gate_id} times out",
            )
            assert self._relayed is not None
            decision = self._relayed
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
        self._relayed = None
        self._state.status = PhaseStatusValue.RUNNING
        if decision.source == "timeout":
            await self._reporter.report()
        else:
            # The launch relayed this decision and has already closed the gate in its view;
            # the change rides along with the phase's next report instead of delaying the step.
            self._reporter.note_change()
        return decision
