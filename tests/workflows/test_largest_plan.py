"""The largest plan the history budget allows runs to completion, and every workflow of its
launch writes no more history than the budget estimated: below Temporal's warning of 10,240
events and far below its 50 MB.

The plan is of the kind whose history grows fastest per line of plan: a soft launch whose
steps measure a metric again and again (each measurement is an activity, a timer and a
report to the launch). It is filled measurement by measurement until one more would be
refused.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from schemas.analysis_spec import MAX_COUNT
from schemas.budget import MAX_BYTES, MAX_EVENTS, Estimate, History, estimate
from schemas.plan import LaunchPlan
from tests.support.fakes import FakeWorld, running_launch
from tests.support.plans import plan_dict

TEMPORAL_WARNS_AT = 10_240


def plan_of(counts: list[int]) -> dict[str, Any]:
    """One soft launch phase, step n measuring its own metric `counts[n]` times."""
    data = plan_dict()
    metric = data["analysis"]["error-rate"]
    data["analysis"] = {
        f"m{n}": {**metric, "count": count, "interval": "10s"} for n, count in enumerate(counts)
    }
    data["phases"] = [
        {
            "name": "soft-launch",
            "kind": "soft_launch",
            "steps": [{"weight": n + 1, "analysis": [f"m{n}"]} for n in range(len(counts))],
        }
    ]
    return data


def fits(counts: list[int]) -> bool:
    """Whether the plan of `counts` is within the budget (it is sound otherwise)."""
    try:
        LaunchPlan.model_validate(plan_of(counts))
    except ValidationError as err:
        if "would write about" not in str(err):
            raise
        return False
    return True


def largest_counts() -> list[int]:
    """Steps of `MAX_COUNT` measurements while they fit, then the largest count that does."""
    counts: list[int] = []
    while fits([*counts, MAX_COUNT]):
        counts.append(MAX_COUNT)
    low, high = 0, MAX_COUNT  # fits([*counts, low]) or low == 0; never fits([*counts, high])
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits([*counts, middle]) else (low, middle)
    return [*counts, low] if low else counts


async def real_history(
    env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any], workflow_id: str
) -> History:
    history = await env.client.get_workflow_handle(workflow_id).fetch_history()
    return History(
        events=len(history.events), bytes=sum(event.ByteSize() for event in history.events)
    )


async def test_the_largest_plan_runs_within_its_estimate(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    counts = largest_counts()
    plan = LaunchPlan.model_validate(plan_of(counts))
    estimated: Estimate = estimate(plan)
    assert not fits([*counts[:-1], counts[-1] + 1]), "the plan is not at the budget's edge"
    assert estimated.phases[0].history.events > 0.95 * MAX_EVENTS

    async with running_launch(time_skipping_env.client, plan, FakeWorld()) as handle:
        result = await handle.result()

    assert result.status == "completed", result.reason
    measured = result.final.phases[0].analysis
    assert [m.successes for m in measured] == counts
    workflows = {
        "launch": (handle.id, estimated.launch),
        "soft-launch": (f"{handle.id}.soft-launch", estimated.phases[0].history),
    }
    for name, (workflow_id, estimate_of) in workflows.items():
        real = await real_history(time_skipping_env, handle, workflow_id)
        print(f"{name}: {real.events} events, {real.bytes} bytes; estimated {estimate_of}")
        assert real.events <= estimate_of.events, name
        assert real.events < TEMPORAL_WARNS_AT, name
        assert real.bytes <= estimate_of.bytes <= MAX_BYTES, name
    # The estimate is an upper bound, but an honest one: the phase writes most of it.
    phase = await real_history(time_skipping_env, handle, f"{handle.id}.soft-launch")
    assert phase.events > 0.8 * estimated.phases[0].history.events


def test_one_measurement_more_is_refused_with_the_phase_named() -> None:
    counts = largest_counts()
    with pytest.raises(ValidationError, match=r"phases\[0\]: would write about \d+ history"):
        LaunchPlan.model_validate(plan_of([*counts[:-1], counts[-1] + 1]))
