"""The worker's limits are applied again when an activity touches a database, a manifest or
a backup folder, not only when the launch starts: limits tightened (or a secret changed)
after admission still hold."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from activities import limits
from activities.errors import ConfigurationError
from activities.kube import KubeActivities, KubeConnection
from activities.postgres import PostgresActivities
from devstack.postgres_cluster import PostgresCluster
from schemas.basics import SecretRef
from schemas.kube_messages import ManifestsRequest
from schemas.migration_messages import MigrationTarget, PreflightRequest
from tests.support.limits import session_limits

pytestmark = pytest.mark.integration
DSN_VARIABLE = "PHASEGATE_TEST_ACCESS_DSN"


@pytest.fixture
def tightened() -> Iterator[None]:
    """The session's limits without databases, plan files or backup folders, for one test."""
    session = session_limits()
    limits.configure(
        session.model_copy(
            update={
                "databases": [],
                "files": session.files.model_copy(update={"read": [], "backups": []}),
            }
        )
    )
    yield
    limits.configure(session)


def migration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str) -> MigrationTarget:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_notes.sql").write_text("CREATE TABLE notes (id int PRIMARY KEY);\n")
    monkeypatch.setenv(DSN_VARIABLE, dsn)
    ref = SecretRef(env=DSN_VARIABLE)
    return MigrationTarget(
        launch_id="launch-access",
        phase="migrate",
        source=ref,
        target=ref,
        migrations=str(folder),
        ledger_table="phasegate_migrations",
    )


def test_a_database_outside_the_limits_is_refused_at_connection(
    postgres: PostgresCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsn = postgres.create_database(f"access_{uuid.uuid4().hex[:8]}")
    where = migration(tmp_path, monkeypatch, dsn)
    request = PreflightRequest(where=where, backup_dir=str(tmp_path / "backups"))
    # Allowed under the session's limits: the same request gets past the database check.
    ActivityEnvironment().run(PostgresActivities().preflight_migration, request)
    session = session_limits()
    limits.configure(session.model_copy(update={"databases": []}))
    try:
        with pytest.raises(ConfigurationError, match="not in databases of") as caught:
            ActivityEnvironment().run(PostgresActivities().preflight_migration, request)
    finally:
        limits.configure(session)
    assert "migrate.source" in str(caught.value)
    assert dsn not in str(caught.value)


@pytest.mark.usefixtures("tightened")
def test_a_migrations_folder_outside_the_limits_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = migration(tmp_path, monkeypatch, "host=127.0.0.1 dbname=none")
    with pytest.raises(ConfigurationError, match=r"not inside a folder of files\.read"):
        ActivityEnvironment().run(
            PostgresActivities().preflight_migration,
            PreflightRequest(where=where, backup_dir=str(tmp_path / "backups")),
        )


@pytest.mark.usefixtures("tightened")
def test_a_manifest_outside_the_limits_is_not_read(tmp_path: Path) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\n")
    with pytest.raises(ConfigurationError, match=r"not inside a folder of files\.read"):
        ActivityEnvironment().run(
            KubeActivities(KubeConnection(None)).read_manifests,
            ManifestsRequest(paths=[str(manifest)], namespace="x", launch_id="l", service="a"),
        )
