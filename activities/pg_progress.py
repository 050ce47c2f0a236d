"""Honest heartbeats for long PostgreSQL work, and the timeouts that bound it.

A heartbeat says the work is moving, so it comes from the work itself: the activity's own
loop (`Progress.step`, per table, batch or script), the server's view of one long statement
(`watching_statement`: pg_stat_activity and pg_stat_progress_* for its backend), or
pg_dump/pg_restore's own output (`run_tool`). Nothing beats on a timer alone, so a hung
statement or a dead tool falls silent and Temporal's heartbeat timeout notices. Cancelling the
activity stops the server-side statement or the tool. Every connection gets session timeouts
no longer than the activity (`connection_options`, `activity_budget`), and workflows size
activity timeouts from measured table sizes (`sized_timeout`, pure: no I/O, no clock).

Heartbeat details are a JSON object of names, states and counts only: never a query's text or
a row value.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeAlias, runtime_checkable

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from temporalio import activity
from temporalio.exceptions import CancelledError

JsonValue: TypeAlias = "str | int | float | bool | list[JsonValue] | dict[str, JsonValue] | None"
Details: TypeAlias = dict[str, JsonValue]

# The work reports as often as it likes; Temporal hears at most this often.
HEARTBEAT_EVERY = timedelta(seconds=1)
# How often a watcher asks the server about a statement or a tool's sessions.
WATCH_EVERY = timedelta(seconds=2)
# How long a cancelled statement or a terminated tool gets before the harder stop.
STOP_GRACE = timedelta(seconds=5)
WATCHER_CONNECT_TIMEOUT_S = 5
WATCHER_STATEMENT_TIMEOUT_MS = 5000
TOOL_CONNECT_TIMEOUT_S = 10
STDERR_TAIL_CHARS = 4000
# A backend in these states is doing (or holding) the work; `idle` means the statement is over.
LIVE_STATES = frozenset({"active", "idle in transaction"})
# PostgreSQL's largest timeout setting (milliseconds in an int); 0 would mean "no timeout".
_LONGEST_TIMEOUT_MS = 2**31 - 1
_PROGRESS_VIEWS = ("create_index", "copy", "cluster", "vacuum")
_CHUNK = 64 * 1024
# Only a tool's own progress lines go into a heartbeat: never its errors or their details,
# which can quote rows (continuation lines lack the `program:` prefix and are skipped too).
_NOT_PROGRESS = re.compile(r"^(error|warning|detail|hint|fatal)\b|ERROR:|DETAIL:", re.IGNORECASE)
_TABLE_LINE = re.compile(r'(?:dumping contents of|processing data for) table "([^"]+)"')


# --- the activity's own progress --------------------------------------------------------


class Progress:
    """What the activity is doing, heartbeated when the work reports it (at most every
    `every`); outside an activity it only remembers. Safe to share with watcher threads."""

    def __init__(self, doing: str = "starting", *, every: timedelta = HEARTBEAT_EVERY) -> None:
        self._lock = threading.Lock()
        self._every = every.total_seconds()
        self._started = time.monotonic()
        self._last_beat: float | None = None
        self._state: Details = {"doing": doing}

    def step(
        self,
        doing: str,
        *,
        table: str | None = None,
        done_rows: int | None = None,
        total_rows: int | None = None,
        **details: JsonValue,
    ) -> bool:
        """Report the current step (replacing the last one); heartbeats unless one went out
        less than `every` ago. Returns whether it heartbeated."""
        state: Details = {"doing": doing}
        if table is not None:
            state["table"] = table
        if done_rows is not None:
            state["done_rows"] = done_rows
        if total_rows is not None:
            state["total_rows"] = total_rows
        state.update(details)
        with self._lock:
            self._state = state
        return self._beat({})

    def heartbeat_with(self, evidence: Mapping[str, JsonValue]) -> bool:
        """Heartbeat the current step with `evidence` that work is happening (the server's
        view of a statement), throttled like `step`. For watchers, not the work itself."""
        return self._beat(evidence)

    @property
    def details(self) -> Details:
        """The current step as the next heartbeat would carry it."""
        with self._lock:
            return self._with_elapsed({})

    def _with_elapsed(self, evidence: Mapping[str, JsonValue]) -> Details:
        elapsed = round(time.monotonic() - self._started, 1)
        return {**self._state, **evidence, "elapsed_s": elapsed}

    def _beat(self, evidence: Mapping[str, JsonValue]) -> bool:
        if not activity.in_activity():
            return False
        now = time.monotonic()
        with self._lock:
            if self._last_beat is not None and now - self._last_beat < self._every:
                return False
            self._last_beat = now
            details = self._with_elapsed(evidence)
        activity.heartbeat(details)
        return True


def _cancelled() -> bool:
    return activity.in_activity() and activity.is_cancelled()


def _shielded() -> contextlib.AbstractContextManager[None]:
    """Defer the cancellation a sync activity's thread receives until clean-up is done."""
    if activity.in_activity():
        return activity.shield_thread_cancel_exception()
    return contextlib.nullcontext()


