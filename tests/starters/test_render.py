"""What `phasegate status` shows of a launch after a rollback that could not restore everything."""

from __future__ import annotations

from rich.console import Console

from schemas.launch_messages import LaunchStatus, LaunchStatusValue
from starters.render import render_status


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
