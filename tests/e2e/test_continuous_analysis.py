"""Watching the whole launch end to end: background analysis through bakes and gate waits, the
post-launch watch window, pause and resume, and the statistical judge at low traffic, on the
real dev server, a real worker, the demo service under load, Prometheus and the flag file.

Every fault is injected only once the analysis has judged the healthy canary, so a rollback
proves the fault was caught, not that the canary was never healthy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from devstack.demo import DemoStack, example_plan
from schemas.launch_messages import LaunchResult, LaunchStatus, MetricResult
from schemas.plan import LaunchPlan, load_plan
from starters import launches
from tests.support.launches import decide_gate, gate_open, start_launch
from tests.support.servers import canary_share
from workflows.launch import LaunchWorkflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FLAG_KEY = "checkout-v2"
APPROVER = "release-manager"  # on the watched plan's approvers
# Real seconds a fault may take to be caught: Prometheus' 10s rate window fills with failed
# canary requests within a few scrapes, and the analysis runs every 2s.
CATCH_WITHIN = 60.0
Launch = WorkflowHandle[LaunchWorkflow, LaunchResult]


def watched_plan(stack: DemoStack, steps: list[dict[str, Any]], **changes: Any) -> LaunchPlan:
    """`examples/plans/checkout-watched.yaml` on the test stack with these soft-launch `steps`
    (then 100% and promotion with `full_launch=True`), no gates, no step analysis unless a step
    names it, background analysis every 2s and no watch; `changes` replace plan fields."""
    data = stack.plan_for(load_plan(example_plan("checkout-watched.yaml"))).model_dump(mode="json")
    full_launch = changes.pop("full_launch", False)
    data["phases"] = [{"name": "soft-launch", "kind": "soft_launch", "steps": steps}]
    if full_launch:
        data["phases"].append(
            {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]}
        )
    data["background_analysis"].update(interval="2s")
    data["watch"] = None
    data["analysis"].update(changes.pop("analysis", {}))
    data.update(changes)
    return LaunchPlan.model_validate(data)


def flag_definition(stack: DemoStack) -> Any:
    return json.loads(stack.flag_file.read_text())


def judged_healthy(results: list[MetricResult], label: str, since: datetime | None = None) -> bool:
    """Whether `label`'s error rate has passed a measurement (after `since`, if given)."""
    return any(
        m.outcome == "success" and (since is None or m.at > since)
        for r in results
        if r.phase == label and r.metric == "live-error-rate"
        for m in r.measurements
    )


