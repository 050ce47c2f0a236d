"""The README's main job, `phasegate demo`, run as a user runs it: a process of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack.demo import FLAG_KEY
from tests.support.cli import run_phasegate
from tests.support.servers import canary_share

pytestmark = pytest.mark.integration


def test_demo_with_a_faulty_version_rolls_back_and_says_why(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"

    run = run_phasegate("demo", "--auto-approve", "--faulty", "--workdir", str(workdir))

    output = run.output
    assert run.returncode == 1, output
    assert "Temporal dev server on 127.0.0.1:" in output
    assert "--auto-approve: every gate is approved by demo-bot" in output
    assert "rolled back: analysis failed at soft-launch step" in output
    assert "error-rate failed" in output
    # The demo's own flag file is back where it started, and the state stays for the UI.
    flag_file = workdir / "stack" / "flags" / "checkout.json"
    assert canary_share(flag_file, FLAG_KEY) == 0.0
    assert json.loads(flag_file.read_text())["flags"][FLAG_KEY]["state"] == "ENABLED"
    assert (workdir / "temporal.db").stat().st_size > 0
