"""What a launch shows in the Temporal UI: search attributes and plain-words descriptions."""

from __future__ import annotations

import json

from temporalio import workflow
from temporalio.common import SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from schemas.launch_messages import LaunchStatus, OpenGate

SERVICE = SearchAttributeKey.for_keyword("PhasegateService")
PHASE = SearchAttributeKey.for_keyword("PhasegatePhase")
STATUS = SearchAttributeKey.for_keyword("PhasegateStatus")

# Registered by `phasegate dev` and the test fixtures so launches can be listed and filtered.
SEARCH_ATTRIBUTES = {key.name: "Keyword" for key in (SERVICE, PHASE, STATUS)}


def percent(weight: float | None) -> str:
    return "no exposure yet" if weight is None else f"{weight:g}% exposure"


def signal_input(gate: OpenGate) -> str:
    approver = gate.approvers[0] if gate.approvers and gate.approvers[0] != "*" else "<your name>"
    return json.dumps({"gate": gate.gate, "approver": approver, "comment": ""})


def describe_gate(gate: OpenGate, launch_id: str) -> str:
    """Tell a person exactly what the launch waits for and which signal moves it on."""
    payload = signal_input(gate)
    return (
        f"Waiting for a go/no-go decision on gate `{gate.gate}`: {gate.question}\n"
        f"Approvers: {', '.join(gate.approvers)}. If nobody decides by "
        f"{gate.deadline:%Y-%m-%d %H:%M:%S} UTC the gate will {gate.on_timeout}.\n"
        + ("The comment must give the reason for the decision.\n" if gate.needs_reason else "")
        + f"Go: send the signal `approve` with input `{payload}`\n"
        f"No-go: send the signal `reject` with the same input.\n"
        f"CLI: `phasegate approve {launch_id} {gate.gate} --as NAME"
        f"{' -m REASON' if gate.needs_reason else ''}`"
    )


class LaunchView:
    """Keeps a launch's search attributes and the UI's current details in step with its state."""

    def __init__(self) -> None:
        self._indexed: tuple[str, str, str] | None = None

    def show(self, snapshot: LaunchStatus) -> None:
        indexed = (snapshot.service, snapshot.phase or "starting", snapshot.status.value)
        if indexed != self._indexed:
            # Only on change: every upsert is an event and a visibility write.
            self._indexed = indexed
            workflow.upsert_search_attributes(
                [
                    SERVICE.value_set(indexed[0]),
                    PHASE.value_set(indexed[1]),
                    STATUS.value_set(indexed[2]),
                ]
            )
        headline = f"{snapshot.service} {snapshot.version}: {snapshot.status.value}"
        if snapshot.phase:
            headline += f" in {snapshot.phase} (step {snapshot.step}, {percent(snapshot.exposure)})"
        if snapshot.reason:
            headline += f"\nReason: {snapshot.reason}"
        if snapshot.waiting_for:
            headline += "\n" + snapshot.waiting_for
        workflow.set_current_details(headline)
