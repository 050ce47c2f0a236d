"""SIGKILLing the worker of a running launch at moments a test observes, and starting a fresh
worker on the same task queue after each kill, as a crashing fleet would.

A moment is a condition on what can be seen from outside the worker: PostgreSQL sessions
(by application name, query, and which session blocks them), the launch's pending
activities and their attempts, the phase's and the launch's histories, the open gate.
Sessions count only if they began after the last kill, and attempts only if they are newer
than the ones killed, so a statement a killed worker left running on the server is never
mistaken for the next attempt's. `Blocker` holds a lock the way live traffic does, so a kill
can land while a step waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, LiteralString, Self

import psycopg
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from devstack.processes import ManagedProcess, start_worker
from tests.support.launches import status

POLL_S = 0.02
# Long enough for a killed attempt's heartbeat timeout (30 s at most), its backoff and a
# fresh worker's start.
MOMENT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Moment:
    """A condition to kill at, described for the log and for a timeout's message."""

    what: str
    holds: Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Kill:
    """One SIGKILL: where it was meant to land, when, and what was running at that moment."""

    label: str
    at_s: float
    delay_s: float
    delivered: bool
    running: tuple[str, ...]

    @property
    def activities(self) -> set[str]:
        """The types of the activities running when the kill landed."""
        return {name.split("#")[0] for name in self.running}

    def line(self) -> str:
        delay = f" +{self.delay_s:.2f}s" if self.delay_s else ""
        return (
            f"{self.at_s:7.1f}s {'killed' if self.delivered else 'MISSED'} {self.label}{delay}"
            f" [{', '.join(self.running) or 'no activity running'}]"
        )


class Blocker:
    """A transaction holding a lock (`statement`, e.g. a LOCK TABLE) until released."""

    def __init__(self, dsn: str, statement: LiteralString) -> None:
        self._dsn = dsn
        self._statement = statement
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.pid = 0

    async def __aenter__(self) -> Self:
        self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        self.pid = self._conn.info.backend_pid
        await self._conn.execute("BEGIN")
        await self._conn.execute(self._statement)
        return self

    async def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(psycopg.Error):
                await conn.execute("ROLLBACK")
            await conn.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()


