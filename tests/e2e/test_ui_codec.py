"""Encrypted payloads in the Temporal UI, in headless Chromium: with `phasegate codec-server`
as its codec endpoint the UI shows a launch's plan; without it, only ciphertext; and the raw
history holds no plan field in clear.

The UI sends `Authorization: Bearer <its access token>` to the codec endpoint itself only when
it has its own sign-in and the endpoint is https. Here it has neither, so the browser supplies
the header: every request to the codec server's origin, and only to it, is sent on with the
codec server's token (Playwright's `page.route`), as the UI's data encoder would send it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page, Route, expect
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment

from devstack.processes import free_port
from schemas.plan import LaunchPlan
from starters.launches import start_launch, ui_link
from tests.support.browser import FIRST_RENDER_TIMEOUT_MS, chromium, new_page
from tests.support.cli import against
from tests.support.launches import gate_open
from tests.support.launches import status as launch_status
from tests.support.payloads import CodecServer, clear_text_in, codec_server, with_converter
from tests.support.plans import make_plan
from tests.support.servers import binary, running_worker
from workers.settings import Settings
from workflows.launch import LaunchWorkflow
from workflows.visibility import PHASE, SERVICE, STATUS

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

GATE = "full-launch.before"
# Plan values that only the plan carries: the UI may show them only once decrypted.
FLAG_KEY = "zebra-canary-flag-4f9c"
APPROVER = "approver-okapi-81"
ENCRYPTED = "binary/encrypted"


@dataclass
class WaitingLaunch:
    client: Client
    handle: WorkflowHandle[LaunchWorkflow, Any]
    url: str


def recognisable_plan(flag_file: Path) -> LaunchPlan:
    """One full launch behind a gate; no analysis, so no Prometheus."""
    return make_plan(
        flag_file=flag_file,
        targets={
            "prometheus": {"url": "http://127.0.0.1:9090"},
            "router": {"kind": "flagd", "flag_file": str(flag_file), "flag_key": FLAG_KEY},
        },
        approvals={
            "identity": "none",
            "approvers": [APPROVER],
            "timeout": "1h",
            "on_timeout": "reject",
        },
        analysis={},
        phases=[
            {
                "name": "full-launch",
                "kind": "full_launch",
                "gates": {"before": {"approvers": [APPROVER]}},
                "steps": [{"weight": 50}, {"weight": 100}],
            }
        ],
    )


@pytest.fixture(scope="module")
def codec_ui_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def codec(
    tmp_path_factory: pytest.TempPathFactory, payload_keys_file: Path, codec_ui_port: int
) -> Iterator[CodecServer]:
    """`phasegate codec-server` admitting the codec UI's origin."""
    with codec_server(
        tmp_path_factory.mktemp("codec"),
        payload_keys_file,
        [f"http://127.0.0.1:{codec_ui_port}"],
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def codec_env(
    tmp_path_factory: pytest.TempPathFactory,
    codec: CodecServer,
    codec_ui_port: int,
    encrypted_converter: DataConverter,
) -> AsyncIterator[WorkflowEnvironment]:
    """A dev server whose UI decodes payloads through the codec server."""
    db = tmp_path_factory.mktemp("temporal-codec") / "temporal.db"
    env = await WorkflowEnvironment.start_local(
        data_converter=encrypted_converter,
        dev_server_existing_path=binary("temporal", "PHASEGATE_TEMPORAL_BIN"),
        search_attributes=[SERVICE, PHASE, STATUS],
        dev_server_extra_args=["--db-filename", str(db), "--ui-codec-endpoint", codec.url],
        ui=True,
        ui_port=codec_ui_port,
    )
    yield env
    await env.shutdown()


async def waiting_launch(
    client: Client, ui_port: int, tmp_path: Path
) -> AsyncIterator[WaitingLaunch]:
    """A launch on a worker that encrypts every payload, waiting at its gate."""
    async with running_worker(client) as task_queue:
        settings = Settings().model_copy(
            update={
                "task_queue": task_queue,
                "temporal_namespace": client.namespace,
                "ui_url": f"http://127.0.0.1:{ui_port}",
            }
        )
        plan = recognisable_plan(tmp_path / f"flags-{uuid.uuid4().hex[:8]}.json")
        handle = await start_launch(client, plan, settings=settings)
        await gate_open_on(client, handle)
        yield WaitingLaunch(client=client, handle=handle, url=ui_link(settings, handle.id))
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate("test over")


async def gate_open_on(client: Client, handle: WorkflowHandle[LaunchWorkflow, Any]) -> None:
    # `gate_open` only lets workflow time move on through the environment it is given; on a
    # dev server that is real time, which any environment of the client's server lets pass.
    env = WorkflowEnvironment.from_client(client)
    await gate_open(env, handle, GATE, timeout=60.0)


@pytest.fixture
async def decoded_launch(
    codec_env: WorkflowEnvironment, codec_ui_port: int, tmp_path: Path
) -> AsyncIterator[WaitingLaunch]:
    async for launch in waiting_launch(codec_env.client, codec_ui_port, tmp_path):
        yield launch


@pytest.fixture
async def encrypted_launch(
    dev_env: WorkflowEnvironment,
    dev_ui_port: int,
    encrypted_converter: DataConverter,
    tmp_path: Path,
) -> AsyncIterator[WaitingLaunch]:
    """A launch on the session's dev server, whose UI has no codec endpoint."""
    client = with_converter(dev_env.client, encrypted_converter)
    async for launch in waiting_launch(client, dev_ui_port, tmp_path):
        yield launch


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def with_codec_token(page: Page, codec: CodecServer) -> list[str]:
    """Send the codec server's token on every request to its origin; what it answered, as
    `METHOD /path STATUS`."""
    answered: list[str] = []

    async def authorize(route: Route) -> None:
        request = route.request
        headers = {**request.headers, "authorization": f"Bearer {codec.token}"}
        response = await route.fetch(headers=headers)
        answered.append(f"{request.method} {urlsplit(request.url).path} {response.status}")
        await route.fulfill(response=response)

    await page.route(f"{codec.url}/**", authorize)
    return answered


async def input_ciphertext(launch: WaitingLaunch) -> str:
    """The start of the launch's input as it rests in history, base64 as the UI shows it."""
    history = await launch.handle.fetch_history()
    (launch_input,) = history.events[0].workflow_execution_started_event_attributes.input.payloads
    assert launch_input.metadata["encoding"] == ENCRYPTED.encode()
    return base64.b64encode(launch_input.data).decode()[:40]


async def test_the_ui_shows_the_plan_through_the_codec_server(
    decoded_launch: WaitingLaunch, codec: CodecServer, browser: Browser, tmp_path: Path
) -> None:
    async with new_page(browser, tmp_path / "decoded.png") as page:
        answered = await with_codec_token(page, codec)
        await page.goto(decoded_launch.url)

        body = page.locator("body")
        await expect(body).to_contain_text(FLAG_KEY, timeout=FIRST_RENDER_TIMEOUT_MS)
        await expect(body).to_contain_text(APPROVER)
        await expect(body).not_to_contain_text(await input_ciphertext(decoded_launch))

    assert answered
    assert set(answered) == {"POST /decode 200"}


async def test_without_the_codec_server_the_ui_shows_ciphertext(
    encrypted_launch: WaitingLaunch, browser: Browser, tmp_path: Path
) -> None:
    ciphertext = await input_ciphertext(encrypted_launch)

    async with new_page(browser, tmp_path / "encrypted.png") as page:
        await page.goto(encrypted_launch.url)

        # The launch's input, as the UI shows a payload it cannot decode: its data, base64.
        body = page.locator("body")
        await expect(body).to_contain_text(ciphertext, timeout=FIRST_RENDER_TIMEOUT_MS)
        text = await body.inner_text()

    assert FLAG_KEY not in text
    assert APPROVER not in text


async def test_the_raw_history_holds_no_plan_field_in_clear(
    encrypted_launch: WaitingLaunch, dev_env: WorkflowEnvironment
) -> None:
    # Read as anyone with access to the server reads it: a client without the keys.
    history = await dev_env.client.get_workflow_handle(encrypted_launch.handle.id).fetch_history()
    assert clear_text_in(history, [FLAG_KEY, APPROVER, "flags-", "full-launch.before"]) == []
    # Still the launch it is: a client with the keys reads the plan back.
    status = await launch_status(encrypted_launch.handle)
    assert status.open_gate is not None
    assert status.open_gate.gate == GATE


async def test_the_cli_reads_an_encrypted_launch_only_with_the_keys(
    encrypted_launch: WaitingLaunch,
    dev_env: WorkflowEnvironment,
    payload_keys_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings().model_copy(
        update={
            "temporal_address": dev_env.client.service_client.config.target_host,
            "temporal_namespace": dev_env.client.namespace,
        }
    )
    monkeypatch.setenv("PHASEGATE_PAYLOAD_KEYS", str(payload_keys_file))
    with_keys = await asyncio.to_thread(against, settings, "status", encrypted_launch.handle.id)
    monkeypatch.delenv("PHASEGATE_PAYLOAD_KEYS")
    without = await asyncio.to_thread(against, settings, "status", encrypted_launch.handle.id)

    assert with_keys.exit_code == 0, with_keys.output
    assert GATE in with_keys.output
    assert without.exit_code == 1
    assert without.output.strip() == (
        "a payload is encrypted (payload key 'test-payloads-1') and no payload keys are set: "
        "point PHASEGATE_PAYLOAD_KEYS at the deployment's payload key file"
    )


def temporal_show(env: WorkflowEnvironment, workflow_id: str, codec: dict[str, str]) -> str:
    """`temporal workflow show --output json`, as an operator runs it; `codec` is the CLI's
    codec settings (TEMPORAL_CODEC_*), in its environment so the token is in no argv."""
    own = {key: value for key, value in os.environ.items() if not key.startswith("TEMPORAL_")}
    done = subprocess.run(
        [
            binary("temporal", "PHASEGATE_TEMPORAL_BIN"),
            "workflow",
            "show",
            "--address",
            env.client.service_client.config.target_host,
            "--namespace",
            env.client.namespace,
            "--workflow-id",
            workflow_id,
            "--output",
            "json",
        ],
        env={**own, **codec},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_the_temporal_cli_decodes_through_the_codec_server_with_its_token(
    decoded_launch: WaitingLaunch, codec_env: WorkflowEnvironment, codec: CodecServer
) -> None:
    workflow_id = decoded_launch.handle.id
    # The Temporal CLI's own templating: the namespace is a path segment of the endpoint.
    endpoint = f"{codec.url}/{{namespace}}"

    raw = await asyncio.to_thread(temporal_show, codec_env, workflow_id, {})
    decoded = await asyncio.to_thread(
        temporal_show,
        codec_env,
        workflow_id,
        {"TEMPORAL_CODEC_ENDPOINT": endpoint, "TEMPORAL_CODEC_AUTH": f"Bearer {codec.token}"},
    )

    assert base64.b64encode(ENCRYPTED.encode()).decode() in raw
    assert base64.b64encode(ENCRYPTED.encode()).decode() not in decoded
    for shown in (raw, decoded):
        assert FLAG_KEY not in shown  # payload data is base64 in JSON either way
    started = json.loads(decoded)["events"][0]["workflowExecutionStartedEventAttributes"]
    (launch_input,) = started["input"]["payloads"]
    assert base64.b64decode(launch_input["metadata"]["encoding"]) == b"json/plain"
    plan = json.loads(base64.b64decode(launch_input["data"]))["plan"]
    assert plan["targets"]["router"]["flag_key"] == FLAG_KEY
    assert plan["approvals"]["approvers"] == [APPROVER]
