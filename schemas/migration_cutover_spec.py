"""The migration cutover phase: a PostgreSQL migration, verified, cut over and watched."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from schemas.basics import Name, SecretRef, StrictModel, one_of
from schemas.gate_spec import Gate, GateSpec, gate_id
from schemas.phase_spec import PhaseSpec
from schemas.targets import FlagdRouter

SqlIdentifier = Annotated[
    str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$", max_length=127)
]
ColumnName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*$", max_length=63)]


class TableCheck(StrictModel):
    """Rows of `table` in the source must reach `target_table` (default: the same name)."""

    table: SqlIdentifier
    target_table: SqlIdentifier | None = None
    columns: list[ColumnName] = Field(default_factory=list)  # checksummed; empty = count only


class InvariantCheck(StrictModel):
    """A query run on the target after migrating: it must return no rows, or one `true`."""

    name: Name
    query: Annotated[str, Field(min_length=1)]
    expect: Literal["no_rows", "true"] = "no_rows"


class VerificationSpec(StrictModel):
    tables: list[TableCheck] = Field(default_factory=list)
    invariants: list[InvariantCheck] = Field(default_factory=list)


class SqlSwitch(StrictModel):
    """SQL run on the target to send readers to the new schema (e.g. a view swap), and back."""

    forward: Annotated[str, Field(min_length=1)]
    backward: Annotated[str, Field(min_length=1)]


class CutoverSpec(StrictModel):
    """How traffic moves to the migrated data; every action here is undone on rollback."""

    gate: Gate = Field(default_factory=GateSpec)
    flag: FlagdRouter | None = None  # the flag is switched fully to its canary variant
    sql: SqlSwitch | None = None

    @model_validator(mode="after")
    def _has_action(self) -> CutoverSpec:
        return one_of(self, ("flag", "sql"), "give a cutover action: `flag`, `sql` or both")


class WatchSpec(StrictModel):
    """The plan's analyses run after cutover; a failure rolls the whole migration back."""

    analysis: list[str] = Field(min_length=1)


class MigrationCutoverPhase(PhaseSpec):
    """Back up, migrate, verify, cut over and watch a PostgreSQL migration; undo it all on failure."""

    kind: Literal["migration_cutover"]
    source: SecretRef  # DSN of the database traffic uses now
    target: SecretRef | None = None  # DSN of the database the scripts change; default: source
    migrations: Annotated[str, Field(min_length=1)]  # folder of NNN_name.sql (+ NNN_name.down.sql)
    backup_dir: Annotated[str, Field(min_length=1)]
    ledger_table: SqlIdentifier = "phasegate_migrations"
    min_server_version: Annotated[int, Field(ge=90600)] | None = None  # server_version_num
    extensions: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    verify: VerificationSpec = VerificationSpec()
    cutover: CutoverSpec
    watch: WatchSpec | None = None

    @property
    def target_dsn(self) -> SecretRef:
        return self.target or self.source

    def analysis_references(self) -> list[tuple[str, list[str]]]:
        return [("watch.analysis", self.watch.analysis)] if self.watch else []

    def work_gate_ids(self) -> list[str]:
        ids = [gate_id(self.name, "cutover")] if self.cutover.gate is not None else []
        if self.watch is not None:
            ids.append(gate_id(self.name, "watch", "analysis"))
        return ids

    def with_paths_under(self, base_dir: Path) -> MigrationCutoverPhase:
        """The phase with its folders and flag file made absolute against the plan's folder."""

        def absolute(path: str) -> str:
            return path if Path(path).is_absolute() else str((base_dir / path).resolve())

        cutover = self.cutover
        if cutover.flag is not None:
            flag = cutover.flag.model_copy(update={"flag_file": absolute(cutover.flag.flag_file)})
            cutover = cutover.model_copy(update={"flag": flag})
        return self.model_copy(
            update={
                "migrations": absolute(self.migrations),
                "backup_dir": absolute(self.backup_dir),
                "cutover": cutover,
            }
        )
