"""Go/no-go gates inside a phase: open, wait for a relayed decision or the timeout, close.

People never signal a phase directly: the launch workflow validates `approve` / `reject`
(gate known, gate open, approver allowed) and relays the decision here.
"""

from __future__ import annotations

from typing import Protocol

from temporalio import workflow

from schemas.decision_messages import RelayedDecision
from schemas.gate_spec import ResolvedGate
from schemas.launch_messages import Decision, OpenGate, PhaseState, PhaseStatusValue


class Reporter(Protocol):
    """How a gate tells the launch about itself (implemented by `PhaseWorkflow`)."""

    async def report(self) -> None: ...

    async def report_delivered(self) -> None: ...

    def note_change(self) -> None: ...


class GateKeeper:
    def __init__(self, state: PhaseState, reporter: Reporter) -> None:
        self._state = state
        self._reporter = reporter
        self._relayed: RelayedDecision | None = None

    def receive(self, decision: RelayedDecision) -> None:
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
            decision = Decision(**self._relayed.model_dump())
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
