"""The worker and the CLI on the real Temporal cluster, configured as Temporal's own tools are:
a `temporal.toml` profile or `TEMPORAL_*` variables for the address, mutual TLS and the bearer
token. A worker whose token lives two seconds keeps working by reading each renewed token from
its file; every misconfiguration is one line, exit code 1, no traceback and no token text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.pki import Authority
from devstack.processes import free_port, start_worker
from devstack.temporal_cluster import TemporalCluster
from tests.support.plans import plan_dict
from workers.client import token_claims

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent


def profile_file(
    path: Path,
    cluster: TemporalCluster,
    *,
    api_key: str | None,
    namespace: str | None = None,
    ca_file: Path | None = None,
    client_cert: bool = True,
) -> Path:
    """A `temporal.toml` with one profile, `cluster`, as `temporal config set` writes it."""
    lines = [
        "[profile.cluster]",
        f'address = "{cluster.address}"',
        f'namespace = "{namespace or cluster.namespace}"',
        *([f'api_key = "{api_key}"'] if api_key else []),
        "[profile.cluster.tls]",
        f'server_name = "{cluster.server_name}"',
        f'server_ca_cert_path = "{ca_file or cluster.ca_file}"',
    ]
    if client_cert:
        lines += [
            f'client_cert_path = "{cluster.client_cert}"',
            f'client_key_path = "{cluster.client_key}"',
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without any Temporal client configuration, plus `extra`."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("TEMPORAL_", "PHASEGATE_API_KEY"))
    }
    return {**kept, "COLUMNS": "200", **extra}


def cli(
    config: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed `phasegate` script with the `cluster` profile of `config`."""
    return subprocess.run(
        [str(VENV_BIN / "phasegate"), "--config-file", str(config), "--profile", "cluster", *args],
        env=dict(env or environment()),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def worker_run(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`phasegate-worker` configured by `env` alone, expected to stop by itself."""
    return subprocess.run(
        [str(VENV_BIN / "phasegate-worker")],
        env={**env, "PHASEGATE_METRICS_ADDRESS": f"127.0.0.1:{free_port()}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def the_one_line(done: subprocess.CompletedProcess[str], *secrets: str) -> str:
    """The single stderr line of a command that failed as it should."""
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for secret in secrets:
        assert secret not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def expired_token(cluster: TemporalCluster) -> str:
    """A `phasegate-short` token once it has expired (it lives two seconds)."""
    token = cluster.token("phasegate-short")
    claims = token_claims(token)
    assert claims is not None
    expires = float(claims["exp"])
    while time.time() <= expires + 1:
        time.sleep(0.2)
    return token


class RenewedToken:
    """A token file rewritten with a fresh `phasegate-short` token every second, as a sidecar
    or Kubernetes' projected token renews it; counts the renewals."""

    def __init__(self, cluster: TemporalCluster, path: Path) -> None:
        self.cluster, self.path = cluster, path
        self.renewals = 0
        self.first_expiry = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="token-renewal", daemon=True)

    def _write(self) -> None:
        token = self.cluster.token("phasegate-short")
        staged = self.path.with_suffix(".new")
        staged.write_text(token + "\n")
        staged.replace(self.path)
        self.renewals += 1

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._write()

    def __enter__(self) -> RenewedToken:
        self._write()
        claims = token_claims(self.path.read_text().strip())
        assert claims is not None
        self.first_expiry = float(claims["exp"])
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.fixture
def cluster_env(temporal_cluster: TemporalCluster) -> dict[str, str]:
    """The worker's mTLS settings, as TEMPORAL_* variables only."""
    return environment(
        TEMPORAL_ADDRESS=temporal_cluster.address,
        TEMPORAL_NAMESPACE=temporal_cluster.namespace,
        TEMPORAL_TLS_SERVER_CA_CERT_PATH=str(temporal_cluster.ca_file),
        TEMPORAL_TLS_CLIENT_CERT_PATH=str(temporal_cluster.client_cert),
        TEMPORAL_TLS_CLIENT_KEY_PATH=str(temporal_cluster.client_key),
        TEMPORAL_TLS_SERVER_NAME=temporal_cluster.server_name,
    )


@pytest.fixture
def renewed_token(temporal_cluster: TemporalCluster, tmp_path: Path) -> Iterator[RenewedToken]:
    with RenewedToken(temporal_cluster, tmp_path / "token") as renewing:
        yield renewing


# --- a worker and the CLI that work -----------------------------------------------------------


def test_a_worker_on_two_second_tokens_runs_a_launch_the_cli_starts_and_decides(
    temporal_cluster: TemporalCluster,
    cluster_env: dict[str, str],
    renewed_token: RenewedToken,
    tmp_path: Path,
) -> None:
    task_queue = f"cluster-{uuid.uuid4()}"
    worker = start_worker(
        address=temporal_cluster.address,
        workdir=tmp_path / "worker",
        task_queue=task_queue,
        extra_env={
            **{k: v for k, v in cluster_env.items() if k.startswith("TEMPORAL_")},
            "PHASEGATE_API_KEY_FILE": str(renewed_token.path),
            "PHASEGATE_API_KEY_REFRESH_SECONDS": "0.25",
        },
    )
    try:
        config = profile_file(
            tmp_path / "temporal.toml", temporal_cluster, api_key=temporal_cluster.token()
        )
        flags = tmp_path / "flags"
        flags.mkdir()
        service = f"cluster-{uuid.uuid4().hex[:8]}"
        plan = tmp_path / "plan.yaml"
        plan.write_text(
            yaml.safe_dump(
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
                sort_keys=False,
            )
        )
        launch_id = f"{service}-launch"
        env = environment(PHASEGATE_TASK_QUEUE=task_queue)

        started = cli(config, "launch", str(plan), "--id", launch_id, env=env)
        assert started.returncode == 0, started.stdout + started.stderr

        def status() -> dict[str, Any] | None:
            done = cli(config, "status", launch_id, "--json", env=env)
            assert done.returncode == 0, done.stdout + done.stderr
            current: dict[str, Any] = json.loads(done.stdout)
            return current

        waiting = wait_until(
            lambda: (
                (s := status()) and (s["open_gate"] or {}).get("gate") == "full-launch.before" and s
            ),
            "the gate to open",
        )
        assert waiting["status"] == "waiting"
        # From here on the worker only gets through with tokens it read after starting.
        wait_until(
            lambda: time.time() > renewed_token.first_expiry + 1 and renewed_token.renewals >= 3,
            "the worker's first token to expire",
        )

        approved = cli(config, "approve", launch_id, "full-launch.before", "--as", "alice", env=env)
        assert approved.returncode == 0, approved.stdout + approved.stderr

        final = wait_until(
            lambda: (s := status()) and s["finished_at"] is not None and s, "the launch to end"
        )
        assert final["status"] == "completed"
        assert final["exposure"] == 100
        listed = wait_until(
            lambda: (
                launch_id in (out := cli(config, "list", "--service", service, env=env).stdout)
                and out
            ),
            "the launch to be listed",
        )
        assert "completed" in listed
        assert worker.running
        log = (tmp_path / "worker" / "worker.log").read_text()
        assert "API key reloaded from" in log
        assert renewed_token.path.read_text().strip() not in log
    finally:
        worker.stop()


# --- one line for each misconfiguration -------------------------------------------------------


def test_a_server_certificate_from_another_ca_is_named_with_the_ca_file(
    temporal_cluster: TemporalCluster, tmp_path: Path
) -> None:
    other = Authority.create(tmp_path / "other-ca", name="Some Other CA")
    token = temporal_cluster.token()
    config = profile_file(
        tmp_path / "t.toml", temporal_cluster, api_key=token, ca_file=other.ca_file
    )

    line = the_one_line(cli(config, "list"), token)

    assert line == (
        f"TLS handshake with Temporal at {temporal_cluster.address} failed: its certificate is "
        f"not signed by the CA in tls.server_ca_cert_path of profile 'cluster' in {config}: "
        f"{other.ca_file}; point TEMPORAL_TLS_SERVER_CA_CERT_PATH at the CA that signed it"
    )


def test_no_client_certificate_says_the_server_requires_one(
    temporal_cluster: TemporalCluster, tmp_path: Path
) -> None:
    token = temporal_cluster.token()
    config = profile_file(tmp_path / "t.toml", temporal_cluster, api_key=token, client_cert=False)

    line = the_one_line(cli(config, "list"), token)

    assert line == (
        f"Temporal at {temporal_cluster.address} closed the TLS connection: it requires a client "
        "certificate; set TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH"
    )


def test_an_expired_token_is_named_with_when_it_expired(
    temporal_cluster: TemporalCluster, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    token = expired_token(temporal_cluster)
    config = profile_file(tmp_path / "t.toml", temporal_cluster, api_key=token)

    from_cli = the_one_line(cli(config, "list"), token)
    from_worker = the_one_line(worker_run({**cluster_env, "TEMPORAL_API_KEY": token}), token)

    assert from_cli.startswith(
        f"Temporal at {temporal_cluster.address} refused the API key from api_key of profile "
        f"'cluster' in {config} (subject "
    )
    assert "the token expired at " in from_cli
    assert from_cli.endswith("get a fresh one")
    assert from_worker.startswith(
        f"phasegate-worker: Temporal at {temporal_cluster.address} refused the API key from "
        "TEMPORAL_API_KEY (subject "
    )
    assert "the token expired at " in from_worker


def test_a_token_without_a_role_on_the_namespace_names_what_it_grants(
    temporal_cluster: TemporalCluster, tmp_path: Path
) -> None:
    token = temporal_cluster.token("phasegate-other")
    config = profile_file(tmp_path / "t.toml", temporal_cluster, api_key=token)

    line = the_one_line(cli(config, "list"), token)

    assert line.startswith(
        f"Temporal at {temporal_cluster.address} refused the API key from api_key of profile "
        f"'cluster' in {config} (subject "
    )
    assert line.endswith(
        "for namespace 'default': the token grants other:write, no role on 'default' (check "
        "TEMPORAL_NAMESPACE, or get a token with default:write)"
    )


def test_no_token_at_all_is_refused_in_one_line(
    temporal_cluster: TemporalCluster, tmp_path: Path
) -> None:
    config = profile_file(tmp_path / "t.toml", temporal_cluster, api_key=None)

    line = the_one_line(cli(config, "list"))

    assert line.startswith(
        f"Temporal at {temporal_cluster.address} refused namespace 'default' without an API key"
    )


def test_a_wrong_namespace_is_refused_for_the_worker_and_not_found_for_the_admin(
    temporal_cluster: TemporalCluster, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    worker_token = temporal_cluster.token()
    admin_token = temporal_cluster.token("phasegate-admin")
    as_admin = profile_file(
        tmp_path / "admin.toml", temporal_cluster, api_key=admin_token, namespace="no-such-ns"
    )

    from_worker = the_one_line(
        worker_run(
            {**cluster_env, "TEMPORAL_NAMESPACE": "no-such-ns", "TEMPORAL_API_KEY": worker_token}
        ),
        worker_token,
    )
    from_cli = the_one_line(cli(as_admin, "list"), admin_token)

    assert from_worker.startswith("phasegate-worker: Temporal at ")
    assert from_worker.endswith(
        "for namespace 'no-such-ns': the token grants default:write, no role on 'no-such-ns' "
        "(check TEMPORAL_NAMESPACE, or get a token with no-such-ns:write)"
    )
    assert from_cli == (
        f"namespace 'no-such-ns' not found at {temporal_cluster.address}: create it or set "
        "TEMPORAL_NAMESPACE to one that exists"
    )


def test_a_reader_lists_launches_but_starting_one_is_refused_in_one_line(
    temporal_cluster: TemporalCluster, tmp_path: Path
) -> None:
    token = temporal_cluster.token("phasegate-reader")
    config = profile_file(tmp_path / "t.toml", temporal_cluster, api_key=token)
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(plan_dict(flag_file=tmp_path / "flags.json"), sort_keys=False))

    listed = cli(config, "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    line = the_one_line(cli(config, "launch", str(plan)), token)

    assert line == (
        f"Temporal at {temporal_cluster.address} refused this on namespace 'default' (Request "
        "unauthorized.); the token grants default:read: it needs a role that may do it "
        "(default:write starts, decides and aborts launches)"
    )
