"""The `phasegate` command line: plans checked offline, failures as one line, a real launch.

These tests are plain `def`s: each command runs its own `asyncio.run`, which cannot happen
inside pytest-asyncio's running loop. The real worker gets a thread and a loop of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.cli import against, phasegate, status_until, unused_address
from tests.support.plans import plan_dict
from workers.client import connect
from workers.main import build_worker
from workers.settings import Settings


def write_plan(path: Path, plan: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


# --- offline: plans ----------------------------------------------------------------------


def test_validate_accepts_a_good_plan_and_names_its_gates(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", plan_dict())

    result = phasegate("validate", str(plan))

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"{plan}: ok (checkout 2.0.0, 2 phases, gates: soft-launch.before, "
        "soft-launch.step-1.analysis, soft-launch.step-2)"
    )


def set_weight_150(plan: dict[str, Any]) -> None:
    plan["phases"][1]["steps"][1]["weight"] = 150


def use_unknown_analysis(plan: dict[str, Any]) -> None:
    plan["phases"][0]["steps"][0]["analysis"] = ["latency"]


def add_unknown_field(plan: dict[str, Any]) -> None:
    plan["phases"][0]["colour"] = "blue"


@pytest.mark.parametrize(
    ("break_plan", "problem"),
    [
        (set_weight_150, "phases[1].steps[1].weight: must be <= 100"),
        (
            use_unknown_analysis,
            "phases[0].steps[0].analysis: no analysis named 'latency' (defined: error-rate)",
        ),
        (add_unknown_field, "phases[0].colour: is not a known field"),
    ],
)
def test_validate_prints_each_problem_with_its_path(
    tmp_path: Path, break_plan: Callable[[dict[str, Any]], None], problem: str
) -> None:
    broken = plan_dict()
    break_plan(broken)
    plan = write_plan(tmp_path / "plan.yaml", broken)

    result = phasegate("validate", str(plan))

    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"{plan}: 1 problem", f"  {problem}"]


def test_validate_prints_every_problem_at_once(tmp_path: Path) -> None:
    broken = plan_dict()
    set_weight_150(broken)
    add_unknown_field(broken)
    plan = write_plan(tmp_path / "plan.yaml", broken)

    result = phasegate("validate", str(plan))

    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"{plan}: 2 problems"
    assert sorted(lines[1:]) == [
        "  phases[0].colour: is not a known field",
        "  phases[1].steps[1].weight: must be <= 100",
    ]


def test_validate_names_a_missing_file(tmp_path: Path) -> None:
    result = phasegate("validate", str(tmp_path / "nowhere.yaml"))

    assert result.exit_code == 2
    assert "(file): cannot read: No such file or directory" in result.stderr


def test_launch_of_an_invalid_plan_starts_nothing(tmp_path: Path) -> None:
    broken = plan_dict()
    set_weight_150(broken)
    plan = write_plan(tmp_path / "plan.yaml", broken)

    # Nothing listens on this address: reaching it would fail with exit code 1, not 2.
    result = phasegate("--address", unused_address(), "launch", str(plan))

    assert result.exit_code == 2
    assert "phases[1].steps[1].weight: must be <= 100" in result.stderr
    assert "cannot reach Temporal" not in result.output
    assert "started" not in result.stdout


def authenticated_plan(tmp_path: Path) -> Path:
    return write_plan(
        tmp_path / "plan.yaml",
        plan_dict(
            approvals={"identity": {"issuer": "https://idp.example.com"}, "approvers": ["alice"]}
        ),
    )


def test_launch_of_an_authenticated_plan_refuses_a_typed_name(tmp_path: Path) -> None:
    result = phasegate(
        "--address", unused_address(), "launch", str(authenticated_plan(tmp_path)), "--as", "bob"
    )

    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "--as: names come from your sign-in at https://idp.example.com; leave --as out"
    )


def test_launch_of_an_authenticated_plan_needs_the_approval_service_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PHASEGATE_APPROVAL_SERVICE", raising=False)

    result = phasegate("--address", unused_address(), "launch", str(authenticated_plan(tmp_path)))

    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "approvals of this launch are proven with a sign-in at https://idp.example.com: set "
        "PHASEGATE_APPROVAL_SERVICE to the approval service's URL"
    )


# --- offline: failures are one line ------------------------------------------------------


def test_status_without_a_server_is_one_red_line(tmp_path: Path) -> None:
    address = unused_address()

    result = phasegate("--address", address, "status", "checkout-2.0.0-abcdef12")

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"cannot reach Temporal at {address}")
    assert result.stdout == ""


# --- against the real dev server with a real worker ---------------------------------------


class WorkerThread:
    """The real worker, on its own thread and event loop, polling its own task queue."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="phasegate-worker", daemon=True)

    def __enter__(self) -> WorkerThread:
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise TimeoutError("the worker did not start within 30s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as err:
            self._error = err
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        client = await connect(self.settings)
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=self.settings.max_concurrent_activities
        ) as executor:
            async with httpx.AsyncClient() as http:
                worker = build_worker(client, http, executor, self.settings)
                async with worker:
                    self._ready.set()
                    await self._stop.wait()


