"""A phase the server ends (an operator terminates it, or its history outgrows the server's
limits) is rolled back with the real reason: real dev server, real worker, a flagd file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.flags import FlagdFileRouter
from schemas.targets import FlagdRouter
from tests.support.histories import failed_tasks
from tests.support.launches import gate_open, start_launch
from tests.support.plans import make_plan
from tests.support.servers import canary_share

pytestmark = pytest.mark.integration

FLAG_KEY = "checkout-v2"


async def test_a_terminated_phase_is_rolled_back_with_its_reason(
    dev_env: WorkflowEnvironment, worker: str, tmp_path: Path
) -> None:
    flag_file = tmp_path / "flags.json"
    FlagdFileRouter().set_weight(
        FlagdRouter(kind="flagd", flag_file=str(flag_file), flag_key=FLAG_KEY), 0.0, "before"
    )
    before = json.loads(flag_file.read_text())
    plan = make_plan(
        targets={
            "prometheus": {"url": "http://127.0.0.1:9090"},
            "router": {"kind": "flagd", "flag_file": str(flag_file), "flag_key": FLAG_KEY},
        },
        phases=[
            {
                "name": "soft-launch",
                "kind": "soft_launch",
                "steps": [{"weight": 5}, {"weight": 20, "approval": True}],
            },
            {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
        ],
    )
    handle = await start_launch(dev_env.client, plan, worker)
    waiting = await gate_open(dev_env, handle, "soft-launch.step-2", timeout=60)
    assert waiting.exposure == 20
    assert canary_share(flag_file, FLAG_KEY) == 20.0

    phase = dev_env.client.get_workflow_handle(f"{handle.id}.soft-launch")
    await phase.terminate(reason="runaway phase stopped by the on-call")
    result = await handle.result()

    assert result.status == "rolled_back"
    assert result.reason.startswith(
        "phase soft-launch was terminated by the server: runaway phase stopped by the on-call (by "
    )
    assert [(c.id, c.status) for c in result.final.compensations] == [("soft-launch.1", "done")]
    soft, full = result.final.phases
    assert (soft.status, soft.reason, full.status) == ("failed", result.reason, "pending")
    assert result.final.exposure == 0.0
    assert canary_share(flag_file, FLAG_KEY) == 0.0
    assert json.loads(flag_file.read_text()) == before
    assert await failed_tasks(dev_env.client, handle.id) == 0
