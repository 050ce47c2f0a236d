"""`phasegate bulk …` and `phasegate stop-line` against the dev server and a real worker: the
guard against acting on everything, one line per launch, the summary and the exit code.

Each command runs its own `asyncio.run`, so it runs on a thread of its own here, while the
worker goes on in the test's loop."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from typer.testing import Result

import starters
from devstack.approval_service import LocalApprovalService
from devstack.identity_provider import IdentityProvider
from devstack.processes import ManagedProcess, start_worker
from tests.support import identity
from tests.support.cli import against, status_until
from tests.support.launches import gate_open, start_launch, wait_for
from tests.support.plans import make_plan, plan_dict
from workers.settings import Settings
from workflows.launch import LaunchWorkflow

pytestmark = pytest.mark.integration

GATE = "full-launch.before"
SOURCE_ROOT = Path(starters.__file__).resolve().parent.parent


async def phasegate(settings: Settings, *args: str) -> Result:
    return await asyncio.to_thread(against, settings, *args)


async def start(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, service: str, *, gated: bool
) -> WorkflowHandle[LaunchWorkflow, Any]:
    """A launch of `service` waiting at GATE, or (not `gated`) running a long step, no gate."""
    phases: list[dict[str, Any]] = (
        [
            {
                "name": "full-launch",
                "kind": "full_launch",
                "gates": {"before": {"approvers": ["alice"]}},
                "steps": [{"weight": 100}],
            }
        ]
        if gated
        else [
            {"name": "soft-launch", "kind": "soft_launch", "steps": [{"weight": 5, "pause": "1h"}]}
        ]
    )
    plan = make_plan(
        service=service, flag_file=tmp_path / f"{uuid.uuid4().hex}.json", phases=phases
    )
    launch = await start_launch(env.client, plan, task_queue)
    if gated:
        await gate_open(env, launch, GATE, timeout=60)
    else:
        await wait_for(env, launch, lambda s: s.phase == "soft-launch", timeout=60)
    return launch


async def matched(settings: Settings, count: int, service: str) -> Result:
    """`bulk approve --service SERVICE --dry-run` once the visibility store shows `count`."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        listed = await phasegate(settings, "bulk", "approve", "--service", service, "--dry-run")
        assert listed.exit_code == 0, listed.output
        if listed.stdout.count("would approve") == count:
            return listed
        assert asyncio.get_running_loop().time() < deadline, listed.output
        await asyncio.sleep(0.2)


@pytest.mark.timeout(180)
async def test_bulk_approve_and_stop_line_through_the_cli(
    dev_env: WorkflowEnvironment, worker: str, dev_settings: Settings, tmp_path: Path
) -> None:
    shop, cart = f"shop-{uuid.uuid4().hex[:8]}", f"cart-{uuid.uuid4().hex[:8]}"
    gated = [await start(dev_env, worker, tmp_path, shop, gated=True) for _ in range(2)]
    busy = await start(dev_env, worker, tmp_path, shop, gated=False)
    [other] = [await start(dev_env, worker, tmp_path, cart, gated=True)]
    listed = await matched(dev_settings, 3, shop)
    await matched(dev_settings, 1, cart)

    unfiltered = await phasegate(dev_settings, "bulk", "approve", "--yes", "--as", "alice")
    bad = await phasegate(dev_settings, "bulk", "approve", "--service", "Shop!", "--yes")
    unconfirmed = await phasegate(dev_settings, "bulk", "approve", "--service", shop)
    untouched = await other.query(LaunchWorkflow.status)
    approved = await phasegate(
        dev_settings, "bulk", "approve", "--service", shop, "-m", "go", "--as", "alice", "--yes"
    )
    approved_results = await asyncio.wait_for(
        asyncio.gather(*(launch.result() for launch in gated)), 60
    )
    stopped = await phasegate(dev_settings, "stop-line", cart, "-m", "bad build", "--as", "carol")
    other_result = await asyncio.wait_for(other.result(), 60)
    await matched(dev_settings, 1, shop)  # the completed ones gone from the running list
    cleanup = await phasegate(dev_settings, "stop-line", shop, "-m", "test over", "--as", "carol")
    busy_result = await asyncio.wait_for(busy.result(), 60)

    assert sorted(listed.stdout.splitlines()[:-1]) == sorted(
        f"would approve {launch.id}" for launch in [*gated, busy]
    )
    assert listed.stdout.splitlines()[-1] == "3 running launches match; nothing sent (--dry-run)"
    assert unfiltered.exit_code == 1
    assert unfiltered.stderr.strip() == (
        "no filter: give --service, --phase, --gate or --status, or --all to act on every "
        "running launch"
    )
    assert bad.exit_code == 1
    assert bad.stderr.strip().startswith("--service: a name is lowercase letters")
    assert "Traceback" not in bad.output
    assert unconfirmed.exit_code == 1
    assert unconfirmed.stderr.strip() == (
        "3 running launches match: add --yes to approve them, or --dry-run to list them"
    )
    assert untouched.decisions == []
    assert untouched.open_gate is not None

    assert approved.exit_code == 1, approved.output
    lines = approved.stdout.splitlines()
    assert sorted(lines[:-1]) == sorted(
        [f"{launch.id}: approved {GATE} as alice" for launch in gated]
        + [f"{busy.id}: refused: no open gate"]
    )
    assert lines[-1] == "approved 2, refused 1 (no open gate), failed 0"
    assert [r.status for r in approved_results] == ["completed", "completed"]

    assert stopped.exit_code == 0, stopped.output
    assert stopped.stdout.splitlines() == [
        f"{other.id}: abort sent; the launch rolls back",
        "abort sent 1, refused 0, failed 0",
    ]
    assert other_result.status == "rolled_back"
    assert cleanup.exit_code == 0, cleanup.output
    assert cleanup.stdout.splitlines()[-1] == "abort sent 1, refused 0, failed 0"
    assert busy_result.status == "rolled_back"