@pytest.fixture
def worker(dev_settings: Settings) -> Iterator[WorkerThread]:
    with WorkerThread(dev_settings) as running:
        yield running


@pytest.mark.integration
def test_a_launch_is_started_decided_and_completed_through_the_cli(
    tmp_path: Path, dev_settings: Settings, worker: WorkerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = tmp_path / "flags"
    flags.mkdir()
    service = f"cli-{uuid.uuid4().hex[:8]}"
    plan = write_plan(
        tmp_path / "plan.yaml",
        plan_dict(
            flag_file=flags / "flags.json",
            service=service,
            phases=[
                {
                    "name": "full-launch",
                    "kind": "full_launch",
                    "gates": {"before": {"approvers": ["alice"]}},
                    "steps": [{"weight": 100}],
                }
            ],
        ),
    )
    launch_id = f"{service}-launch"

    started = against(dev_settings, "launch", str(plan), "--id", launch_id)
    assert started.exit_code == 0, started.output
    assert started.stdout.splitlines() == [
        f"started {launch_id}",
        f"http://ui.example/namespaces/{dev_settings.temporal_namespace}/workflows/{launch_id}",
    ]

    waiting = status_until(
        dev_settings,
        launch_id,
        lambda s: (s["open_gate"] or {}).get("gate") == "full-launch.before",
    )
    assert waiting["status"] == "waiting"
    assert waiting["identity"] == ""
    unauthenticated = (
        f"approvals of {launch_id} are not authenticated (its plan says `identity: none`): "
        "names are taken as typed"
    )

    monkeypatch.delenv("PHASEGATE_APPROVER", raising=False)
    monkeypatch.delenv("USER", raising=False)
    nameless = against(dev_settings, "approve", launch_id, "full-launch.before")
    assert nameless.exit_code == 1
    assert nameless.stderr.splitlines() == [
        unauthenticated,
        "who are you? give --as NAME or set PHASEGATE_APPROVER",
    ]

    printed = against(dev_settings, "signal-input", "approve", launch_id, "--as", "alice")
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == {
        "gate": "full-launch.before",
        "approver": "alice",
        "comment": "",
    }
    assert printed.stderr.splitlines()[0] == unauthenticated

    refused = against(dev_settings, "approve", launch_id, "full-launch.before", "--as", "mallory")
    assert refused.exit_code == 1
    assert refused.stderr.splitlines() == [
        unauthenticated,
        "refused: 'mallory' may not decide gate 'full-launch.before'; approvers: alice",
    ]

    approved = against(
        dev_settings, "approve", launch_id, "full-launch.before", "--as", "alice", "-m", "go"
    )
    assert approved.exit_code == 0, approved.output
    assert approved.stdout.strip() == f"approved full-launch.before of {launch_id} as alice: go"
    assert approved.stderr.splitlines() == [unauthenticated]

    final = status_until(dev_settings, launch_id, lambda s: s["finished_at"] is not None)
    assert final["status"] == "completed"
    assert final["exposure"] == 100
    assert [(d["gate"], d["outcome"], d["by"]) for d in final["decisions"]] == [
        ("full-launch.before", "approved", "alice")
    ]
    assert [(a["handler"], a["accepted"]) for a in final["audit"]][-1] == ("decide:approve", True)
    flag = json.loads((flags / "flags.json").read_text())["flags"]["checkout-v2"]
    assert flag["defaultVariant"] == "canary"

    watched = against(dev_settings, "watch", launch_id, "--interval", "0.1")
    assert watched.exit_code == 0, watched.output
    assert watched.stdout.strip().endswith(f"{launch_id} completed")

    rendered = against(dev_settings, "status", launch_id)
    assert rendered.exit_code == 0, rendered.output
    assert "completed" in rendered.stdout
    assert "full-launch.before" in rendered.stdout
    assert "alice" in rendered.stdout

    listed = list_until_found(dev_settings, launch_id, service)
    assert f"{launch_id}" in listed
    assert "completed" in listed


def list_until_found(settings: Settings, launch_id: str, service: str) -> str:
    """Visibility is eventually consistent: the search attributes land shortly after the run."""
    deadline = time.monotonic() + 15
    while True:
        result = against(settings, "list", "--service", service, "--status", "completed")
        assert result.exit_code == 0, result.output
        if launch_id in result.stdout:
            return result.stdout
        assert time.monotonic() < deadline, f"{launch_id} never listed:\n{result.stdout}"
        time.sleep(0.3)


@pytest.mark.integration
def test_status_of_an_unknown_launch_is_one_line(dev_settings: Settings) -> None:
    result = against(dev_settings, "status", "no-such-launch")

    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "no launch no-such-launch in this namespace: check the id with `phasegate list`"
    )


