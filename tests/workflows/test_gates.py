"""The launch's decision checks, each refusal on its own (no server: `refusal` reads no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.decision_messages import DecisionRequest, DecisionVerb
from schemas.launch_messages import OpenGate
from workflows.gates import DecisionChecks

OPENED = datetime(2026, 12, 1, tzinfo=UTC)
GATE = OpenGate(
    gate="soft-launch.before",
    phase="soft-launch",
    question="Start?",
    approvers=["alice", "bob"],
    opened_at=OPENED,
    deadline=OPENED + timedelta(hours=1),
    on_timeout="reject",
)
CHECKS = ["soft-launch.before", "soft-launch.step-1", "full-launch.after"]


def request(**fields: object) -> DecisionRequest:
    return DecisionRequest.model_validate(
        {"gate": "soft-launch.before", "approver": "alice", **fields}
    )


@pytest.mark.parametrize(
    ("sent", "verb", "gate", "refusal"),
    [
        (request(), "approve", GATE, ""),
        (request(decision="approve"), None, GATE, ""),
        (request(decision="approve"), "approve", GATE, ""),
        (request(), None, GATE, "decision: give `approve` or `reject`"),
        (
            request(decision="approve"),
            "reject",
            GATE,
            "decision: the `reject` signal cannot carry decision 'approve'",
        ),
        (
            request(gate="nope"),
            "approve",
            GATE,
            "unknown gate 'nope'; this plan's gates are: soft-launch.before, "
            "soft-launch.step-1, full-launch.after",
        ),
        (
            request(gate="full-launch.after"),
            "approve",
            GATE,
            "gate 'full-launch.after' is not open; the open gate is 'soft-launch.before'",
        ),
        (request(), "approve", None, "gate 'soft-launch.before' is not open; no gate is open now"),
        (
            request(approver="mallory"),
            "approve",
            GATE,
            "'mallory' may not decide gate 'soft-launch.before'; approvers: alice, bob",
        ),
        (
            request(comment="  "),
            "approve",
            GATE.model_copy(update={"needs_reason": True}),
            "gate 'soft-launch.before' needs a comment giving the reason for the decision",
        ),
        (request(approver="anyone"), "reject", GATE.model_copy(update={"approvers": ["*"]}), ""),
    ],
)
def test_each_refusal_names_its_reason(
    sent: DecisionRequest, verb: DecisionVerb | None, gate: OpenGate | None, refusal: str
) -> None:
    assert DecisionChecks(CHECKS).refusal(sent, verb, gate) == refusal


def test_a_decision_request_refuses_unknown_fields_and_other_verbs() -> None:
    with pytest.raises(ValueError, match="extra"):
        request(extra=1)
    with pytest.raises(ValueError, match="decision"):
        request(decision="maybe")