def _logger_warning(message: str) -> None:
    if activity.in_activity():
        activity.logger.warning(message)


def _in_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread running `target` in this activity's context (heartbeat, cancellation)."""
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,), name=name, daemon=True)
    thread.start()
    return thread


# --- the server's view of a backend -------------------------------------------------------


@dataclass(frozen=True)
class _Backend:
    pid: int
    state: str | None
    evidence: Details


class _ServerView:
    """The watcher's own short connection (reopened when it breaks) to read and stop backends.
    Reading returns None when the server cannot be reached: no evidence, no heartbeat."""

    def __init__(self, dsn_params: Mapping[str, str]) -> None:
        params = dict(dsn_params)
        own = f"-c statement_timeout={WATCHER_STATEMENT_TIMEOUT_MS}"
        params["options"] = f"{params['options']} {own}" if params.get("options") else own
        params["connect_timeout"] = str(WATCHER_CONNECT_TIMEOUT_S)
        params["application_name"] = "phasegate watcher"
        self._conninfo = make_conninfo("", **params)
        self._conn: psycopg.Connection[Any] | None = None
        self._query: sql.Composed | None = None
        self._reachable = True

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def backends(
        self, *, pids: Collection[int] = (), application: str | None = None
    ) -> list[_Backend] | None:
        """The backends with these pids or this application_name, or None if unreachable."""
        try:
            conn = self._connection()
            if self._query is None:
                self._query = _backends_query(conn)
            rows = conn.execute(
                self._query, {"pids": list(pids), "application": application}
            ).fetchall()
        except psycopg.Error as err:
            self._broken(err)
            return None
        return [_backend(row) for row in rows]

    def stop(self, pids: Collection[int], grace: timedelta) -> bool:
        """Cancel the statements of these backends that are running, then terminate those
        still running after `grace`. False when the server could not be reached to do so."""
        for function in ("pg_cancel_backend", "pg_terminate_backend"):
            running = self._running(pids)
            if running is None:
                return False
            if not running:
                return True
            try:
                self._connection().execute(
                    sql.SQL("SELECT {}(pid) FROM unnest(%s::int[]) AS pid").format(
                        sql.Identifier(function)
                    ),
                    (running,),
                )
            except psycopg.Error as err:
                self._broken(err)
                return False
            _logger_warning(f"{function} for backends {running}")
            deadline = time.monotonic() + grace.total_seconds()
            while time.monotonic() < deadline:
                still = self._running(running)
                if still is None:
                    return False
                if not still:
                    return True
                time.sleep(0.2)
        return True

    def _running(self, pids: Collection[int]) -> list[int] | None:
        found = self.backends(pids=pids)
        if found is None:
            return None
        return [backend.pid for backend in found if backend.state == "active"]

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo, autocommit=True)
            self._reachable = True
        return self._conn

    def _broken(self, err: psycopg.Error) -> None:
        if self._reachable:
            # Only the error's class: a connection error can quote the connection string.
            _logger_warning(
                f"the watcher cannot reach PostgreSQL ({type(err).__name__}): no heartbeats "
                "from it until it can"
            )
        self._reachable = False
        self.close()