async def wait_for(
    env: WorkflowEnvironment,
    handle: Launch,
    predicate: Callable[[LaunchStatus], bool],
    *,
    timeout: float,
) -> LaunchStatus:
    """Poll the status `phasegate status` shows (background and watch analysis measured so far
    included) until `predicate` holds; fail with the last one after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current = await launches.get_status(env.client, handle.id)
        if predicate(current):
            return current
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s; last status: {current.model_dump_json(indent=1)}"
            )
        await asyncio.sleep(0.2)


async def outcome(handle: Launch) -> LaunchResult:
    return await asyncio.wait_for(handle.result(), timeout=CATCH_WITHIN)


def assert_rolled_back_by_itself(result: LaunchResult, stack: DemoStack, before: Any) -> None:
    """Rolled back with nobody deciding anything, exposure and flag exactly as before."""
    assert result.status == "rolled_back", result.reason
    assert result.final.decisions == []
    assert canary_share(stack.flag_file, FLAG_KEY) == 0.0
    assert flag_definition(stack) == before
    assert result.final.compensations
    assert all(c.status == "done" for c in result.final.compensations)


async def test_a_fault_during_a_bake_rolls_back_before_the_bake_ends(
    dev_env: WorkflowEnvironment, worker: str, clean_stack: DemoStack
) -> None:
    before = flag_definition(clean_stack)
    plan = watched_plan(clean_stack, [{"weight": 5, "pause": "5m"}])
    handle = await start_launch(dev_env.client, plan, worker)
    baking = await wait_for(
        dev_env,
        handle,
        lambda s: s.exposure == 5.0 and judged_healthy(s.background, "background"),
        timeout=60,
    )
    assert "baking at 5%" in baking.phases[0].activity

    clean_stack.set_faults(error_rate=0.5)
    result = await outcome(handle)

    assert result.reason.startswith("background analysis failed: "), result.reason
    assert "live-error-rate" in result.reason
    soft = result.final.phases[0]
    assert (soft.step, soft.exposure) == (1, 5.0)  # the bake never ended
    failed = [r for r in result.final.background if r.metric == "live-error-rate"]
    assert [r.verdict for r in failed] == ["failed"]
    assert failed[0].measurements[-1].outcome == "failure"
    assert_rolled_back_by_itself(result, clean_stack, before)


async def test_a_fault_while_the_gate_waits_rolls_back_and_closes_the_gate(
    dev_env: WorkflowEnvironment, worker: str, clean_stack: DemoStack
) -> None:
    before = flag_definition(clean_stack)
    plan = watched_plan(clean_stack, [{"weight": 5}, {"weight": 50, "approval": True}])
    handle = await start_launch(dev_env.client, plan, worker)
    waiting = await gate_open(dev_env, handle, "soft-launch.step-2", timeout=60)
    assert waiting.open_gate is not None
    opened = waiting.open_gate.opened_at
    await wait_for(
        dev_env,
        handle,
        lambda s: s.open_gate is not None and judged_healthy(s.background, "background", opened),
        timeout=60,
    )

    clean_stack.set_faults(error_rate=0.5)
    result = await outcome(handle)

    assert result.reason.startswith("background analysis failed: "), result.reason
    assert "live-error-rate" in result.reason
    assert result.final.open_gate is None
    soft = result.final.phases[0]
    assert (soft.status, soft.open_gate) == ("cancelled", None)
    assert result.reason in soft.reason  # the phase says why its gate closed
    assert (soft.step, soft.exposure) == (2, 50.0)
    assert soft.decisions == []  # the gate closed without a decision: nobody approved
    assert_rolled_back_by_itself(result, clean_stack, before)


async def test_a_fault_during_the_watch_window_rolls_back_to_the_previous_version(
    dev_env: WorkflowEnvironment, worker: str, clean_stack: DemoStack
) -> None:
    before = flag_definition(clean_stack)
    plan = watched_plan(
        clean_stack,
        [{"weight": 5}],
        full_launch=True,
        background_analysis=None,
        watch={"duration": "10m", "metrics": ["live-error-rate"], "interval": "2s"},
    )
    handle = await start_launch(dev_env.client, plan, worker)
    watching = await wait_for(
        dev_env,
        handle,
        lambda s: s.status == "watching" and judged_healthy(s.background, "watch"),
        timeout=90,
    )
    assert watching.exposure == 100.0
    assert flag_definition(clean_stack)["flags"][FLAG_KEY]["metadata"]["promoted"] is True
    assert watching.watch_ends_at is not None
    started = min(m.at for r in watching.background for m in r.measurements)
    assert timedelta(minutes=9) < watching.watch_ends_at - started <= timedelta(minutes=10)
    assert [p.status for p in watching.phases] == ["completed", "completed"]

    clean_stack.set_faults(error_rate=0.5)
    result = await outcome(handle)

    assert result.reason.startswith("watch window failed: "), result.reason
    assert "live-error-rate" in result.reason
    assert result.final.finished_at is not None
    assert result.final.finished_at < watching.watch_ends_at
    assert_rolled_back_by_itself(result, clean_stack, before)


async def test_pause_holds_exposure_past_the_bake_and_resume_goes_on(
    dev_env: WorkflowEnvironment, worker: str, clean_stack: DemoStack
) -> None:
    plan = watched_plan(clean_stack, [{"weight": 5, "pause": "8s"}, {"weight": 20}])
    handle = await start_launch(dev_env.client, plan, worker)
    await wait_for(dev_env, handle, lambda s: s.exposure == 5.0, timeout=60)

    client, launch = dev_env.client, handle.id
    paused = await launches.hold(client, launch, "pause", "checking the dashboards", APPROVER)
    assert paused is not None
    assert (paused.by, paused.reason, paused.source) == (
        APPROVER,
        "checking the dashboards",
        "person",
    )
    bake_over = paused.at + timedelta(seconds=8)

    def still_held(s: LaunchStatus) -> bool:
        # Every status seen while paused holds 5% at step 1; the wait ends once the bake is
        # over, the next change waits for `resume`, and background analysis has measured since.
        assert (s.status, s.exposure, s.step, s.paused) == ("paused", 5.0, 1, paused), (
            s.model_dump_json()
        )
        return s.phases[0].activity.startswith("paused by") and judged_healthy(
            s.background, "background", bake_over
        )

    held = await wait_for(dev_env, handle, still_held, timeout=60)
    assert held.phases[0].activity.startswith(f"paused by {APPROVER}: checking the dashboards")
    assert canary_share(clean_stack.flag_file, FLAG_KEY) == 5.0

    assert await launches.hold(client, launch, "resume", "dashboards look fine", APPROVER) is None
    result = await outcome(handle)

    assert result.status == "completed", result.reason
    assert result.final.paused is None
    assert canary_share(clean_stack.flag_file, FLAG_KEY) == 20.0
    assert [(p.step, p.exposure) for p in result.final.phases] == [(2, 20.0)]
    holds = [(e.handler, e.accepted) for e in result.final.audit if e.handler.startswith("hold")]
    assert holds == [("hold:pause", True), ("hold:resume", True)]


async def test_a_low_traffic_canary_is_inconclusive_under_the_statistical_judge(
    dev_env: WorkflowEnvironment, worker: str, clean_stack: DemoStack
) -> None:
    # A 3s rate window: at 0.2% of the load (a request every dozen seconds) most of the canary's
    # points are 0/0, so far fewer than `min_samples` of the 61 are finite; stable has them all.
    sparse = {
        "query": (
            'sum(rate(demo_request_errors_total{variant="{{variant}}"}[3s]))'
            ' / sum(rate(demo_requests_total{variant="{{variant}}"}[3s]))'
        ),
        "compare": {"min_samples": 40, "window": "60s", "step": "1s", "tolerance": 0.02},
        "initial_delay": "2s",
        "interval": "1s",
        "count": 2,
        "inconclusive_limit": 1,
    }
    plan = watched_plan(
        clean_stack,
        [{"weight": 0.2, "analysis": ["sparse-errors"]}],
        analysis={"sparse-errors": sparse},
        background_analysis=None,
    )
    handle = await start_launch(dev_env.client, plan, worker)
    waiting = await gate_open(dev_env, handle, "soft-launch.step-1.analysis", timeout=60)

    (result,) = waiting.phases[0].analysis
    assert (result.metric, result.verdict, result.failures) == ("sparse-errors", "inconclusive", 0)
    for measurement in result.measurements:
        assert measurement.outcome == "inconclusive"
        assert "n=" in measurement.detail, measurement.detail
    await decide_gate(dev_env, handle, "soft-launch.step-1.analysis", "approve", APPROVER)
    final = await outcome(handle)

    assert final.status == "completed", final.reason
    assert canary_share(clean_stack.flag_file, FLAG_KEY) == 0.2
