"""HTTP probes against real local servers: plain HTTP, HTTPS with a 5-day certificate, a dead port."""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from activities.errors import ConfigurationError
from activities.probes import ProbeActivities
from devstack.processes import free_port
from schemas.health_messages import HttpProbe
from schemas.health_profile import HttpCheck


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 503 if self.path == "/down" else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(context: ssl.SSLContext | None = None) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 that expires in five days (openssl's CLI)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "5"]
    command += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def plain_server() -> Iterator[str]:
    server, url = serve()
    yield url
    server.shutdown()
    server.server_close()


async def probe(check: dict[str, Any]) -> Any:
    async with httpx.AsyncClient() as http:
        return await ProbeActivities(http).probe_http(
            HttpProbe(check=HttpCheck.model_validate({"name": "probe", "kind": "http", **check}))
        )


async def test_an_answering_endpoint_reports_status_and_latency(plain_server: str) -> None:
    healthy = await probe({"url": f"{plain_server}/healthz"})
    down = await probe({"url": f"{plain_server}/down"})

    assert (healthy.status_code, healthy.error, healthy.tls_expires_at) == (200, "", None)
    assert healthy.latency_seconds is not None
    assert 0 < healthy.latency_seconds < 2
    assert down.status_code == 503


async def test_tls_expiry_is_read_from_the_served_certificate(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server, url = serve(context)
    try:
        result = await probe({"url": f"{url}/healthz", "ca_file": str(cert)})
    finally:
        server.shutdown()
        server.server_close()

    assert result.status_code == 200
    assert result.tls_expires_at is not None
    left = result.tls_expires_at - datetime.now(UTC)
    assert timedelta(days=4, hours=23) < left <= timedelta(days=5)


async def test_an_unreachable_endpoint_is_reported_not_raised() -> None:
    result = await probe({"url": f"http://127.0.0.1:{free_port()}/healthz", "timeout": "1s"})

    assert result.status_code is None
    assert result.error.startswith("ConnectError")


async def test_a_missing_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"checks.probe.ca_file: cannot load .*nope.pem"):
        await probe({"url": "https://127.0.0.1:1/", "ca_file": str(tmp_path / "nope.pem")})
