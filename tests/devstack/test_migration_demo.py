"""`phasegate migration demo`, run as a user runs it: the checkout launch ends with the orders
migration against a local PostgreSQL, cut over and kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from activities import backup_store
from tests.support.cli import run_phasegate

pytestmark = pytest.mark.integration


def test_migration_demo_migrates_and_cuts_over(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"

    run = run_phasegate(
        "migration", "demo", "--auto-approve", "--rows", "5000", "--workdir", str(workdir)
    )

    output = run.output
    assert run.returncode == 0, output
    assert "database checkout with 5000 orders" in output
    assert "waiting at gate orders-migration.cutover" in output
    assert "orders_v2 5000" in output  # the gate shows the verified counts
    assert "completed; checkout_orders reads orders_v2; orders_v2 exists" in output
    backups = list((workdir / "backups").glob("*.orders-migration.dump.pgbk"))
    assert len(backups) == 1
    assert backups[0].stat().st_mode & 0o777 == 0o600  # encrypted, private
    assert backup_store.sidecar_of(backups[0]).exists()
