"""The migration cutover phase: a PostgreSQL migration, verified, cut over and watched.

Bounds: at most `MAX_TABLES` tables of at most `MAX_COLUMNS` columns checked, `MAX_INVARIANTS`
invariants, `MAX_EXTENSIONS` extensions, `MAX_WATCH_ANALYSES` analyses watched; queries at
most `MAX_TEXT` characters, SQL switches at most `MAX_SQL`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from schemas.basics import FilePath, Label, Name, Query, SecretRef, StrictModel, one_of, unique
from schemas.gate_spec import Gate, GateSpec, gate_id
from schemas.phase_spec import PhaseSpec
from schemas.problems import raise_problems
from schemas.targets import FlagdRouter

SqlIdentifier = Annotated[
    str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$", max_length=127)
]
ColumnName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*$", max_length=63)]
MAX_TABLES = 50
MAX_COLUMNS = 100
MAX_INVARIANTS = 50
MAX_EXTENSIONS = 20
MAX_WATCH_ANALYSES = 10
MAX_SQL = 16 * 1024
Sql = Annotated[str, Field(min_length=1, max_length=MAX_SQL)]


class TableCheck(StrictModel):
    """Rows of `table` in the source must reach `target_table` (default: the same name)."""

    table: SqlIdentifier
    target_table: SqlIdentifier | None = None
    # checksummed; empty = count only
    columns: list[ColumnName] = Field(default_factory=list, max_length=MAX_COLUMNS)


class InvariantCheck(StrictModel):
    """A query run on the target after migrating: it must return no rows, or one `true`."""

    name: Name
    query: Query
    expect: Literal["no_rows", "true"] = "no_rows"


class VerificationSpec(StrictModel):
    tables: list[TableCheck] = Field(default_factory=list, max_length=MAX_TABLES)
    invariants: list[InvariantCheck] = Field(default_factory=list, max_length=MAX_INVARIANTS)


class SqlSwitch(StrictModel):
    """SQL run on the target to send readers to the new schema (e.g. a view swap), and back."""

    forward: Sql
    backward: Sql


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

    analysis: list[Name] = Field(min_length=1, max_length=MAX_WATCH_ANALYSES)

    @model_validator(mode="after")
    def _named_once(self) -> WatchSpec:
        raise_problems(unique(self.analysis, "analysis"))
        return self


class MigrationCutoverPhase(PhaseSpec):
    """Back up, migrate, verify, cut over and watch a PostgreSQL migration; undo it all on failure."""

    kind: Literal["migration_cutover"]
    source: SecretRef  # DSN of the database traffic uses now
    target: SecretRef | None = None  # DSN of the database the scripts change; default: source
    migrations: FilePath  # folder of NNN_name.sql (+ NNN_name.down.sql)
    backup_dir: FilePath
    ledger_table: SqlIdentifier = "phasegate_migrations"
    # Tables the scripts change that parsing them cannot see (a DO block, a function call):
    # guarded from before the backup like the tables the scripts name.
    touches: list[SqlIdentifier] = Field(default_factory=list, max_length=MAX_TABLES)
    # Backups in `backup_dir` older than this many days are removed when a new one is taken.
    backup_keep_days: Annotated[int, Field(ge=1, le=3650)] = 30
    # server_version_num, e.g. 160004 for 16.4
    min_server_version: Annotated[int, Field(ge=90600, le=9_999_999)] | None = None
    extensions: list[Label] = Field(default_factory=list, max_length=MAX_EXTENSIONS)
    verify: VerificationSpec = VerificationSpec()
    cutover: CutoverSpec
    watch: WatchSpec | None = None

    @model_validator(mode="after")
    def _touches_once(self) -> MigrationCutoverPhase:
        raise_problems(unique(self.touches, "touches"))
        return self

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
