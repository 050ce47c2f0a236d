"""End-to-end fixtures: the demo stack (service under load, Prometheus) and real workers."""

from __future__ import annotations

import concurrent.futures
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from phasegate.activities.flags import canary_weight
from phasegate.starters.demo import DemoStack, demo_stack
from phasegate.workers.main import build_worker
from phasegate.workflows.plan import FlagdRouter


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


@pytest.fixture
async def worker(dev_env: WorkflowEnvironment) -> AsyncIterator[str]:
    """A real worker with the real activities on a task queue of its own; yields the queue."""
    task_queue = f"e2e-{uuid.uuid4()}"
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as executor:
        async with httpx.AsyncClient() as http:
            async with build_worker(dev_env.client, http, executor, task_queue=task_queue):
                yield task_queue


def canary_share(flag_file: Path, flag_key: str) -> float:
    """The canary share the flag file gives right now, in percent."""
    definition = json.loads(flag_file.read_text())["flags"][flag_key]
    return canary_weight(definition, FlagdRouter(flag_file=str(flag_file), flag_key=flag_key))
