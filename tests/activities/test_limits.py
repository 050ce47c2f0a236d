"""The worker's limits: loaded from a real file, applied to real env vars, files, DNS, loopback
HTTP servers, a real PostgreSQL and real flag files."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpcore
import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activities.errors import ConfigurationError
from activities.flags import FlagdFileRouter
from activities.limits import (
    GuardedBackend,
    KubernetesLimits,
    NetworkLimits,
    SecretLimits,
    WorkerLimits,
    guarded_transport,
    load_limits,
    non_public,
    url_origin,
)
from activities.metrics import MetricsActivities
from activities.probes import ProbeActivities
from activities.secrets import resolve_secret
from devstack.postgres_cluster import PostgresCluster
from schemas.analysis_spec import MetricSpec
from schemas.basics import SecretRef
from schemas.metrics_messages import MetricQuery
from schemas.probe_messages import TlsProbe
from schemas.problems import PlanError
from schemas.security_validation_spec import TlsCheck
from schemas.targets import FlagdRouter, PrometheusTarget
from tests.support.cli import phasegate
from tests.support.limits import TEST_LIMITS_FILE, write_limits
from tests.support.receiver import webhook_receiver

SAFE = WorkerLimits()
LOOPBACK = NetworkLimits(private=["127.0.0.0/8", "::1/128"])


# --- the limits file --------------------------------------------------------------------


def test_the_test_limits_load_with_folders_made_absolute() -> None:
    limits = load_limits(TEST_LIMITS_FILE)
    examples = TEST_LIMITS_FILE.parents[2] / "examples"
    assert str(examples) in limits.files.read
    assert "127.0.0.0/8" in limits.network.private


def test_relative_folders_are_taken_against_the_limits_file(tmp_path: Path) -> None:
    path = write_limits(tmp_path, files={"flags": ["flags", "../shared"]})
    limits = load_limits(path)
    assert limits.files.flags == [str(tmp_path / "flags"), str(tmp_path.parent / "shared")]


@pytest.mark.parametrize(
    ("sections", "problem"),
    [
        ({"secrets": {"env": ["$(rm -rf)"]}}, "secrets.env[0]: Value error, '$(rm -rf)' is not"),
        ({"network": {"private": ["not a host!"]}}, "network.private[0]:"),
        ({"databases": ["db:port/x"]}, "databases[0]:"),
        ({"kubernetes": {"namespaces": ["Kube_System"]}}, "kubernetes.namespaces[0]:"),
        ({"network": {"hosts": ["*"] * 300}}, "network.hosts: "),
        ({"secret": {"env": ["X"]}}, "secret: is not a known field"),
    ],
)
def test_a_bad_limits_file_names_the_field(
    tmp_path: Path, sections: dict[str, Any], problem: str
) -> None:
    with pytest.raises(PlanError) as caught:
        load_limits(write_limits(tmp_path, **sections))
    assert any(
        line.startswith(problem.split(" Value error")[0]) for line in caught.value.problems
    ), caught.value.problems


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xff\xfe secrets: {}", "(file): is not UTF-8 text"),
        (b"secrets:\x00 {}", "(file): is not text (it holds NUL bytes)"),
        (b"- just\n- a list\n", "(limits): must be a mapping"),
        (b"secrets: [unclosed", "(yaml)"),
    ],
)
def test_a_limits_file_that_is_not_yaml_text_is_refused_clearly(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "limits.yaml"
    path.write_bytes(content)
    with pytest.raises(PlanError) as caught:
        load_limits(path)
    assert caught.value.problems[0].startswith(problem), caught.value.problems


def test_an_empty_limits_file_is_the_safe_default(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text("# nothing allowed yet\n")
    assert load_limits(path).model_dump() == SAFE.model_dump()


# --- safe by default ----------------------------------------------------------------------


def test_without_limits_nothing_sensitive_is_allowed(tmp_path: Path) -> None:
    assert SAFE.secret_problem(SecretRef(env="HOME")) == (
        "environment variable HOME is not one this worker may read: add it to secrets.env in "
        "the worker's limits (PHASEGATE_WORKER_LIMITS)"
    )
    assert "secrets.files" in str(SAFE.secret_problem(SecretRef(file=str(tmp_path / "t"))))
    assert "files.flags" in str(SAFE.flag_file_problem(str(tmp_path / "flags.json")))
    assert "files.read" in str(SAFE.read_problem(str(tmp_path / "manifests")))
    assert "files.backups" in str(SAFE.backup_problem(str(tmp_path / "backups")))
    assert "databases" in str(SAFE.database_problem("host=db.example.com dbname=orders"))
    assert "network.private" in str(
        SAFE.network.problem("127.0.0.1", LOOPBACK.resolve("127.0.0.1", 80))
    )
    assert SAFE.kubernetes.problem("shop") is None
    assert "kubernetes.namespaces" in str(SAFE.kubernetes.problem("kube-system"))


# --- secrets ----------------------------------------------------------------------------------


def test_an_env_secret_is_read_only_when_its_name_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHECKOUT_TOKEN", "t0ken")
    allowed = WorkerLimits(secrets=SecretLimits(env=["CHECKOUT_*"]))
    ref = SecretRef(env="CHECKOUT_TOKEN")
    assert resolve_secret(ref, where="x", limits=allowed) == "t0ken"
    with pytest.raises(
        ConfigurationError, match=r"^x: environment variable CHECKOUT_TOKEN is not one"
    ):
        resolve_secret(ref, where="x", limits=SAFE)
    monkeypatch.delenv("CHECKOUT_TOKEN")
    with pytest.raises(ConfigurationError, match=r"CHECKOUT_TOKEN is not set$"):
        resolve_secret(ref, where="x", limits=allowed)


def test_a_file_secret_must_really_be_inside_an_allowed_folder(tmp_path: Path) -> None:
    secrets, elsewhere = tmp_path / "secrets", tmp_path / "elsewhere"
    secrets.mkdir()
    elsewhere.mkdir()
    (secrets / "token").write_text("s3cret\n")
    (elsewhere / "key").write_text("private key")
    (secrets / "link").symlink_to(elsewhere / "key")
    limits = load_limits(write_limits(tmp_path, secrets={"files": ["secrets"]}))

    assert (
        resolve_secret(SecretRef(file=str(secrets / "token")), where="x", limits=limits) == "s3cret"
    )
    for sneaky in (secrets / "link", secrets / ".." / "elsewhere" / "key"):
        with pytest.raises(
            ConfigurationError, match=r"is not inside a folder of secrets\.files"
        ) as caught:
            resolve_secret(SecretRef(file=str(sneaky)), where="x", limits=limits)
        assert "private key" not in str(caught.value)


def test_the_workers_own_key_and_limits_are_never_a_secret(tmp_path: Path) -> None:
    key = tmp_path / "worker.key"
    key.write_text("k" * 64)
    path = write_limits(tmp_path, secrets={"files": ["."]})
    limits = load_limits(path).protecting(key)
    for own in (key, path):
        problem = limits.secret_problem(SecretRef(file=str(own)))
        assert problem == f"file {own} is the worker's own configuration, never a plan's secret"


def test_a_huge_or_binary_secret_file_is_refused(tmp_path: Path) -> None:
    limits = WorkerLimits(secrets=SecretLimits(files=[str(tmp_path)]))
    (tmp_path / "huge").write_bytes(b"x" * (64 * 1024 + 1))
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigurationError, match="larger than 64 KiB"):
        resolve_secret(SecretRef(file=str(tmp_path / "huge")), where="x", limits=limits)
    with pytest.raises(ConfigurationError, match="is not UTF-8 text"):
        resolve_secret(SecretRef(file=str(tmp_path / "binary")), where="x", limits=limits)


# --- addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("fe80::1", "link-local"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-public"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_non_public_addresses_are_told_apart(address: str, kind: str | None) -> None:
    parsed = LOOPBACK.resolve(address, 80)[0]
    assert non_public(parsed) == kind


def test_localhost_is_resolved_and_refused_unless_private_allows_it() -> None:
    addresses = SAFE.network.resolve("localhost", 80)  # real DNS (the resolver's hosts file)
    assert addresses
    assert all(non_public(a) == "loopback" for a in addresses)
    assert "is a loopback address" in str(SAFE.network.problem("localhost", addresses))
    assert LOOPBACK.problem("localhost", addresses) is None
    assert NetworkLimits(private=["localhost"]).problem("localhost", addresses) is None


def test_metadata_names_are_refused_before_any_lookup() -> None:
    problem = LOOPBACK.name_problem("Metadata.Google.Internal.")
    assert problem is not None
    assert problem.startswith("metadata.google.internal serves cloud instance metadata")


def test_hosts_narrows_which_public_hosts_may_be_reached() -> None:
    network = NetworkLimits(hosts=["*.example.com", "8.8.8.0/24"])
    inside, outside = LOOPBACK.resolve("8.8.8.8", 80), LOOPBACK.resolve("1.1.1.1", 80)
    assert network.problem("hooks.example.com", outside) is None
    assert network.problem("evil.test", outside) == (
        "host evil.test is not in network.hosts of the worker's limits (PHASEGATE_WORKER_LIMITS)"
    )
    assert network.problem("anything.test", inside) is None


# --- the guarded HTTP client ---------------------------------------------------------------


class CountingBackend(httpcore.AnyIOBackend):
    """The real backend, counting the connections it is asked to open."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        return await super().connect_tcp(host, port, timeout, local_address, socket_options)


