"""Approving a gate with a proof, the way a person does it in a browser: the approval link from
the launch's details, a sign-in at the real identity provider, the signal input the approval
service hands back pasted into the Temporal UI's Send a Signal, on a real worker that trusts
the approval service."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from approvals.proofs import plan_digest
from devstack.approval_service import LocalApprovalService
from devstack.identity_provider import IdentityProvider
from schemas.launch_messages import LaunchStatus
from schemas.plan import LaunchPlan
from starters.launches import new_launch_id, start_launch, ui_link
from starters.proof_client import request_proof
from tests.support.browser import (
    UI_TIMEOUT_MS,
    chromium,
    current_details,
    new_page,
    send_signal,
    workflow_page,
)
from tests.support.identity import sign_in
from tests.support.launches import gate_open, wait_for
from tests.support.plans import make_plan
from workers.main import build_worker
from workers.settings import Settings
from workflows.launch import LaunchWorkflow

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

GATE = "soft-launch.before"
STARTER = "alice"
APPROVER = "carol"
COMMENT = "soft launch looks fine from here"
# The launch's own steps on a loaded two-core machine; the UI steps have their own timeouts.
LAUNCH_TIMEOUT_S = 60.0


@dataclass
class WaitingLaunch:
    env: WorkflowEnvironment
    handle: WorkflowHandle[LaunchWorkflow, Any]
    opened: LaunchStatus
    url: str


def proven_plan(flag_file: Path, issuer: str) -> LaunchPlan:
    """One soft-launch step behind a gate for the release managers, who prove who they are at
    `issuer`; no analysis, so no Prometheus."""
    return make_plan(
        flag_file=flag_file,
        analysis={},
        approvals={
            "identity": {"issuer": issuer, "name_claim": "preferred_username"},
            "approvers": ["group:release-managers"],
            "timeout": "1h",
        },
        phases=[
            {
                "name": "soft-launch",
                "kind": "soft_launch",
                "gates": {"before": True},
                "steps": [{"weight": 10}],
            }
        ],
    )


def decide_path(launch_id: str, run_id: str, gate: str) -> str:
    """The approval service's page for approving `gate`, as the launch's details name it."""
    return f"/decide?launch={launch_id}&run={run_id}&gate={gate}&decision=approve"


def approve_notes(current: LaunchStatus) -> list[tuple[bool, str]]:
    return [(e.accepted, e.note) for e in current.audit if e.handler.endswith("approve")]


@pytest.fixture
async def trusting_worker(
    dev_env: WorkflowEnvironment, dev_ui_port: int, approval_service: LocalApprovalService
) -> AsyncIterator[Settings]:
    """A real worker on a task queue of its own that trusts `approval_service`'s proofs;
    yields the settings a starter of its launches uses."""
    settings = Settings().model_copy(
        update={
            "task_queue": f"e2e-{uuid.uuid4()}",
            "temporal_namespace": dev_env.client.namespace,
            "ui_url": f"http://127.0.0.1:{dev_ui_port}",
            "approval_service": approval_service.url,
        }
    )
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=settings.max_concurrent_activities
    ) as executor:
        async with (
            httpx.AsyncClient() as http,
            build_worker(dev_env.client, http, executor, settings),
        ):
            yield settings


@pytest.fixture
async def waiting_launch(
    dev_env: WorkflowEnvironment,
    trusting_worker: Settings,
    identity_provider: IdentityProvider,
    approval_service: LocalApprovalService,
    tmp_path: Path,
) -> AsyncIterator[WaitingLaunch]:
    """A launch alice started with her proof, waiting at its first gate."""
    plan = proven_plan(tmp_path / "flags.json", identity_provider.issuer)
    launch_id = new_launch_id(plan)
    tokens = await asyncio.to_thread(sign_in, identity_provider, STARTER)
    start_proof = await request_proof(
        approval_service.url,
        tokens.id_token,
        launch=launch_id,
        run="",
        act="start",
        target=plan_digest(plan),
    )
    handle = await start_launch(
        dev_env.client,
        plan,
        settings=trusting_worker,
        launch_id=launch_id,
        start_proof=start_proof,
    )
    opened = await gate_open(dev_env, handle, GATE, timeout=LAUNCH_TIMEOUT_S)
    yield WaitingLaunch(
        env=dev_env, handle=handle, opened=opened, url=ui_link(trusting_worker, launch_id)
    )
    try:
        await handle.terminate("test over")
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:  # NOT_FOUND: it finished by itself
            raise


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def signed_in_signal(page: Page, url: str, provider: IdentityProvider, username: str) -> None:
    """Open the approval link `url` and sign in at the provider's login form as `username`;
    fail with the approval service's words if it shows an error instead of the signal."""
    await page.goto(url)
    await page.get_by_label("Username:").fill(username)
    await page.get_by_label("Password:").fill(provider.person(username).password)
    await page.get_by_role("button", name="Login").click()
    outcome = page.locator("#signal-input, #error")
    await expect(outcome).to_be_visible(timeout=UI_TIMEOUT_MS)
    error = page.locator("#error")
    if await error.count():
        pytest.fail(f"the approval page shows an error: {await error.inner_text()}")


