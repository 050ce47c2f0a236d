"""Migration cutover: preflight, back up, migrate, verify, cut over behind a gate, watch.

Each change registers its undo first, so the launch's rollback runs them in reverse: switch
the traffic back (SQL switch, then flag), refuse to drop rows written after cutover unless a
person says so, then bring the data back to the backup's fingerprint (down scripts, or the
verified backup) and check it with the same counts and checksums.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.postgres import POSTGRES_OPTIONS, PostgresActivities, long_options
    from activities.routing import ROUTING_OPTIONS, RouterActivities
    from schemas.gate_spec import gate_id
    from schemas.launch_messages import PhaseInput, PhaseState
    from schemas.migration_cutover_spec import MigrationCutoverPhase
    from schemas.migration_messages import (
        BackupRequest,
        MigrateRequest,
        MigrationTarget,
        PreflightRequest,
        RestoreDatabaseRequest,
        SqlSwitchRequest,
        VerifyRequest,
        WritesGuardRequest,
    )
    from schemas.routing_messages import ExposureRequest, RestoreRequest, SnapshotRequest
    from workflows.compensation import (
        CHECK_WRITES_SINCE_CUTOVER,
        RESTORE_DATABASE,
        RESTORE_EXPOSURE,
        SWITCH_BACK_SQL,
    )
    from workflows.phase import UNEXPECTED_ERRORS, PhaseWorkflow

# A restore of a large database outlives the launch's default two minutes for an undo: its
# timeout is sized from the database's size measured at preflight, like backup and migrate.
RESTORE_HEARTBEAT = timedelta(seconds=30)
STEPS = ("preflight", "backup", "migrate", "verify", "cutover", "watch")


@workflow.defn(name="MigrationCutover", failure_exception_types=UNEXPECTED_ERRORS)
class MigrationCutoverWorkflow(PhaseWorkflow):
    @workflow.run
    async def run(self, inp: PhaseInput[MigrationCutoverPhase]) -> PhaseState:
        self.state.steps = len(STEPS)
        return await self.run_phase(inp, lambda: self._migrate_and_cut_over(inp))

    async def _step(self, name: str, activity: str) -> None:
        self.state.step = STEPS.index(name) + 1
        self.state.steps = len(STEPS)
        self.state.activity = activity
        await self.report()

    async def _migrate_and_cut_over(self, inp: PhaseInput[MigrationCutoverPhase]) -> None:
        spec = inp.phase
        where = MigrationTarget(
            launch_id=inp.launch_id,
            phase=spec.name,
            source=spec.source,
            target=spec.target_dsn,
            migrations=spec.migrations,
            ledger_table=spec.ledger_table,
            touches=spec.touches,
        )

        await self._step("preflight", "checking both databases, extensions, disk and the ledger")
        preflight = await workflow.execute_activity_method(
            PostgresActivities.preflight_migration,
            PreflightRequest(
                where=where,
                backup_dir=spec.backup_dir,
                min_server_version=spec.min_server_version,
                extensions=spec.extensions,
            ),
            **POSTGRES_OPTIONS,
        )

        touched = ", ".join(preflight.touched) or "no existing table"
        whole = long_options(preflight.database_bytes)
        await self._step(
            "backup",
            f"guarding {touched}, then backing up {preflight.database_bytes} bytes with pg_dump",
        )
        backup = await workflow.execute_activity_method(
            PostgresActivities.backup_database,
            BackupRequest(
                where=where,
                backup_dir=spec.backup_dir,
                touched=preflight.touched,
                keep_days=spec.backup_keep_days,
            ),
            **whole,
        )
        self.state.activity = f"backup {backup.path} (sha256 {backup.sha256[:12]}) verified"
        await self.compensations.register(
            RESTORE_DATABASE,
            RestoreDatabaseRequest(where=where, backup=backup, scripts=preflight.scripts),
            f"revert the migration of {', '.join(backup.touched) or backup.database} "
            f"(down scripts where every script has one, else those tables from backup "
            f"{backup.path}, sha256 {backup.sha256[:12]}); stops and asks before losing a "
            "live write",
            run_timeout=whole["start_to_close_timeout"],
            heartbeat=RESTORE_HEARTBEAT,
        )

        pending = [s for s in preflight.scripts if s.version not in preflight.already_applied]
        await self._step("migrate", f"applying {len(pending)} script(s)")
        migrated = await workflow.execute_activity_method(
            PostgresActivities.apply_migrations,
            MigrateRequest(where=where, scripts=preflight.scripts, touched=preflight.touched),
            **long_options(preflight.touched_bytes),
        )
        applied = [a.version for a in migrated.applied if not a.skipped]

        await self._step("verify", f"verifying after applying {', '.join(applied) or 'nothing'}")
        verified = await workflow.execute_activity_method(
            PostgresActivities.verify_migration,
            VerifyRequest(
                where=where, tables=spec.verify.tables, invariants=spec.verify.invariants
            ),
            **whole,
        )
        counts = ", ".join(f"{t.target_table} {t.target_rows}" for t in verified.tables)

        cutover = spec.cutover
        if cutover.gate is not None:
            self.state.activity = f"verified ({counts or 'no tables checked'}); waiting to cut over"
            await self.require(
                gate_id(spec.name, "cutover"),
                cutover.gate,
                f"{spec.name}: migration verified ({counts or 'no tables checked'}, "
                f"{len(verified.invariants)} invariant(s) hold). Cut traffic over?",
                inp,
            )
        await self._step("cutover", "switching traffic to the migrated data")
        await self.compensations.register(
            CHECK_WRITES_SINCE_CUTOVER,
            WritesGuardRequest(where=where, backup_dir=spec.backup_dir, at_cutover=verified.tables),
            "save every live write to "
            f"{', '.join(backup.touched) or 'the migrated tables'} since the backup before "
            "anything is reverted",
            run_timeout=whole["start_to_close_timeout"],
            heartbeat=RESTORE_HEARTBEAT,
        )
        if cutover.flag is not None:
            snapshot = await workflow.execute_activity_method(
                RouterActivities.snapshot_exposure,
                SnapshotRequest(router=cutover.flag),
                **ROUTING_OPTIONS,
            )
            await self.compensations.register(
                RESTORE_EXPOSURE,
                RestoreRequest(router=cutover.flag, snapshot=snapshot),
                f"switch flag {cutover.flag.flag_key} back as it was before {spec.name}",
            )
            await workflow.execute_activity_method(
                RouterActivities.set_exposure,
                ExposureRequest(router=cutover.flag, weight=100, launch_id=inp.launch_id),
                **ROUTING_OPTIONS,
            )
            self.state.exposure = 100.0
        if cutover.sql is not None:
            switch = SqlSwitchRequest(where=where, switch=cutover.sql)
            await self.compensations.register(
                SWITCH_BACK_SQL,
                switch,
                "run the cutover's backward SQL switch",
            )
            await workflow.execute_activity_method(
                PostgresActivities.cut_over_sql, switch, **POSTGRES_OPTIONS
            )
        await self.report()

        if spec.watch is not None:
            await self._step("watch", f"watching {', '.join(spec.watch.analysis)} after cutover")
            await self.analyse(
                inp,
                spec.watch.analysis,
                where=f"after the cutover of {spec.name}",
                gate=gate_id(spec.name, "watch", "analysis"),
                go_on="keep the migration",
            )
        self.state.activity = f"migrated and cut over ({counts or 'no tables checked'})"
