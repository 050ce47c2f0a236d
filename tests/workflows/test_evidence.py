"""Approving what you saw: a decision names the evidence shown; worse news since refuses it."""

from __future__ import annotations

import pytest

from schemas.launch_messages import MetricResult, PhaseState
from workflows.evidence import EvidenceLog
from workflows.gates import Refused


def phases(**counts: object) -> list[PhaseState]:
    result = MetricResult.model_validate(
        {"phase": "soft-launch", "step": 2, "metric": "error-rate", **counts}
    )
    return [PhaseState(name="soft-launch", kind="soft_launch", analysis=[result])]


def test_evidence_ids_follow_the_measurements_taken() -> None:
    log = EvidenceLog()
    assert log.current == "ev-0"
    log.observe(phases(successes=3))
    assert log.current == "ev-3"
    log.check("ev-3")
    log.check("")  # a decision that names no evidence is not held to any


def test_more_good_news_since_is_no_reason_to_refuse() -> None:
    log = EvidenceLog()
    log.observe(phases(successes=3))
    log.observe(phases(successes=5))
    log.check("ev-3")


def test_a_failure_since_the_evidence_shown_refuses_the_decision() -> None:
    log = EvidenceLog()
    log.observe(phases(successes=3))
    log.observe(phases(successes=3, failures=1, verdict="failed"))
    with pytest.raises(
        Refused,
        match=r"evidence: measurements failed or were inconclusive since ev-3; now ev-4: error-rate at soft-launch step 2: failed \(1 failed, 0 inconclusive\)",
    ):
        log.check("ev-3")
    log.check("ev-4")


def test_an_inconclusive_measurement_since_refuses_it_too() -> None:
    log = EvidenceLog()
    log.observe(phases(successes=2))
    log.observe(phases(successes=2, inconclusive=1))
    with pytest.raises(Refused, match="inconclusive since ev-2"):
        log.check("ev-2")


def test_evidence_the_launch_never_showed_is_refused() -> None:
    with pytest.raises(Refused, match="'ev-99' is not evidence this launch showed; now ev-0"):
        EvidenceLog().check("ev-99")
