"""Fixtures for the security probes: a test CA, HTTPS targets good or bad per check, Prometheus."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client import start_http_server

from devstack.pki import LOOPBACK, Authority
from devstack.processes import ManagedProcess, free_port, start_prometheus, wait_for_first_scrape
from tests.support.https_target import AuditLog, Behaviour, HttpsTarget, serve


@dataclass
class Certificates:
    authority: Authority
    files: dict[str, tuple[Path, Path]]

    @property
    def ca_file(self) -> str:
        return str(self.authority.ca_file)


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Leaf certificates from one test CA, plus one from a CA nobody trusts."""
    directory = tmp_path_factory.mktemp("pki")
    authority = Authority.create(directory / "trusted")
    stranger = Authority.create(directory / "untrusted", name="Unknown CA")
    return Certificates(
        authority,
        {
            "good": authority.issue("good"),
            "expiring": authority.issue("expiring", valid_for=timedelta(days=11)),
            "expired": authority.issue(
                "expired", valid_from=timedelta(days=-40), valid_for=timedelta(days=30)
            ),
            "wrong-host": authority.issue("wrong-host", dns=("other.example",), ips=()),
            "untrusted": stranger.issue("untrusted"),
        },
    )


@dataclass
class AuditEndpoint:
    log: AuditLog
    port: int


@pytest.fixture(scope="session")
def audit_endpoint() -> Iterator[AuditEndpoint]:
    """The targets' audit records as Prometheus metrics, on plain HTTP."""
    log = AuditLog()
    port = free_port()
    server, thread = start_http_server(port, addr=LOOPBACK, registry=log.registry)
    yield AuditEndpoint(log, port)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="session")
def audit_prometheus(
    audit_endpoint: AuditEndpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    """A real Prometheus scraping the audit records every second."""
    prometheus = start_prometheus(
        scrape_targets={"audit": [f"{LOOPBACK}:{audit_endpoint.port}"]},
        workdir=tmp_path_factory.mktemp("prometheus"),
    )
    try:
        wait_for_first_scrape(prometheus)
        yield prometheus
    finally:
        prometheus.stop()


TargetFactory = Callable[..., HttpsTarget]


@pytest.fixture
def https_target(
    certificates: Certificates, audit_endpoint: AuditEndpoint, request: pytest.FixtureRequest
) -> Iterator[TargetFactory]:
    """Start HTTPS targets for this test: `https_target(cert="expired", headers=False)`."""
    with ExitStack() as stack:
        count = 0

        def start(cert: str = "good", **behaviour: object) -> HttpsTarget:
            nonlocal count
            count += 1
            cert_file, key_file = certificates.files[cert]
            name = f"{request.node.name}-{count}"
            return stack.enter_context(
                serve(name, cert_file, key_file, Behaviour(**behaviour), audit_endpoint.log)  # type: ignore[arg-type]
            )

        yield start


@pytest.fixture
def namespace(kube_api: client.ApiClient, namespace_name: str) -> Iterator[str]:
    """A fresh namespace with a `checkout` service account; deleted after the test."""
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace_name)))
    core.create_namespaced_service_account(
        namespace_name, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="checkout"))
    )
    yield namespace_name
    core.delete_namespace(namespace_name)
