"""Migration cutover workflow logic on the time-skipping server, PostgreSQL activities mocked
by name (the real ones are exercised against PostgreSQL in tests/e2e/test_migration_e2e.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from schemas import migration_messages
from schemas.basics import Message
from schemas.launch_messages import LaunchResult
from schemas.metrics_messages import MetricReading
from schemas.plan import LaunchPlan
from tests.support.fakes import FakeWorld, running_launch
from tests.support.launches import decide_gate, gate_open, wait_for
from tests.support.plans import migration_phase, plan_dict
from workflows.launch import LaunchWorkflow


def migration_plan() -> LaunchPlan:
    """A migration whose cutover waits at a gate, moves a flag, and is watched afterwards."""
    spec = migration_phase(
        migrations="/srv/migrations",
        backup_dir="/srv/backups",
        cutover={
            "gate": True,
            "flag": {"flag_file": "/tmp/flags.json", "flag_key": "orders-v2"},
            "sql": {"forward": "SELECT 1", "backward": "SELECT 2"},
        },
        watch={"analysis": ["error-rate"]},
    )
    return LaunchPlan.model_validate(plan_dict(phases=[spec]))


# What the PostgreSQL fakes answer: one script to run, a backup, and 7 rows copied of 7.
PREFLIGHT = migration_messages.PreflightReport(
    source_version="15",
    target_version="15",
    database_bytes=1,
    free_bytes=2,
    scripts=[
        migration_messages.MigrationScript(version="001", name="a", sha256="x", has_down=True)
    ],
)
BACKUP = migration_messages.BackupRecord(
    path="/srv/backups/b.dump",
    sha256="abc",
    size_bytes=1,
    entries=1,
    database="checkout",
    fingerprint=migration_messages.DatabaseFingerprint(schema_hash="s"),
)
VERIFIED = migration_messages.VerificationReport(
    tables=[
        migration_messages.TableComparison(
            table="orders", target_table="orders_v2", source_rows=7, target_rows=7
        )
    ]
)


class MigrationWorld(FakeWorld):
    """The fakes, plus the PostgreSQL activities of a migration that goes to plan."""

    def activities(self) -> list[Callable[..., Any]]:
        return [
            *super().activities(),
            self._answering("preflight_migration", PREFLIGHT),
            self._answering("backup_database", BACKUP),
            self._answering("verify_migration", VERIFIED),
            self._answering("cut_over_sql", migration_messages.SqlSwitchResult(changed=True)),
            self._answering("switch_back_sql", migration_messages.SqlSwitchResult(changed=True)),
        ]

    def _answering(self, name: str, answer: Message) -> Callable[..., Any]:
        """The fake of activity `name`: it records the call and gives `answer`, whatever the
        request (which it takes as plain JSON)."""
        world = self

        @activity.defn(name=name)
        async def fake(request: dict[str, Any]) -> Message:
            world.calls.append((name, None))
            return answer

        return fake

    @activity.defn(name="apply_migrations")
    async def migrate(
        self, request: migration_messages.MigrateRequest
    ) -> migration_messages.MigrateResult:
        self.calls.append(("apply_migrations", [s.version for s in request.scripts]))
        return migration_messages.MigrateResult()

    @activity.defn(name="check_writes_since_cutover")
    async def guard(
        self, request: migration_messages.WritesGuardRequest
    ) -> migration_messages.WritesGuardResult:
        self.calls.append(("check_writes_since_cutover", request.at_cutover[0].target_rows))
        return migration_messages.WritesGuardResult()

    @activity.defn(name="restore_database")
    async def restore(
        self, request: migration_messages.RestoreDatabaseRequest
    ) -> migration_messages.RestoreReport:
        self.calls.append(("restore_database", request.backup.path))
        return migration_messages.RestoreReport(method="down_scripts")


async def run(
    env: WorkflowEnvironment,
    plan: LaunchPlan,
    world: MigrationWorld,
    decide: Callable[[WorkflowHandle[LaunchWorkflow, LaunchResult]], Awaitable[None]],
) -> LaunchResult:
    async with running_launch(env.client, plan, world) as handle:
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
    world = MigrationWorld(readings=lambda q: MetricReading(value=0.9))

    async def approve_cutover(handle: WorkflowHandle[LaunchWorkflow, LaunchResult]) -> None:
        await decide_gate(time_skipping_env, handle, "migrate.cutover", "approve", "alice")

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
    # Sized from the database's size at preflight (1 byte here): the ten-minute floor.
    assert (restore.activity, restore.timeout_seconds, restore.heartbeat_seconds) == (
        "restore_database",
        601,
        30,
    )


async def test_a_rejected_cutover_restores_the_data_only(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = MigrationWorld()

    async def reject_cutover(handle: WorkflowHandle[LaunchWorkflow, LaunchResult]) -> None:
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
