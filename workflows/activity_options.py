"""Per-call additions to an activity family's options, which are declared once next to it."""

from __future__ import annotations

from temporalio import workflow


def summarized(options: workflow.ActivityConfig, summary: str) -> workflow.ActivityConfig:
    """The family's timeouts and retries, with a summary the UI shows for this one call."""
    merged = options.copy()
    merged["summary"] = summary
    return merged
