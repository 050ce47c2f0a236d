"""How a launch looks in a terminal: pure functions from LaunchStatus to rich renderables.

Every value that came from a person or a plan is wrapped in `Text`, so a comment such as
`[bold]` is shown as written instead of being read as rich markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from schemas.decision_messages import Decision, Hold
from schemas.launch_messages import (
    AuditEntry,
    CompensationRecord,
    LaunchStatus,
    LaunchStatusValue,
    MetricResult,
    PhaseState,
)
from schemas.migration_messages import WritesAtRiskReport
from schemas.probe_messages import Finding
from starters.launches import LaunchListing

STATUS_STYLES = {
    "running": "cyan",
    "waiting": "yellow",
    "paused": "bold yellow",
    "watching": "cyan",
    "rolling_back": "magenta",
    "needs_attention": "bold red",
    "completed": "bold green",
    "rolled_back": "bold red",
    "pending": "dim",
    "not needed": "dim",
    "failed": "red",
    "cancelled": "red",
    "done": "green",
    "skipped": "yellow",
    "successful": "green",
    "inconclusive": "yellow",
    "approved": "green",
    "rejected": "red",
    "passed": "green",
    "critical": "red",
    "warning": "yellow",
}
BAR_WIDTH = 40


def render_status(status: LaunchStatus, now: datetime | None = None) -> RenderableType:
    """The whole launch: headline panel, then phases, analysis, decisions, refusals, undos.
    `now` (default: the clock) is what the watch window's time left is counted from."""
    parts: list[RenderableType] = [render_headline(status, now), render_phases(status.phases)]
    if status.writes_at_risk is not None:
        parts.append(render_writes_at_risk(status.writes_at_risk))
    analysis = [result for phase in status.phases for result in phase.analysis]
    if analysis:
        parts.append(render_analysis(analysis))
    if status.background:
        parts.append(render_background(status.background))
    findings = [finding for phase in status.phases for finding in phase.findings]
    if findings:
        parts.append(render_findings(findings))
    if status.decisions:
        parts.append(render_decisions(status.decisions))
    refused = [entry for entry in status.audit if not entry.accepted]
    if refused:
        parts.append(render_refused(refused))
    if status.audit_dropped:
        parts.append(Text(f"{status.audit_dropped} older audit entries not kept", style="dim"))
    if status.compensations:
        parts.append(
            render_compensations(
                status.compensations, completed=status.status == LaunchStatusValue.COMPLETED
            )
        )
    return Group(*parts)


def render_line(status: LaunchStatus) -> str:
    """One line saying what the launch is doing now, for logs and the demo's running commentary."""
    parts = [status.status.value]
    if status.phase:
        parts.append(f"{status.phase} step {status.step}")
    if status.exposure is not None:
        parts.append(f"{status.exposure:g}% of users")
    if status.paused is not None:
        parts.append(f"paused by {status.paused.by}: {status.paused.reason}")
    elif status.waiting_for:
        parts.append(status.waiting_for)
    elif status.reason:
        parts.append(status.reason)
    elif 0 <= status.phase_index < len(status.phases):
        activity = status.phases[status.phase_index].activity
        if activity:
            parts.append(activity)
    return " · ".join(parts)


def render_headline(status: LaunchStatus, now: datetime | None = None) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("Status", styled(status.status.value))
    if status.reason:
        grid.add_row("Reason", Text(status.reason))
    if status.phase:
        grid.add_row("Phase", Text(f"{status.phase} (step {status.step})"))
    grid.add_row("Exposure", exposure_bar(status.exposure))
    if status.exposure_note:
        grid.add_row("", Text(status.exposure_note, style="yellow"))
    if status.open_gate is not None:
        gate = status.open_gate
        grid.add_row(
            "Open gate",
            Text.assemble(
                (gate.gate, "bold yellow"),
                f": {gate.question}\napprovers {', '.join(gate.approvers)}; ",
                f"{gate.on_timeout} at {_when(gate.deadline)} if undecided",
            ),
        )
    if status.paused is not None:
        grid.add_row("Paused", render_hold(status.paused))
    if status.watch_ends_at is not None and status.status == LaunchStatusValue.WATCHING:
        grid.add_row("Watching", Text(watch_left(status.watch_ends_at, now)))
    if status.waiting_for:
        grid.add_row("Waiting for", Text(status.waiting_for))
    if status.started_at is not None:
        finished = f", finished {_when(status.finished_at)}" if status.finished_at else ""
        grid.add_row("Started", Text(f"{_when(status.started_at)}{finished}"))
    title = Text.assemble((f"{status.service} {status.version}", "bold"), f"  {status.launch_id}")
    return Panel(grid, title=title, title_align="left", border_style=_style(status.status.value))


