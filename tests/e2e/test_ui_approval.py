"""Approving a gate the way a person does: the Temporal UI in headless Chromium, real worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.flags import FlagdFileRouter, promoted_definition
from schemas.plan import LaunchPlan
from schemas.targets import FlagdRouter
from starters.launches import start_launch, ui_link
from tests.support.browser import (
    UI_TIMEOUT_MS,
    chromium,
    current_details,
    send_signal,
    workflow_page,
)
from tests.support.launches import gate_open, wait_for
from tests.support.plans import make_plan
from workers.settings import Settings
from workflows.launch import LaunchWorkflow

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

GATE = "full-launch.before"
DECISION = {"gate": GATE, "approver": "alice", "comment": "approved in the UI"}


@dataclass
class WaitingLaunch:
    env: WorkflowEnvironment
    handle: WorkflowHandle[LaunchWorkflow, Any]
    plan: LaunchPlan
    url: str


def gated_plan(flag_file: Path) -> LaunchPlan:
    """One full launch behind a gate only alice may open; no analysis, so no Prometheus."""
    return make_plan(
        flag_file=flag_file,
        analysis={},
        phases=[
            {
                "name": "full-launch",
                "kind": "full_launch",
                "gates": {"before": {"approvers": ["alice"]}},
                "steps": [{"weight": 50}, {"weight": 100}],
            }
        ],
    )


@pytest.fixture
async def waiting_launch(
    dev_env: WorkflowEnvironment, dev_ui_port: int, worker: str, tmp_path: Path
) -> AsyncIterator[WaitingLaunch]:
    """A launch started as the CLI starts it, on the real worker, waiting at its first gate."""
    settings = Settings().model_copy(
        update={
            "task_queue": worker,
            "temporal_namespace": dev_env.client.namespace,
            "ui_url": f"http://127.0.0.1:{dev_ui_port}",
        }
    )
    plan = gated_plan(tmp_path / "flags.json")
    handle = await start_launch(dev_env.client, plan, settings=settings)
    await gate_open(dev_env, handle, GATE)
    yield WaitingLaunch(env=dev_env, handle=handle, plan=plan, url=ui_link(settings, handle.id))
    if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        await handle.terminate("test over")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def test_gate_approved_from_send_a_signal_dialog(
    waiting_launch: WaitingLaunch, browser: Browser, tmp_path: Path
) -> None:
    payload = json.dumps(DECISION, indent=2)
    async with workflow_page(browser, waiting_launch.url, tmp_path / "signal.png") as page:
        await send_signal(page, "approve", payload)

    decided = await wait_for(waiting_launch.env, waiting_launch.handle, lambda s: bool(s.decisions))
    assert [(d.gate, d.outcome, d.by, d.comment, d.source) for d in decided.decisions] == [
        (GATE, "approved", "alice", "approved in the UI", "signal")
    ]
    assert (decided.audit[-1].handler, decided.audit[-1].accepted) == ("approve", True)
    assert decided.audit[-1].payload == DECISION

    finished = await wait_for(
        waiting_launch.env, waiting_launch.handle, lambda s: s.status == "completed"
    )
    assert finished.exposure == 100
    router = waiting_launch.plan.targets.router
    if not isinstance(router, FlagdRouter):
        pytest.fail(f"the gated plan routes with {type(router).__name__}, not a flagd file")
    flag = await asyncio.to_thread(FlagdFileRouter().snapshot, router)
    assert flag.definition == promoted_definition(router, waiting_launch.handle.id)


async def test_current_details_name_the_gate_and_signal(
    waiting_launch: WaitingLaunch, browser: Browser, tmp_path: Path
) -> None:
    async with workflow_page(browser, waiting_launch.url, tmp_path / "details.png") as page:
        details = await current_details(page)
        waiting = details.get_by_text("Waiting for a go/no-go decision on gate")
        await expect(waiting).to_be_visible(timeout=UI_TIMEOUT_MS)
        await expect(details.get_by_text(GATE, exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
        await expect(details.get_by_text("approve", exact=True)).to_be_visible(
            timeout=UI_TIMEOUT_MS
        )
