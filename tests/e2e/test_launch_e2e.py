"""Launches end to end: real dev server, real worker, the demo service under load, Prometheus."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from devstack.demo import DemoStack, example_plan
from devstack.processes import start_worker
from schemas.decision_messages import Decision, DecisionRequest
from schemas.launch_messages import LaunchResult
from schemas.plan import LaunchPlan, load_plan
from tests.support.launches import start_launch, wait_for
from tests.support.servers import canary_share

pytestmark = pytest.mark.integration


def demo_plan(stack: DemoStack, **changes: Any) -> LaunchPlan:
    plan = stack.plan_for(load_plan(example_plan()))
    data = plan.model_dump(mode="json")
    data.update(changes)
    return LaunchPlan.model_validate(data)


def quick_plan(stack: DemoStack, *, gate: bool = False) -> LaunchPlan:
    """The demo plan without its approval gates and with short analyses."""
    data = demo_plan(stack).model_dump(mode="json")
    for phase in data["phases"]:
        phase["gates"] = (
            {"before": {"approvers": ["alice"]}} if gate and phase["name"] == "soft-launch" else {}
        )
        for step in phase["steps"]:
            step["approval"] = None
            step["pause"] = None
    for metric in data["analysis"].values():
        metric.update(initial_delay="2s", interval="1s", count=3)
    return LaunchPlan.model_validate(data)


async def test_healthy_launch_reaches_everyone(
    dev_env: WorkflowEnvironment, worker: str, clean_stack: DemoStack
) -> None:
    handle = await start_launch(dev_env.client, quick_plan(clean_stack), worker)
    result = await handle.result()

    assert result.status == "completed", result.reason
    assert canary_share(clean_stack.flag_file, "checkout-v2") == 100.0
    steps = [(p.name, p.step, p.exposure, p.status) for p in result.final.phases]
    assert steps == [("soft-launch", 3, 50.0, "completed"), ("full-launch", 2, 100.0, "completed")]
    measured = [m for p in result.final.phases for r in p.analysis for m in r.measurements]
    assert measured
    assert all(m.value is not None for m in measured if m.outcome == "success")
    error_rates = [r for p in result.final.phases for r in p.analysis if r.metric == "error-rate"]
    assert all(r.verdict == "successful" for r in error_rates)
    # The canary really served users while it was analysed.
    assert any(m.value == 0.0 and m.baseline == 0.0 for r in error_rates for m in r.measurements)


async def test_faulty_version_rolls_back_on_its_own(
    dev_env: WorkflowEnvironment, worker: str, clean_stack: DemoStack
) -> None:
    before = json.loads(clean_stack.flag_file.read_text())
    clean_stack.set_faults(error_rate=0.5)
    handle = await start_launch(dev_env.client, quick_plan(clean_stack), worker)
    result = await handle.result()

    assert result.status == "rolled_back"
    # Which step sees the breach first depends on how many canary requests failed in the first
    # window (5% of the load is a few requests a second); the full launch must never start.
    assert re.search(r"analysis failed at soft-launch step \d \(\d+%\)", result.reason), (
        result.reason
    )
    assert "error-rate failed" in result.reason
    assert canary_share(clean_stack.flag_file, "checkout-v2") == 0.0
    assert (
        json.loads(clean_stack.flag_file.read_text()) == before
    )  # the earlier definition, exactly
    assert [c.status for c in result.final.compensations] == ["done"]
    assert result.final.phases[1].status == "pending"


async def test_decide_update_answers_at_once(
    dev_env: WorkflowEnvironment, worker: str, clean_stack: DemoStack
) -> None:
    handle = await start_launch(dev_env.client, quick_plan(clean_stack, gate=True), worker)
    await wait_for(dev_env, handle, lambda s: s.open_gate is not None, timeout=60)

    async def refusal(**fields: str) -> str:
        request = DecisionRequest.model_validate(
            {"decision": "approve", "approver": "alice", **fields}
        )
        with pytest.raises(WorkflowUpdateFailedError) as caught:
            await handle.execute_update("decide", request, result_type=Decision)
        return str(caught.value.cause)

    assert "unknown gate 'launch'" in await refusal(gate="launch")
    assert (
        "gate: 'full-launch.step-1.analysis' is not open; the open gate is 'soft-launch.before'"
        in await refusal(gate="full-launch.step-1.analysis")
    )
    assert "'mallory' may not decide gate 'soft-launch.before'; approvers: alice" in await refusal(
        gate="soft-launch.before", approver="mallory"
    )
    decision: Decision = await handle.execute_update(
        "decide",
        DecisionRequest(
            gate="soft-launch.before", approver="alice", decision="approve", comment="ship it"
        ),
        result_type=Decision,
    )
    assert (decision.outcome, decision.by, decision.source) == ("approved", "alice", "update")
    result = await handle.result()
    assert result.status == "completed", result.reason
    assert result.final.decisions[0].comment == "ship it"


def final_state(result: LaunchResult, flag_file: Path) -> tuple[object, ...]:
    """What must be the same whether or not a worker died on the way."""
    flag = json.loads(flag_file.read_text())["flags"]["checkout-v2"]
    flag["metadata"].pop("launchId", None)
    phases = [
        (p.name, p.status, p.step, p.exposure, [c.status for c in p.compensations])
        for p in result.final.phases
    ]
    return result.status, phases, [(d.gate, d.outcome, d.by) for d in result.final.decisions], flag


async def test_worker_killed_mid_soft_launch_converges(
    dev_env: WorkflowEnvironment, clean_stack: DemoStack, tmp_path: Path
) -> None:
    address = dev_env.client.service_client.config.target_host
    plan = quick_plan(clean_stack)
    task_queue = f"kill-{uuid.uuid4().hex[:8]}"

    first = start_worker(address=address, workdir=tmp_path / "w1", task_queue=task_queue)
    try:
        undisturbed = await (await start_launch(dev_env.client, plan, task_queue)).result()
        expected = final_state(undisturbed, clean_stack.flag_file)
        clean_stack.reset_exposure()

        handle = await start_launch(dev_env.client, plan, task_queue)
        await wait_for(
            dev_env,
            handle,
            lambda s: s.phase == "soft-launch" and s.step == 2 and s.exposure == 20,
            timeout=60,
        )
        first.kill()
        killed_at = canary_share(clean_stack.flag_file, "checkout-v2")
    finally:
        first.stop()
    assert killed_at == 20.0

    second = start_worker(address=address, workdir=tmp_path / "w2", task_queue=task_queue)
    try:
        disturbed = await asyncio.wait_for(handle.result(), timeout=180)
    finally:
        second.stop()

    assert undisturbed.status == "completed"
    assert final_state(disturbed, clean_stack.flag_file) == expected
