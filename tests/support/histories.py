"""Replaying recorded histories against the current workflow code."""

from __future__ import annotations

import json
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.support.sealing import test_interceptors
from workers.main import WORKFLOWS

# Committed histories: a code change that breaks them would break launches already running.
HISTORIES = Path(__file__).resolve().parent.parent / "histories"


async def replay(histories: list[tuple[str, str]]) -> None:
    """Replay (workflow id, history JSON) pairs; fail with the first nondeterminism found."""
    replayer = Replayer(
        workflows=list(WORKFLOWS),
        data_converter=pydantic_data_converter,
        interceptors=test_interceptors(),
    )
    for workflow_id, text in histories:
        result = await replayer.replay_workflow(
            WorkflowHistory.from_json(workflow_id, text), raise_on_replay_failure=False
        )
        assert result.replay_failure is None, f"{workflow_id}: {result.replay_failure}"


def save_history(path: Path, workflow_id: str, text: str) -> None:
    """Commit a history with the id of the workflow it belongs to: workflows check seals
    against their own id, so a history replays only under it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"workflowId": workflow_id, **json.loads(text)}, indent=2) + "\n")


def committed(paths: list[Path]) -> list[tuple[str, str]]:
    """(workflow id, history JSON) of committed histories, as `replay` takes them."""
    loaded = []
    for path in paths:
        history = json.loads(path.read_text())
        loaded.append((history.pop("workflowId", path.stem), json.dumps(history)))
    return loaded


async def failed_tasks(client: Client, workflow_id: str, run_id: str | None = None) -> int:
    """How many workflow task failures the workflow's history (its latest run, or `run_id`)
    holds: a task that fails is retried by the server, so any at all means a code path that
    could hang a launch."""
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    return sum(
        event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for event in history.events
    )
