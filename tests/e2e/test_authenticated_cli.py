"""Authenticated approvals from the command line, end to end: a launch started and decided with
proofs from the real approval service for people signed in at the real identity provider, on
the real dev server with a real worker process that trusts that service.

People sign in here through `PHASEGATE_ID_TOKEN` (the automation path); the device flow the
CLI uses otherwise is covered in tests/starters/test_login_cli.py. These tests are plain
`def`s: each command runs its own `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import starters
from devstack.approval_service import LocalApprovalService
from devstack.identity_provider import IdentityProvider
from devstack.processes import ManagedProcess, free_port, start_worker
from tests.support import identity
from tests.support.cli import against, status_until
from tests.support.plans import plan_dict
from workers.client import connect
from workers.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SOURCE_ROOT = Path(starters.__file__).resolve().parent.parent
GATE = "full-launch.before"
STATUS_TIMEOUT_S = 60.0


@pytest.fixture
def trusting_worker(
    dev_settings: Settings, approval_service: LocalApprovalService, tmp_path: Path
) -> Iterator[Settings]:
    """`phasegate-worker` as its own process on the test's task queue, trusting the approval
    service; yields the settings the CLI uses to reach it."""
    worker: ManagedProcess = start_worker(
        address=dev_settings.temporal_address,
        namespace=dev_settings.temporal_namespace,
        task_queue=dev_settings.task_queue,
        workdir=tmp_path / "worker",
        extra_env={
            "PHASEGATE_APPROVAL_SERVICE": approval_service.url,
            "PYTHONPATH": str(SOURCE_ROOT),
        },
    )
    with worker:
        yield dev_settings


@pytest.fixture
def signed_in_as(
    identity_provider: IdentityProvider,
    approval_service: LocalApprovalService,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Callable[[str], str]:
    """Make the next commands run as `username` (their ID token in PHASEGATE_ID_TOKEN);
    returns the token, which no output may contain."""
    monkeypatch.setenv("PHASEGATE_APPROVAL_SERVICE", approval_service.url)
    monkeypatch.setenv("PHASEGATE_SIGN_IN_CACHE", str(tmp_path / "sign-in"))
    monkeypatch.delenv("PHASEGATE_CREDENTIALS_FILE", raising=False)
    tokens: dict[str, str] = {}

    def sign_in_as(username: str) -> str:
        if username not in tokens:
            tokens[username] = identity.sign_in(identity_provider, username).id_token
        monkeypatch.setenv("PHASEGATE_ID_TOKEN", tokens[username])
        return tokens[username]

    return sign_in_as


def write_plan(path: Path, provider: IdentityProvider, **gate: Any) -> Path:
    plan = plan_dict(
        flag_file=path.parent / "flags.json",
        service=f"authn-{uuid.uuid4().hex[:8]}",
        analysis={},
        approvals={
            "identity": {"issuer": provider.issuer, "name_claim": "email"},
            "approvers": ["group:release-managers"],
            "timeout": "1h",
        },
        phases=[
            {
                "name": "full-launch",
                "kind": "full_launch",
                "gates": {"before": {"approvers": ["group:release-managers"], **gate}},
                "steps": [{"weight": 100}],
            }
        ],
    )
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def started_launch(settings: Settings, plan: Path, token: str) -> str:
    launch_id = f"{plan.stem}-{uuid.uuid4().hex[:8]}"
    started = against(settings, "launch", str(plan), "--id", launch_id)
    assert started.exit_code == 0, started.output
    assert started.stdout.splitlines()[0] == f"started {launch_id}"
    assert token not in started.output
    return launch_id


def send_signal(settings: Settings, launch_id: str, name: str, payload: dict[str, Any]) -> None:
    """What the Temporal UI's Send a Signal does with the input pasted into it."""

    async def send() -> None:
        client = await connect(settings)
        await client.get_workflow_handle(launch_id).signal(name, payload)

    asyncio.run(send())


