"""The migration_cutover phase in the plan, and the scripts folder: bad input, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from activities.errors import ConfigurationError
from activities.postgres import discover_scripts
from schemas.migration_cutover_spec import MigrationCutoverPhase
from schemas.plan import parse_plan
from tests.support.plans import migration_phase, plan_dict, plan_problems

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def problems(spec: dict[str, Any]) -> list[str]:
    return plan_problems(plan_dict(phases=[spec]))


def test_paths_are_resolved_against_the_plan_folder(tmp_path: Path) -> None:
    text = yaml.safe_dump(
        plan_dict(
            phases=[
                migration_phase(
                    cutover={"flag": {"flag_file": "flags/db.json", "flag_key": "orders-v2"}},
                    watch={"analysis": ["error-rate"]},
                )
            ]
        )
    )
    plan = parse_plan(text, base_dir=tmp_path)
    migration = plan.phases[0]
    assert isinstance(migration, MigrationCutoverPhase)
    assert migration.migrations == str(tmp_path / "migrations" / "checkout")
    assert migration.backup_dir == str(tmp_path / "backups")
    assert migration.cutover.flag is not None
    assert migration.cutover.flag.flag_file == str(tmp_path / "flags" / "db.json")
    assert migration.target_dsn == migration.source  # one database unless a target is given
    assert migration.gate_ids() == ["migrate.cutover", "migrate.watch.analysis"]


def test_a_dsn_written_inline_is_refused() -> None:
    found = problems(migration_phase(source="postgresql://app:hunter2@db/checkout"))
    assert any(line.startswith("phases[0].source") for line in found), found


def test_a_cutover_needs_an_action() -> None:
    assert "phases[0].cutover: give a cutover action: `flag`, `sql` or both" in problems(
        migration_phase(cutover={"gate": True})
    )


def test_watch_names_a_defined_analysis() -> None:
    found = problems(migration_phase(watch={"analysis": ["latency"]}))
    assert "phases[0].watch.analysis: no analysis named 'latency' (defined: error-rate)" in found


def test_verification_table_names_are_identifiers() -> None:
    found = problems(migration_phase(verify={"tables": [{"table": "orders; DROP TABLE orders"}]}))
    assert any(line.startswith("phases[0].verify.tables[0].table: must match") for line in found)


def test_example_scripts_are_ordered_with_their_downs() -> None:
    scripts = discover_scripts(str(EXAMPLES / "migrations" / "checkout"))
    assert [(s.version, s.name, s.has_down, s.transactional) for s in scripts] == [
        ("001", "create_orders_v2", True, True),
        ("002", "copy_orders", True, True),
        ("003", "index_orders_v2", True, True),
    ]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1-create.sql": ""}, "1-create.sql: name it NNN_name.sql"),
        ({"001_a.sql": "", "001_b.sql": ""}, "two scripts have version 001"),
        ({"001_a.sql": "", "002_b.down.sql": ""}, "down scripts without an up script: ['002_b']"),
        ({}, "has no NNN_name.sql scripts"),
    ],
)
def test_odd_scripts_folders_are_refused(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        discover_scripts(str(tmp_path))


def test_the_no_transaction_mark_is_read(tmp_path: Path) -> None:
    (tmp_path / "001_index.sql").write_text(
        "-- phasegate: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (c);\n"
    )
    assert not discover_scripts(str(tmp_path))[0].transactional


@pytest.mark.parametrize(
    ("touches", "field"),
    [
        (["orders", "orders"], "phases[0].touches[1]"),
        (["orders; DROP TABLE x"], "phases[0].touches[0]"),
        ([f"t{n}" for n in range(51)], "phases[0].touches"),
        ("orders", "phases[0].touches"),
    ],
)
def test_touches_are_few_distinct_table_names(touches: Any, field: str) -> None:
    found = problems(migration_phase(touches=touches))
    assert any(line.startswith(field) for line in found), found


@pytest.mark.parametrize("days", [0, -1, 3651, 1e400, float("nan"), 2.5, "never"])
def test_backup_retention_is_bounded(days: Any) -> None:
    found = problems(migration_phase(backup_keep_days=days))
    assert any(line.startswith("phases[0].backup_keep_days") for line in found), found


def test_the_carry_over_script_is_not_a_migration(tmp_path: Path) -> None:
    for name in ("001_a.sql", "carry_over.sql"):
        (tmp_path / name).write_text("SELECT 1;")
    assert [s.version for s in discover_scripts(str(tmp_path))] == ["001"]
