"""`starters/launches.py`'s pause and resume against the dev server and a real worker: the
signals for the UI and automation, and the `hold` update that answers at once."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from starters import launches
from tests.support.launches import gate_open, start_launch, wait_for
from tests.support.plans import make_plan

pytestmark = pytest.mark.integration


async def test_signals_and_the_update_pause_and_resume_a_launch(
    dev_env: WorkflowEnvironment, worker: str, tmp_path: Path
) -> None:
    client = dev_env.client
    plan = make_plan(
        flag_file=tmp_path / "flags.json",
        phases=[
            {
                "name": "full-launch",
                "kind": "full_launch",
                "gates": {"before": {"approvers": ["alice"]}},
                "steps": [{"weight": 100}],
            }
        ],
    )
    launch = await start_launch(client, plan, worker)
    await gate_open(dev_env, launch, "full-launch.before")

    await launches.pause(client, launch.id, "dashboards look odd", by="alice")
    paused = await wait_for(dev_env, launch, lambda s: s.paused is not None)
    with pytest.raises(launches.HoldError) as twice:
        await launches.hold(client, launch.id, "pause", "me too", by="bob")
    await launches.resume(client, launch.id, "fine after all", by="alice")
    resumed = await wait_for(dev_env, launch, lambda s: s.paused is None)
    with pytest.raises(launches.HoldError) as not_paused:
        await launches.hold(client, launch.id, "resume", by="alice")
    held = await launches.hold(client, launch.id, "pause", "second look", by="alice")
    freed = await launches.hold(client, launch.id, "resume", by="alice")
    with pytest.raises(launches.LaunchNotFound):
        await launches.hold(client, f"no-such-{uuid.uuid4().hex[:8]}", "pause", "x", by="alice")
    await launches.abort(client, launch.id, "test over", by="alice")
    final = await launch.result()

    assert paused.paused is not None
    assert (paused.status, paused.paused.by, paused.paused.source) == ("paused", "alice", "person")
    assert paused.paused.reason == "dashboards look odd"
    assert str(twice.value) == "ignored: already paused by alice (person): dashboards look odd"
    assert resumed.status == "waiting"
    assert str(not_paused.value) == "ignored: the launch is not paused"
    assert held is not None
    assert (held.by, held.reason, held.source) == ("alice", "second look", "person")
    assert freed is None
    assert final.status == "rolled_back"
