"""Migration cutover workflow logic on the time-skipping server, PostgreSQL activities mocked
by name (the real ones are exercised against PostgreSQL in tests/e2e/test_migration_e2e.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from schemas import migration_messages
from schemas.launch_messages import LaunchInput
from schemas.metrics_messages import MetricReading
from schemas.plan import LaunchPlan
from tests.support.fakes import FakeWorld, gate_open, wait_for
from tests.support.plans import plan_dict
from workers.main import WORKFLOWS
from workflows.launch import LaunchWorkflow


def migration_plan(**phase: Any) -> LaunchPlan:
    spec: dict[str, Any] = {
        "name": "migrate",
        "kind": "migration_cutover",
        "source": {"env": "CHECKOUT_DSN"},
        "migrations": "/srv/migrations",
        "backup_dir": "/srv/backups",
        "cutover": {
            "gate": True,
            "flag": {"flag_file": "/tmp/flags.json", "flag_key": "orders-v2"},
            "sql": {"forward": "SELECT 1", "backward": "SELECT 2"},
        },
        "watch": {"analysis": ["error-rate"]},
    }
    spec.update(phase)
    return LaunchPlan.model_validate(plan_dict(phases=[spec]))


def postgres_fakes(world: FakeWorld) -> list[Callable[..., Any]]:
    script = migration_messages.MigrationScript(version="001", name="a", sha256="x", has_down=True)

    @activity.defn(name="preflight_migration")
    async def preflight(
        request: migration_messages.PreflightRequest,
    ) -> migration_messages.PreflightReport:
        world.calls.append(("preflight_migration", None))
        return migration_messages.PreflightReport(
            source_version="15",
            target_version="15",
            database_bytes=1,
            free_bytes=2,
            scripts=[script],
        )

    @activity.defn(name="backup_database")
    async def backup(request: migration_messages.BackupRequest) -> migration_messages.BackupRecord:
        world.calls.append(("backup_database", None))
        return migration_messages.BackupRecord(
            path="/srv/backups/b.dump",
            sha256="abc",
            size_bytes=1,
            entries=1,
            database="checkout",
            fingerprint=migration_messages.DatabaseFingerprint(schema_hash="s"),
        )

    @activity.defn(name="apply_migrations")
    async def migrate(
        request: migration_messages.MigrateRequest,
    ) -> migration_messages.MigrateResult:
        world.calls.append(("apply_migrations", [s.version for s in request.scripts]))
        return migration_messages.MigrateResult()

    @activity.defn(name="verify_migration")
    async def verify(
        request: migration_messages.VerifyRequest,
    ) -> migration_messages.VerificationReport:
        world.calls.append(("verify_migration", None))
        return migration_messages.VerificationReport(
            tables=[
                migration_messages.TableComparison(
                    table="orders", target_table="orders_v2", source_rows=7, target_rows=7
                )
            ]
        )

    @activity.defn(name="cut_over_sql")
    async def cut_over(
        request: migration_messages.SqlSwitchRequest,
    ) -> migration_messages.SqlSwitchResult:
        world.calls.append(("cut_over_sql", None))
        return migration_messages.SqlSwitchResult(changed=True)

    @activity.defn(name="switch_back_sql")
    async def switch_back(
        request: migration_messages.SqlSwitchRequest,
    ) -> migration_messages.SqlSwitchResult:
        world.calls.append(("switch_back_sql", None))
        return migration_messages.SqlSwitchResult(changed=True)

    @activity.defn(name="check_writes_since_cutover")
    async def guard(
        request: migration_messages.WritesGuardRequest,
    ) -> migration_messages.WritesGuardResult:
        world.calls.append(("check_writes_since_cutover", request.at_cutover[0].target_rows))
        return migration_messages.WritesGuardResult()

    @activity.defn(name="restore_database")
    async def restore(
        request: migration_messages.RestoreDatabaseRequest,
    ) -> migration_messages.RestoreReport:
        world.calls.append(("restore_database", request.backup.path))
        return migration_messages.RestoreReport(method="down_scripts")

    return [preflight, backup, migrate, verify, cut_over, switch_back, guard, restore]


async def run(env: WorkflowEnvironment, plan: LaunchPlan, world: FakeWorld, decide: Any) -> Any:
    task_queue = f"test-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=world.activities() + postgres_fakes(world),
    ):
        launch_id = f"launch-{uuid.uuid4()}"
        handle = await env.client.start_workflow(
            LaunchWorkflow.run,
            LaunchInput(launch_id=launch_id, plan=plan),
            id=launch_id,
            task_queue=task_queue,
        )
        await decide(handle)
        result = await handle.result()
        await wait_for(env, handle, lambda s: s.finished_at is not None)
        return result


def undo_calls(world: FakeWorld) -> list[str]:
    undo = {"switch_back_sql", "restore_exposure", "check_writes_since_cutover", "restore_database"}
    return [name for name in world.names() if name in undo]


async def test_a_breach_in_the_watch_undoes_everything_in_reverse(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld(readings=lambda q: MetricReading(value=0.9))

    async def approve_cutover(handle: Any) -> None:
        await gate_open(time_skipping_env, handle, "migrate.cutover")
        await handle.signal(
            LaunchWorkflow.approve, {"gate": "migrate.cutover", "approver": "alice"}
        )

    result = await run(time_skipping_env, migration_plan(), world, approve_cutover)

    assert result.status == "rolled_back"
    assert "analysis failed after the cutover of migrate" in result.reason
    assert world.names().index("set_exposure") < world.names().index("cut_over_sql")
    assert undo_calls(world) == [
        "switch_back_sql",
        "restore_exposure",
        "check_writes_since_cutover",
        "restore_database",
    ]
    assert ("check_writes_since_cutover", 7) in world.calls  # compared with verification's counts
    restore = result.final.compensations[0]
    assert (restore.activity, restore.timeout_seconds, restore.heartbeat_seconds) == (
        "restore_database",
        6 * 3600,
        30,
    )


async def test_a_rejected_cutover_restores_the_data_only(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()

    async def reject_cutover(handle: Any) -> None:
        gate = await gate_open(time_skipping_env, handle, "migrate.cutover")
        assert gate.open_gate is not None
        assert "orders_v2 7" in gate.open_gate.question
        await handle.signal(LaunchWorkflow.reject, {"gate": "migrate.cutover", "approver": "bob"})

    result = await run(time_skipping_env, migration_plan(), world, reject_cutover)

    assert result.status == "rolled_back"
    assert "gate migrate.cutover rejected by bob" in result.reason
    assert "cut_over_sql" not in world.names()
    assert "set_exposure" not in world.names()
    assert undo_calls(world) == ["restore_database"]