def exposure_bar(exposure: float | None) -> RenderableType:
    if exposure is None:
        return Text("no exposure yet", style="dim")
    row = Table.grid(padding=(0, 1))
    row.add_row(
        ProgressBar(total=100, completed=exposure, width=BAR_WIDTH),
        Text(f"{exposure:g}% of users"),
    )
    return row


def render_phases(phases: Sequence[PhaseState]) -> Table:
    table = _table(
        "Phases",
        columns=["#", "phase", "kind", "status", "step", "exposure", "now"],
        right=["#", "step", "exposure"],
    )
    for number, phase in enumerate(phases, start=1):
        table.add_row(
            str(number),
            Text(phase.name),
            Text(phase.kind.replace("_", " ")),
            styled(phase.status.value),
            f"{phase.step}/{phase.steps}",
            "-" if phase.exposure is None else f"{phase.exposure:g}%",
            Text(phase.reason or phase.activity),
        )
    return table


def render_analysis(results: Sequence[MetricResult]) -> Table:
    table = _table(
        "Analysis",
        columns=[
            "phase / step",
            "metric",
            "verdict",
            "last",
            "baseline",
            "ok/fail/inconcl./err",
            "last detail",
        ],
        right=["last", "baseline", "ok/fail/inconcl./err"],
    )
    for result in results:
        last = result.last
        table.add_row(
            Text(f"{result.phase} / {result.step}"),
            Text(result.metric),
            styled(result.verdict),
            _number(last.value if last else None),
            _number(last.baseline if last else None),
            f"{result.successes}/{result.failures}/{result.inconclusive}/{result.errors}",
            # A threshold's breach, or the statistical judge's evidence (n, means, p, effect).
            Text(last.detail if last else ""),
        )
    return table


def render_background(results: Sequence[MetricResult]) -> Table:
    """Background analysis and the post-launch watch: each metric's rounds and its last word."""
    table = _table(
        "Background analysis and watch",
        columns=["measured", "metric", "verdict", "last", "ok/fail/inconcl./err", "last detail"],
        right=["last", "ok/fail/inconcl./err"],
    )
    for result in results:
        last = result.last
        table.add_row(
            Text(result.phase),
            Text(result.metric),
            styled(result.verdict),
            _number(last.value if last else None),
            f"{result.successes}/{result.failures}/{result.inconclusive}/{result.errors}",
            Text(last.detail if last else ""),
        )
    return table


def render_hold(hold: Hold) -> Text:
    """Who holds the launch, since when and why, and what analysis saw when it paused."""
    text = Text.assemble(
        (hold.by, "bold yellow"),
        f" ({hold.source}) since {_when(hold.at)}",
        f": {hold.reason}" if hold.reason else "",
        "\nexposure holds and analysis goes on until `phasegate resume`",
    )
    if hold.evidence:
        text.append(f"\nevidence: {hold.evidence}")
    return text


def watch_left(ends_at: datetime, now: datetime | None = None) -> str:
    """`until 2026-12-02 06:00:00 (1h59m left)`: the watch window's end and the time to it."""
    moment = now or datetime.now(UTC)
    left = max(ends_at - moment, timedelta(0))
    return f"until {_when(ends_at)} ({_span(left)} left); a failure still rolls back"


