"""`get_status` shows what the background analysis has measured so far (it runs in a workflow
of its own), on the dev server with mocked activities."""

from __future__ import annotations

import asyncio

from temporalio.testing import WorkflowEnvironment

from starters import launches
from tests.support.fakes import FakeWorld, running_launch
from tests.support.launches import status, wait_for
from tests.support.plans import exposure_only
from workflows.launch import LaunchWorkflow


async def test_status_shows_background_measurements_while_they_run(
    dev_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()
    plan = exposure_only(
        [{"weight": 20, "approval": True}, {"weight": 100}],
        background_analysis={"metrics": ["error-rate"], "interval": "1s"},
    )
    async with running_launch(dev_env.client, plan, world) as handle:
        await wait_for(dev_env, handle, lambda s: s.open_gate is not None)
        # The launch's own copy fills in when an analysis run ends; this one goes on.
        assert (await status(handle)).background == []
        async with asyncio.timeout(30):
            while True:
                live = await launches.get_status(dev_env.client, handle.id)
                if live.background and live.background[0].successes >= 2:
                    break
                await asyncio.sleep(0.2)
        assert live.background[0].phase == "background"
        assert live.background[0].metric == "error-rate"
        await handle.signal(
            LaunchWorkflow.approve, {"gate": "full-launch.step-1", "approver": "alice"}
        )
        result = await handle.result()
    assert result.status == "completed"
    final = await launches.get_status(dev_env.client, handle.id)
    assert final.background[0].verdict == "successful"
    assert final.background[0].successes >= 2
