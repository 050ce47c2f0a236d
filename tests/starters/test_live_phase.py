"""`phasegate status` reads the running phase itself: between two reports the launch's own copy
of a phase may be a step behind, the status people read is not. On the dev server with a real
worker, the phase held in the middle of a flag write by the flag file's own lock."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from schemas.launch_messages import PhaseState
from starters import launches
from tests.support.launches import start_launch, status, wait_for
from tests.support.plans import make_plan

pytestmark = pytest.mark.integration


async def test_status_shows_the_step_the_phase_is_in_before_the_launch_hears_of_it(
    dev_env: WorkflowEnvironment, worker: str, tmp_path: Path
) -> None:
    client = dev_env.client
    flag_file = tmp_path / "flags.json"
    plan = make_plan(
        flag_file=flag_file,
        phases=[
            {
                "name": "full-launch",
                "kind": "full_launch",
                "steps": [{"weight": 10, "pause": "4s"}, {"weight": 100}],
            }
        ],
    )
    launch = await start_launch(client, plan, worker)
    await wait_for(dev_env, launch, lambda s: s.step == 1 and s.phase == "full-launch")
    phase = client.get_workflow_handle(f"{launch.id}.full-launch")
    lock = os.open(tmp_path / ".flags.json.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    # The next flag write waits for this lock: the phase stays in step 2, unreported.
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        for _ in range(400):
            live = await phase.query("status", result_type=PhaseState)
            if live.step == 2:
                break
            await asyncio.sleep(0.05)
        own = await status(launch)
        read = await launches.get_status(client, launch.id)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    result = await launch.result()

    assert (live.step, live.activity) == (2, "setting exposure to 100%")
    assert own.step == 1
    assert own.phases[0].activity.startswith("baking at 10%")
    assert read.step == 2
    assert read.phases[0].activity == "setting exposure to 100%"
    assert read.exposure == 10.0
    assert result.status == "completed"
    assert (result.final.step, result.final.exposure) == (2, 100.0)