def forge(token: str) -> str:
    """`token` with its name claim changed after the provider signed it."""
    header, claims, signature = token.split(".")
    changed = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    changed["name"] = "Mallory"
    encoded = base64.urlsafe_b64encode(json.dumps(changed).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


def test_a_gate_needing_two_people_is_approved_from_the_cli_and_the_ui_input(
    identity_provider: IdentityProvider,
    approval_service: LocalApprovalService,
    trusting_worker: Settings,
    signed_in_as: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    settings = trusting_worker
    plan = write_plan(tmp_path / "gated.yaml", identity_provider, min_approvals=2)
    bob = signed_in_as("bob")
    launch_id = started_launch(settings, plan, bob)

    waiting = status_until(
        settings,
        launch_id,
        lambda s: (s["open_gate"] or {}).get("gate") == GATE,
        timeout=STATUS_TIMEOUT_S,
    )
    assert (waiting["identity"], waiting["started_by"]) == (
        identity_provider.issuer,
        "bob@phasegate.test",
    )

    named = against(settings, "approve", launch_id, GATE, "--as", "alice@phasegate.test")
    assert named.exit_code == 1
    assert named.stderr.strip() == (
        f"--as: names come from your sign-in at {identity_provider.issuer}; leave --as out "
        "(`phasegate login` shows who you are signed in as)"
    )

    outsider = against(settings, "approve", launch_id, GATE)
    assert outsider.exit_code == 1
    [line] = outsider.stderr.splitlines()
    assert line.startswith("refused: 'bob@phasegate.test' may not decide gate")
    assert bob not in outsider.output

    alice = signed_in_as("alice")
    forged = forge(alice)
    monkeypatch.setenv("PHASEGATE_ID_TOKEN", forged)
    refused = against(settings, "approve", launch_id, GATE)
    assert refused.exit_code == 1
    assert refused.stderr.strip() == (
        "the approval service did not accept your sign-in (ID token: the signature does not "
        "verify); sign in again: phasegate login"
    )
    assert forged not in refused.output

    monkeypatch.setenv("PHASEGATE_ID_TOKEN", alice)
    nowhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PHASEGATE_APPROVAL_SERVICE", nowhere)
    unreachable = against(settings, "approve", launch_id, GATE)
    assert unreachable.exit_code == 1
    assert unreachable.stderr.strip() == (
        f"no approval service answers at {nowhere} (ConnectError): start it, or set "
        "PHASEGATE_APPROVAL_SERVICE to its URL"
    )
    monkeypatch.setenv("PHASEGATE_APPROVAL_SERVICE", approval_service.url)

    counted = against(settings, "approve", launch_id, GATE, "-m", "metrics look fine")
    assert counted.exit_code == 0, counted.output
    assert counted.stdout.strip() == (
        f"counted; 1 more approval(s) needed ({GATE} of {launch_id}, approved so far by "
        "alice@phasegate.test)"
    )
    assert alice not in counted.output

    carol = signed_in_as("carol")
    printed = against(settings, "signal-input", "approve", launch_id, "-m", "second pair of eyes")
    assert printed.exit_code == 0, printed.output
    payload = json.loads(printed.stdout)
    assert set(payload) == {"gate", "comment", "evidence", "proof"}
    assert (payload["gate"], payload["comment"]) == (GATE, "second pair of eyes")
    assert carol not in printed.output
    assert "name `approve`, and paste the input above before " in printed.stderr
    assert printed.stderr.strip().endswith("(signed in as Carol Chen)")

    send_signal(settings, launch_id, "approve", payload)

    final = status_until(
        settings, launch_id, lambda s: s["finished_at"] is not None, timeout=STATUS_TIMEOUT_S
    )
    assert final["status"] == "completed"
    [decision] = final["decisions"]
    assert (decision["gate"], decision["outcome"], decision["authenticated"]) == (
        GATE,
        "approved",
        True,
    )
    assert sorted(decision["people"]) == ["alice@phasegate.test", "carol@phasegate.test"]


def test_an_abort_from_the_cli_carries_a_proof_and_rolls_the_launch_back(
    identity_provider: IdentityProvider,
    trusting_worker: Settings,
    signed_in_as: Callable[[str], str],
    tmp_path: Path,
) -> None:
    settings = trusting_worker
    plan = write_plan(tmp_path / "aborted.yaml", identity_provider)
    launch_id = started_launch(settings, plan, signed_in_as("carol"))
    status_until(
        settings,
        launch_id,
        lambda s: (s["open_gate"] or {}).get("gate") == GATE,
        timeout=STATUS_TIMEOUT_S,
    )

    alice = signed_in_as("alice")
    aborted = against(settings, "abort", launch_id, "--reason", "wrong build")
    assert aborted.exit_code == 0, aborted.output
    assert alice not in aborted.output

    final = status_until(
        settings, launch_id, lambda s: s["finished_at"] is not None, timeout=STATUS_TIMEOUT_S
    )
    assert final["status"] == "rolled_back"
    assert final["reason"] == "aborted by alice@phasegate.test: wrong build"


def test_a_pause_and_resume_from_the_cli_carry_proofs_of_allowed_people(
    identity_provider: IdentityProvider,
    trusting_worker: Settings,
    signed_in_as: Callable[[str], str],
    tmp_path: Path,
) -> None:
    settings = trusting_worker
    plan = write_plan(tmp_path / "held.yaml", identity_provider)
    launch_id = started_launch(settings, plan, signed_in_as("carol"))
    status_until(
        settings,
        launch_id,
        lambda s: (s["open_gate"] or {}).get("gate") == GATE,
        timeout=STATUS_TIMEOUT_S,
    )

    signed_in_as("bob")  # sre, neither an approver nor the starter
    outsider = against(settings, "pause", launch_id, "-m", "looks odd")
    assert outsider.exit_code == 1
    assert outsider.stderr.splitlines()[-1] == (
        "refused: 'bob@phasegate.test' may not pause this launch; the plan's approvers and its "
        "starter may"
    )

    alice = signed_in_as("alice")
    named = against(settings, "pause", launch_id, "-m", "looks odd", "--as", "mallory")
    assert named.exit_code == 1
    assert named.stderr.splitlines()[-1].startswith("--as: names come from your sign-in at ")
    paused = against(settings, "pause", launch_id, "-m", "error budget burning")
    assert paused.exit_code == 0, paused.output
    assert alice not in paused.output
    assert paused.stdout.strip() == (
        f"paused {launch_id} as alice@phasegate.test: error budget burning; resume with "
        f"`phasegate resume {launch_id}`"
    )
    held = status_until(
        settings, launch_id, lambda s: s["paused"] is not None, timeout=STATUS_TIMEOUT_S
    )
    assert (held["status"], held["paused"]["by"], held["paused"]["source"]) == (
        "paused",
        "alice@phasegate.test",
        "person",
    )

    signed_in_as("carol")  # the starter may resume
    resumed = against(settings, "resume", launch_id, "-m", "budget fine again")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout.strip() == (
        f"resumed {launch_id} (held by alice@phasegate.test: error budget burning): budget "
        "fine again"
    )
    going = status_until(
        settings, launch_id, lambda s: s["paused"] is None, timeout=STATUS_TIMEOUT_S
    )
    assert going["status"] == "waiting"
    holds = [
        (a["handler"], a["accepted"]) for a in going["audit"] if a["handler"].startswith("hold:")
    ]
    assert holds == [("hold:pause", False), ("hold:pause", True), ("hold:resume", True)]

    aborted = against(settings, "abort", launch_id, "--reason", "test over")
    assert aborted.exit_code == 0, aborted.output
    status_until(
        settings, launch_id, lambda s: s["finished_at"] is not None, timeout=STATUS_TIMEOUT_S
    )
