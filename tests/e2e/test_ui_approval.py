"""Approving a gate the way a person does: the Temporal UI in headless Chromium, real worker."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.flags import FlagdFileRouter, promoted_definition
from schemas.plan import LaunchPlan
from schemas.targets import FlagdRouter
from starters.launches import start_launch, ui_link
from tests.support.launches import gate_open, wait_for
from tests.support.plans import make_plan
from workers.settings import Settings
from workflows.launch import LaunchWorkflow

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

CHROMIUM = Path(os.environ.get("PHASEGATE_CHROMIUM", "/usr/bin/chromium"))
# Root in a container needs --no-sandbox; the rest keeps an offline machine from waiting on
# update, sync and first-run requests that can never succeed.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The UI's first render of a workflow page waits on several API calls and runs a lot of script:
# on a busy two-core machine it has taken 15 s. Each later step gets UI_TIMEOUT_MS.
FIRST_RENDER_TIMEOUT_MS = 60_000
UI_TIMEOUT_MS = 30_000
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
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install it (`apt-get install chromium`) or set "
            "PHASEGATE_CHROMIUM to its path; the browser tests never download a browser"
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()


@asynccontextmanager
async def workflow_page(browser: Browser, url: str, screenshot: Path) -> AsyncIterator[Page]:
    """The launch's page once the UI has rendered it; a screenshot is saved if the block fails."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        await page.goto(url)
        await expect(page.get_by_role("button", name="More Actions")).to_be_enabled(
            timeout=FIRST_RENDER_TIMEOUT_MS
        )
        yield page
    except BaseException:
        await page.screenshot(path=screenshot, full_page=True)
        raise
    finally:
        await page.close()


async def test_gate_approved_from_send_a_signal_dialog(
    waiting_launch: WaitingLaunch, browser: Browser, tmp_path: Path
) -> None:
    # Already in the editor's own format: it re-indents JSON on blur, and the dialog growing
    # under the pointer on the way to Submit would swallow the click.
    payload = json.dumps(DECISION, indent=2)
    async with workflow_page(browser, waiting_launch.url, tmp_path / "signal.png") as page:
        await page.get_by_role("button", name="More Actions").click()
        await page.get_by_role("menuitem", name="Send a Signal").click()
        dialog = page.get_by_role("dialog", name="Send a Signal")
        await dialog.get_by_role("button", name="Select a signal").click()
        # An option's name is the signal name followed by its description.
        await dialog.get_by_role("option", name=re.compile(r"^approve\b")).click()
        editor = dialog.get_by_role("textbox", name="Data")
        await editor.click()
        # CodeMirror closes braces and quotes as they are typed; inserting the text bypasses that.
        await page.keyboard.press("ControlOrMeta+A")
        await page.keyboard.insert_text(payload)
        await editor.blur()
        await expect(editor).to_have_text(payload, use_inner_text=True, timeout=UI_TIMEOUT_MS)
        await dialog.get_by_role("button", name="Submit").click()
        await expect(dialog).to_be_hidden(timeout=UI_TIMEOUT_MS)

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
        await page.get_by_role("tab", name="User Metadata").click()
        # The UI renders current details as Markdown in a sandboxed frame of their own.
        details = page.frame_locator("iframe#user-metadata-current-details")
        waiting = details.get_by_text("Waiting for a go/no-go decision on gate")
        await expect(waiting).to_be_visible(timeout=UI_TIMEOUT_MS)
        await expect(details.get_by_text(GATE, exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
        await expect(details.get_by_text("approve", exact=True)).to_be_visible(
            timeout=UI_TIMEOUT_MS
        )
