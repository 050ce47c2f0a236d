"""Messages of the migration cutover phase: between its workflow and the PostgreSQL activities.

Like every message module, each activity takes one model and returns one; DSNs travel as
`SecretRef`s only and are resolved inside the activities. Results carry names, counts and
checksums, never a row's values: they are written to workflow history.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from schemas.basics import Message, SecretRef
from schemas.migration_cutover_spec import InvariantCheck, SqlSwitch, TableCheck


class MigrationScript(Message):
    """One `NNN_name.sql` file, pinned by its content hash between preflight and migrate."""

    version: str
    name: str
    sha256: str
    transactional: bool = True
    has_down: bool = False


class TableFingerprint(Message):
    rows: int
    checksum: str


class DatabaseFingerprint(Message):
    """Everything needed to say "exactly as before": the shape and the content of each table."""

    schema_hash: str
    tables: dict[str, TableFingerprint] = Field(default_factory=dict)
    ledger_existed: bool = False

    def differences(self, other: DatabaseFingerprint) -> list[str]:
        """What differs between `self` (expected) and `other` (found), in words."""
        problems: list[str] = []
        if self.schema_hash != other.schema_hash:
            problems.append("the schema (tables, columns, views, indexes) differs")
        for name in sorted(set(self.tables) | set(other.tables)):
            want, got = self.tables.get(name), other.tables.get(name)
            if want is None:
                problems.append(f"{name}: present now, absent before")
            elif got is None:
                problems.append(f"{name}: absent now, had {want.rows} rows before")
            elif want != got:
                problems.append(
                    f"{name}: {got.rows} rows (checksum {got.checksum}) "
                    f"vs {want.rows} rows (checksum {want.checksum}) before"
                )
        return problems


class MigrationTarget(Message):
    """Where a migration happens: the databases by reference, the scripts, the ledger."""

    launch_id: str
    phase: str
    source: SecretRef
    target: SecretRef
    migrations: str
    ledger_table: str
    touches: list[str] = Field(default_factory=list)  # the plan's declared `touches`


class PreflightRequest(Message):
    where: MigrationTarget
    backup_dir: str
    min_server_version: int | None = None
    extensions: list[str] = Field(default_factory=list)


class PreflightReport(Message):
    source_version: str
    target_version: str
    database_bytes: int
    free_bytes: int
    scripts: list[MigrationScript]
    already_applied: list[str] = Field(default_factory=list)
    # The tables the migration changes (declared, or named by its scripts), `schema.table`
    # for those that exist; their size sizes the long activities' timeouts.
    touched: list[str] = Field(default_factory=list)
    touched_bytes: int = 0
    carry_over: bool = False  # the folder has a carry_over.sql for writes at risk


class BackupRequest(Message):
    where: MigrationTarget
    backup_dir: str
    touched: list[str] = Field(default_factory=list)
    keep_days: int = 30


class BackupRecord(Message):
    """A verified, encrypted `pg_dump -Fc` of the target and the fingerprint of the tables the
    migration touches, taken in the same snapshot."""

    path: str
    sha256: str
    size_bytes: int
    entries: int
    database: str
    fingerprint: DatabaseFingerprint
    seconds: float = 0.0
    touched: list[str] = Field(default_factory=list)  # guarded from before the snapshot
    shapes: dict[str, str] = Field(default_factory=dict)  # their catalog shapes then
    written_by: str = ""  # the worker host that wrote it, named when another cannot read it
    # The touched tables' indexes, constraints, sequences and dependents at the backup, for
    # restoring just them (activities/pg_table_restore.py `TableObjects`).
    objects: dict[str, dict[str, Any]] = Field(default_factory=dict)


class MigrateRequest(Message):
    where: MigrationTarget
    scripts: list[MigrationScript]
    touched: list[str] = Field(default_factory=list)


class AppliedScript(Message):
    version: str
    name: str
    seconds: float
    skipped: bool = False  # recorded in the ledger already: never applied twice


class MigrateResult(Message):
    applied: list[AppliedScript] = Field(default_factory=list)


class VerifyRequest(Message):
    where: MigrationTarget
    tables: list[TableCheck] = Field(default_factory=list)
    invariants: list[InvariantCheck] = Field(default_factory=list)


class TableComparison(Message):
    table: str
    target_table: str
    columns: list[str] = Field(default_factory=list)
    source_rows: int
    target_rows: int
    source_checksum: str = ""
    target_checksum: str = ""

    @property
    def matches(self) -> bool:
        return self.source_rows == self.target_rows and self.source_checksum == self.target_checksum


class VerificationReport(Message):
    tables: list[TableComparison] = Field(default_factory=list)
    invariants: dict[str, bool] = Field(default_factory=dict)
    rows_checked: int = 0
    seconds: float = 0.0


class SqlSwitchRequest(Message):
    where: MigrationTarget
    switch: SqlSwitch


class SqlSwitchResult(Message):
    changed: bool


class WritesGuardRequest(Message):
    """The target tables as verification saw them just before cutover."""

    where: MigrationTarget
    backup_dir: str
    at_cutover: list[TableComparison]


class WritesGuardResult(Message):
    unchanged: list[str] = Field(default_factory=list)
    saved: str = ""  # every live write captured so far, saved before anything is reverted
    rows: int = 0


class TableLoss(Message):
    """Live writes to one table that reverting the migration would lose."""

    rows_lost: int = 0  # rows inserted or updated live whose latest version would be gone
    deletes_undone: int = 0  # rows deleted live that the revert would bring back
    table_gone: bool = False  # the revert drops the table that holds them


class WritesAtRiskReport(Message):
    """What reverting would lose, as the `WritesAtRisk` failure's details: the rollback shows
    it at its gate, and a person's `drop_writes` may drop at most `rows` rows."""

    tables: dict[str, TableLoss] = Field(default_factory=dict)
    rows: int = 0  # rows_lost + deletes_undone over every table
    saved: str = ""  # the encrypted JSON-lines file holding those rows
    method: Literal["down_scripts", "backup"] = "down_scripts"


class WritesDecision(Message):
    """A person's recorded answer to writes at risk: carry them over with the migration
    folder's `carry_over.sql`, or drop at most `at_most_rows` of them."""

    action: Literal["carry_over", "drop"]
    by: str
    comment: str = ""
    at_most_rows: int = 0


class RestoreDatabaseRequest(Message):
    where: MigrationTarget
    backup: BackupRecord
    scripts: list[MigrationScript]
    writes: WritesDecision | None = None  # set by the rollback once a person decided


class RestoreReport(Message):
    method: Literal["nothing_applied", "down_scripts", "backup"]
    reverted: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    carried_over: int = 0  # live-written rows `carry_over.sql` kept
    dropped: WritesAtRiskReport | None = None  # what a person chose to drop, on record
