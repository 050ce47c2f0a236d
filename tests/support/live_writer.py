"""A client writing to a live database while a launch migrates it and rolls it back.

`LiveWriter` inserts rows in a loop, round robin over its targets, each in its own
autocommit transaction, and logs a write only once PostgreSQL confirmed its commit. A write
that fails (the table does not exist yet, or any more; a lock timeout) is not logged: it was
never committed. After a rollback, `missing` names every logged write that is neither in the
database nor in the rows Phasegate saved.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class Target:
    """Where the writer inserts: `table`, ids from `first_id` up, the row made by `row(id)`."""

    table: str
    first_id: int
    columns: tuple[str, ...]

    def row(self, row_id: int) -> tuple[Any, ...]:
        values: dict[str, Any] = {
            "id": row_id,
            "customer_id": 1 + row_id % 5000,
            "total_cents": row_id % 100_000,
            "total": (row_id % 100_000) / 100,
            "status": "live",
            "created_at": "2026-12-01T00:00:00+00:00",
            "note": f"live write {row_id}",
        }
        return tuple(values[column] for column in self.columns)


ORDERS = ("id", "customer_id", "total_cents", "status", "created_at")
ORDERS_V2 = ("id", "customer_id", "total", "status", "created_at")


@dataclass
class LiveWriter:
    dsn: str
    targets: list[Target]
    pause_s: float = 0.005
    max_writes: int = 20_000
    committed: dict[str, list[int]] = field(default_factory=dict)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> LiveWriter:
        self._thread = threading.Thread(target=self._run, name="live-writer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            assert not self._thread.is_alive(), "the live writer did not stop"

    def count(self, table: str) -> int:
        with self._lock:
            return len(self.committed.get(table, []))

    def wait_for(self, table: str, at_least: int, timeout: float = 30) -> None:
        """Until `at_least` writes to `table` committed."""
        deadline = time.monotonic() + timeout
        while self.count(table) < at_least:
            assert time.monotonic() < deadline, f"only {self.count(table)} writes to {table}"
            time.sleep(0.02)

    def _run(self) -> None:
        next_id = {target.table: itertools.count(target.first_id) for target in self.targets}
        written = 0
        with psycopg.connect(
            self.dsn, autocommit=True, connect_timeout=10, options="-c lock_timeout=5000"
        ) as conn:
            while not self._stop.is_set() and written < self.max_writes:
                for target in self.targets:
                    row_id = next(next_id[target.table])
                    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                        sql.Identifier(*target.table.split(".")),
                        sql.SQL(", ").join(map(sql.Identifier, target.columns)),
                        sql.SQL(", ").join(sql.Placeholder() * len(target.columns)),
                    )
                    try:
                        conn.execute(insert, target.row(row_id))
                    except psycopg.Error:
                        self.failures += 1
                        continue
                    with self._lock:
                        self.committed.setdefault(target.table, []).append(row_id)
                    written += 1
                self._stop.wait(self.pause_s)

    def missing(self, dsn: str, saved: Mapping[str, Iterable[int]]) -> dict[str, list[int]]:
        """Committed writes found neither in the database (their table, or `orders` for rows
        carried over from `orders_v2`) nor in `saved` ({table: ids} from Phasegate's files)."""
        lost: dict[str, list[int]] = {}
        with psycopg.connect(dsn, autocommit=True) as conn:
            for table, ids in self.committed.items():
                present: set[int] = set()
                for where in {table, "public.orders"}:
                    if conn.execute("SELECT to_regclass(%s)", (where,)).fetchone() == (None,):
                        continue
                    query = sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(
                        sql.Identifier(*where.split("."))
                    )
                    present |= {row[0] for row in conn.execute(query, (ids,))}
                kept = present | set(saved.get(table, ()))
                gone = [row_id for row_id in ids if row_id not in kept]
                if gone:
                    lost[table] = gone
        return lost