def _backends_query(conn: psycopg.Connection[Any]) -> sql.Composed:
    """pg_stat_activity joined with whichever pg_stat_progress_* views this server has."""
    names = [f"pg_stat_progress_{view}" for view in _PROGRESS_VIEWS]
    present = {
        row[0]
        for row in conn.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'pg_catalog' AND c.relname = ANY(%s)",
            (names,),
        )
    }
    parts = [
        sql.SQL(
            "SELECT {kind} AS view, v.pid, v.relid::regclass::text AS relation, "
            "to_jsonb(v) - 'pid' - 'datid' - 'datname' - 'relid' AS counters "
            "FROM pg_catalog.{name} v"
        ).format(kind=sql.Literal(view), name=sql.Identifier(name))
        for view, name in zip(_PROGRESS_VIEWS, names, strict=True)
        if name in present
    ]
    progress = (
        sql.SQL(" UNION ALL ").join(parts)
        if parts
        else sql.SQL("SELECT NULL::text, NULL::int, NULL::text, NULL::jsonb WHERE false")
    )
    return sql.SQL(
        "SELECT a.pid, a.state, a.wait_event_type, a.wait_event, "
        "extract(epoch FROM clock_timestamp() - a.query_start)::float8, "
        "p.view, p.relation, p.counters "
        "FROM pg_catalog.pg_stat_activity a "
        "LEFT JOIN ({progress}) AS p(view, pid, relation, counters) ON p.pid = a.pid "
        "WHERE a.pid = ANY(%(pids)s::int[]) OR a.application_name = %(application)s "
        "ORDER BY a.pid"
    ).format(progress=progress)


def _backend(row: Sequence[Any]) -> _Backend:
    pid, state, wait_type, wait_event, running_s, view, relation, counters = row
    evidence: Details = {
        "pid": int(pid),
        "state": state,
        "wait": f"{wait_type}:{wait_event}" if wait_event else None,
        "running_s": round(float(running_s), 1) if running_s is not None else None,
    }
    if view is not None:
        evidence["progress"] = {"view": view, "relation": relation, **dict(counters or {})}
    return _Backend(pid=int(pid), state=state, evidence=evidence)


# --- one long statement ---------------------------------------------------------------


@dataclass
class StatementWatch:
    """What the watcher saw of one statement's backend. `ended` says why it stopped:
    "finished" (the block ended), "backend gone", "cancelled" (the activity was), or
    "not in an activity" (nothing to heartbeat to, so nothing watched)."""

    pid: int
    what: str
    polls: int = 0
    beats: int = 0
    unreachable: int = 0
    ended: str | None = None
    stopped: threading.Event = field(default_factory=threading.Event)


@contextmanager
def watching_statement(
    conn: psycopg.Connection[Any],
    progress: Progress,
    what: str,
    dsn_params: Mapping[str, str],
    *,
    every: timedelta = WATCH_EVERY,
) -> Iterator[StatementWatch]:
    """Heartbeat while the server confirms `conn`'s backend is working on the block's
    statement; stop the statement when the activity is cancelled or the block fails.

    A watcher thread reads pg_stat_activity (and pg_stat_progress_*) for the backend every
    `every` over its own connection to `dsn_params` (the same database and role as `conn`),
    and heartbeats `progress` with that evidence only while the backend is `active` or
    `idle in transaction`. A backend that is gone ends the watch; a server it cannot reach
    gets no heartbeat. Cancellation, or an exception leaving the block, cancels the running
    statement (pg_cancel_backend, then pg_terminate_backend after `STOP_GRACE`); a cancelled
    activity's block then raises temporalio's CancelledError.
    """
    watch = StatementWatch(pid=conn.info.backend_pid, what=what)
    if not activity.in_activity():
        watch.ended = "not in an activity"
        watch.stopped.set()
        yield watch
        return
    watcher = _StatementWatcher(conn, progress, watch, dsn_params, every)
    try:
        with _shielded():
            watcher.start()
        yield watch
    except BaseException as err:
        with _shielded():
            watcher.finish(stop_statement=True)
        if activity.is_cancelled() and not isinstance(err, CancelledError):
            raise CancelledError(f"{what}: stopped, the activity was cancelled") from err
        raise
    else:
        with _shielded():
            watcher.finish(stop_statement=False)


