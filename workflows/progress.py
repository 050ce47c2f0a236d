"""Phase reports: what a phase tells its launch after a change, and how the launch takes it.

A report carries the phase's small fields as they are now and, of its lists, only what is new
since the previous report: new decisions, findings and undos, the analysis results that moved
(with only their new measurements), new refusals. So a launch's history grows with what
happened, not with the phase's whole state at every measurement. The launch checks a report
(`report_refusal`) before it merges it (`merge_report`): an undo it knows may never change.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.launch_messages import (
        AuditEntry,
        MetricResult,
        MetricUpdate,
        PhaseReport,
        PhaseState,
    )
    from schemas.probe_messages import Finding
    from workflows.analysis import KEEP_MEASUREMENTS, taken
    from workflows.gates import KEEP_REFUSALS


class ReportedSoFar:
    """What a phase has told its launch so far, to tell it only what changed next time."""

    def __init__(self) -> None:
        self.reports = 0
        self.decisions = 0
        self.compensations = 0
        self.refusals = 0
        self.findings: list[Finding] = []
        # (measurements taken, verdict) of each analysis result as last reported.
        self.analysis: list[tuple[int, str]] = []

    def next_report(self, state: PhaseState, refused: int, launch_run: str) -> PhaseReport:
        """The report of what changed in `state` since the last one; `refused` is how many
        relayed votes the phase has refused in all (its state keeps only the newest)."""
        self.reports += 1
        findings_from = _first_difference(self.findings, state.findings)
        new_refusals = min(refused - self.refusals, len(state.refusals))
        report = PhaseReport(
            phase=state.name,
            seq=self.reports,
            launch_run=launch_run,
            status=state.status,
            step=state.step,
            steps=state.steps,
            exposure=state.exposure,
            activity=state.activity,
            reason=state.reason,
            open_gate=state.open_gate.model_copy(deep=True) if state.open_gate else None,
            decisions_from=self.decisions,
            decisions=[d.model_copy(deep=True) for d in state.decisions[self.decisions :]],
            analysis=self._analysis_updates(state.analysis),
            findings_from=findings_from,
            findings=[f.model_copy() for f in state.findings[findings_from:]],
            compensations_from=self.compensations,
            compensations=[
                c.model_copy(deep=True) for c in state.compensations[self.compensations :]
            ],
            refusals=[r.model_copy() for r in state.refusals[-new_refusals:]]
            if new_refusals > 0
            else [],
        )
        self.decisions = len(state.decisions)
        self.compensations = len(state.compensations)
        self.refusals = refused
        self.findings = [f.model_copy() for f in state.findings]
        return report

    def _analysis_updates(self, results: list[MetricResult]) -> list[MetricUpdate]:
        updates = []
        for index, result in enumerate(results):
            now = (taken(result), result.verdict)
            before = self.analysis[index] if index < len(self.analysis) else None
            if now == before:
                continue
            new = now[0] - (before[0] if before else 0)
            measurements = result.measurements[-new:] if new > 0 else []
            updates.append(
                MetricUpdate(
                    index=index,
                    result=result.model_copy(
                        update={"measurements": [m.model_copy() for m in measurements]}
                    ),
                )
            )
            if before is None:
                self.analysis.append(now)
            else:
                self.analysis[index] = now
        return updates


def _first_difference(before: list[Finding], now: list[Finding]) -> int:
    for index, (old, new) in enumerate(zip(before, now, strict=False)):
        if old != new:
            return index
    return min(len(before), len(now))


def report_refusal(known: PhaseState, report: PhaseReport) -> str:
    """Why `report` does not fit what the launch knows of its phase, or "": every list starts
    where the launch's knowledge ends (no report missed), and the undo log only grows."""
    if report.decisions_from > len(known.decisions):
        return f"decisions_from: {report.decisions_from} is past the {len(known.decisions)} decision(s) known"
    if report.findings_from > len(known.findings):
        return f"findings_from: {report.findings_from} is past the {len(known.findings)} finding(s) known"
    have = len(known.compensations)
    if report.compensations_from > have:
        return (
            f"compensations_from: {report.compensations_from} is past the {have} undo(s) known; "
            "a phase's undo log may only grow"
        )
    ids = {record.id for record in known.compensations}
    for offset, record in enumerate(report.compensations):
        position = report.compensations_from + offset
        where = f"compensations[{offset}]"
        if position < have:
            old = known.compensations[position]
            if (old.id, old.activity, old.input) != (record.id, record.activity, record.input):
                return f"{where}: undo {old.id} is known and may not change; a phase's undo log may only grow"
            continue
        if record.phase != known.name:
            return f"{where}.phase: an undo of phase {known.name} must name it"
        if record.id in ids:
            return f"{where}.id: undo {record.id[:64]} is already known"
        ids.add(record.id)
    count = len(known.analysis)
    for offset, update in enumerate(report.analysis):
        if update.index > count:
            return f"analysis[{offset}].index: {update.index} is past the {count} result(s) known"
        count += update.index == count
    return ""


def merge_report(known: PhaseState, report: PhaseReport) -> PhaseState:
    """`known` with what `report` says changed; `report_refusal` found nothing wrong with it."""
    analysis = list(known.analysis)
    for update in report.analysis:
        if update.index < len(analysis):
            earlier = analysis[update.index].measurements
            measurements = [*earlier, *update.result.measurements][-KEEP_MEASUREMENTS:]
            analysis[update.index] = update.result.model_copy(update={"measurements": measurements})
        else:
            analysis.append(update.result)
    fresh = report.compensations[max(0, len(known.compensations) - report.compensations_from) :]
    refusals: list[AuditEntry] = [*known.refusals, *report.refusals][-KEEP_REFUSALS:]
    return known.model_copy(
        update={
            "status": report.status,
            "step": report.step,
            "steps": report.steps,
            "exposure": report.exposure,
            "activity": report.activity,
            "reason": report.reason,
            "open_gate": report.open_gate,
            "decisions": [*known.decisions[: report.decisions_from], *report.decisions],
            "analysis": analysis,
            "findings": [*known.findings[: report.findings_from], *report.findings],
            "compensations": [*known.compensations, *fresh],
            "refusals": refusals,
        }
    )