async def test_gate_approved_with_a_proof_pasted_into_send_a_signal(
    waiting_launch: WaitingLaunch,
    browser: Browser,
    identity_provider: IdentityProvider,
    approval_service: LocalApprovalService,
    tmp_path: Path,
) -> None:
    env, handle, opened = waiting_launch.env, waiting_launch.handle, waiting_launch.opened
    assert (opened.identity, opened.started_by) == (identity_provider.issuer, STARTER)
    path = decide_path(opened.launch_id, opened.run_id, GATE)
    assert opened.run_id
    assert f"Approvals are proven: sign in at {identity_provider.issuer}." in opened.waiting_for
    assert path in opened.waiting_for

    # The approval page: carol signs in at the provider's own form, adds a comment and reads
    # the signal she is to send.
    async with new_page(browser, tmp_path / "approval-page.png") as page:
        await signed_in_signal(page, approval_service.url + path, identity_provider, APPROVER)
        await page.locator("#comment").fill(COMMENT)
        signal_name = await page.locator("#signal-name").inner_text()
        signal_input = await page.locator("#signal-input").inner_text()
    pasted = json.loads(signal_input)
    assert signal_name == "approve"
    assert (pasted["gate"], pasted["comment"]) == (GATE, COMMENT)
    assert pasted["proof"].count(".") == 2

    async with workflow_page(browser, waiting_launch.url, tmp_path / "ui.png") as page:
        details = await current_details(page)
        await expect(details.get_by_text("Approvals are proven: sign in at")).to_be_visible(
            timeout=UI_TIMEOUT_MS
        )
        await expect(details.get_by_text(path)).to_be_visible(timeout=UI_TIMEOUT_MS)

        # A name typed in, the way unauthenticated approvals work, is refused and audited.
        typed = json.dumps({"gate": GATE, "approver": APPROVER}, indent=2)
        await send_signal(page, "approve", typed)
        refused = await wait_for(
            env, handle, lambda s: len(approve_notes(s)) == 1, timeout=LAUNCH_TIMEOUT_S
        )
        [(accepted, note)] = approve_notes(refused)
        assert not accepted
        assert note.startswith("proof:")
        assert refused.audit[-1].payload == {"gate": GATE, "approver": APPROVER}
        assert refused.open_gate is not None
        assert refused.open_gate.gate == GATE
        assert not refused.decisions

    # A fresh page, as after a reload: the UI's dialog keeps its busy state from the last
    # submission for a while on the same page.
    async with workflow_page(browser, waiting_launch.url, tmp_path / "ui-approve.png") as page:
        await send_signal(page, signal_name, signal_input)

    decided = await wait_for(
        env,
        handle,
        lambda s: (
            any(d.gate == GATE for d in s.decisions)
            and (s.open_gate is None or s.open_gate.gate != GATE)
        ),
        timeout=LAUNCH_TIMEOUT_S,
    )
    [decision] = [d for d in decided.decisions if d.gate == GATE]
    assert (
        decision.outcome,
        decision.by,
        decision.people,
        decision.authenticated,
        decision.comment,
        decision.source,
    ) == ("approved", APPROVER, [APPROVER], True, COMMENT, "signal")
    assert [accepted for accepted, _ in approve_notes(decided)] == [False, True]

    finished = await wait_for(
        env, handle, lambda s: s.status == "completed", timeout=LAUNCH_TIMEOUT_S
    )
    assert finished.exposure == 10