@pytest.mark.integration
def test_a_launch_is_paused_and_resumed_through_the_cli(
    tmp_path: Path, dev_settings: Settings, worker: WorkerThread
) -> None:
    flags = tmp_path / "flags"
    flags.mkdir()
    service = f"hold-{uuid.uuid4().hex[:8]}"
    plan = write_plan(
        tmp_path / "plan.yaml",
        plan_dict(
            flag_file=flags / "flags.json",
            service=service,
            phases=[
                {
                    "name": "full-launch",
                    "kind": "full_launch",
                    "gates": {"before": {"approvers": ["alice"]}},
                    "steps": [{"weight": 100}],
                }
            ],
        ),
    )
    launch_id = f"{service}-launch"
    started = against(dev_settings, "launch", str(plan), "--id", launch_id)
    assert started.exit_code == 0, started.output
    status_until(dev_settings, launch_id, lambda s: s["open_gate"] is not None)
    unauthenticated = (
        f"approvals of {launch_id} are not authenticated (its plan says `identity: none`): "
        "names are taken as typed"
    )

    reasonless = against(dev_settings, "pause", launch_id, "-m", " ", "--as", "alice")
    assert reasonless.exit_code == 1
    assert reasonless.stderr.strip() == (
        "-m REASON: a pause needs its reason, shown to whoever resumes it"
    )

    too_long = against(dev_settings, "pause", launch_id, "-m", "x" * 2001, "--as", "alice")
    assert too_long.exit_code == 1
    assert too_long.stderr.splitlines()[-1].startswith("reason: ")
    assert "Traceback" not in too_long.output

    paused = against(dev_settings, "pause", launch_id, "-m", "checking dashboards", "--as", "alice")
    assert paused.exit_code == 0, paused.output
    assert paused.stdout.strip() == (
        f"paused {launch_id} as alice: checking dashboards; resume with "
        f"`phasegate resume {launch_id}`"
    )
    assert paused.stderr.splitlines() == [unauthenticated]

    held = status_until(dev_settings, launch_id, lambda s: s["paused"] is not None)
    assert held["status"] == "paused"
    assert (held["paused"]["by"], held["paused"]["source"], held["paused"]["reason"]) == (
        "alice",
        "person",
        "checking dashboards",
    )
    shown = against(dev_settings, "status", launch_id)
    assert shown.exit_code == 0, shown.output
    assert "alice (person) since" in shown.stdout
    assert "checking dashboards" in shown.stdout

    twice = against(dev_settings, "pause", launch_id, "-m", "again", "--as", "bob")
    assert twice.exit_code == 1
    assert twice.stderr.splitlines()[-1] == (
        "refused: ignored: already paused by alice (person): checking dashboards"
    )

    printed = against(dev_settings, "signal-input", "resume", launch_id, "--as", "alice")
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == {"reason": "", "by": "alice"}

    resumed = against(dev_settings, "resume", launch_id, "-m", "all good", "--as", "alice")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout.strip() == (
        f"resumed {launch_id} as alice (held by alice: checking dashboards): all good"
    )
    not_paused = against(dev_settings, "resume", launch_id, "--as", "alice")
    assert not_paused.exit_code == 1
    assert not_paused.stderr.splitlines()[-1] == "refused: ignored: the launch is not paused"

    going = status_until(dev_settings, launch_id, lambda s: s["paused"] is None)
    assert going["status"] == "waiting"
    audit = [(a["handler"], a["accepted"], a["note"]) for a in going["audit"]]
    assert [entry for entry in audit if entry[0].startswith("hold:")] == [
        ("hold:pause", True, "paused by alice"),
        ("hold:pause", False, "ignored: already paused by alice (person): checking dashboards"),
        ("hold:resume", True, "resumed"),
        ("hold:resume", False, "ignored: the launch is not paused"),
    ]
    approved = against(dev_settings, "approve", launch_id, "full-launch.before", "--as", "alice")
    assert approved.exit_code == 0, approved.output
    final = status_until(dev_settings, launch_id, lambda s: s["finished_at"] is not None)
    assert final["status"] == "completed"
