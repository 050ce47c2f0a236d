"""Generated plans against `phasegate validate` and what `phasegate launch` does before a
launch starts: valid plans built from the schema's fields, and the same plans broken as data,
as YAML text and as bytes (`tests/support/fuzzing.py`).

Never a traceback; every refusal is a `path: message` line whose path names something in the
plan; every plan validate accepts starts: its launch input fits Temporal's payload limit and
reaches the worker unchanged, and the worker's admission (`activities/admission.py`) answers
it with problems that name fields too, none of them holding a secret's value.
"""

from __future__ import annotations

import contextlib
import io
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from hypothesis import given, seed, settings
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.admission import plan_problems
from approvals.proofs import plan_digest
from schemas.launch_messages import LaunchInput
from schemas.plan import LaunchPlan
from schemas.problems import PlanError
from starters import launches
from starters.cli import app
from tests.support.fuzzing import (
    FUZZ,
    SECRET_ENV,
    WHOLE_DOCUMENT,
    fuzz_seed,
    known_hostile_files,
    named_field,
    plan_files,
    plan_text,
    read_back,
    replayable,
    unnamed_field,
    valid_plans,
)
from tests.support.limits import session_limits

# Temporal refuses a payload over 2 MB; the launch input holds the whole plan.
PAYLOAD_LIMIT = 2 * 1024 * 1024
VALID_PLANS = 200
PLAN_FILES = 800
# The command line as the `phasegate` script runs it, built once (Typer's test runner builds
# it anew on every call, which would be most of this test's time).
COMMAND = typer.main.get_command(app)


@dataclass
class Ran:
    exit_code: int
    stdout: str
    stderr: str
    error: BaseException | None  # anything but the command's own exit

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def phasegate(*args: str) -> Ran:
    """`phasegate ARGS` in this process, its output captured."""
    out, err = io.StringIO(), io.StringIO()
    code, error = 0, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = COMMAND.main(args=list(args), prog_name="phasegate", standalone_mode=False)
        except Exception as raised:
            code, error = 1, raised
    return Ran(code or 0, out.getvalue(), err.getvalue(), error)


@pytest.fixture
def secret_value(monkeypatch: pytest.MonkeyPatch) -> str:
    """A value for the secret the generated plans name, which must never be printed."""
    value = f"fuzz-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv(SECRET_ENV, value)
    return value


def validated(raw: bytes, path: Path, secret: str) -> tuple[bool, LaunchPlan | list[str]]:
    """Run `phasegate validate` on `raw` written to `path` and check what it printed, and
    load the plan as `phasegate launch` does; the CLI's verdict, and the plan (or its
    problems)."""
    path.write_bytes(raw)
    result = phasegate("validate", str(path))
    trace = "".join(traceback.format_exception(result.error)) if result.error else ""
    assert result.exit_code in (0, 2), f"exit {result.exit_code}:\n{result.output}\n{trace}"
    assert "Traceback" not in result.output, result.output
    assert secret not in result.output
    data = read_back(raw)

    def check(problem: str) -> None:
        why = unnamed_field(problem, data) if data is not None else _whole(problem)
        assert not why, f"{problem!r} {why}\n--- plan ---\n{_shown(raw)}"

    plan: LaunchPlan | None = None
    problems: list[str] = []
    try:
        plan = launches.validate_plan(path)
    except PlanError as err:
        problems = err.problems
        assert problems, "refused without a problem"
    for problem in problems:
        check(problem)
    if plan is None:
        assert result.exit_code == 2, "the CLI accepted a plan `phasegate launch` refuses"
    if result.exit_code == 2:
        # What the CLI printed: the same problems, and those with the worker's limits.
        header, *printed = result.stderr.splitlines()
        assert header.startswith(f"{path}: "), result.stderr
        assert printed, result.stderr
        for line in printed:
            check(line.removeprefix("  "))
    return (result.exit_code == 0, plan) if plan is not None else (False, problems)


def _whole(problem: str) -> str:
    """For a file no YAML reader reads: only whole-document problems make sense."""
    return "" if WHOLE_DOCUMENT.match(problem) else "names a field of a file that is not YAML"


def _shown(raw: bytes) -> str:
    return raw[:3000].decode("utf-8", "replace") + ("\n…" if len(raw) > 3000 else "")


def starts(plan: LaunchPlan, accepted: bool, secret: str) -> None:
    """What starting the launch does with a valid plan: the id, the summary and details the
    UI shows, the digest a start proof binds, the launch input through the data converter,
    then the worker's admission under the test session's limits."""
    launch_id = launches.new_launch_id(plan)
    assert launches.summarize_plan(plan)
    assert launches.describe_plan(plan)
    assert len(plan_digest(plan)) == 64
    assert set(launches.gate_ids(plan)) == {g for p in plan.phases for g in p.gate_ids()}
    sent = LaunchInput(launch_id=launch_id, plan=plan, started_by="fuzz")
    converter = pydantic_data_converter.payload_converter
    [payload] = converter.to_payloads([sent])
    assert payload.ByteSize() < PAYLOAD_LIMIT
    assert converter.from_payloads([payload], [LaunchInput]) == [sent]

    data = plan.model_dump(mode="json")
    problems = plan_problems(plan, session_limits())
    assert secret not in "\n".join(problems)
    for problem in problems:
        why, value = named_field(problem, data)
        assert not why, f"admission: {problem!r} {why}"
        if accepted:
            # `validate` checked the limits without reading secrets: all launch adds is that
            # a secret (or what a secret URL or DSN points at) cannot be used.
            assert isinstance(value, dict), problem
            assert set(value) == {"env", "file"}, problem


KNOWN_HOSTILE = known_hostile_files()


@pytest.mark.parametrize(("what", "raw"), KNOWN_HOSTILE, ids=[what for what, _ in KNOWN_HOSTILE])
def test_every_run_refuses_the_known_hostile_plans(
    tmp_path: Path, secret_value: str, what: str, raw: bytes
) -> None:
    """What the fuzzing must always try, whatever the seed: each refused field by field."""
    accepted, plan = validated(raw, tmp_path / "plan.yaml", secret_value)
    assert not accepted
    assert isinstance(plan, list), f"{what}: validate accepted it"


def test_valid_plans_validate_and_start(tmp_path: Path, secret_value: str) -> None:
    """Every plan built from the schema's fields validates and starts."""
    chosen = fuzz_seed()

    @seed(chosen)
    @settings(FUZZ, max_examples=VALID_PLANS)
    @given(valid_plans())
    def check(data: dict[str, object]) -> None:
        raw = plan_text(data).encode()
        accepted, plan = validated(raw, tmp_path / "plan.yaml", secret_value)
        assert isinstance(plan, LaunchPlan), f"a valid plan was refused: {plan}\n{_shown(raw)}"
        starts(plan, accepted, secret_value)

    with replayable(chosen):
        check()


def test_broken_plans_are_refused_field_by_field(tmp_path: Path, secret_value: str) -> None:
    """Plans broken as data, text or bytes: refused with problems naming fields, or (when the
    break left a valid plan) started; never a traceback."""
    chosen = fuzz_seed()

    @seed(chosen)
    @settings(FUZZ, max_examples=PLAN_FILES)
    @given(plan_files())
    def check(made: tuple[str, bytes]) -> None:
        how, raw = made
        accepted, plan = validated(raw, tmp_path / "plan.yaml", secret_value)
        if how == "valid":
            assert isinstance(plan, LaunchPlan), f"a valid plan was refused: {plan}\n{_shown(raw)}"
        if isinstance(plan, LaunchPlan):
            starts(plan, accepted, secret_value)

    with replayable(chosen):
        check()
