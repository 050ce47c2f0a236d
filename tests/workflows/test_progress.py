"""Phase reports carry only what changed, and the launch's merge rebuilds the phase's state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.decision_messages import Decision
from schemas.launch_messages import (
    AuditEntry,
    CompensationRecord,
    Measurement,
    MetricResult,
    PhaseReport,
    PhaseState,
    PhaseStatusValue,
)
from schemas.probe_messages import Finding
from workflows.analysis import KEEP_MEASUREMENTS, record
from workflows.progress import ReportedSoFar, merge_report, report_refusal

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def undo(phase: str, number: int, weight: float = 0.0) -> CompensationRecord:
    return CompensationRecord(
        id=f"{phase}.{number}",
        phase=phase,
        activity="restore_exposure",
        input={"weight": weight},
        description=f"undo {number}",
    )


def measure(result: MetricResult, number: int) -> None:
    at = T0 + timedelta(seconds=number)
    if number % 7 == 0:
        record(result, Measurement(at=at, value=number, outcome="failure", detail="too high"))
    else:
        record(result, Measurement(at=at, value=number, outcome="success"))


class Phase:
    """A phase's state as its workflow changes it, and the launch's view of it from reports."""

    def __init__(self) -> None:
        self.state = PhaseState(name="soft-launch", kind="soft_launch", steps=3)
        self.sent = ReportedSoFar()
        self.refused = 0
        self.launch = self.state.model_copy(deep=True)

    def report(self) -> PhaseReport:
        report = self.sent.next_report(self.state, self.refused, "run-1")
        # What arrives is what was serialized, as the launch's signal handler gets it.
        arrived = PhaseReport.model_validate_json(report.model_dump_json())
        assert report_refusal(self.launch, arrived) == ""
        self.launch = merge_report(self.launch, arrived)
        return arrived


def test_merging_every_report_rebuilds_the_phase_state() -> None:
    phase = Phase()
    state = phase.state
    state.status = PhaseStatusValue.RUNNING
    state.compensations.append(undo("soft-launch", 1))
    phase.report()
    for step in range(1, 4):
        state.step, state.exposure = step, step * 10.0
        results = [
            MetricResult(phase="soft-launch", step=step, metric=name)
            for name in ("errors", "latency")
        ]
        state.analysis.extend(results)
        for number in range(2 * KEEP_MEASUREMENTS + 10):
            measure(results[number % 2], number)
            phase.report()
            assert phase.launch == state
        results[0].verdict = results[1].verdict = "successful"
        state.decisions.append(
            Decision(gate=f"g{step}", outcome="approved", by="alice", at=T0, source="signal")
        )
        state.findings.append(
            Finding(
                id=f"f{step}",
                check="tls",
                target="t",
                severity="warning",
                passed=False,
                evidence="old",
            )
        )
        phase.report()
        assert phase.launch == state
    # A finding changed in place (a waiver) is sent again from where it changed.
    state.findings[1].waived_by = "bob"
    report = phase.report()
    assert (report.findings_from, [f.id for f in report.findings]) == (1, ["f2", "f3"])
    for number in range(60):
        phase.refused += 1
        state.refusals = [
            *state.refusals,
            AuditEntry(at=T0, handler="relay", accepted=False, note=str(number)),
        ][-50:]
        if number % 25 == 0:
            phase.report()
    phase.report()
    assert phase.launch == state
    assert len(phase.launch.analysis[0].measurements) == KEEP_MEASUREMENTS


def test_a_report_carries_only_what_changed() -> None:
    phase = Phase()
    state = phase.state
    state.compensations.append(undo("soft-launch", 1))
    result = MetricResult(phase="soft-launch", step=1, metric="errors")
    state.analysis.append(result)
    for number in range(500):
        measure(result, number)
        phase.report()
    state.activity = "analysing"
    measure(result, 500)
    report = phase.report()
    assert report.compensations == []
    assert report.compensations_from == 1
    assert [(u.index, len(u.result.measurements)) for u in report.analysis] == [(0, 1)]
    assert report.analysis[0].result.successes == result.successes
    # A few hundred bytes whatever the phase measured before.
    assert len(report.model_dump_json()) < 1000
    quiet = phase.report()
    assert (quiet.analysis, quiet.decisions, quiet.findings, quiet.refusals) == ([], [], [], [])


def test_the_launch_keeps_a_decision_it_closed_until_the_phase_confirms_it() -> None:
    phase = Phase()
    phase.report()
    # The launch closes the gate in its own view at once; the phase's next report replaces it.
    provisional = Decision(gate="g", outcome="approved", by="alice", at=T0, source="update")
    phase.launch.decisions.append(provisional)
    phase.state.decisions.append(provisional.model_copy(update={"comment": "from the phase"}))
    phase.report()
    assert [d.comment for d in phase.launch.decisions] == ["from the phase"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            {"compensations_from": 0, "compensations": [undo("soft-launch", 1, weight=50)]},
            "compensations[0]: undo soft-launch.1 is known and may not change",
        ),
        (
            {"compensations_from": 2, "compensations": [undo("soft-launch", 3)]},
            "compensations_from: 2 is past the 1 undo(s) known",
        ),
        (
            {"compensations_from": 1, "compensations": [undo("full-launch", 2)]},
            "compensations[0].phase: an undo of phase soft-launch must name it",
        ),
        (
            {"compensations_from": 1, "compensations": [undo("soft-launch", 1)]},
            "compensations[0].id: undo soft-launch.1 is already known",
        ),
        ({"decisions_from": 3}, "decisions_from: 3 is past the 0 decision(s) known"),
        ({"findings_from": 1}, "findings_from: 1 is past the 0 finding(s) known"),
    ],
)
def test_a_report_that_does_not_fit_is_refused(change: dict[str, object], problem: str) -> None:
    known = PhaseState(name="soft-launch", kind="soft_launch")
    known.compensations.append(undo("soft-launch", 1))
    report = PhaseReport(
        phase="soft-launch", seq=2, launch_run="run-1", status=PhaseStatusValue.RUNNING
    )
    refusal = report_refusal(known, report.model_copy(update=change))
    assert refusal.startswith(problem), refusal


def test_an_analysis_result_past_the_known_ones_is_refused() -> None:
    phase = Phase()
    phase.state.analysis.append(MetricResult(phase="soft-launch", step=1, metric="errors"))
    report = phase.sent.next_report(phase.state, 0, "run-1")
    report.analysis[0].index = 1
    assert report_refusal(phase.launch, report) == (
        "analysis[0].index: 1 is past the 0 result(s) known"
    )