async def test_the_client_refuses_a_loopback_server_unless_allowed() -> None:
    with webhook_receiver() as receiver:
        async with httpx.AsyncClient(transport=guarded_transport(SAFE.network)) as http:
            with pytest.raises(ConfigurationError, match=r"^refused: 127\.0\.0\.1 is a loopback"):
                await http.post(f"{receiver.url}/hook", json={"n": 1})
        assert receiver.bodies("/hook") == []

        async with httpx.AsyncClient(transport=guarded_transport(LOOPBACK)) as http:
            response = await http.post(f"{receiver.url}/hook", json={"n": 2})
        assert response.status_code == 200
        assert receiver.bodies("/hook") == [{"n": 2}]


async def test_the_client_checks_every_hop_of_a_redirect() -> None:
    """`localhost` is allowed by name; its redirect to 127.0.0.1 by address is not."""
    with webhook_receiver() as receiver:
        port = int(receiver.url.rsplit(":", 1)[1])
        network = NetworkLimits(private=["localhost"])
        async with httpx.AsyncClient(transport=guarded_transport(network)) as http:
            allowed = await http.post(f"http://localhost:{port}/by-name", json={})
            assert allowed.status_code == 200
            with pytest.raises(ConfigurationError, match=r"127\.0\.0\.1 is a loopback"):
                await http.post(f"{receiver.url}/by-address", json={})
        assert [path for path, _ in receiver.posts] == ["/by-name"]


