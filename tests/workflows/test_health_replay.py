"""Replay: health runs and the alert ledger replay cleanly against the current code.

Committed histories in tests/histories/health/ catch a change that would break runs and
ledgers already in flight; re-record them on purpose with
`PHASEGATE_RECORD_HISTORIES=1 pytest tests/workflows/test_health_replay.py`.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from schemas.launch_messages import LaunchInput
from tests.support.fakes import gate_open
from tests.support.health_fakes import HealthWorld, health_worker, run_once
from tests.support.health_profiles import make_profile
from tests.support.plans import make_plan
from workers.main import WORKFLOWS
from workflows.launch import LaunchWorkflow

HISTORIES = Path(__file__).resolve().parent.parent / "histories" / "health"


async def record(env: WorkflowEnvironment) -> list[tuple[str, str]]:
    """Fail, alert (one receiver down), abort a launch, heal; then the ledger continues as new."""
    client = env.client
    world = HealthWorld(values={"error-rate": 0.5}, down={"chat"})
    ids: list[tuple[str, str, str]] = []
    async with health_worker(client, world) as queue:
        launch_id = f"launch-{uuid.uuid4()}"
        launch = await client.start_workflow(
            LaunchWorkflow.run,
            LaunchInput(launch_id=launch_id, plan=make_plan()),
            id=launch_id,
            task_queue=queue,
        )
        await gate_open(env, launch, "soft-launch.before")
        profile = make_profile(name=f"r-{uuid.uuid4().hex[:8]}", launch={"id": launch_id})
        failing = await run_once(env, queue, profile, world, runs_per_history=2)
        world.down.clear()
        world.values["error-rate"] = 0.0
        healed = await run_once(env, queue, profile, world, runs_per_history=2)
        await launch.result()
        ids.append(("failing", failing.run_id.split("/")[0], failing.run_id.split("/")[1]))
        ids.append(("healed", healed.run_id.split("/")[0], healed.run_id.split("/")[1]))
        ledger = await client.get_workflow_handle(profile.ledger_id).describe()
        first_ledger = ledger.raw_description.workflow_execution_info.first_run_id
        ids.append(("ledger", profile.ledger_id, first_ledger))
    histories = []
    for name, workflow_id, run_id in ids:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        histories.append((name, history.to_json()))
    return histories


async def replay(histories: list[tuple[str, str]]) -> None:
    replayer = Replayer(workflows=list(WORKFLOWS), data_converter=pydantic_data_converter)
    for name, text in histories:
        result = await replayer.replay_workflow(
            WorkflowHistory.from_json(name, text), raise_on_replay_failure=False
        )
        assert result.replay_failure is None, f"{name}: {result.replay_failure}"


async def test_fresh_health_histories_replay(time_skipping_env: WorkflowEnvironment) -> None:
    histories = await record(time_skipping_env)
    assert [name for name, _ in histories] == ["failing", "healed", "ledger"]
    assert "WORKFLOW_EXECUTION_CONTINUED_AS_NEW" in histories[2][1]  # two runs: continued as new
    await replay(histories)
    if os.environ.get("PHASEGATE_RECORD_HISTORIES"):
        HISTORIES.mkdir(parents=True, exist_ok=True)
        for name, text in histories:
            (HISTORIES / f"{name}.json").write_text(text)


async def test_committed_health_histories_replay() -> None:
    files = sorted(HISTORIES.glob("*.json"))
    assert len(files) == 3, (
        "record: PHASEGATE_RECORD_HISTORIES=1 pytest tests/workflows/test_health_replay.py"
    )
    await replay([(path.stem, path.read_text()) for path in files])
