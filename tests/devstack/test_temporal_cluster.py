"""The real Temporal cluster: a workflow runs over mutual TLS with a writer's token; a client
without a certificate or with one from another CA, without a token, with a reader's token,
another namespace's, an expired or a forged one is refused; the `temporal` CLI connects with
Temporal's standard environment; a schedule fires (the server's own worker gets past
authorization); a failed start shows the server's log; the pinned version is the one the
build script builds."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from temporalio import workflow
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleSpec,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from devstack.identity_provider import IdentityProvider, machine_token
from devstack.pki import Authority
from devstack.postgres_cluster import PostgresCluster
from devstack.processes import LocalProcessError
from devstack.temporal_cluster import (
    BUILD_SCRIPT,
    CONFIG_TEMPLATE,
    READY_TIMEOUT_S,
    TEMPORAL_SERVER_VERSION,
    TemporalCluster,
    find_build,
    start_temporal_cluster,
    temporal_cache,
)
from tests.support.servers import binary
from tests.support.temporal_cluster import cluster_client
from workflows.visibility import SEARCH_ATTRIBUTES

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
_WAIT_S = 30.0


# Outside the sandbox: it would re-import this module, test dependencies and all.
@workflow.defn(name="ClusterGreeting", sandboxed=False)
class ClusterGreeting:
    @workflow.run
    async def run(self, name: str) -> str:
        return f"hello {name}"


def test_pinned_version_matches_versions_env() -> None:
    pinned = dict(
        line.split("=", 1)
        for line in (REPO / "deploy" / "temporal" / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pinned == {"TEMPORAL_SERVER_VERSION": TEMPORAL_SERVER_VERSION}


def test_build_script_and_python_name_the_same_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHASEGATE_TEMPORAL_CACHE", str(tmp_path))
    printed = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-path"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    ).stdout.strip()
    assert Path(printed) == temporal_cache() / f"server-{TEMPORAL_SERVER_VERSION}"
    assert temporal_cache() == tmp_path


def test_missing_setting_in_the_template_is_one_line_naming_it(tmp_path: Path) -> None:
    build = find_build()
    done = subprocess.run(
        [str(build.server), "--config-file", str(CONFIG_TEMPLATE), "start"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "POSTGRES_SEEDS": "127.0.0.1"},
        timeout=60,
    )
    assert done.returncode != 0
    assert "production.yaml: set TEMPORAL_TLS_CLIENT_CA" in done.stdout + done.stderr


def test_temporal_cli_connects_with_the_standard_environment(
    temporal_cluster: TemporalCluster,
) -> None:
    cli = binary("temporal", "PHASEGATE_TEMPORAL_BIN")
    own = {key: value for key, value in os.environ.items() if not key.startswith("TEMPORAL_")}

    def temporal(client: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**own, **temporal_cluster.client_env(client)}
        return subprocess.run(
            [cli, *args], env=env, capture_output=True, text=True, check=False, timeout=60
        )

    listed = temporal("phasegate-reader", "operator", "search-attribute", "list")
    assert listed.returncode == 0, listed.stderr
    for name in SEARCH_ATTRIBUTES:
        assert re.search(rf"^\s*{name}\s+Keyword\s*$", listed.stdout, re.MULTILINE)
    refused = temporal("phasegate-other", "operator", "namespace", "describe", "-n", "default")
    assert refused.returncode != 0
    assert "Request unauthorized" in refused.stderr


async def test_workflow_runs_over_mtls_with_a_writer_token(
    temporal_cluster: TemporalCluster,
) -> None:
    client = await cluster_client(temporal_cluster, "phasegate-worker")
    task_queue = f"cluster-{uuid.uuid4()}"
    async with Worker(client, task_queue=task_queue, workflows=[ClusterGreeting]):
        result = await client.execute_workflow(
            ClusterGreeting.run,
            "cluster",
            id=f"greeting-{uuid.uuid4()}",
            task_queue=task_queue,
            execution_timeout=timedelta(seconds=30),
        )
    assert result == "hello cluster"


async def test_client_without_certificate_is_refused(
    temporal_cluster: TemporalCluster,
) -> None:
    # How the connection breaks varies (an alert, a closed stream); it never gets as far as
    # asking whether the token may do anything.
    with pytest.raises(RuntimeError, match="Failed client connect") as refused:
        await cluster_client(temporal_cluster, "phasegate-worker", client_cert=False)
    assert "PermissionDenied" not in str(refused.value)
    assert "CERTIFICATE_REQUIRED" in _tls_refusal(temporal_cluster, None)


def test_certificate_from_another_authority_is_refused(
    temporal_cluster: TemporalCluster, tmp_path: Path
) -> None:
    stranger = Authority.create(tmp_path, "Stranger CA").issue("stranger", dns=(), ips=())
    assert "UNKNOWN_CA" in _tls_refusal(temporal_cluster, stranger)
    assert (
        _tls_refusal(temporal_cluster, (temporal_cluster.client_cert, temporal_cluster.client_key))
        == ""
    )


async def test_client_without_token_is_denied(temporal_cluster: TemporalCluster) -> None:
    client = await cluster_client(temporal_cluster, None)
    await _assert_cannot_start(client)


async def test_reader_reads_but_cannot_start_a_workflow(
    temporal_cluster: TemporalCluster,
) -> None:
    writer = await cluster_client(temporal_cluster, "phasegate-worker")
    started = await writer.start_workflow(
        ClusterGreeting.run,
        "reader",
        id=f"read-{uuid.uuid4()}",
        task_queue=f"unpolled-{uuid.uuid4()}",
        execution_timeout=timedelta(seconds=60),
    )
    try:
        reader = await cluster_client(temporal_cluster, "phasegate-reader")
        described = await reader.get_workflow_handle(started.id).describe()
        assert described.status == WorkflowExecutionStatus.RUNNING
        await _assert_cannot_start(reader)
        with pytest.raises(RPCError) as refused:
            await reader.get_workflow_handle(started.id).terminate("a reader may not")
        assert refused.value.status == RPCStatusCode.PERMISSION_DENIED
    finally:
        await started.terminate("test over")


async def test_token_for_another_namespace_is_denied(
    temporal_cluster: TemporalCluster,
) -> None:
    other = await cluster_client(temporal_cluster, "phasegate-other")
    await _assert_cannot_start(other)


async def test_token_signed_by_another_key_is_denied(
    temporal_cluster: TemporalCluster,
) -> None:
    forged = _forged(temporal_cluster.token("phasegate-admin"))
    # A token that does not verify is refused on every call, even the health check that
    # opens the connection.
    with pytest.raises(RuntimeError, match=r"PermissionDenied.*Request unauthorized"):
        await Client.connect(
            temporal_cluster.address,
            namespace=temporal_cluster.namespace,
            tls=temporal_cluster.tls_config(),
            api_key=forged,
        )


async def test_expired_token_is_refused(temporal_cluster: TemporalCluster) -> None:
    # Connected first: the token's two seconds start only when it is fetched.
    client = await cluster_client(temporal_cluster, None)
    token = temporal_cluster.token("phasegate-short")
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    client.api_key = token
    await client.count_workflows()  # still valid
    # The server allows no leeway; a second more covers the rounding of `exp`.
    await asyncio.sleep(max(0.0, expires + 1 - time.time()))
    with pytest.raises(RPCError, match="Request unauthorized") as refused:
        await client.count_workflows()
    assert refused.value.status == RPCStatusCode.PERMISSION_DENIED


async def test_schedule_fires_every_second(temporal_cluster: TemporalCluster) -> None:
    client = await cluster_client(temporal_cluster, "phasegate-worker")
    task_queue = f"cluster-{uuid.uuid4()}"
    schedule_id = f"every-second-{uuid.uuid4()}"
    async with Worker(client, task_queue=task_queue, workflows=[ClusterGreeting]):
        handle = await client.create_schedule(
            schedule_id,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    ClusterGreeting.run,
                    "schedule",
                    id=f"{schedule_id}-run",
                    task_queue=task_queue,
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=1))]),
            ),
        )
        try:
            deadline = time.monotonic() + _WAIT_S
            while True:
                described = await handle.describe()
                done = [
                    result.action.workflow_id
                    for result in described.info.recent_actions
                    if isinstance(result.action, ScheduleActionExecutionStartWorkflow)
                ]
                if len(done) >= 2:
                    break
                assert time.monotonic() < deadline, (
                    f"the schedule took {len(done)} actions in {_WAIT_S:g}s; see "
                    f"{temporal_cluster.log_path}"
                )
                await asyncio.sleep(0.2)
            result = await client.get_workflow_handle(done[0]).result()
        finally:
            await handle.delete()
    assert result == "hello schedule"


async def _assert_cannot_start(client: Client) -> None:
    with pytest.raises(RPCError) as refused:
        await client.start_workflow(
            ClusterGreeting.run,
            "nobody",
            id=f"refused-{uuid.uuid4()}",
            task_queue=f"refused-{uuid.uuid4()}",
        )
    assert refused.value.status == RPCStatusCode.PERMISSION_DENIED


def _tls_refusal(cluster: TemporalCluster, client_cert: tuple[Path, Path] | None) -> str:
    """The TLS alert the frontend answers a handshake showing `client_cert` with (TLS 1.3
    sends it after the handshake, so it arrives on the first read); "" if none comes."""
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    context.set_alpn_protocols(["h2"])
    if client_cert is not None:
        context.load_cert_chain(*client_cert)
    host, port = cluster.address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=cluster.server_name) as tls,
    ):
        try:
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            tls.recv(1)
        except ssl.SSLError as err:
            return str(err)
    return ""


def test_failed_start_shows_the_end_of_the_server_log(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    with (
        pytest.raises(LocalProcessError, match="NumHistoryShards: zero value") as failed,
        start_temporal_cluster(
            tmp_path,
            postgres,
            issuer="http://127.0.0.1:9/",
            jwks_uri="http://127.0.0.1:9/keys",
            token_source=lambda client: "no token",
            history_shards=0,
        ),
    ):
        pytest.fail("the server started without history shards")
    assert "exited with code 1 before it was ready" in str(failed.value)
    assert str(tmp_path / "temporal-server.log") in str(failed.value)


def test_start_with_keys_that_did_not_sign_the_token_fails_at_once(
    postgres: PostgresCluster, identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    forged = _forged(machine_token(identity_provider, "phasegate-admin"))
    started = time.monotonic()
    with (
        pytest.raises(LocalProcessError, match="refused the administrator's token"),
        start_temporal_cluster(
            tmp_path,
            postgres,
            issuer=identity_provider.issuer,
            jwks_uri=identity_provider.jwks_uri,
            token_source=lambda client: forged,
        ),
    ):
        pytest.fail("the server took a token its keys did not sign")
    assert time.monotonic() - started < READY_TIMEOUT_S


def _forged(token: str) -> str:
    """`token`'s header and claims signed with a key of our own."""
    return jwt.encode(
        jwt.decode(token, options={"verify_signature": False}),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        algorithm="RS256",
        headers={"kid": jwt.get_unverified_header(token).get("kid", "")},
    )