# --- authenticated approvals: one proof per launch -------------------------------------


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


def proven_plan(folder: Path, provider: IdentityProvider, service: str) -> Path:
    folder.mkdir()
    plan = plan_dict(
        flag_file=folder / "flags.json",
        service=service,
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
                "gates": {"before": {"approvers": ["group:release-managers"]}},
                "steps": [{"weight": 100}],
            }
        ],
    )
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


@pytest.mark.timeout(240)
def test_bulk_approve_of_authenticated_launches_sends_a_proof_for_each(
    identity_provider: IdentityProvider,
    approval_service: LocalApprovalService,
    trusting_worker: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    settings = trusting_worker
    monkeypatch.setenv("PHASEGATE_APPROVAL_SERVICE", approval_service.url)
    monkeypatch.setenv("PHASEGATE_SIGN_IN_CACHE", str(tmp_path / "sign-in"))
    monkeypatch.delenv("PHASEGATE_CREDENTIALS_FILE", raising=False)
    bob = identity.sign_in(identity_provider, "bob").id_token
    alice = identity.sign_in(identity_provider, "alice").id_token
    monkeypatch.setenv("PHASEGATE_ID_TOKEN", bob)
    service = f"authn-{uuid.uuid4().hex[:8]}"
    launch_ids = []
    for number in range(2):
        launch_id = f"{service}-{number}"
        plan = proven_plan(tmp_path / str(number), identity_provider, service)
        started = against(settings, "launch", str(plan), "--id", launch_id)
        assert started.exit_code == 0, started.output
        status_until(settings, launch_id, lambda s: s["open_gate"] is not None, timeout=60)
        launch_ids.append(launch_id)
    deadline = time.monotonic() + 30
    while (
        "2 running launches match"
        not in (
            listed := against(settings, "bulk", "approve", "--service", service, "--dry-run")
        ).stdout
    ):
        assert time.monotonic() < deadline, listed.output
        time.sleep(0.2)

    own = against(settings, "bulk", "approve", "--service", service, "--yes")
    monkeypatch.setenv("PHASEGATE_ID_TOKEN", alice)
    named = against(settings, "bulk", "approve", "--service", service, "--as", "mallory", "--yes")
    approved = against(settings, "bulk", "approve", "--service", service, "-m", "ok", "--yes")
    finals = [
        status_until(settings, launch_id, lambda s: s["finished_at"] is not None, timeout=60)
        for launch_id in launch_ids
    ]

    sign_in_words = (
        f"--as: names come from your sign-in at {identity_provider.issuer}; leave --as out"
    )
    not_an_approver = (
        f"'bob@phasegate.test' may not decide gate '{GATE}'; approvers: group:release-managers"
    )
    assert own.exit_code == 1
    assert sorted(own.stdout.splitlines()[:-1]) == [
        f"{launch_id}: refused: {not_an_approver}" for launch_id in launch_ids
    ]
    assert own.stdout.splitlines()[-1] == f"approved 0, refused 2 ({not_an_approver}), failed 0"
    assert named.exit_code == 1
    assert named.stdout.splitlines()[-1] == f"approved 0, refused 0, failed 2 ({sign_in_words})"
    assert approved.exit_code == 0, approved.output
    assert sorted(approved.stdout.splitlines()) == sorted(
        [f"{launch_id}: approved {GATE} as alice@phasegate.test" for launch_id in launch_ids]
        + ["approved 2, refused 0, failed 0"]
    )
    assert alice not in approved.output
    assert bob not in own.output
    for final in finals:
        assert final["status"] == "completed"
        [decision] = final["decisions"]
        assert (decision["outcome"], decision["authenticated"], decision["people"]) == (
            "approved",
            True,
            ["alice@phasegate.test"],
        )