async def test_the_metadata_address_is_refused_without_any_connection() -> None:
    counting = CountingBackend()
    transport = guarded_transport(SAFE.network, inner=counting)
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(ConfigurationError, match=r"169\.254\.169\.254 is a link-local address"):
            await http.get("http://169.254.169.254/latest/meta-data/iam/")
    assert counting.connects == []


async def test_the_workers_own_services_are_trusted() -> None:
    with webhook_receiver() as receiver:
        port = int(receiver.url.rsplit(":", 1)[1])
        counting = CountingBackend()
        backend = GuardedBackend(SAFE.network, trusted=[("127.0.0.1", port)], inner=counting)
        stream = await backend.connect_tcp("127.0.0.1", port, timeout=5)
        await stream.aclose()
        assert counting.connects == [("127.0.0.1", port)]


# --- databases --------------------------------------------------------------------------------


def test_a_real_database_is_reached_only_when_databases_allows_it(
    postgres: PostgresCluster,
) -> None:
    dsn = postgres.create_database("limits_check")
    port = postgres.port
    assert SAFE.database_problem(dsn) == (
        f"database 127.0.0.1:{port}/limits_check is not in databases of the worker's limits "
        "(PHASEGATE_WORKER_LIMITS)"
    )
    exact = WorkerLimits(databases=[f"127.0.0.1:{port}/limits_check"])
    assert exact.database_problem(dsn) is None
    assert "/postgres is not in databases" in str(exact.database_problem(dsn, also=["postgres"]))
    other_port = WorkerLimits(databases=[f"127.0.0.1:{port + 1}"])
    assert other_port.database_problem(dsn) is not None
    with psycopg.connect(dsn, connect_timeout=5) as conn:  # the DSN judged is a working one
        assert conn.execute("SELECT current_database()").fetchone() == ("limits_check",)


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 password='hunter2 dbname=x",
        "postgresql://admin:hunter2@[::1/x",
        "host=127.0.0.1 password=hunter2 dbname=x bogus=1",
    ],
)
def test_a_dsn_that_does_not_parse_is_never_quoted(dsn: str) -> None:
    problem = WorkerLimits(databases=["*"]).database_problem(dsn)
    assert (
        problem
        == "the DSN is not a valid libpq connection string (not shown: it may hold a password)"
    )


def test_a_dsn_must_name_its_host_and_no_service_file() -> None:
    everything = WorkerLimits(databases=["*", "/*"])
    assert "names no host" in str(everything.database_problem("dbname=orders"))
    assert "names `service`" in str(everything.database_problem("service=prod dbname=x"))
    assert everything.database_problem("host=/var/run/postgresql dbname=x") is None
    assert everything.database_problem("host=a.example,b.example port=5432,5433 dbname=x") is None


def test_database_patterns_take_ports_names_and_ipv6() -> None:
    limits = WorkerLimits(databases=["db-*.internal:5432/orders", "[::1]:6543"])
    assert limits.database_problem("host=db-1.internal dbname=orders") is None
    assert limits.database_problem("host=db-1.internal dbname=users") is not None
    assert limits.database_problem("host=db-1.internal port=5433 dbname=orders") is not None
    assert limits.database_problem("host=::1 port=6543 dbname=anything") is None


# --- files and namespaces --------------------------------------------------------------------


