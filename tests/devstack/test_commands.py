"""`phasegate demo` and `phasegate dev` stopped by SIGINT, SIGTERM and SIGHUP, as Ctrl-C,
`timeout`, a supervisor or a closed terminal stop them: each exits 128 + the signal's number
with one line saying so, and every process it started is gone, its ports free again.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from devstack.processes import PROMETHEUS_NOT_FOUND, TEMPORAL_NOT_FOUND, free_port

pytestmark = pytest.mark.integration

PHASEGATE = Path(sys.executable).parent / "phasegate"
STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
DEMO_READY_S = 150.0  # dev server, demo service, Prometheus's first scrape, worker, launch
DEV_READY_S = 90.0
STOPPED_S = 60.0  # each component gets SIGTERM, then SIGKILL after a few seconds
GONE_S = 10.0  # a SIGKILLed process is gone (and its ports free) within moments


@dataclass(frozen=True)
class Started:
    """A process the command started, as seen while the command ran."""

    pid: int
    create_time: float
    cmdline: str
    listening: frozenset[tuple[int, str, int]]  # (family, address, port)

    def still_running(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            # The same pid with another start time is a new process; a zombie holds nothing.
            return (
                process.create_time() == self.create_time
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.NoSuchProcess:
            return False


class Command:
    """A `phasegate` command run as a user runs it, its output read as it comes."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [str(PHASEGATE), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={"COLUMNS": "250", "PATH": f"{PHASEGATE.parent}:/usr/bin:/bin"},
        )
        self.lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float) -> None:
        """Until a line of output contains `text`; fails with the output if none does."""

        def seen() -> bool:
            return any(text in line for line in self.lines)

        with self._changed:
            self._changed.wait_for(lambda: seen() or self._ended, timeout)
            if not seen():
                pytest.fail(
                    f"no line with {text!r} within {timeout:g}s (exit code "
                    f"{self.process.poll()}); output:\n" + "\n".join(self.lines)
                )

    def started(self) -> list[Started]:
        """Every process below the command now; each component runs in a session of its
        own, but is still the command's child."""
        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                listening = frozenset(
                    (int(conn.family), conn.laddr.ip, conn.laddr.port)
                    for conn in child.net_connections(kind="inet")
                    if conn.status == psutil.CONN_LISTEN
                )
                found.append(
                    Started(child.pid, child.create_time(), " ".join(child.cmdline()), listening)
                )
        return found

    def stop_by(self, signum: signal.Signals) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(STOPPED_S)
        self._reader.join(STOPPED_S)
        return code

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()


@pytest.fixture
def commands() -> Iterator[list[Command]]:
    """Commands a test starts; whatever a failing test leaves running is killed after it."""
    started: list[Command] = []
    yield started
    for command in started:
        leftovers = []
        with contextlib.suppress(psutil.NoSuchProcess):
            leftovers = psutil.Process(command.process.pid).children(recursive=True)
        command.process.kill()
        command.process.wait()
        for process in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


@pytest.fixture(scope="module")
def binaries() -> None:
    """The demo's servers; a missing one is a broken install, never a reason to skip."""
    if not (shutil.which("prometheus") or Path("/usr/bin/prometheus").exists()):
        pytest.fail(PROMETHEUS_NOT_FOUND)
    if not Path(sys.executable).with_name("temporal").exists():
        pytest.fail(TEMPORAL_NOT_FOUND)


def wait_until_gone(started: list[Started]) -> list[Started]:
    """The processes still running after GONE_S (none, when the command cleaned up)."""
    deadline = time.monotonic() + GONE_S
    while True:
        running = [process for process in started if process.still_running()]
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.1)


def running_in(folder: Path) -> list[str]:
    """Processes working in `folder` or naming it: every component a command starts runs in
    its work folder, including one started after the last look at the command's children."""
    found = []
    for process in psutil.process_iter(["cwd", "cmdline", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cwd = process.info["cwd"] or ""
        cmdline = " ".join(process.info["cmdline"] or [])
        if cwd.startswith(str(folder)) or str(folder) in cmdline:
            found.append(f"{process.pid} in {cwd}: {cmdline}")
    return found


def port_is_free(family: int, address: str, port: int) -> bool:
    """Whether a server could listen on `address:port` now (as one restarting would)."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def assert_stopped_cleanly(
    command: Command, signum: signal.Signals, started: list[Started], name: str, workdir: Path
) -> None:
    code = command.stop_by(signum)
    output = command.output
    assert code == 128 + signum.value, output
    assert output.splitlines()[-1] == (
        f"phasegate {name}: stopped by {signum.name}; every process it started is stopped"
    ), output
    left = wait_until_gone(started)
    assert not left, f"still running after {signum.name}: {left}"
    assert not running_in(workdir)
    held = sorted(
        (port, address)
        for process in started
        for family, address, port in process.listening
        if not port_is_free(family, address, port)
    )
    assert not held, f"ports still taken after {signum.name}: {held}"


@pytest.mark.usefixtures("binaries")
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: s.name)
def test_demo_waiting_at_its_first_gate_stops_everything_it_started(
    tmp_path: Path, commands: list[Command], signum: signal.Signals
) -> None:
    demo = Command("demo", "--workdir", str(tmp_path / "demo"))
    commands.append(demo)
    demo.wait_for_line("decision on gate `soft-launch.before`", DEMO_READY_S)
    started = demo.started()
    for component in (
        "temporal server start-dev",
        "prometheus --config.file",
        "-m devstack.demo_service --host",
        "-m devstack.demo_service.load",
        "-m workers.main",
    ):
        assert any(component in process.cmdline for process in started), (component, started)
    assert any(process.listening for process in started), started

    assert_stopped_cleanly(demo, signum, started, "demo", tmp_path)


@pytest.mark.usefixtures("binaries")
def test_demo_still_starting_its_stack_stops_at_once(
    tmp_path: Path, commands: list[Command]
) -> None:
    demo = Command("demo", "--workdir", str(tmp_path / "demo"))
    commands.append(demo)
    # Printed once the dev server is ready, as the demo service and Prometheus start.
    demo.wait_for_line("Temporal dev server on 127.0.0.1:", DEMO_READY_S)
    started = demo.started()
    assert any("temporal server start-dev" in process.cmdline for process in started), started

    assert_stopped_cleanly(demo, signal.SIGTERM, started, "demo", tmp_path)
    # Stopped there, not once the launch had started.
    assert not any(line.startswith("launch ") for line in demo.lines), demo.output


@pytest.mark.usefixtures("binaries")
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: s.name)
def test_dev_server_stops_with_the_command(
    tmp_path: Path, commands: list[Command], signum: signal.Signals
) -> None:
    port, ui_port = free_port(), free_port()
    dev = Command(
        "dev",
        "--db-file",
        str(tmp_path / "temporal.db"),
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
    )
    commands.append(dev)
    dev.wait_for_line("Ctrl-C stops.", DEV_READY_S)
    started = dev.started()
    assert [process.cmdline.split()[1:3] for process in started] == [["server", "start-dev"]]
    ports = {port for _, _, port in started[0].listening}
    assert {port, ui_port} <= ports, started

    assert_stopped_cleanly(dev, signum, started, "dev", tmp_path)
