"""The throwaway PostgreSQL cluster under `stop_on_signals`, stopped by SIGTERM while its server
starts and while it runs: the command exits 143 and no server of that data folder is left.
"""

from __future__ import annotations

import contextlib
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psutil
import pytest

from devstack.postgres_cluster import server_bin_dir
from devstack.processes import BinaryNotFoundError

pytestmark = pytest.mark.integration

STARTED_S = 60.0  # initdb, then the server process is there
STOPPED_S = 30.0
GONE_S = 10.0

# A command holding a cluster. "starting": the server never answers, so the signal lands in
# the wait for it to be ready; "running": the cluster is ready and the command waits.
COMMAND = """
import sys, time
from pathlib import Path
from devstack.postgres_cluster import PostgresCluster, postgres_cluster
from devstack.processes import stop_on_signals

if sys.argv[2] == "starting":
    PostgresCluster.accepts_connections = lambda self: False
with stop_on_signals("postgres-holder"), postgres_cluster(Path(sys.argv[1])):
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def installed() -> None:
    """PostgreSQL's server binaries; missing is a broken install, never a reason to skip."""
    try:
        server_bin_dir()
    except BinaryNotFoundError as err:
        pytest.fail(f"{err} (deploy/setup.sh installs it)")


@pytest.fixture
def holder() -> Iterator[list[subprocess.Popen[str]]]:
    """Commands a test starts; whatever a failing test leaves running is killed after it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for command in started:
        leftovers = []
        with contextlib.suppress(psutil.NoSuchProcess):
            leftovers = psutil.Process(command.pid).children(recursive=True)
        command.kill()
        command.wait()
        for process in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def server_of(command: subprocess.Popen[str]) -> tuple[psutil.Process, str]:
    """The command's PostgreSQL server and its data folder, once it has started one."""
    deadline = time.monotonic() + STARTED_S
    while time.monotonic() < deadline:
        assert command.poll() is None, command.communicate()
        for child in psutil.Process(command.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                argv = child.cmdline()
                if argv and Path(argv[0]).name == "postgres" and "-D" in argv:
                    return child, argv[argv.index("-D") + 1]
        time.sleep(0.05)
    pytest.fail(f"no PostgreSQL server started within {STARTED_S:g}s")


def read_line(stream: IO[str], timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


def running(processes: list[psutil.Process]) -> list[str]:
    """Those of `processes` still running (`is_running` also tells a reused pid apart)."""
    found = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{process.pid}: {' '.join(process.cmdline())}")
    return found


def naming(data_dir: str) -> list[str]:
    """Every live process whose command line names `data_dir`."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if data_dir in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"{process.pid}: {cmdline}")
    return found


def wait_until_gone(processes: list[psutil.Process], data_dir: str) -> list[str]:
    """What still runs of the server after GONE_S (nothing, when it was stopped)."""
    deadline = time.monotonic() + GONE_S
    while True:
        left = running(processes) + naming(data_dir)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("moment", ["starting", "running"])
def test_a_stop_signal_leaves_no_postgres_server(
    tmp_path: Path, holder: list[subprocess.Popen[str]], moment: str
) -> None:
    command = subprocess.Popen(
        [sys.executable, "-c", COMMAND, str(tmp_path / "postgres"), moment],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    holder.append(command)
    server, data_dir = server_of(command)
    if moment == "running":
        assert command.stdout is not None
        assert read_line(command.stdout, STARTED_S) == "ready\n"
    # The server's own processes leave its process group, so each one is looked after.
    processes = [server, *server.children(recursive=True)]
    assert running(processes)

    command.send_signal(signal.SIGTERM)
    code = command.wait(STOPPED_S)

    output, errors = command.communicate()
    assert code == 128 + signal.SIGTERM, errors
    if moment == "starting":
        assert output == ""  # stopped before the cluster was ready
    assert errors.splitlines()[-1] == (
        "postgres-holder: stopped by SIGTERM; every process it started is stopped"
    )
    assert wait_until_gone(processes, data_dir) == []
    assert not Path(data_dir).exists()