def test_the_flag_router_writes_only_inside_files_flags(tmp_path: Path) -> None:
    (tmp_path / "flags").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "flags" / "escape").symlink_to(tmp_path / "other")
    router = FlagdFileRouter(load_limits(write_limits(tmp_path, files={"flags": ["flags"]})))
    inside = FlagdRouter(flag_file=str(tmp_path / "flags" / "f.json"), flag_key="k")
    assert router.set_weight(inside, 5, "launch-1") is True
    assert router.current_weight(inside) == 5

    for outside in (tmp_path / "other" / "f.json", tmp_path / "flags" / "escape" / "f.json"):
        spec = FlagdRouter(flag_file=str(outside), flag_key="k")
        with pytest.raises(ConfigurationError, match=r"is not inside a folder of files\.flags"):
            router.set_weight(spec, 5, "launch-1")
    assert sorted(os.listdir(tmp_path / "other")) == []


def test_kube_system_namespaces_must_be_named() -> None:
    assert KubernetesLimits(namespaces=["kube-system"]).problem("kube-system") is None
    assert KubernetesLimits(namespaces=["shop-*"]).problem("shop-eu") is None
    assert KubernetesLimits(namespaces=["shop-*"]).problem("billing") is not None


# --- where activities reach out ------------------------------------------------------------


def test_prometheus_is_queried_only_where_the_limits_allow() -> None:
    query = MetricQuery(
        metric="errors",
        spec=MetricSpec(query="up", max=1),
        prometheus=PrometheusTarget(url="http://169.254.169.254:9090"),
        canary_variant="canary",
        stable_variant="stable",
    )
    with pytest.raises(
        ConfigurationError, match=r"^targets.prometheus.url: 169\.254\.169\.254 is a link-local"
    ):
        MetricsActivities(SAFE).query_metric(query)


async def test_a_tls_probe_reaches_only_allowed_hosts() -> None:
    probe = TlsProbe(check=TlsCheck(id="meta", url="https://169.254.169.254"), ca_file=None)
    async with httpx.AsyncClient() as http:
        with pytest.raises(
            ConfigurationError, match=r"^tls.meta.url: 169\.254\.169\.254 is a link-local"
        ):
            await ProbeActivities(http, SAFE).check_tls(probe)


# --- the worker and hostile input -----------------------------------------------------------


def test_a_worker_with_a_bad_limits_file_stops_with_every_problem_named(tmp_path: Path) -> None:
    path = write_limits(tmp_path, network={"private": ["not a host!"]}, databases=["a:b/c"])
    done = subprocess.run(
        [sys.executable, "-m", "workers.main"],
        env={**os.environ, "PHASEGATE_WORKER_LIMITS": str(path), "TEMPORAL_ADDRESS": "127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"phasegate-worker: {path}: 2 problem(s)" in done.stderr
    assert "network.private[0]:" in done.stderr
    assert "databases[0]:" in done.stderr


def test_phasegate_worker_names_a_bad_limits_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text("secrets: {env: [HOME], files: 3}\n")
    monkeypatch.setenv("PHASEGATE_WORKER_LIMITS", str(path))
    result = phasegate("--address", "127.0.0.1:1", "worker")
    assert result.exit_code == 1
    assert "secrets.files:" in result.stderr
    assert "Traceback" not in result.output


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_limits_file_loads_or_is_refused_with_its_problems(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "limits.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        problems: list[str] | None = None
        try:
            load_limits(path)
        except PlanError as err:
            problems = err.problems
    assert problems is None or (problems and all(": " in line for line in problems))


@settings(max_examples=500, deadline=None)
@given(dsn=st.text(max_size=200))
def test_any_dsn_is_judged_without_an_error_or_its_text(dsn: str) -> None:
    problem = WorkerLimits(databases=["db-*:5432/orders"]).database_problem(dsn)
    if problem is not None and "password=" in dsn:
        assert dsn not in problem


@settings(max_examples=300, deadline=None)
@given(
    host=st.text(alphabet=st.characters(codec="ascii"), max_size=60),
    address=st.ip_addresses(),
    url=st.text(max_size=120),
)
def test_any_host_or_url_is_judged_cleanly(host: str, address: Any, url: str) -> None:
    """No lookups here: names are judged by name, addresses as they are."""
    for problem in (SAFE.network.name_problem(host), SAFE.network.problem(host, [address])):
        assert problem is None or "(PHASEGATE_WORKER_LIMITS)" in problem
    literal = SAFE.network.resolve(str(address), 80)
    assert literal == [address]
    with contextlib.suppress(ConfigurationError):
        SAFE.network.check_url(
            f"http://[{address}]/" if address.version == 6 else f"http://{address}/", where="u"
        )
    with contextlib.suppress(ValueError):
        url_origin(url)
    for path in (url, host):
        assert SAFE.flag_file_problem(path) is not None
