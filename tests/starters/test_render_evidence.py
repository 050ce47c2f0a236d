"""`phasegate status` shows the statistical judge's evidence beside each step metric's verdict."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from activities.judge import compare_samples
from schemas.analysis_spec import Comparison
from schemas.launch_messages import LaunchStatus, LaunchStatusValue
from starters.render import render_status


def test_a_step_metric_shows_its_samples_means_p_value_and_effect() -> None:
    comparison = compare_samples(
        Comparison(min_samples=4), [2.0, 2.1, 2.2, 2.3], [1.0, 1.1, 1.2, 1.3]
    )
    measurement = {
        "at": datetime(2026, 12, 2, 4, 0, tzinfo=UTC),
        "value": comparison.canary_median,
        "baseline": comparison.stable_median,
        "outcome": "failure",
        "detail": comparison.detail,
    }
    status = LaunchStatus.model_validate(
        {
            "launch_id": "checkout-2",
            "service": "checkout",
            "version": "2.0.0",
            "status": LaunchStatusValue.ROLLED_BACK,
            "exposure": 0.0,
            "phases": [
                {
                    "name": "soft-launch",
                    "kind": "soft_launch",
                    "analysis": [
                        {
                            "phase": "soft-launch",
                            "step": 1,
                            "metric": "error-rate",
                            "verdict": "failed",
                            "failures": 1,
                            "measurements": [measurement],
                        }
                    ],
                }
            ],
        }
    )
    console = Console(width=400, record=True, color_system=None)
    console.print(render_status(status))
    text = console.export_text()
    assert comparison.detail in text
    assert "canary mean 2.15 vs stable 1.15 (×1.87)" in text
    assert "p=0.014 (n=4 canary, 4 stable)" in text
