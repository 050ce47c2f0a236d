"""The migration activities' guard and undo against a real PostgreSQL, run as the worker runs
them: a change the guard did not see fails its script, and an undo that cannot be tried first
never reverts over live writes without a recorded decision."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from temporalio.exceptions import ApplicationError

from activities.errors import MigrationError
from activities.postgres import PostgresActivities
from devstack.postgres_cluster import PostgresCluster
from schemas.basics import SecretRef
from schemas.migration_messages import (
    BackupRecord,
    BackupRequest,
    MigrateRequest,
    MigrationTarget,
    PreflightReport,
    PreflightRequest,
    RestoreDatabaseRequest,
    RestoreReport,
    WritesAtRiskReport,
    WritesDecision,
)
from tests.support.postgres import activity_environment

pytestmark = pytest.mark.integration
DSN_VARIABLE = "PHASEGATE_TEST_UNDO_DSN"


@pytest.fixture
def database(postgres: PostgresCluster, monkeypatch: pytest.MonkeyPatch) -> str:
    dsn = postgres.create_database(f"undo_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)")
        conn.execute("CREATE TABLE other (id int PRIMARY KEY)")
        conn.execute("INSERT INTO items SELECT n, 'seed' FROM generate_series(1, 100) AS n")
    monkeypatch.setenv(DSN_VARIABLE, dsn)
    return dsn


def target(
    tmp_path: Path, scripts: dict[str, str], touches: tuple[str, ...] = ()
) -> MigrationTarget:
    folder = tmp_path / "migrations"
    folder.mkdir(exist_ok=True)
    for stem, text in scripts.items():
        (folder / f"{stem}.sql").write_text(text)
    ref = SecretRef(env=DSN_VARIABLE)
    return MigrationTarget(
        launch_id=f"launch-{uuid.uuid4().hex[:8]}",
        phase="migrate",
        source=ref,
        target=ref,
        migrations=str(folder),
        ledger_table="phasegate_migrations",
        touches=list(touches),
    )


def run(method: Any, request: Any) -> Any:
    return activity_environment().run(method, request)


def prepared(where: MigrationTarget, tmp_path: Path) -> tuple[PreflightReport, BackupRecord]:
    activities = PostgresActivities()
    backups = str(tmp_path / "backups")
    report: PreflightReport = run(
        activities.preflight_migration, PreflightRequest(where=where, backup_dir=backups)
    )
    backup: BackupRecord = run(
        activities.backup_database,
        BackupRequest(where=where, backup_dir=backups, touched=report.touched),
    )
    return report, backup


def scalar(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query.encode()).fetchone()
    return None if row is None else row[0]


def test_a_script_changing_a_table_nobody_named_fails_before_it_commits(
    database: str, tmp_path: Path
) -> None:
    hidden = "DO $$ BEGIN INSERT INTO other VALUES (99); END $$;"
    where = target(tmp_path, {"001_hidden": f"UPDATE items SET v = 'new';\n{hidden}"})
    report, _ = prepared(where, tmp_path)
    assert report.touched == ["public.items"]  # the DO block's table is not in the text
    with pytest.raises(MigrationError) as caught:
        run(
            PostgresActivities().apply_migrations,
            MigrateRequest(where=where, scripts=report.scripts, touched=report.touched),
        )
    assert "001_hidden.sql changed public.other" in str(caught.value)
    assert "`touches`" in str(caught.value)
    # Rolled back with its transaction: nothing of the script, no ledger row.
    assert scalar(database, "SELECT count(*) FROM other") == 0
    assert scalar(database, "SELECT count(*) FROM items WHERE v = 'new'") == 0
    assert scalar(database, "SELECT count(*) FROM phasegate_migrations") == 0


def test_a_declared_table_is_guarded_from_before_the_backup(database: str, tmp_path: Path) -> None:
    where = target(
        tmp_path,
        {"001_hidden": "DO $$ BEGIN INSERT INTO other VALUES (99); END $$;"},
        touches=("other",),
    )
    report, backup = prepared(where, tmp_path)
    assert report.touched == ["public.other"]
    assert backup.touched == ["public.other"]
    run(
        PostgresActivities().apply_migrations,
        MigrateRequest(where=where, scripts=report.scripts, touched=report.touched),
    )
    assert scalar(database, "SELECT count(*) FROM other") == 1


def test_an_opaque_script_outside_a_transaction_must_declare_what_it_changes(
    database: str, tmp_path: Path
) -> None:
    where = target(
        tmp_path,
        {"001_call": "-- phasegate: no-transaction\nDO $$ BEGIN DELETE FROM other; END $$;"},
    )
    with pytest.raises(MigrationError) as caught:
        run(
            PostgresActivities().preflight_migration,
            PreflightRequest(where=where, backup_dir=str(tmp_path / "backups")),
        )
    assert "001_call.sql runs outside a transaction" in str(caught.value)
    assert "`touches`" in str(caught.value)


def test_down_scripts_outside_a_transaction_never_revert_over_live_writes_unasked(
    database: str, tmp_path: Path
) -> None:
    where = target(
        tmp_path,
        {
            "001_index": "-- phasegate: no-transaction\n"
            "CREATE INDEX CONCURRENTLY items_v ON items (v);",
            "001_index.down": "-- phasegate: no-transaction\nDROP INDEX CONCURRENTLY items_v;",
        },
        touches=("items",),
    )
    report, backup = prepared(where, tmp_path)
    run(
        PostgresActivities().apply_migrations,
        MigrateRequest(where=where, scripts=report.scripts, touched=report.touched),
    )
    with psycopg.connect(database, autocommit=True) as live:
        live.execute("INSERT INTO items SELECT n, 'live' FROM generate_series(101, 107) AS n")
    request = RestoreDatabaseRequest(where=where, backup=backup, scripts=report.scripts)
    with pytest.raises(ApplicationError) as caught:
        run(PostgresActivities().restore_database, request)
    assert caught.value.type == "WritesAtRisk"
    at_risk = WritesAtRiskReport.model_validate(caught.value.details[0])
    assert at_risk.rows == 7
    assert at_risk.tables["public.items"].rows_lost == 7
    assert Path(at_risk.saved).stat().st_mode & 0o777 == 0o600
    assert scalar(database, "SELECT to_regclass('items_v')") is not None  # nothing reverted

    decision = WritesDecision(action="drop", by="alice", comment="ok", at_most_rows=at_risk.rows)
    done: RestoreReport = run(
        PostgresActivities().restore_database, request.model_copy(update={"writes": decision})
    )
    assert done.method == "down_scripts"
    assert done.dropped is not None
    assert done.dropped.rows == 7
    assert scalar(database, "SELECT to_regclass('items_v')") is None
    # An index drop loses no row: the live rows are all still there.
    assert scalar(database, "SELECT count(*) FROM items") == 107
    assert scalar(database, "SELECT to_regnamespace('phasegate_capture')") is None


def test_nothing_applied_leaves_every_live_write_and_removes_the_guard(
    database: str, tmp_path: Path
) -> None:
    where = target(tmp_path, {"001_touch": "UPDATE items SET v = 'new';"})
    report, backup = prepared(where, tmp_path)
    with psycopg.connect(database, autocommit=True) as live:
        live.execute("INSERT INTO items VALUES (500, 'live')")
        live.execute("INSERT INTO other VALUES (1)")
    done: RestoreReport = run(
        PostgresActivities().restore_database,
        RestoreDatabaseRequest(where=where, backup=backup, scripts=report.scripts),
    )
    assert done.method == "nothing_applied"
    assert scalar(database, "SELECT count(*) FROM items") == 101
    assert scalar(database, "SELECT count(*) FROM other") == 1
    assert scalar(database, "SELECT to_regnamespace('phasegate_capture')") is None
    assert scalar(database, "SELECT to_regclass('phasegate_migrations')") is None