@dataclass
class WorkerKiller:
    """Runs `phasegate-worker` processes on `task_queue` for the launch `launch_id`: one at a
    time, each SIGKILLed at a moment and replaced by a fresh one (started in the background,
    so a lock can be released and a signal sent while it boots)."""

    client: Client
    address: str
    task_queue: str
    launch_id: str
    phase: str
    dsn: str
    workdir: Path
    rng: random.Random
    kills: list[Kill] = field(default_factory=list)
    _worker: ManagedProcess | None = None
    _starting: asyncio.Task[ManagedProcess] | None = None
    _workers_started: int = 0
    _conn: psycopg.AsyncConnection[Any] | None = None
    _since: datetime | None = None
    _killed_attempts: dict[str, int] = field(default_factory=dict)
    _started_at: float = field(default_factory=time.monotonic)

    async def __aenter__(self) -> Self:
        self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        self._since = await self._server_clock()
        self._worker = await self._start_worker()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            await self.ready()
        if self._worker is not None:
            await asyncio.to_thread(self._worker.stop)
        if self._conn is not None:
            await self._conn.close()

    @property
    def launch(self) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(self.launch_id)

    @property
    def phase_workflow(self) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(f"{self.launch_id}.{self.phase}")

    @property
    def delivered(self) -> int:
        return sum(kill.delivered for kill in self.kills)

    def report(self) -> str:
        return "\n".join(kill.line() for kill in self.kills)

    async def ready(self) -> ManagedProcess:
        """The worker running now, once it polls."""
        if self._starting is not None:
            self._worker = await self._starting
            self._starting = None
        assert self._worker is not None
        return self._worker

    async def kill_when(self, moment: Moment, *, delay: tuple[float, float] | None = None) -> Kill:
        """Wait for `moment` (on a worker that is up), then after a random delay drawn from
        `delay` if given, SIGKILL the worker's whole process group and start a fresh one."""
        worker = await self.ready()
        await self.until(moment)
        delay_s = self.rng.uniform(*delay) if delay else 0.0
        if delay_s:
            await asyncio.sleep(delay_s)
        delivered = worker.running
        await asyncio.to_thread(worker.kill)
        delivered = delivered and worker.process.returncode == -signal.SIGKILL
        await asyncio.to_thread(worker.stop)
        self._since = await self._server_clock()
        running = await self._running_activities()
        for name in running:
            kind, attempt = name.split("#")
            self._killed_attempts[kind] = max(self._killed_attempts.get(kind, 0), int(attempt))
        kill = Kill(
            label=moment.what,
            at_s=time.monotonic() - self._started_at,
            delay_s=delay_s,
            delivered=delivered,
            running=tuple(running),
        )
        self.kills.append(kill)
        print(kill.line(), flush=True)
        self._worker = None
        self._starting = asyncio.create_task(self._start_worker())
        return kill

    async def until(self, moment: Moment, timeout: float = MOMENT_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if await moment.holds():
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for: {moment.what}\n"
                    f"kills so far:\n{self.report()}\n"
                    f"running: {', '.join(await self._running_activities()) or 'nothing'}\n"
                    f"sessions:\n{await self._sessions()}\nworker log:\n"
                    + (self._worker.log_tail() if self._worker else "(no worker)")
                )
            await asyncio.sleep(POLL_S)

    # --- moments ---------------------------------------------------------------------

    def session(
        self,
        what: str,
        application: str,
        *,
        query: str | None = None,
        blocked_by: Blocker | None = None,
    ) -> Moment:
        """A session of the worker's (application_name LIKE `application`) begun since the
        last kill, active, running a statement LIKE `query`, or waiting on `blocked_by`."""

        async def holds() -> bool:
            assert self._conn is not None
            cursor = await self._conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE %(app)s AND state = 'active' "
                "AND backend_start > %(since)s "
                "AND (%(query)s::text IS NULL OR query LIKE %(query)s) "
                "AND (%(blocker)s::int IS NULL OR %(blocker)s = ANY(pg_blocking_pids(pid)))",
                {
                    "app": application,
                    "since": self._since,
                    "query": query,
                    "blocker": blocked_by.pid if blocked_by else None,
                },
            )
            row = await cursor.fetchone()
            return bool(row and row[0])

        return Moment(what, holds)

    def attempt_started(self, what: str, activity: str) -> Moment:
        """An attempt of `activity` newer than any killed one is running on the worker."""

        async def holds() -> bool:
            newest = self._killed_attempts.get(activity, 0)
            return any(
                name.split("#")[0] == activity and int(name.split("#")[1]) > newest
                for name in await self._running_activities()
            )

        return Moment(what, holds)

    def completed(self, what: str, activity: str) -> Moment:
        """`activity` has completed, in the phase's history or the launch's."""

        async def holds() -> bool:
            for handle in (self.phase_workflow, self.launch):
                try:
                    history = await handle.fetch_history()
                except RPCError as err:
                    if err.status == RPCStatusCode.NOT_FOUND:
                        continue
                    raise
                scheduled = {
                    e.event_id
                    for e in history.events
                    if e.HasField("activity_task_scheduled_event_attributes")
                    and e.activity_task_scheduled_event_attributes.activity_type.name == activity
                }
                if any(
                    e.HasField("activity_task_completed_event_attributes")
                    and e.activity_task_completed_event_attributes.scheduled_event_id in scheduled
                    for e in history.events
                ):
                    return True
            return False

        return Moment(what, holds)

    def gate_open(self, what: str, gate: str) -> Moment:
        async def holds() -> bool:
            current = await status(self.launch)
            return current.open_gate is not None and current.open_gate.gate == gate

        return Moment(what, holds)

    # --- the worker and the server ---------------------------------------------------

    async def _start_worker(self) -> ManagedProcess:
        self._workers_started += 1
        return await asyncio.to_thread(
            start_worker,
            address=self.address,
            workdir=self.workdir / f"worker-{self._workers_started}",
            task_queue=self.task_queue,
        )

    async def _server_clock(self) -> datetime:
        assert self._conn is not None
        cursor = await self._conn.execute("SELECT clock_timestamp()")
        row = await cursor.fetchone()
        assert row is not None
        value: datetime = row[0]
        return value

    async def _sessions(self) -> str:
        """The database's client sessions, one line each, for a timeout's message."""
        assert self._conn is not None
        cursor = await self._conn.execute(
            "SELECT pid, application_name, state, wait_event_type, pg_blocking_pids(pid), "
            "backend_start > %s, left(regexp_replace(query, '\\s+', ' ', 'g'), 100) "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() ORDER BY backend_start",
            (self._since,),
        )
        return "\n".join(" | ".join(map(str, row)) for row in await cursor.fetchall())

    async def _running_activities(self) -> list[str]:
        """`type#attempt` of every activity a worker has started and not finished."""
        running: list[str] = []
        for handle in (self.phase_workflow, self.launch):
            try:
                description = await handle.describe()
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    continue
                raise
            running += [
                f"{pending.activity_type.name}#{pending.attempt}"
                for pending in description.raw_description.pending_activities
                if pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            ]
        return running
