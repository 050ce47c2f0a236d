"""A real PostgreSQL for the migration tests: one throwaway cluster per session (initdb +
pg_ctl from Debian's packages on a free loopback port), a freshly seeded database per test.
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from temporalio.testing import ActivityEnvironment

from devstack.checkout_db import seed_checkout
from devstack.postgres_cluster import PostgresCluster, postgres_cluster
from devstack.processes import BinaryNotFoundError
from tests.support.plans import plan_dict

EXAMPLE_MIGRATIONS = Path(__file__).resolve().parents[2] / "examples" / "migrations" / "checkout"
SEEDED_ROWS = 30_000


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    try:
        with postgres_cluster(tmp_path_factory.mktemp("postgres")) as cluster:
            yield cluster
    except BinaryNotFoundError as err:
        pytest.fail(f"{err} (deploy/setup.sh installs it)")


@dataclass
class CheckoutDatabase:
    """A seeded checkout database; its DSN reaches plans only through `dsn_file`."""

    dsn: str
    dsn_file: Path
    workdir: Path

    def query(self, text: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(text.encode() if not params else text, params or None)
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []

    def scalar(self, text: str, params: tuple[Any, ...] = ()) -> Any:
        return self.query(text, params)[0][0]

    def contents(self) -> dict[str, Any]:
        """Every table's columns and rows (as ordered text), and every view's definition."""
        tables = self.query(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
            "AND table_type = 'BASE TABLE' ORDER BY 1"
        )
        result: dict[str, Any] = {}
        for (table,) in tables:
            result[table] = (
                self.query(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema || '.' || table_name = %s ORDER BY ordinal_position",
                    (table,),
                ),
                self.scalar(f"SELECT count(*) FROM {table}"),
                self.scalar(
                    f"SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t"
                ),
            )
        result["views"] = self.query(
            "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1"
        )
        result["indexes"] = self.query(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        )
        return result


@pytest.fixture
def checkout_db(postgres: PostgresCluster, tmp_path: Path) -> CheckoutDatabase:
    name = f"checkout_{uuid.uuid4().hex[:8]}"
    dsn = postgres.create_database(name)
    seed_checkout(dsn, SEEDED_ROWS)
    dsn_file = tmp_path / "checkout.dsn"
    dsn_file.write_text(dsn)
    return CheckoutDatabase(dsn=dsn, dsn_file=dsn_file, workdir=tmp_path)


def migrations(
    tmp_path: Path, scripts: Mapping[str, str | None] | None = None, *, downs: bool = True
) -> Path:
    """The example scripts, with some replaced or added (`{stem: sql}`; `{stem: None}` drops one)."""
    folder = tmp_path / "migrations"
    folder.mkdir(exist_ok=True)
    for path in EXAMPLE_MIGRATIONS.glob("*.sql"):
        if downs or not path.name.endswith(".down.sql"):
            shutil.copy(path, folder / path.name)
    for stem, text in (scripts or {}).items():
        target = folder / f"{stem}.sql"
        if text is None:
            target.unlink()
            (folder / f"{stem}.down.sql").unlink(missing_ok=True)
        else:
            target.write_text(text)
    return folder


def migration_plan(db: CheckoutDatabase, folder: Path, **phase: Any) -> dict[str, Any]:
    """A plan whose only phase migrates `db` with the scripts in `folder`."""
    from devstack.checkout_db import VIEW_ON_V1, VIEW_ON_V2

    flags = db.workdir / "flags"
    flags.mkdir(exist_ok=True)
    spec: dict[str, Any] = {
        "name": "migrate",
        "kind": "migration_cutover",
        "source": {"file": str(db.dsn_file)},
        "migrations": str(folder),
        "backup_dir": str(db.workdir / "backups"),
        "extensions": ["plpgsql"],
        "min_server_version": 130000,
        "verify": {
            "tables": [
                {
                    "table": "orders",
                    "target_table": "orders_v2",
                    "columns": ["id", "customer_id", "status", "created_at"],
                }
            ],
            "invariants": [
                {
                    "name": "totals-carried-over",
                    "query": "SELECT o.id FROM orders o JOIN orders_v2 v USING (id) "
                    "WHERE v.total * 100 <> o.total_cents",
                },
                {
                    "name": "no-negative-totals",
                    "query": "SELECT count(*) = 0 FROM orders_v2 WHERE total < 0",
                    "expect": "true",
                },
            ],
        },
        "cutover": {
            "gate": False,
            "flag": {"flag_file": str(flags / "db.json"), "flag_key": "orders-v2"},
            "sql": {"forward": VIEW_ON_V2, "backward": VIEW_ON_V1},
        },
    }
    spec.update(phase)
    return plan_dict(flag_file=flags / "checkout.json", phases=[spec])


def activity_environment(timeout: timedelta = timedelta(minutes=10)) -> ActivityEnvironment:
    """An environment for running the PostgreSQL activities as a worker does: started now,
    with `timeout` to run (the default environment's activity started in 1970 with one second,
    which the activities' statement timeouts would take literally)."""
    env = ActivityEnvironment()
    now = datetime.now(UTC)
    env.info = dataclasses.replace(
        env.info,
        started_time=now,
        scheduled_time=now,
        current_attempt_scheduled_time=now,
        start_to_close_timeout=timeout,
        schedule_to_close_timeout=timeout,
        heartbeat_timeout=timedelta(seconds=30),
    )
    return env
