"""The `phasegate` command line for the tests: in-process against a server of the test's
choosing, or as a user runs it, the installed script in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from devstack.processes import free_port
from starters.cli import app
from workers.settings import Settings

runner = CliRunner()


def phasegate(*args: str) -> Result:
    """`phasegate ARGS` in this process, on a terminal 200 columns wide."""
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def against(settings: Settings, *args: str) -> Result:
    """`phasegate ARGS` pointed at the server, namespace, task queue and UI of `settings`."""
    return phasegate(
        "--address",
        settings.temporal_address,
        "--namespace",
        settings.temporal_namespace,
        "--task-queue",
        settings.task_queue,
        "--ui-url",
        settings.ui_url,
        *args,
    )


def status_until(
    settings: Settings,
    launch_id: str,
    done: Callable[[dict[str, Any]], bool],
    *,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """`phasegate status LAUNCH_ID --json`, asked again until `done` holds for its answer; the
    test fails with the last answer after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = against(settings, "status", launch_id, "--json")
        assert result.exit_code == 0, result.output
        current: dict[str, Any] = json.loads(result.stdout)
        if done(current):
            return current
        assert time.monotonic() < deadline, f"timed out; last status:\n{result.stdout}"
        time.sleep(0.2)


def unused_address() -> str:
    """A loopback address nothing listens on."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def dev_settings(dev_env: WorkflowEnvironment) -> Settings:
    """Where the session's dev server is, with a task queue for this test alone."""
    return Settings().model_copy(
        update={
            "temporal_address": dev_env.client.service_client.config.target_host,
            "temporal_namespace": dev_env.client.namespace,
            "task_queue": f"cli-test-{uuid.uuid4()}",
            "ui_url": "http://ui.example",
            "graceful_shutdown_seconds": 5.0,
        }
    )


@dataclass
class Finished:
    returncode: int
    output: str  # stdout, then stderr


def run_phasegate(*args: str, columns: int = 200) -> Finished:
    """The installed `phasegate` script run with `args` in a process of its own, with only the
    system's and the virtualenv's programs on PATH; it gets five minutes."""
    script = Path(sys.executable).parent / "phasegate"
    run = subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": str(columns), "PATH": str(script.parent) + ":/usr/bin:/bin"},
        check=False,
    )
    return Finished(run.returncode, run.stdout + run.stderr)
