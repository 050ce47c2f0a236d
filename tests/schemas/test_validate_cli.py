"""`phasegate validate` on hostile plan files: every problem printed with where it is, exit 2,
never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.cli import phasegate
from tests.support.plans import plan_dict


def plan_text() -> str:
    return yaml.safe_dump(plan_dict(), sort_keys=False)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00",
            "(file): not UTF-8 text: a NUL byte at offset 7, as in a binary file",
        ),
        (
            plan_text().replace("2.0.0", "2.0.0 \xa9 2026").encode("latin-1"),
            "(file): not UTF-8 text: byte 0xa9 at offset 33 (line 2) is not UTF-8; save the "
            "file as UTF-8",
        ),
        (
            (plan_text() + "version: 3.0.0\n").encode(),
            f"(yaml) line {plan_text().count(chr(10)) + 1}, column 1: duplicate key 'version' "
            "(first on line 2)",
        ),
        (
            plan_text().replace("timeout: 1h", "timeout: 99999999999d").encode(),
            "approvals.timeout: must be at most 30d",
        ),
    ],
    ids=["binary", "latin-1", "duplicate key", "99999999999d"],
)
def test_validate_prints_the_problem_of_a_hostile_file(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_bytes(content)

    result = phasegate("validate", str(plan))

    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"{plan}: 1 problem", f"  {problem}"]
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
