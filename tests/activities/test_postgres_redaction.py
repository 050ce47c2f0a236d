"""The PostgreSQL activities against a real server never report a DSN, its password or a row."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from temporalio.testing import ActivityEnvironment

from activities.errors import ConfigurationError, MigrationError
from activities.postgres import PostgresActivities, discover_scripts
from activities.redaction import REDACTED
from devstack.postgres_cluster import PostgresCluster
from schemas.basics import SecretRef
from schemas.migration_cutover_spec import InvariantCheck
from schemas.migration_messages import (
    MigrateRequest,
    MigrationTarget,
    PreflightRequest,
    VerifyRequest,
)

pytestmark = pytest.mark.integration
DSN_VARIABLE = "PHASEGATE_TEST_REDACTION_DSN"
ROW_VALUE = "row-value-4e1c0b"


@pytest.fixture
def database(postgres: PostgresCluster) -> str:
    """A database with one table holding a row whose value must never be reported."""
    dsn = postgres.create_database(f"redaction_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO notes VALUES (1, %s)", (ROW_VALUE,))
    return dsn


def target(tmp_path: Path, scripts: dict[str, str]) -> MigrationTarget:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for stem, text in scripts.items():
        (folder / f"{stem}.sql").write_text(text)
    ref = SecretRef(env=DSN_VARIABLE)
    return MigrationTarget(
        launch_id="launch-redaction",
        phase="migrate",
        source=ref,
        target=ref,
        migrations=str(folder),
        ledger_table="phasegate_migrations",
    )


def preflight(where: MigrationTarget, tmp_path: Path) -> Exception:
    with pytest.raises((ConfigurationError, ConnectionError)) as caught:
        ActivityEnvironment().run(
            PostgresActivities().preflight_migration,
            PreflightRequest(where=where, backup_dir=str(tmp_path / "backups")),
        )
    return caught.value


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://phasegate:{password}@[127.0.0.1/db",  # psycopg quotes the whole URI
        "postgresql://phasegate:{password}%zz@127.0.0.1/db",  # ... or the bad token
        "host=127.0.0.1 password={password} {password}",  # ... or the word before `=`
    ],
)
def test_an_unparsable_dsn_gets_a_fixed_message_naming_the_field(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    monkeypatch.setenv(DSN_VARIABLE, dsn.format(password=password))
    error = preflight(target(tmp_path, {"001_noop": "SELECT 1;"}), tmp_path)
    assert isinstance(error, ConfigurationError)
    assert str(error) == (
        f"migrate.source: not a valid PostgreSQL connection string (the secret "
        f"env:{DSN_VARIABLE}); write key=value settings (host, port, dbname, user, password) "
        "or a postgresql:// URI"
    )


def test_a_connection_failure_quoting_the_password_is_redacted(
    postgres: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    # libpq quotes an option value it refuses; here that value is the password.
    monkeypatch.setenv(DSN_VARIABLE, f"{postgres.dsn()} password={password} sslmode={password}")
    error = preflight(target(tmp_path, {"001_noop": "SELECT 1;"}), tmp_path)
    assert str(error).startswith("migrate.source: ")
    assert f'invalid sslmode value: "{REDACTED}"' in str(error)
    assert password not in str(error)


def test_a_failing_script_reports_neither_the_row_nor_the_dsn(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_VARIABLE, database)
    copy = (
        "CREATE TABLE notes_v2 (id int PRIMARY KEY, note text CHECK (note = 'none'));\n"
        "INSERT INTO notes_v2 SELECT * FROM notes;\n"
    )
    cast = "ALTER TABLE notes ALTER COLUMN note TYPE integer USING note::integer;\n"
    for stem, script, expected in [
        (
            "001_copy",
            copy,
            'new row for relation "notes_v2" violates check constraint "notes_v2_note_check" '
            "— table notes_v2, constraint notes_v2_note_check — SQLSTATE 23514",
        ),
        (
            "001_cast",
            cast,
            'invalid input syntax for type integer: "…" — SQLSTATE 22P02',
        ),
    ]:
        folder = tmp_path / stem
        folder.mkdir()
        where = target(folder, {stem: script})
        with pytest.raises(MigrationError) as failed:
            ActivityEnvironment().run(
                PostgresActivities().apply_migrations,
                MigrateRequest(where=where, scripts=discover_scripts(where.migrations)),
            )
        assert str(failed.value) == f"{stem}.sql failed: {expected}"
        assert ROW_VALUE not in str(failed.value)


@pytest.mark.parametrize(
    ("query", "expect", "problem"),
    [
        ("SELECT id, note FROM notes", "no_rows", "returned 1 row(s); none wanted"),
        ("SELECT note FROM notes", "true", "returned a str instead of one `true`"),
        ("SELECT note = 'x' FROM notes", "true", "returned false instead of one `true`"),
    ],
)
def test_a_failed_invariant_says_how_many_rows_never_what_they_hold(
    database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    query: str,
    expect: str,
    problem: str,
) -> None:
    monkeypatch.setenv(DSN_VARIABLE, database)
    invariant = InvariantCheck.model_validate({"name": "check", "query": query, "expect": expect})
    with pytest.raises(MigrationError) as failed:
        ActivityEnvironment().run(
            PostgresActivities().verify_migration,
            VerifyRequest(where=target(tmp_path, {}), invariants=[invariant]),
        )
    assert str(failed.value) == f"verification failed: invariant check {problem}"
