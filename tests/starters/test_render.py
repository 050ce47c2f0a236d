"""What `phasegate status` shows of a launch: a rollback that could not restore everything, a
paused launch, the watch window, background analysis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rich.console import Console

from schemas.launch_messages import LaunchStatus, LaunchStatusValue
from starters.render import render_line, render_status, watch_left


def shown(status: LaunchStatus) -> str:
    console = Console(width=160, record=True, color_system=None)
    console.print(render_status(status))
    return console.export_text()


def rolled_back(**fields: object) -> LaunchStatus:
    return LaunchStatus.model_validate(
        {
            "launch_id": "checkout-2",
            "service": "checkout",
            "version": "2.0.0",
            "status": LaunchStatusValue.ROLLED_BACK,
            "reason": "analysis failed",
            "exposure": 20.0,
            **fields,
        }
    )


def test_status_says_when_the_exposure_shown_may_not_be_in_force() -> None:
    note = "the exposure undo was skipped: the router may still serve 20%"
    text = shown(rolled_back(exposure_note=note))
    assert "20% of users" in text
    assert note in text


def test_status_says_how_many_audit_entries_were_not_kept() -> None:
    assert "37 older audit entries not kept" in shown(rolled_back(audit_dropped=37))
    assert "older audit entries" not in shown(rolled_back())


def launch(status: LaunchStatusValue, **fields: object) -> LaunchStatus:
    return rolled_back(status=status, reason="", **fields)


def test_a_paused_launch_shows_who_paused_it_why_when_and_the_evidence() -> None:
    hold = {
        "by": "health:checkout-slo",
        "reason": "critical health check(s) failed: error-rate (0.5 outside max 0.05)",
        "at": datetime(2026, 12, 2, 4, 5, 6, tzinfo=UTC),
        "source": "health",
        "evidence": "error-rate 0.5 > 0.05 at 04:05:00",
    }
    paused = launch(LaunchStatusValue.PAUSED, paused=hold)

    text = shown(paused)

    assert "paused" in text
    assert (
        "health:checkout-slo (health) since 2026-12-02 04:05:06: critical health check(s)" in text
    )
    assert "exposure holds and analysis goes on until `phasegate resume`" in text
    assert "evidence: error-rate 0.5 > 0.05 at 04:05:00" in text
    assert render_line(paused).startswith("paused · ")
    assert "paused by health:checkout-slo: critical health check(s) failed" in render_line(paused)
    assert "Paused" not in shown(launch(LaunchStatusValue.RUNNING))


def test_a_watching_launch_shows_the_time_left_in_its_window() -> None:
    ends = datetime(2026, 12, 2, 6, 0, 0, tzinfo=UTC)
    watching = launch(LaunchStatusValue.WATCHING, watch_ends_at=ends)
    console = Console(width=160, record=True, color_system=None)

    console.print(render_status(watching, now=ends - timedelta(hours=1, minutes=59, seconds=30)))

    text = console.export_text()
    assert "watching" in text
    assert "until 2026-12-02 06:00:00 (1h59m left); a failure still rolls back" in text
    assert watch_left(ends, now=ends + timedelta(seconds=5)).endswith(
        "(0s left); a failure still rolls back"
    )
    assert watch_left(ends, now=ends - timedelta(days=2, minutes=3)).startswith(
        "until 2026-12-02 06:00:00 (2d3m left)"
    )


def test_background_and_watch_results_are_shown_with_their_last_evidence() -> None:
    at = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)
    background = [
        {
            "phase": "background",
            "step": 0,
            "metric": "error-rate",
            "verdict": "failed",
            "successes": 3,
            "failures": 1,
            "measurements": [
                {"at": at, "value": 0.0831, "outcome": "failure", "detail": "0.0831 > max 0.05"}
            ],
        },
        {
            "phase": "watch",
            "step": 0,
            "metric": "p90-latency",
            "verdict": "running",
            "inconclusive": 2,
            "measurements": [
                {"at": at, "outcome": "inconclusive", "detail": "n=12/9 < 30: too few samples"}
            ],
        },
    ]

    text = shown(rolled_back(background=background))

    assert "Background analysis and watch" in text
    rows = [line for line in text.splitlines() if "error-rate" in line or "p90-latency" in line]
    assert len(rows) == 2
    assert all(word in rows[0] for word in ("background", "failed", "0.0831", "3/1/0/0"))
    assert "0.0831 > max 0.05" in rows[0]
    assert all(word in rows[1] for word in ("watch", "running", "0/0/2/0"))
    assert "n=12/9 < 30: too few samples" in rows[1]
    assert "Background analysis" not in shown(rolled_back())
