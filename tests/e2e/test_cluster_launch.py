"""One launch on the real Temporal cluster (the server built from Go, PostgreSQL persistence),
end to end the way production runs it: mTLS and a bearer token from the identity provider,
every payload encrypted, the worker configured by environment and the CLI by a `temporal.toml`
profile, an approval, a worker killed and replaced in the middle, and a rollback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment

from devstack.demo import DemoStack, example_plan
from devstack.processes import start_worker
from devstack.temporal_cluster import TemporalCluster
from schemas.plan import LaunchPlan, load_plan
from tests.support.launches import gate_open, start_launch, wait_for
from tests.support.payloads import clear_text_in
from tests.support.servers import canary_share
from tests.support.temporal_cluster import cluster_client

pytestmark = pytest.mark.integration

GATE = "soft-launch.before"


def gated_plan(stack: DemoStack) -> LaunchPlan:
    """The checkout demo plan with one approval gate (alice) before the soft launch, no step
    pauses and short analyses."""
    data = stack.plan_for(load_plan(example_plan())).model_dump(mode="json")
    for phase in data["phases"]:
        phase["gates"] = (
            {"before": {"approvers": ["alice"]}} if phase["name"] == "soft-launch" else {}
        )
        for step in phase["steps"]:
            step["approval"] = None
            step["pause"] = None
    for metric in data["analysis"].values():
        metric.update(initial_delay="2s", interval="1s", count=3)
    return LaunchPlan.model_validate(data)


def tls_environment(cluster: TemporalCluster) -> dict[str, str]:
    """Temporal's standard TLS variables for `cluster`, as an operator sets them."""
    return {
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(cluster.ca_file),
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(cluster.client_cert),
        "TEMPORAL_TLS_CLIENT_KEY_PATH": str(cluster.client_key),
        "TEMPORAL_TLS_SERVER_NAME": cluster.server_name,
    }


def write_profile(path: Path, cluster: TemporalCluster, token: str) -> Path:
    """A `temporal.toml` with a `cluster` profile, the file the Temporal CLI reads too."""
    path.write_text(
        "[profile.cluster]\n"
        f'address = "{cluster.address}"\n'
        f'namespace = "{cluster.namespace}"\n'
        f'api_key = "{token}"\n'
        "[profile.cluster.tls]\n"
        f'server_ca_cert_path = "{cluster.ca_file}"\n'
        f'client_cert_path = "{cluster.client_cert}"\n'
        f'client_key_path = "{cluster.client_key}"\n'
        f'server_name = "{cluster.server_name}"\n'
    )
    path.chmod(0o600)
    return path


def cli(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `phasegate` script with only `env` (and the virtualenv on PATH)."""
    script = Path(sys.executable).parent / "phasegate"
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": f"{script.parent}:/usr/bin:/bin", "COLUMNS": "200", **env},
        check=False,
    )


async def test_launch_on_the_cluster_approves_survives_a_worker_and_rolls_back(
    temporal_cluster: TemporalCluster,
    clean_stack: DemoStack,
    payload_keys_file: Path,
    encrypted_converter: DataConverter,
    tmp_path: Path,
) -> None:
    cluster = temporal_cluster
    client = await cluster_client(cluster, data_converter=encrypted_converter)
    env = WorkflowEnvironment.from_client(client)
    task_queue = f"cluster-{uuid.uuid4().hex[:8]}"
    worker_env = {
        **tls_environment(cluster),
        "TEMPORAL_API_KEY": cluster.token("phasegate-worker"),
        "PHASEGATE_PAYLOAD_KEYS": str(payload_keys_file),
    }
    cli_env = {
        "TEMPORAL_CONFIG_FILE": str(
            write_profile(tmp_path / "temporal.toml", cluster, cluster.token("phasegate-worker"))
        ),
        "TEMPORAL_PROFILE": "cluster",
        "PHASEGATE_PAYLOAD_KEYS": str(payload_keys_file),
        "HOME": str(tmp_path),
    }
    before = json.loads(clean_stack.flag_file.read_text())
    plan = gated_plan(clean_stack)

    first = start_worker(
        address=cluster.address,
        workdir=tmp_path / "w1",
        task_queue=task_queue,
        extra_env=worker_env,
    )
    try:
        handle = await start_launch(client, plan, task_queue)
        await gate_open(env, handle, GATE, timeout=60)
        approved = cli(cli_env, "approve", handle.id, GATE, "--as", "alice", "--comment", "go")
        assert approved.returncode == 0, approved.stdout + approved.stderr
        await wait_for(
            env,
            handle,
            lambda s: s.phase == "soft-launch" and s.step == 2 and s.exposure == 20,
            timeout=90,
        )
        first.kill()
        killed_at = canary_share(clean_stack.flag_file, "checkout-v2")
    finally:
        first.stop()
    assert killed_at == 20.0

    # The canary turns bad while nobody runs the launch: the next worker's analysis sees it.
    clean_stack.set_faults(error_rate=0.5)
    second = start_worker(
        address=cluster.address,
        workdir=tmp_path / "w2",
        task_queue=task_queue,
        extra_env=worker_env,
    )
    try:
        result = await asyncio.wait_for(handle.result(), timeout=240)
    finally:
        second.stop()

    assert result.status == "rolled_back", result.reason
    assert "analysis failed at soft-launch" in result.reason
    assert canary_share(clean_stack.flag_file, "checkout-v2") == 0.0
    assert json.loads(clean_stack.flag_file.read_text()) == before
    assert [(d.gate, d.outcome, d.by, d.comment) for d in result.final.decisions] == [
        (GATE, "approved", "alice", "go")
    ]
    assert [c.status for c in result.final.compensations] == ["done"]

    # The CLI, configured by the profile alone, reads the encrypted state.
    shown = cli(cli_env, "status", handle.id, "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    status: dict[str, Any] = json.loads(shown.stdout)
    assert status["status"] == "rolled_back"

    # What the server stores holds none of the plan in clear.
    plain = await cluster_client(cluster, data_converter=DataConverter.default)
    for workflow_id in (handle.id, f"{handle.id}.soft-launch"):
        history = await plain.get_workflow_handle(workflow_id).fetch_history()
        assert (
            clear_text_in(
                history,
                [
                    str(clean_stack.flag_file),
                    clean_stack.prometheus.url,
                    "alice",
                    "analysis failed",
                ],
            )
            == []
        ), workflow_id