class _StatementWatcher:
    def __init__(
        self,
        conn: psycopg.Connection[Any],
        progress: Progress,
        watch: StatementWatch,
        dsn_params: Mapping[str, str],
        every: timedelta,
    ) -> None:
        self._conn = conn
        self._progress = progress
        self._watch = watch
        self._view = _ServerView(dsn_params)
        self._every = every.total_seconds()
        self._done = threading.Event()
        self._stop_statement = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = _in_thread(self._run, f"watching backend {self._watch.pid}")

    def finish(self, *, stop_statement: bool) -> None:
        self._stop_statement = stop_statement
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        watch = self._watch
        try:
            while watch.ended is None:
                self._poll()
                if watch.ended is None and self._done.wait(self._every):
                    watch.ended = "finished"
            if self._stop_statement and watch.ended != "backend gone":
                self._stop()
        finally:
            self._view.close()
            watch.stopped.set()

    def _poll(self) -> None:
        watch = self._watch
        if _cancelled():
            watch.ended = "cancelled"
            self._stop()
            return
        found = self._view.backends(pids=(watch.pid,))
        watch.polls += 1
        if found is None:
            watch.unreachable += 1
            return
        if not found:
            watch.ended = "backend gone"
            _logger_warning(f"{watch.what}: backend {watch.pid} is gone; heartbeats stop")
            return
        backend = found[0]
        if backend.state in LIVE_STATES and self._progress.heartbeat_with(
            {"statement": watch.what, "server": backend.evidence}
        ):
            watch.beats += 1
        # A sync activity learns of its cancellation from a heartbeat's answer.
        if _cancelled():
            watch.ended = "cancelled"
            self._stop()

    def _stop(self) -> None:
        if not self._view.stop((self._watch.pid,), STOP_GRACE):
            # The server is out of the watcher's reach: ask over the statement's own socket.
            with contextlib.suppress(psycopg.Error):
                self._conn.cancel_safe(timeout=STOP_GRACE.total_seconds())


# --- pg_dump / pg_restore --------------------------------------------------------------


@runtime_checkable
class BytesSink(Protocol):
    def write(self, data: bytes, /) -> object: ...


# A binary file (anything with `write(bytes)`) or a callable taking each chunk.
StdoutTarget: TypeAlias = "Callable[[bytes], object] | BytesSink | None"


class ToolFailed(RuntimeError):
    """pg_dump/pg_restore exited non-zero. The message names only the program and its exit
    status; `stderr_tail` is the tool's own words, for the caller to redact and report."""

    def __init__(self, program: str, returncode: int, stderr_tail: str) -> None:
        super().__init__(f"{program} failed (exit status {returncode})")
        self.program = program
        self.returncode = returncode
        self.stderr_tail = stderr_tail


def run_tool(
    argv: Sequence[str],
    env: Mapping[str, str],
    progress: Progress,
    what: str,
    *,
    stdin: Iterable[bytes] | None = None,
    stdout: StdoutTarget = None,
    dsn_params: Mapping[str, str] | None = None,
) -> tuple[bytes | None, str]:
    """Run pg_dump/pg_restore with `--verbose`, heartbeating from its own output.

    Each stderr line becomes a step ("<what>: dumping contents of table "public.orders""),
    stdout's byte count goes along; with `dsn_params`, a watcher also heartbeats while the
    tool's sessions (found by PGAPPNAME) are working on the server, for long silent steps
    (one big COPY, an index build). `env` gets PGCONNECT_TIMEOUT (10 s unless set) and a
    PGAPPNAME (a fresh one unless set). `stdin`'s chunks, if given, are fed to the tool (an
    archive for pg_restore to read from `-`). Cancelling the activity, or a failure of
    `stdin` or `stdout`, terminates the tool (SIGTERM: it cancels its queries; SIGKILL after
    `STOP_GRACE`); cancellation raises temporalio's CancelledError.

    Returns the tool's stdout (None when `stdout` — a callable or a binary file — took it)
    and the end of its stderr; raises ToolFailed on a non-zero exit.
    """
    program = Path(argv[0]).name
    verbose = [] if {"--verbose", "-v"} & set(argv[1:]) else ["--verbose"]
    application = env.get("PGAPPNAME") or f"phasegate {program} {uuid.uuid4().hex[:8]}"
    full_env = {
        **env,
        "PGCONNECT_TIMEOUT": env.get("PGCONNECT_TIMEOUT", str(TOOL_CONNECT_TIMEOUT_S)),
        "PGAPPNAME": application,
    }
    sink = _sink(stdout)
    captured: list[bytes] = []
    tail: deque[str] = deque(maxlen=200)
    events: queue.Queue[_ToolEvent] = queue.Queue()
    progress.step(what)
    process = subprocess.Popen(
        [argv[0], *verbose, *argv[1:]],
        env=full_env,
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: a parallel run's workers stop with it
    )
    threads = [
        _in_thread(lambda: _read_stderr(process, tail, events), f"{program} stderr"),
        _in_thread(
            lambda: _read_stdout(process, sink or captured.append, events), f"{program} stdout"
        ),
    ]
    if stdin is not None:
        threads.append(_in_thread(lambda: _feed_stdin(process, stdin, events), f"{program} stdin"))
    watcher: _ToolWatcher | None = None
    try:
        if dsn_params is not None:
            watcher = _ToolWatcher(dsn_params, application, progress)
        _follow(process, program, events, progress, what)
    except BaseException:
        with _shielded():
            _stop_process(process)
            if watcher is not None:
                watcher.finish(stop_sessions=True)
        raise
    with _shielded():
        if watcher is not None:
            watcher.finish(stop_sessions=False)
        for thread in threads:
            thread.join()
    stderr_tail = "".join(tail)[-STDERR_TAIL_CHARS:]
    if process.returncode != 0:
        raise ToolFailed(program, process.returncode, stderr_tail)
    return (None if sink is not None else b"".join(captured)), stderr_tail