def render_findings(findings: Sequence[Finding]) -> Table:
    """The security report: every finding, failures first, with its evidence and any waiver."""
    table = _table(
        "Security findings", columns=["finding", "target", "severity", "result", "evidence"]
    )
    for finding in sorted(findings, key=lambda f: (f.passed, f.severity != "critical")):
        if finding.passed:
            result = styled("passed")
        elif finding.waived_by:
            result = Text(f"waived by {finding.waived_by}: {finding.waiver_reason}", "yellow")
        else:
            result = Text("FAILED", "bold red")
        table.add_row(
            Text(finding.id),
            Text(finding.target),
            styled(finding.severity),
            result,
            Text(finding.evidence),
        )
    return table


def render_decisions(decisions: Sequence[Decision]) -> Table:
    table = _table("Decisions", columns=["gate", "outcome", "by", "when", "comment"])
    for decision in decisions:
        table.add_row(
            Text(decision.gate),
            styled(decision.outcome),
            Text(f"{decision.by} ({decision.source})"),
            _when(decision.at),
            Text(decision.comment),
        )
    return table


def render_refused(entries: Sequence[AuditEntry]) -> Table:
    table = _table("Refused signals and updates", columns=["when", "handler", "why"])
    for entry in entries:
        table.add_row(_when(entry.at), Text(entry.handler), Text(entry.note, style="red"))
    return table


def render_compensations(
    records: Sequence[CompensationRecord], *, completed: bool = False
) -> Table:
    title = (
        "Compensations (not needed: the launch completed)"
        if completed
        else "Compensations (undo; a rollback runs the newest first)"
    )
    table = _table(
        title, columns=["id", "description", "status", "attempts", "note"], right=["attempts"]
    )
    for record in records:
        table.add_row(
            Text(record.id),
            Text(record.description),
            styled("not needed" if completed and record.status == "pending" else record.status),
            str(record.attempts),
            Text(record.error or record.resolved_by),
        )
    return table


def render_writes_at_risk(report: WritesAtRiskReport) -> RenderableType:
    """What the database restore the rollback waits on would lose, table by table."""
    saved = f"saved in {report.saved}" if report.saved else "not saved anywhere"
    how = "down scripts" if report.method == "down_scripts" else "the backup"
    table = _table(
        "",
        columns=["table", "rows lost", "deletes undone", "table dropped"],
        right=["rows lost", "deletes undone"],
    )
    for name, loss in sorted(report.tables.items()):
        table.add_row(
            Text(name),
            str(loss.rows_lost),
            str(loss.deletes_undone),
            Text("yes", style="red") if loss.table_gone else "no",
        )
    summary = Text(
        f"Live writes at risk: {report.rows} row(s) a revert with {how} would lose ({saved})",
        style="bold red",
    )
    return Group(summary, table)


def render_listing(listings: Sequence[LaunchListing]) -> RenderableType:
    if not listings:
        return Text("no launches found", style="dim")
    table = _table(
        "Launches", columns=["launch id", "service", "status", "phase", "started", "closed"]
    )
    for listing in listings:
        table.add_row(
            Text(listing.launch_id),
            Text(listing.service),
            styled(listing.status or listing.execution),
            Text(listing.phase),
            _when(listing.started_at),
            _when(listing.closed_at),
        )
    return table


def styled(value: str) -> Text:
    return Text(value, style=_style(value))


def _style(value: str) -> str:
    return STATUS_STYLES.get(value, "")


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    parts = [
        f"{amount}{unit}"
        for unit, amount in (
            ("d", seconds // 86400),
            ("h", seconds % 86400 // 3600),
            ("m", seconds % 3600 // 60),
            ("s", seconds % 60),
        )
        if amount
    ]
    return "".join(parts[:2]) or "0s"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _table(
    title: str, *, columns: Sequence[str], right: Sequence[str] = (), expand: bool = False
) -> Table:
    """A titled table with these column headings; numbers in the `right` columns line up."""
    table = Table(title=title, title_justify="left", expand=expand)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    return table
