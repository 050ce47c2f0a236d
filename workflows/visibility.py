"""What a launch shows in the Temporal UI: search attributes and plain-words descriptions."""

from __future__ import annotations

import json
from urllib.parse import urlencode

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


def describe_gate(
    gate: OpenGate, launch_id: str, run_id: str = "", evidence: str = "", service: str = ""
) -> str:
    """Tell a person exactly what the launch waits for and how to decide it; `service` is the
    approval service's URL, for a link to its page for this gate."""
    reason = " -m REASON" if gate.needs_reason else ""
    seen = f" --evidence {evidence}" if evidence and evidence != "ev-0" else ""
    quorum = (
        f" It needs {gate.min_approvals} different people"
        + (f"; approved so far by {', '.join(gate.approvals)}" if gate.approvals else "")
        + "."
        if gate.min_approvals > 1
        else ""
    )
    lines = [
        f"Waiting for a go/no-go decision on gate `{gate.gate}`: {gate.question}",
        f"Approvers: {', '.join(gate.approvers)}.{quorum} If nobody decides by "
        f"{gate.deadline:%Y-%m-%d %H:%M:%S} UTC the gate will {gate.on_timeout}.",
    ]
    if gate.needs_reason:
        lines.append("The comment must give the reason for the decision.")
    if gate.identity:
        query = {"launch": launch_id, "run": run_id, "gate": gate.gate, "decision": "approve"}
        if evidence and evidence != "ev-0":
            query["evidence"] = evidence
        lines += [
            f"Approvals are proven: sign in at {gate.identity}.",
            f"CLI: `phasegate approve {launch_id} {gate.gate}{seen}{reason}` (or `reject`).",
            "UI: `phasegate signal-input approve "
            f"{launch_id} {gate.gate}{seen}` prints the input, fresh proof included, to paste "
            "into Send a Signal `approve`; or open the approval page "
            f"{service.rstrip('/')}/decide?{urlencode(query)} and paste what it shows.",
        ]
    else:
        payload = json.dumps({"gate": gate.gate, "approver": "<your name>", "comment": ""})
        lines += [
            "Approvals are NOT authenticated (the plan says `identity: none`): "
            "names are taken as typed.",
            f"Go: send the signal `approve` with input `{payload}`",
            "No-go: send the signal `reject` with the same input.",
            f"CLI: `phasegate approve {launch_id} {gate.gate} --as NAME{reason}`",
        ]
    if evidence and evidence != "ev-0":
        lines.append(f"Evidence shown: {evidence} (`phasegate status {launch_id}`).")
    return "\n".join(lines)


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
        if snapshot.exposure_note:
            headline += f"\nExposure: {snapshot.exposure_note}"
        if snapshot.waiting_for:
            headline += "\n" + snapshot.waiting_for
        workflow.set_current_details(headline)
