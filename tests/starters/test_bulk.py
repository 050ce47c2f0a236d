"""`starters/bulk.py` against the dev server and a real worker: selecting running launches by
service, phase, gate and status, acting on each, and counting what was done and refused."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from schemas.launch_messages import LaunchStatus
from starters import bulk, launches
from tests.support.launches import gate_open, start_launch, wait_for
from tests.support.plans import make_plan
from workflows.launch import LaunchWorkflow

GATE = "full-launch.before"
Launch = WorkflowHandle[LaunchWorkflow, Any]


def gated_phases() -> list[dict[str, Any]]:
    """One gate before full exposure: a launch waits there until decided."""
    return [
        {
            "name": "full-launch",
            "kind": "full_launch",
            "gates": {"before": {"approvers": ["alice", "bob"]}},
            "steps": [{"weight": 100}],
        }
    ]


def ungated_phases() -> list[dict[str, Any]]:
    """A long step and no gate: running, with nothing to decide."""
    return [{"name": "soft-launch", "kind": "soft_launch", "steps": [{"weight": 5, "pause": "1h"}]}]


async def start_waiting(
    env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    service: str,
    count: int,
    phases: list[dict[str, Any]] | None = None,
) -> list[Launch]:
    """`count` launches of `service`, each with a flag file of its own, all waiting at GATE
    (or, with other `phases`, all running)."""
    started = []
    for _ in range(count):
        plan = make_plan(
            service=service,
            flag_file=tmp_path / f"{uuid.uuid4().hex}.json",
            phases=phases or gated_phases(),
        )
        started.append(await start_launch(env.client, plan, task_queue))
    if phases is None:
        await asyncio.gather(*(gate_open(env, launch, GATE, timeout=60) for launch in started))
    return started


async def visible(
    client: Client,
    count: int,
    *,
    service: str | None = None,
    phase: str | None = None,
    status: str | None = None,
    gate: str | None = None,
) -> list[str]:
    """What `select_launches` matches once the visibility store shows `count` launches (it is
    written when each launch's workflow task completes, a moment after the launch is there)."""
    selection = {"service": service, "phase": phase, "status": status, "gate": gate}
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        found = await bulk.select_launches(
            client, service=service, phase=phase, status=status, gate=gate
        )
        if len(found) == count:
            return found
        assert asyncio.get_running_loop().time() < deadline, f"{selection}: {found}"
        await asyncio.sleep(0.1)


def service_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


async def current(launch: Launch) -> LaunchStatus:
    return await launch.query(LaunchWorkflow.status)


def test_the_selection_query_names_running_launches_only() -> None:
    assert bulk.selection_query(service="checkout", phase="soft-launch", status="waiting") == (
        "WorkflowType = 'Launch' AND PhasegateService = 'checkout' AND PhasegateStatus = "
        "'waiting' AND PhasegatePhase = 'soft-launch' AND ExecutionStatus = 'Running'"
    )
    assert bulk.selection_query() == "WorkflowType = 'Launch' AND ExecutionStatus = 'Running'"


def test_the_summary_counts_each_reason() -> None:
    result = bulk.BulkResult(
        "approve",
        [
            bulk.LaunchOutcome("a", "done", "approved g as alice"),
            bulk.LaunchOutcome("b", "refused", "no open gate"),
            bulk.LaunchOutcome("c", "refused", "ignored: already paused"),
            bulk.LaunchOutcome("d", "refused", "no open gate"),
            bulk.LaunchOutcome("e", "failed", "launch e has already finished"),
        ],
    )

    assert result.summary() == (
        "approved 1, refused 3 (2× no open gate; 1× ignored: already paused), "
        "failed 1 (launch e has already finished)"
    )
    assert not result.clean
    assert bulk.BulkResult("abort").summary() == "abort sent 0, refused 0, failed 0"


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_bulk_approve_and_reject_act_only_on_the_service_matched(
    dev_env: WorkflowEnvironment, worker: str, tmp_path: Path
) -> None:
    client = dev_env.client
    shop, cart = service_name("shop"), service_name("cart")
    shops = await start_waiting(dev_env, worker, tmp_path, shop, 3)
    carts = await start_waiting(dev_env, worker, tmp_path, cart, 3)
    selected = await visible(client, 3, service=shop, gate=GATE)

    heard: list[bulk.LaunchOutcome] = []
    approved = await bulk.bulk_act(
        client, "approve", selected, comment="ship it", by="alice", on_outcome=heard.append
    )
    shop_results = await asyncio.wait_for(
        asyncio.gather(*(launch.result() for launch in shops)), 60
    )
    carts_meanwhile = [await current(launch) for launch in carts]
    rejected = await bulk.bulk_act(
        client,
        "reject",
        await visible(client, 3, service=cart, phase="full-launch", status="waiting"),
        comment="not today",
        by="bob",
    )
    cart_results = await asyncio.wait_for(
        asyncio.gather(*(launch.result() for launch in carts)), 60
    )

    assert sorted(selected) == sorted(launch.id for launch in shops)
    assert (approved.done, approved.refused, approved.failed) == (3, 0, 0)
    assert approved.summary() == "approved 3, refused 0, failed 0"
    assert sorted(o.launch_id for o in heard) == sorted(selected)
    assert {o.detail for o in approved.outcomes} == {f"approved {GATE} as alice"}
    for result in shop_results:
        assert result.status == "completed"
        assert [(d.gate, d.outcome, d.by, d.comment) for d in result.final.decisions] == [
            (GATE, "approved", "alice", "ship it")
        ]
    for waiting in carts_meanwhile:
        assert waiting.open_gate is not None
        assert waiting.open_gate.gate == GATE
        assert waiting.decisions == []
    assert rejected.summary() == "rejected 3, refused 0, failed 0"
    for result in cart_results:
        assert result.status == "rolled_back"
        assert [(d.gate, d.outcome, d.by) for d in result.final.decisions] == [
            (GATE, "rejected", "bob")
        ]
    assert await visible(client, 0, service=shop) == []


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_refusals_are_counted_with_their_reason_and_stop_the_line_aborts_one_service(
    dev_env: WorkflowEnvironment, worker: str, tmp_path: Path
) -> None:
    client = dev_env.client
    shop, cart = service_name("shop"), service_name("cart")
    shops = await start_waiting(dev_env, worker, tmp_path, shop, 2)
    busy = await start_waiting(dev_env, worker, tmp_path, shop, 1, ungated_phases())
    carts = await start_waiting(dev_env, worker, tmp_path, cart, 2)
    await launches.hold(client, shops[0].id, "pause", "dashboards look odd", by="alice")
    await wait_for(dev_env, busy[0], lambda s: s.phase == "soft-launch", timeout=60)
    await visible(client, 3, service=shop)
    await visible(client, 1, service=shop, phase="soft-launch")

    paused = await bulk.bulk_act(
        client, "pause", await visible(client, 3, service=shop), comment="freeze", by="bob"
    )
    approved = await bulk.bulk_act(
        client, "approve", await visible(client, 1, service=shop, phase="soft-launch"), by="bob"
    )
    stopped = await bulk.stop_the_line(client, shop, "bad build", by="carol")
    shop_results = await asyncio.wait_for(
        asyncio.gather(*(launch.result() for launch in [*shops, *busy])), 60
    )
    carts_after = [await current(launch) for launch in carts]
    cleanup = await bulk.stop_the_line(client, cart, "test over", by="carol")

    outcome = {o.launch_id: (o.outcome, o.detail) for o in paused.outcomes}
    already = "ignored: already paused by alice (person): dashboards look odd"
    assert outcome == {
        shops[0].id: ("refused", already),
        shops[1].id: ("done", "paused as bob"),
        busy[0].id: ("done", "paused as bob"),
    }
    assert paused.summary() == f"paused 2, refused 1 ({already}), failed 0"
    assert not paused.clean
    assert approved.summary() == "approved 0, refused 1 (no open gate), failed 0"
    assert stopped.summary() == "abort sent 3, refused 0, failed 0"
    assert {o.detail for o in stopped.outcomes} == {"abort sent; the launch rolls back"}
    for result in shop_results:
        assert result.status == "rolled_back"
        assert "bad build" in result.final.reason
    for waiting in carts_after:
        assert waiting.status == "waiting"
        assert waiting.open_gate is not None
    assert cleanup.done == 2


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_a_bad_filter_names_the_option_and_changes_nothing(
    dev_env: WorkflowEnvironment, worker: str, tmp_path: Path
) -> None:
    client = dev_env.client
    shop = service_name("shop")
    [waiting] = await start_waiting(dev_env, worker, tmp_path, shop, 1)
    await visible(client, 1, service=shop)
    refused: dict[str, str] = {}
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("service", {"service": "Shop'; DROP"}),
        ("phase", {"phase": "-soft"}),
        ("gate", {"gate": "soft-launch..before"}),
        ("status", {"status": "stuck"}),
        ("limit", {"limit": 10_001}),
        ("concurrency", {"concurrency": 0}),
    ]
    for option, selection in attempts:
        with pytest.raises(bulk.BulkInputError) as caught:
            await bulk.select_launches(client, **selection)
        refused[option] = str(caught.value)
    with pytest.raises(bulk.BulkInputError) as reasonless:
        await bulk.bulk_act(client, "abort", [waiting.id], comment=" ", by="alice")
    with pytest.raises(bulk.BulkInputError) as too_long:
        await bulk.bulk_act(client, "approve", [waiting.id], comment="x" * 2001, by="alice")
    after = await current(waiting)
    await launches.abort(client, waiting.id, "test over", by="alice")

    for option, message in refused.items():
        assert message.startswith(f"--{option}: "), message
    assert refused["status"].startswith("--status: one of running, waiting, paused")
    assert str(reasonless.value) == "-m REASON: abort needs its reason, kept with every launch"
    assert str(too_long.value).startswith("comment: ")
    assert after.open_gate is not None
    assert after.decisions == []
    assert after.paused is None
    assert after.status == "waiting"