@dataclass(frozen=True)
class _ToolEvent:
    line: str | None = None
    stdout_bytes: int | None = None
    failure: BaseException | None = None
    closed: str | None = None


def _sink(stdout: StdoutTarget) -> Callable[[bytes], object] | None:
    if stdout is None:
        return None
    if isinstance(stdout, BytesSink):
        return stdout.write
    return stdout


def _read_stderr(
    process: subprocess.Popen[bytes], tail: deque[str], events: queue.Queue[_ToolEvent]
) -> None:
    assert process.stderr is not None
    for raw in process.stderr:
        line = raw.decode(errors="replace")
        tail.append(line)
        events.put(_ToolEvent(line=line))
    events.put(_ToolEvent(closed="stderr"))


def _read_stdout(
    process: subprocess.Popen[bytes],
    sink: Callable[[bytes], object],
    events: queue.Queue[_ToolEvent],
) -> None:
    assert process.stdout is not None
    total = 0
    try:
        while chunk := os.read(process.stdout.fileno(), _CHUNK):
            sink(chunk)
            total += len(chunk)
            events.put(_ToolEvent(stdout_bytes=total))
    except BaseException as err:  # the sink's failure ends the run, in the activity's thread
        events.put(_ToolEvent(failure=err))
    events.put(_ToolEvent(closed="stdout"))


def _feed_stdin(
    process: subprocess.Popen[bytes], source: Iterable[bytes], events: queue.Queue[_ToolEvent]
) -> None:
    assert process.stdin is not None
    try:
        for chunk in source:
            process.stdin.write(chunk)
    except BrokenPipeError:
        pass  # the tool stopped reading: its exit status says why
    except BaseException as err:  # the source's failure ends the run, in the activity's thread
        events.put(_ToolEvent(failure=err))
    finally:
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()


def _follow(
    process: subprocess.Popen[bytes],
    program: str,
    events: queue.Queue[_ToolEvent],
    progress: Progress,
    what: str,
) -> None:
    """Turn the tool's output into steps until it exits; stop there on cancellation."""
    doing, table, written = what, None, 0
    open_streams = {"stdout", "stderr"}
    while open_streams or process.poll() is None:
        if _cancelled():
            raise CancelledError(f"{what}: {program} stopped, the activity was cancelled")
        try:
            event = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if event.failure is not None:
            raise event.failure
        if event.closed is not None:
            open_streams.discard(event.closed)
            continue
        if event.stdout_bytes is not None:
            written = event.stdout_bytes
        if event.line is not None:
            said = _said(event.line, program)
            if said is None:
                continue
            doing = f"{what}: {said}"
            if found := _TABLE_LINE.search(said):
                table = found.group(1)
        progress.step(doing, table=table, stdout_bytes=written)


