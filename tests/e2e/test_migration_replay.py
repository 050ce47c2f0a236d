"""Replay: migration histories (launch + MigrationCutover child) replay against the current
code. Recorded from real runs against PostgreSQL; committed copies live in tests/histories/
and are replayed by tests/workflows/test_replay.py. Re-record on purpose with
`PHASEGATE_RECORD_HISTORIES=1 pytest tests/e2e/test_migration_replay.py`.
"""

from __future__ import annotations

import os

import pytest
from temporalio.testing import WorkflowEnvironment

from schemas.plan import LaunchPlan
from tests.support.histories import HISTORIES, replay, save_history
from tests.support.launches import start_launch
from tests.support.postgres import CheckoutDatabase, migration_plan, migrations

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("outcome", ["completed", "rolled_back"])
async def test_migration_histories_replay(
    dev_env: WorkflowEnvironment, worker: str, checkout_db: CheckoutDatabase, outcome: str
) -> None:
    broken = {"003_index_orders_v2": "CREATE INDEX broken ON orders_v2 (no_such_column);"}
    folder = migrations(checkout_db.workdir, broken if outcome == "rolled_back" else None)
    plan = LaunchPlan.model_validate(migration_plan(checkout_db, folder))
    handle = await start_launch(dev_env.client, plan, worker)
    launch_id = handle.id
    result = await handle.result()
    assert result.status == outcome, result.reason

    histories = []
    for workflow_id in (launch_id, f"{launch_id}.migrate"):
        history = await dev_env.client.get_workflow_handle(workflow_id).fetch_history()
        histories.append((workflow_id, history.to_json()))
    await replay(histories)
    if os.environ.get("PHASEGATE_RECORD_HISTORIES"):
        for workflow_id, text in histories:
            kind = "launch" if workflow_id == launch_id else "migrate"
            save_history(HISTORIES / f"migration_{outcome}.{kind}.json", workflow_id, text)
