"""Replaying recorded histories against the current workflow code."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workers.main import WORKFLOWS

# Committed histories: a code change that breaks them would break launches already running.
HISTORIES = Path(__file__).resolve().parent.parent / "histories"


async def replay(histories: list[tuple[str, str]]) -> None:
    """Replay (workflow id, history JSON) pairs; fail with the first nondeterminism found."""
    replayer = Replayer(workflows=list(WORKFLOWS), data_converter=pydantic_data_converter)
    for workflow_id, text in histories:
        result = await replayer.replay_workflow(
            WorkflowHistory.from_json(workflow_id, text), raise_on_replay_failure=False
        )
        assert result.replay_failure is None, f"{workflow_id}: {result.replay_failure}"