def _said(line: str, program: str) -> str | None:
    """A progress line of the tool's, without its `program:` prefix; None for anything else."""
    prefix = f"{program}:"
    if not line.startswith(prefix):
        return None
    text = line.removeprefix(prefix).strip()
    if not text or _NOT_PROGRESS.search(text):
        return None
    return text[:200]


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the tool's process group (pg_dump/pg_restore cancel their queries on it), then
    SIGKILL what is left after `STOP_GRACE`."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(STOP_GRACE.total_seconds())
            return
        except subprocess.TimeoutExpired:
            continue
    process.wait()


class _ToolWatcher:
    """Heartbeats while a tool's sessions are working on the server; on a failed or cancelled
    run, stops what they still run."""

    def __init__(self, dsn_params: Mapping[str, str], application: str, progress: Progress) -> None:
        self._view = _ServerView(dsn_params)
        self._application = application
        self._progress = progress
        self._done = threading.Event()
        self._stop_sessions = False
        self._thread = _in_thread(self._run, f"watching {application}")

    def finish(self, *, stop_sessions: bool) -> None:
        self._stop_sessions = stop_sessions
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while not self._done.wait(WATCH_EVERY.total_seconds()):
                found = self._view.backends(application=self._application)
                live = [backend for backend in found or () if backend.state in LIVE_STATES]
                if live:
                    self._progress.heartbeat_with(
                        {"sessions": [backend.evidence for backend in live]}
                    )
            if self._stop_sessions:
                found = self._view.backends(application=self._application) or []
                self._view.stop([backend.pid for backend in found], STOP_GRACE)
        finally:
            self._view.close()


# --- timeouts -------------------------------------------------------------------------


def connection_options(statement_timeout: timedelta, lock_timeout: timedelta | None) -> str:
    """libpq `options` so that no statement, and no open transaction left idle, outlives the
    activity: `-c statement_timeout=… -c idle_in_transaction_session_timeout=…` and, when
    given, `-c lock_timeout=…` (milliseconds, at least 1: PostgreSQL reads 0 as "never")."""
    settings = {
        "statement_timeout": _milliseconds(statement_timeout, "statement_timeout"),
        "idle_in_transaction_session_timeout": _milliseconds(
            statement_timeout, "statement_timeout"
        ),
    }
    if lock_timeout is not None:
        settings["lock_timeout"] = _milliseconds(lock_timeout, "lock_timeout")
    return " ".join(f"-c {name}={value}ms" for name, value in settings.items())


def _milliseconds(value: timedelta, name: str) -> int:
    if value <= timedelta(0):
        raise ValueError(f"{name} must be positive, got {value}")
    return min(max(1, math.ceil(value.total_seconds() * 1000)), _LONGEST_TIMEOUT_MS)


def activity_budget(default: timedelta) -> timedelta:
    """What is left of the current activity's start-to-close (and schedule-to-close) timeout,
    at least one second; `default` outside an activity or when it has no timeout."""
    if not activity.in_activity():
        return default
    info = activity.info()
    now = datetime.now(UTC)
    deadlines = [
        start + timeout
        for start, timeout in (
            (info.started_time, info.start_to_close_timeout),
            (info.scheduled_time, info.schedule_to_close_timeout),
        )
        if timeout
    ]
    if not deadlines:
        return default
    return max(min(deadlines) - now, timedelta(seconds=1))


def sized_timeout(
    bytes_: int, *, rate_bytes_per_s: float, floor: timedelta, ceiling: timedelta
) -> timedelta:
    """An activity timeout for work over `bytes_` of data: `floor` plus three times the time
    at `rate_bytes_per_s`, at most `ceiling`, rounded up to whole seconds. Pure, for
    workflows."""
    if bytes_ < 0:
        raise ValueError(f"bytes_ must not be negative, got {bytes_}")
    if not rate_bytes_per_s > 0:
        raise ValueError(f"rate_bytes_per_s must be positive, got {rate_bytes_per_s}")
    if floor > ceiling:
        raise ValueError(f"floor {floor} is longer than ceiling {ceiling}")
    seconds = floor.total_seconds() + 3 * bytes_ / rate_bytes_per_s
    return min(timedelta(seconds=math.ceil(min(seconds, ceiling.total_seconds()))), ceiling)
