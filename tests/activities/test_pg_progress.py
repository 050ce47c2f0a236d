"""Heartbeats that come from the work: the activity's own steps, the server's view of a long
statement, pg_dump's own output; cancellation that stops the statement or the tool; the
session and activity timeouts. Against the session's real PostgreSQL, in temporalio's
ActivityEnvironment (which captures heartbeats and cancels)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from temporalio import activity
from temporalio.exceptions import CancelledError
from temporalio.testing import ActivityEnvironment

from activities.pg_progress import (
    LIVE_STATES,
    Progress,
    ToolFailed,
    activity_budget,
    connection_options,
    run_tool,
    sized_timeout,
    watching_statement,
)
from devstack.postgres_cluster import PostgresCluster
from devstack.processes import free_port
from tests.support.postgres import CheckoutDatabase

FAST = timedelta(milliseconds=200)
EVERY_CALL = timedelta(0)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


class Heartbeats:
    """An ActivityEnvironment whose heartbeats are recorded (each one a details dict)."""

    def __init__(self) -> None:
        self.env = ActivityEnvironment()
        self.seen: list[dict[str, Any]] = []
        self.hooks: list[Callable[[dict[str, Any]], None]] = []
        self._lock = threading.Lock()
        self.env.on_heartbeat = self._record

    def _record(self, *details: Any) -> None:
        assert len(details) == 1
        json.dumps(details[0])  # JSON-able, as Temporal's converter needs
        with self._lock:
            self.seen.append(details[0])
        for hook in self.hooks:
            hook(details[0])

    def server_states(self) -> list[str]:
        with self._lock:
            return [beat["server"]["state"] for beat in self.seen if "server" in beat]


def dsn_params(db: CheckoutDatabase) -> dict[str, str]:
    return {key: str(value) for key, value in conninfo_to_dict(db.dsn).items()}


def backend_state(db: CheckoutDatabase, pid: int) -> str | None:
    """The backend's state, "gone" when it has no session any more."""
    rows = db.query("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
    return str(rows[0][0]) if rows else "gone"


@pytest.fixture
def conn(checkout_db: CheckoutDatabase) -> Iterator[psycopg.Connection[Any]]:
    # Closed, not committed: some tests leave a statement sent and unanswered.
    connection = psycopg.connect(checkout_db.dsn, autocommit=True)
    try:
        yield connection
    finally:
        connection.close()


# --- Progress -------------------------------------------------------------------------


def test_steps_heartbeat_their_details_at_most_every_interval() -> None:
    beats = Heartbeats()

    def work() -> list[bool]:
        progress = Progress("checksumming", every=timedelta(hours=1))
        return [
            progress.step("checksumming orders", table="orders", done_rows=0, total_rows=30),
            progress.step("checksumming orders", table="orders", done_rows=10, total_rows=30),
        ]

    assert beats.env.run(work) == [True, False]
    assert len(beats.seen) == 1
    first = beats.seen[0]
    assert first["doing"] == "checksumming orders"
    assert (first["table"], first["done_rows"], first["total_rows"]) == ("orders", 0, 30)
    assert isinstance(first["elapsed_s"], float)

    def every_call() -> None:
        progress = Progress(every=EVERY_CALL)
        for batch in range(3):
            progress.step("copying", table="orders", done_rows=batch * 100, batch=batch)
        progress.step("verifying")

    beats.env.run(every_call)
    later = beats.seen[1:]
    assert [beat.get("done_rows") for beat in later] == [0, 100, 200, None]
    assert later[-1]["doing"] == "verifying"
    assert "table" not in later[-1], "a step replaces the last one's details"


def test_outside_an_activity_progress_only_remembers() -> None:
    progress = Progress(every=EVERY_CALL)
    assert progress.step("checksumming orders", table="orders", done_rows=5) is False
    assert progress.details["doing"] == "checksumming orders"
    assert progress.details["done_rows"] == 5


# --- one long statement ---------------------------------------------------------------


def test_a_running_statement_heartbeats_with_the_servers_view(
    checkout_db: CheckoutDatabase, conn: psycopg.Connection[Any]
) -> None:
    beats = Heartbeats()

    def work() -> str | None:
        progress = Progress("sleeping", every=EVERY_CALL)
        with watching_statement(
            conn, progress, "sleeping 1.5 s", dsn_params(checkout_db), every=FAST
        ) as watch:
            conn.execute("SELECT pg_sleep(1.5)")
        return watch.ended

    assert beats.env.run(work) == "finished"
    assert beats.server_states(), "the watcher heartbeated while the statement ran"
    assert set(beats.server_states()) <= LIVE_STATES
    beat = next(beat for beat in beats.seen if "server" in beat)
    assert beat["statement"] == "sleeping 1.5 s"
    assert beat["doing"] == "sleeping"
    assert beat["server"]["pid"] == conn.info.backend_pid
    assert beat["server"]["state"] == "active"
    assert beat["server"]["wait"] == "Timeout:PgSleep"
    assert "query" not in json.dumps(beat), "the statement's text never leaves"


def test_an_index_build_heartbeats_its_progress_row(
    checkout_db: CheckoutDatabase, conn: psycopg.Connection[Any]
) -> None:
    """CREATE INDEX CONCURRENTLY waits for an open writer: pg_stat_progress_create_index says
    so, and the heartbeat carries it; the writer then finishes and the build completes."""
    beats = Heartbeats()
    writer = psycopg.connect(checkout_db.dsn)
    writer.execute("UPDATE orders SET status = status WHERE id = 1")
    phases: list[str] = []

    def release_writer(beat: dict[str, Any]) -> None:
        found = beat.get("server", {}).get("progress")
        if found and found["view"] == "create_index" and not phases:
            phases.append(found["phase"])
            assert found["relation"] == "orders"
            writer.rollback()

    beats.hooks.append(release_writer)

    def work() -> None:
        progress = Progress("indexing", every=EVERY_CALL)
        with watching_statement(
            conn, progress, "indexing orders", dsn_params(checkout_db), every=FAST
        ):
            conn.execute("CREATE INDEX CONCURRENTLY orders_by_status ON orders (status)")

    try:
        beats.env.run(work)
    finally:
        writer.close()
    assert phases == ["waiting for writers before build"]
    assert (
        checkout_db.scalar(
            "SELECT count(*) FROM pg_indexes WHERE indexname = %s", ("orders_by_status",)
        )
        == 1
    )


def test_an_idle_backend_gets_no_heartbeats(
    checkout_db: CheckoutDatabase, conn: psycopg.Connection[Any]
) -> None:
    beats = Heartbeats()

    def work() -> None:
        progress = Progress("waiting", every=EVERY_CALL)
        with watching_statement(
            conn, progress, "nothing", dsn_params(checkout_db), every=FAST
        ) as watch:
            wait_until(lambda: watch.polls >= 3, "three polls")
            assert watch.beats == 0

    beats.env.run(work)
    assert beats.seen == []


def test_a_server_the_watcher_cannot_reach_gets_no_heartbeats(
    checkout_db: CheckoutDatabase, conn: psycopg.Connection[Any]
) -> None:
    beats = Heartbeats()
    unreachable = {**dsn_params(checkout_db), "port": str(free_port())}

    def work() -> None:
        progress = Progress("sleeping", every=EVERY_CALL)
        with watching_statement(conn, progress, "sleeping", unreachable, every=FAST) as watch:
            conn.pgconn.send_query(b"SELECT pg_sleep(30)")
            wait_until(lambda: backend_state(checkout_db, watch.pid) == "active", "the sleep")
            wait_until(lambda: watch.unreachable >= 2, "two failed polls")
            assert watch.beats == 0
            conn.cancel_safe()

    beats.env.run(work)
    assert beats.seen == []


def test_a_backend_terminated_from_outside_stops_the_heartbeats(
    checkout_db: CheckoutDatabase, conn: psycopg.Connection[Any]
) -> None:
    """The activity's thread does not notice (as with a lost network): the watcher does, and
    falls silent for Temporal's heartbeat timeout to notice."""
    beats = Heartbeats()

    def work() -> tuple[str | None, int]:
        progress = Progress("sleeping", every=EVERY_CALL)
        with watching_statement(
            conn, progress, "sleeping", dsn_params(checkout_db), every=FAST
        ) as watch:
            conn.pgconn.send_query(b"SELECT pg_sleep(30)")
            wait_until(lambda: watch.beats >= 2, "two heartbeats")
            checkout_db.query("SELECT pg_terminate_backend(%s)", (watch.pid,))
            assert watch.stopped.wait(15), "the watcher stopped"
            beaten = len(beats.seen)
        return watch.ended, beaten

    ended, beaten = beats.env.run(work)
    assert ended == "backend gone"
    assert beats.server_states()[:2] == ["active", "active"]
    assert len(beats.seen) == beaten, "no heartbeat once the backend was gone"


def test_an_error_in_the_block_stops_the_running_statement(
    checkout_db: CheckoutDatabase, conn: psycopg.Connection[Any]
) -> None:
    beats = Heartbeats()
    pid = conn.info.backend_pid

    def work() -> None:
        progress = Progress("sleeping", every=EVERY_CALL)
        with watching_statement(conn, progress, "sleeping", dsn_params(checkout_db), every=FAST):
            conn.pgconn.send_query(b"SELECT pg_sleep(30)")
            wait_until(lambda: backend_state(checkout_db, pid) == "active", "the sleep")
            raise LookupError("the activity's own failure")

    with pytest.raises(LookupError, match="own failure"):
        beats.env.run(work)
    assert backend_state(checkout_db, pid) in {"idle", "gone"}


def _cancelled_on_first_active_beat(beats: Heartbeats) -> None:
    def cancel(beat: dict[str, Any]) -> None:
        if beat.get("server", {}).get("state") == "active":
            beats.env.cancel()

    beats.hooks.append(cancel)


def test_cancelling_the_activity_stops_the_statement(
    checkout_db: CheckoutDatabase, conn: psycopg.Connection[Any]
) -> None:
    """As a worker does by default: CancelledError raised into the activity's thread (which
    sits in the statement), and the watcher cancels the statement on the server."""
    beats = Heartbeats()
    _cancelled_on_first_active_beat(beats)
    pid = conn.info.backend_pid

    def work() -> None:
        progress = Progress("sleeping", every=EVERY_CALL)
        with watching_statement(conn, progress, "sleeping", dsn_params(checkout_db)):
            conn.execute("SELECT pg_sleep(30)")

    started = time.monotonic()
    with pytest.raises(CancelledError):
        beats.env.run(work)
    assert time.monotonic() - started < 15
    wait_until(lambda: backend_state(checkout_db, pid) != "active", "the sleep to stop", 5)
    assert beats.server_states() == ["active"], "no heartbeat after the cancellation"


def test_cancelling_an_activity_without_thread_exceptions_stops_the_statement(
    checkout_db: CheckoutDatabase, conn: psycopg.Connection[Any]
) -> None:
    """Only `activity.is_cancelled()` says so: the watcher sees it after its heartbeat."""
    beats = Heartbeats()
    _cancelled_on_first_active_beat(beats)
    pid = conn.info.backend_pid

    @activity.defn(name="sleep_in_postgres", no_thread_cancel_exception=True)
    def work() -> None:
        progress = Progress("sleeping", every=EVERY_CALL)
        with watching_statement(
            conn, progress, "sleeping", dsn_params(checkout_db), every=FAST
        ) as watch:
            conn.execute("SELECT pg_sleep(30)")
        raise AssertionError(f"the statement ran to its end ({watch.ended})")

    with pytest.raises(CancelledError, match="sleeping: stopped") as raised:
        beats.env.run(work)
    assert isinstance(raised.value.__cause__, errors.QueryCanceled)
    assert backend_state(checkout_db, pid) in {"idle", "gone"}


# --- pg_dump / pg_restore --------------------------------------------------------------


@pytest.fixture
def two_tables(checkout_db: CheckoutDatabase) -> CheckoutDatabase:
    checkout_db.query("CREATE TABLE customers AS SELECT DISTINCT customer_id AS id FROM orders")
    return checkout_db


def _dump_argv(postgres: PostgresCluster, db: CheckoutDatabase) -> list[str]:
    return [str(postgres.bin_dir / "pg_dump"), "--format=custom", f"--dbname={db.dsn}"]


def _listing(postgres: PostgresCluster, archive: Path) -> str:
    stdout, _ = run_tool(
        [str(postgres.bin_dir / "pg_restore"), "--list", str(archive)],
        {},
        Progress(),
        "listing",
    )
    assert stdout is not None
    return stdout.decode()


def test_pg_dump_heartbeats_per_table_from_its_own_output(
    postgres: PostgresCluster, two_tables: CheckoutDatabase, tmp_path: Path
) -> None:
    beats = Heartbeats()

    def work() -> tuple[bytes | None, str]:
        progress = Progress(every=EVERY_CALL)
        return run_tool(_dump_argv(postgres, two_tables), {}, progress, "backing up checkout")

    stdout, stderr_tail = beats.env.run(work)
    assert stdout is not None
    assert stdout.startswith(b"PGDMP")
    archive = tmp_path / "dump"
    archive.write_bytes(stdout)
    listing = _listing(postgres, archive)
    assert "TABLE DATA public orders" in listing
    assert "TABLE DATA public customers" in listing
    tables = {beat["table"] for beat in beats.seen if "table" in beat}
    assert {"public.orders", "public.customers"} <= tables
    orders = next(beat for beat in beats.seen if beat.get("table") == "public.orders")
    assert orders["doing"] == 'backing up checkout: dumping contents of table "public.orders"'
    assert beats.seen[-1]["stdout_bytes"] == len(stdout)
    assert 'dumping contents of table "public.orders"' in stderr_tail


def test_pg_dump_streams_stdout_into_a_file(
    postgres: PostgresCluster, two_tables: CheckoutDatabase, tmp_path: Path
) -> None:
    archive = tmp_path / "dump"
    chunks: list[bytes] = []
    with archive.open("wb") as target:
        stdout, _ = run_tool(
            _dump_argv(postgres, two_tables), {}, Progress(), "dump", stdout=target
        )
    assert stdout is None
    assert "TABLE DATA public orders" in _listing(postgres, archive)
    stdout, _ = run_tool(
        _dump_argv(postgres, two_tables), {}, Progress(), "dump", stdout=chunks.append
    )
    assert stdout is None
    assert b"".join(chunks)[:5] == b"PGDMP"
    copied = BytesIO()
    run_tool(_dump_argv(postgres, two_tables), {}, Progress(), "dump", stdout=copied)
    assert copied.getvalue()[:5] == b"PGDMP"


def test_pg_restore_reads_an_archive_fed_to_its_stdin(
    postgres: PostgresCluster, two_tables: CheckoutDatabase
) -> None:
    archive, _ = run_tool(_dump_argv(postgres, two_tables), {}, Progress(), "dump")
    assert archive is not None
    chunks = (archive[start : start + 4096] for start in range(0, len(archive), 4096))
    listing, _ = run_tool(
        [str(postgres.bin_dir / "pg_restore"), "--list"], {}, Progress(), "list", stdin=chunks
    )
    assert listing is not None
    assert "TABLE DATA public customers" in listing.decode()


def test_a_failing_stdin_source_ends_the_run_with_its_error(postgres: PostgresCluster) -> None:
    class TamperedError(Exception):
        pass

    def tampered() -> Iterator[bytes]:
        yield b"PGDMP"
        raise TamperedError("chunk 2 does not authenticate")

    with pytest.raises(TamperedError, match="does not authenticate"):
        run_tool(
            [str(postgres.bin_dir / "pg_restore"), "--list"],
            {},
            Progress(),
            "list",
            stdin=tampered(),
        )


def test_a_failing_tool_says_which_and_keeps_its_words_for_the_caller(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.dump"
    with pytest.raises(ToolFailed, match=r"^pg_restore failed \(exit status 1\)$") as raised:
        run_tool(
            [str(postgres.bin_dir / "pg_restore"), "--list", str(missing)], {}, Progress(), "x"
        )
    assert str(missing) in raised.value.stderr_tail


def test_cancelling_the_activity_stops_pg_dump_and_its_session(
    postgres: PostgresCluster, two_tables: CheckoutDatabase
) -> None:
    """pg_dump waits for a lock someone holds: the server vouches for its session (active,
    waiting on a lock), and cancelling the activity ends the process and its session."""
    beats = Heartbeats()
    application = "phasegate test dump"

    def cancel(beat: dict[str, Any]) -> None:
        if any(backend["wait"] == "Lock:relation" for backend in beat.get("sessions", [])):
            beats.env.cancel()

    beats.hooks.append(cancel)
    holder = psycopg.connect(two_tables.dsn)
    holder.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")

    def work() -> None:
        run_tool(
            _dump_argv(postgres, two_tables),
            {"PGAPPNAME": application},
            Progress(every=EVERY_CALL),
            "backing up checkout",
            dsn_params=dsn_params(two_tables),
        )

    try:
        with pytest.raises(CancelledError):
            beats.env.run(work)
        assert "pg_dump" not in _child_names(), "the tool was stopped and reaped"
        wait_until(
            lambda: (
                not two_tables.query(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application,)
                )
            ),
            "pg_dump's session to end",
            10,
        )
    finally:
        holder.close()
    assert any("sessions" in beat for beat in beats.seen)


def _child_names() -> list[str]:
    names = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            names.append(child.name())
    return names


def test_tools_get_a_connect_timeout(postgres: PostgresCluster, tmp_path: Path) -> None:
    """PGCONNECT_TIMEOUT reaches the tool: psql's own report of its environment shows it."""
    script = tmp_path / "env.sh"
    script.write_text(
        '#!/bin/sh\necho "$PGCONNECT_TIMEOUT $PGAPPNAME" >&2\necho "env.sh: done" >&2\n'
    )
    script.chmod(0o755)
    beats = Heartbeats()
    _, tail = beats.env.run(lambda: run_tool([str(script)], {}, Progress(every=EVERY_CALL), "env"))
    assert tail.startswith("10 phasegate env.sh ")
    assert beats.seen[-1]["doing"] == "env: done"


# --- timeouts -------------------------------------------------------------------------


def test_connection_options_bound_every_statement(checkout_db: CheckoutDatabase) -> None:
    options = connection_options(timedelta(milliseconds=700), timedelta(milliseconds=300))
    assert options == (
        "-c statement_timeout=700ms -c idle_in_transaction_session_timeout=700ms "
        "-c lock_timeout=300ms"
    )
    with psycopg.connect(checkout_db.dsn, autocommit=True, options=options) as bounded:
        assert bounded.execute("SHOW statement_timeout").fetchone() == ("700ms",)
        started = time.monotonic()
        with pytest.raises(errors.QueryCanceled, match="statement timeout"):
            bounded.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - started < 10
        with psycopg.connect(checkout_db.dsn) as holder:
            holder.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(errors.LockNotAvailable):
                bounded.execute("SELECT count(*) FROM orders")


def test_connection_options_never_mean_no_timeout() -> None:
    assert connection_options(timedelta(microseconds=1), None) == (
        "-c statement_timeout=1ms -c idle_in_transaction_session_timeout=1ms"
    )
    assert "statement_timeout=2147483647ms" in connection_options(timedelta(days=400), None)
    with pytest.raises(ValueError, match="statement_timeout must be positive"):
        connection_options(timedelta(0), None)
    with pytest.raises(ValueError, match="lock_timeout must be positive"):
        connection_options(timedelta(seconds=1), timedelta(seconds=-1))


def test_activity_budget_is_what_is_left_of_the_activity() -> None:
    assert activity_budget(timedelta(minutes=3)) == timedelta(minutes=3)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info,
        started_time=datetime.now(UTC) - timedelta(minutes=2),
        start_to_close_timeout=timedelta(minutes=10),
        schedule_to_close_timeout=None,
    )
    left = env.run(activity_budget, timedelta(minutes=3))
    assert timedelta(minutes=7, seconds=50) < left <= timedelta(minutes=8)
    env.info = dataclasses.replace(
        env.info,
        scheduled_time=datetime.now(UTC) - timedelta(minutes=2),
        schedule_to_close_timeout=timedelta(minutes=5),
    )
    left = env.run(activity_budget, timedelta(minutes=3))
    assert timedelta(minutes=2, seconds=50) < left <= timedelta(minutes=3)
    env.info = dataclasses.replace(env.info, started_time=datetime.now(UTC) - timedelta(hours=1))
    assert env.run(activity_budget, timedelta(minutes=3)) == timedelta(seconds=1)
    env.info = dataclasses.replace(
        env.info, start_to_close_timeout=None, schedule_to_close_timeout=None
    )
    assert env.run(activity_budget, timedelta(minutes=3)) == timedelta(minutes=3)


def test_sized_timeout_grows_with_the_data_between_its_bounds() -> None:
    def sized(bytes_: int) -> timedelta:
        return sized_timeout(
            bytes_,
            rate_bytes_per_s=10_000_000,
            floor=timedelta(minutes=5),
            ceiling=timedelta(hours=6),
        )

    assert sized(0) == timedelta(minutes=5)
    assert sized(10_000_000_000) == timedelta(minutes=5, seconds=3000)
    assert sized(1) == timedelta(minutes=5, seconds=1), "rounded up to whole seconds"
    assert sized(10**15) == timedelta(hours=6)
    assert sized(10**30) == timedelta(hours=6)
    with pytest.raises(ValueError, match="rate_bytes_per_s must be positive"):
        sized_timeout(1, rate_bytes_per_s=0, floor=timedelta(0), ceiling=timedelta(1))
    with pytest.raises(ValueError, match="bytes_ must not be negative"):
        sized(-1)
    with pytest.raises(ValueError, match="longer than ceiling"):
        sized_timeout(1, rate_bytes_per_s=1, floor=timedelta(hours=2), ceiling=timedelta(hours=1))
