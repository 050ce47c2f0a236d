"""The launch's decision checks, each refusal on its own (no server: the checks take the time).

With `identity: none` the name is taken as typed; with an identity provider only a proof from a
trusted approval service counts, bound to this launch run, gate and decision and unexpired.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from approvals.proofs import ApprovalAuthority, ProofClaims, public_key, sign_proof
from schemas.decision_messages import DecisionRequest, DecisionVerb
from schemas.gate_spec import IdentitySpec
from schemas.launch_messages import OpenGate
from tests.support.proofs import ProofMaker
from workflows.gates import DecisionChecks, Refused, Trust

OPENED = datetime(2026, 12, 1, tzinfo=UTC)
NOW = OPENED + timedelta(minutes=1)
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
ISSUER = "http://idp.test"
MAKER = ProofMaker(launch="launch-1", run="run-1", idp=ISSUER, clock=NOW.timestamp)


def unauthenticated() -> DecisionChecks:
    return DecisionChecks(CHECKS, Trust(None, None, "launch-1", "run-1", ""))


def authenticated(started_by: str = "") -> DecisionChecks:
    trust = Trust(IdentitySpec(issuer=ISSUER), MAKER.authority, "launch-1", "run-1", started_by)
    return DecisionChecks(CHECKS, trust)


def request(**fields: object) -> DecisionRequest:
    return DecisionRequest.model_validate(
        {"gate": "soft-launch.before", "approver": "alice", **fields}
    )


def refusal(
    checks: DecisionChecks, sent: DecisionRequest, verb: DecisionVerb | None, gate: OpenGate | None
) -> str:
    try:
        checks.check(sent, verb, gate, NOW)
    except Refused as err:
        return str(err)
    return ""


@pytest.mark.parametrize(
    ("sent", "verb", "gate", "expected"),
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
            "gate: unknown gate 'nope'; this plan's gates are: soft-launch.before, "
            "soft-launch.step-1, full-launch.after",
        ),
        (
            request(gate="full-launch.after"),
            "approve",
            GATE,
            "gate: 'full-launch.after' is not open; the open gate is 'soft-launch.before'",
        ),
        (
            request(),
            "approve",
            None,
            "gate: 'soft-launch.before' is not open; no gate is open now",
        ),
        (
            request(approver="mallory"),
            "approve",
            GATE,
            "'mallory' may not decide gate 'soft-launch.before'; approvers: alice, bob",
        ),
        (
            request(approver=" "),
            "approve",
            GATE,
            "approver: name yourself; this plan's approvals are not authenticated",
        ),
        (
            request(comment="  "),
            "approve",
            GATE.model_copy(update={"needs_reason": True}),
            "comment: gate 'soft-launch.before' needs the reason for the decision",
        ),
        (request(approver="anyone"), "reject", GATE.model_copy(update={"approvers": ["*"]}), ""),
    ],
)
def test_each_refusal_names_its_reason(
    sent: DecisionRequest, verb: DecisionVerb | None, gate: OpenGate | None, expected: str
) -> None:
    assert refusal(unauthenticated(), sent, verb, gate) == expected


def test_a_decision_request_refuses_unknown_fields_and_other_verbs() -> None:
    with pytest.raises(ValueError, match="extra"):
        request(extra=1)
    with pytest.raises(ValueError, match="decision"):
        request(decision="maybe")


def proven(proof: str, **fields: object) -> DecisionRequest:
    return DecisionRequest.model_validate({"gate": "soft-launch.before", "proof": proof, **fields})


def test_a_proof_names_the_person_and_their_groups() -> None:
    checks = authenticated()
    gate = GATE.model_copy(update={"approvers": ["group:release-managers"]})
    vote = checks.check(
        proven(MAKER.proof("carol", "approve", "soft-launch.before")), "approve", gate, NOW
    )
    assert vote.person.name == "carol"
    assert vote.person.groups == ("release-managers",)


@pytest.mark.parametrize(
    ("proof", "fields", "expected"),
    [
        ("", {}, "proof: missing or too long"),
        ("not.a.proof", {}, "proof: its header is not base64url JSON"),
        (
            MAKER.proof(
                "alice",
                "approve",
                "soft-launch.before",
                lifetime=timedelta(seconds=30),
                age=timedelta(minutes=1),
            ),
            {},
            "proof: expired",
        ),
        (
            MAKER.proof("alice", "approve", "soft-launch.before", audience="someone-else"),
            {},
            "proof: made for audience 'someone-else'",
        ),
        (
            MAKER.proof("alice", "approve", "soft-launch.before", launch="launch-2"),
            {},
            "proof: made for launch 'launch-2', not 'launch-1'",
        ),
        (
            MAKER.proof("alice", "approve", "soft-launch.before", run="run-0"),
            {},
            "proof: made for run 'run-0', not 'run-1'",
        ),
        (
            MAKER.proof("alice", "approve", "soft-launch.step-1"),
            {},
            "proof: made for target 'soft-launch.step-1', not 'soft-launch.before'",
        ),
        (
            MAKER.proof("alice", "reject", "soft-launch.before"),
            {},
            "proof: made for act 'reject', not 'approve'",
        ),
        (
            ProofMaker(launch="launch-1", run="run-1", idp=ISSUER, clock=NOW.timestamp).proof(
                "alice", "approve", "soft-launch.before"
            ),
            {},
            "which the workers do not trust",
        ),
        (
            MAKER.proof("alice", "approve", "soft-launch.before", idp="http://other-idp.test"),
            {},
            "proof: the person signed in at 'http://other-idp.test'",
        ),
        (
            MAKER.proof("alice", "approve", "soft-launch.before"),
            {"approver": "bob"},
            "approver: the proof names 'alice'; a name in the payload never counts",
        ),
        (
            MAKER.proof("mallory", "approve", "soft-launch.before"),
            {},
            "'mallory' may not decide gate 'soft-launch.before'",
        ),
        (
            MAKER.proof("alice", "approve", "soft-launch.before", evidence="ev-3"),
            {"evidence": "ev-4"},
            "evidence: the proof was made for evidence 'ev-3', the request names 'ev-4'",
        ),
        (
            MAKER.forged("alice", "approve", "soft-launch.before"),
            {},
            "the signature does not verify",
        ),
    ],
)
def test_a_proof_counts_only_for_what_it_was_made_for(
    proof: str, fields: dict[str, object], expected: str
) -> None:
    assert expected in refusal(authenticated(), proven(proof, **fields), "approve", GATE)


def test_a_self_declared_name_without_a_proof_is_refused() -> None:
    problem = refusal(authenticated(), request(approver="alice"), "approve", GATE)
    assert problem.startswith("proof: missing")


def test_the_starter_may_not_approve_their_own_launch_unless_the_plan_allows_it() -> None:
    proof = MAKER.proof("alice", "approve", "soft-launch.before")
    assert "started this launch and may not approve" in refusal(
        authenticated(started_by="alice"), proven(proof), "approve", GATE
    )
    allowed = GATE.model_copy(update={"allow_self_approval": True})
    assert refusal(authenticated(started_by="alice"), proven(proof), "approve", allowed) == ""
    # Rejecting one's own launch is always allowed.
    reject = MAKER.proof("alice", "reject", "soft-launch.before")
    assert refusal(authenticated(started_by="alice"), proven(reject), "reject", GATE) == ""


def test_a_quorum_counts_distinct_people_and_each_proof_once() -> None:
    checks = authenticated()
    gate = GATE.model_copy(update={"min_approvals": 2, "approvals": []})
    first = proven(MAKER.proof("alice", "approve", "soft-launch.before"))
    vote = checks.check(first, "approve", gate, NOW)
    relayed = checks.take(first, vote, gate, "signal", NOW)
    assert checks.closes(gate, relayed) is None
    assert gate.approvals == ["alice"]
    # The same proof again, and alice again with a fresh proof, do not count.
    assert refusal(checks, first, "approve", gate) == "proof: already used; ask for a fresh one"
    again = proven(MAKER.proof("alice", "approve", "soft-launch.before"))
    assert "already approved" in refusal(checks, again, "approve", gate)
    second = proven(MAKER.proof("bob", "approve", "soft-launch.before"))
    vote = checks.check(second, "approve", gate, NOW)
    decision = checks.closes(gate, checks.take(second, vote, gate, "signal", NOW))
    assert decision is not None
    assert (decision.outcome, decision.people, decision.authenticated) == (
        "approved",
        ["alice", "bob"],
        True,
    )
    assert "was already decided" in refusal(
        checks, proven(MAKER.proof("bob", "reject", "soft-launch.before")), "reject", gate
    )


def test_one_rejection_closes_a_gate_that_needs_a_quorum() -> None:
    checks = authenticated()
    gate = GATE.model_copy(update={"min_approvals": 2, "approvals": []})
    no = proven(MAKER.proof("bob", "reject", "soft-launch.before"))
    decision = checks.closes(
        gate, checks.take(no, checks.check(no, "reject", gate, NOW), gate, "signal", NOW)
    )
    assert decision is not None
    assert (decision.outcome, decision.by) == ("rejected", "bob")


def test_a_proof_signed_by_the_trusted_key_of_another_service_is_refused() -> None:
    other = ApprovalAuthority(issuer="http://elsewhere.test", keys=MAKER.authority.keys)
    trust = Trust(IdentitySpec(issuer=ISSUER), other, "launch-1", "run-1", "")
    proof = MAKER.proof("alice", "approve", "soft-launch.before")
    assert "issued by 'http://approvals.test', not the trusted" in refusal(
        DecisionChecks(CHECKS, trust), proven(proof), "approve", GATE
    )


def test_claims_outside_bounds_are_refused() -> None:
    key = MAKER.key
    claims = ProofClaims(
        iss=MAKER.authority.issuer,
        aud="phasegate",
        idp=ISSUER,
        claims={"email": "alice"},
        launch="launch-1",
        run="run-1",
        act="approve",
        target="soft-launch.before",
        iat=int(NOW.timestamp()) - 10,
        exp=int(NOW.timestamp()) + 3600,
        jti="0123456789",
    )
    token = sign_proof(claims, key, public_key(key, MAKER.kid).kid)
    assert "lifetime is not one the workers accept" in refusal(
        authenticated(), proven(token), "approve", GATE
    )


def test_a_name_claim_longer_than_a_name_is_refused() -> None:
    claims = ProofClaims(
        iss=MAKER.authority.issuer,
        aud="phasegate",
        idp=ISSUER,
        claims={"email": "a" * 257},
        launch="launch-1",
        run="run-1",
        act="approve",
        target="soft-launch.before",
        iat=int(NOW.timestamp()) - 10,
        exp=int(NOW.timestamp()) + 300,
        jti="0123456789",
    )
    token = sign_proof(claims, MAKER.key, MAKER.kid)
    assert "'email' claim is longer than 256 characters" in refusal(
        authenticated(), proven(token), "approve", GATE
    )
