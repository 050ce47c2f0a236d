"""A real HTTPS service to probe: a CA made here, and a server that is good or bad per check.

The server is the standard library's threading HTTP server behind an `ssl` context, on a free
loopback port. Each behaviour the probes judge can be switched off: old TLS versions accepted,
security headers missing, an open endpoint, no rate limit, no audit record.
"""

from __future__ import annotations

import ssl
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Counter

from phasegate.starters.local import free_port

LOOPBACK = "127.0.0.1"
VALID_TOKEN = "orders-token-4f9c2a"
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
}


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class Authority:
    """A test CA; `issue` writes a leaf certificate and key signed by it."""

    directory: Path
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, directory: Path, name: str = "Phasegate Test CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        authority = cls(directory, key, certificate)
        authority.ca_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return authority

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def issue(
        self,
        label: str,
        *,
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = (LOOPBACK,),
        valid_from: timedelta = timedelta(days=-1),
        valid_for: timedelta = timedelta(days=365),
    ) -> tuple[Path, Path]:
        """Write `<label>.pem` and `<label>.key`; validity is relative to now."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        names += [x509.IPAddress(IPv4Address(ip)) for ip in ips]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(label))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + valid_from)
            .not_valid_after(now + valid_from + valid_for)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.directory / f"{label}.pem", self.directory / f"{label}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


@dataclass
class Behaviour:
    """What the target does; every default is the secure choice."""

    old_tls: bool = False  # also accept TLS 1.0 and 1.1
    headers: bool = True  # send HSTS, nosniff, frame protection and CSP
    protected: bool = True  # /orders needs the valid bearer token
    rate_limit: int | None = 5  # /login answers 429 after this many requests; None: never
    audit: bool = True  # an allowed /orders request adds an audit record


@dataclass
class AuditLog:
    """The audit records every target writes, exposed for Prometheus over plain HTTP."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    records: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.records = Counter(
            "audit_records", "Audit records written", ["target", "path"], registry=self.registry
        )


class HttpsTarget(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, context: ssl.SSLContext, behaviour: Behaviour, audit: AuditLog):
        self.name = name
        self.context = context
        self.behaviour = behaviour
        self.audit = audit
        self.login_requests = 0
        self.lock = threading.Lock()
        super().__init__((LOOPBACK, free_port()), _Handler)

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.server_address[1]}"

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake happens in the request's own thread, so a probe that never finishes
        # one (or offers a refused protocol) cannot hold up the others.
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class _Handler(BaseHTTPRequestHandler):
    server: HttpsTarget
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: str = "") -> None:
        payload = body.encode()
        self.send_response(status)
        if self.server.behaviour.headers:
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        behaviour = self.server.behaviour
        path = self.path.split("?")[0]
        if path == "/":
            self._answer(200, "checkout")
        elif path == "/orders":
            authorization = self.headers.get("Authorization")
            if behaviour.protected and authorization is None:
                self._answer(401, "credentials needed")
            elif behaviour.protected and authorization != f"Bearer {VALID_TOKEN}":
                self._answer(403, "bad token")
            else:
                if behaviour.audit:
                    self.server.audit.records.labels(self.server.name, path).inc()
                self._answer(200, "orders")
        elif path == "/login":
            with self.server.lock:
                self.server.login_requests += 1
                count = self.server.login_requests
            limit = behaviour.rate_limit
            self._answer(429 if limit is not None and count > limit else 200, "login")
        else:
            self._answer(404, "not found")


def server_context(cert: Path, key: Path, *, old_tls: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if old_tls:
        # OpenSSL 3 only speaks TLS 1.0/1.1 at security level 0, on the server side too.
        context.set_ciphers("ALL:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@contextmanager
def serve(
    name: str, cert: Path, key: Path, behaviour: Behaviour, audit: AuditLog
) -> Iterator[HttpsTarget]:
    target = HttpsTarget(
        name, server_context(cert, key, old_tls=behaviour.old_tls), behaviour, audit
    )
    thread = threading.Thread(target=target.serve_forever, name=f"target-{name}", daemon=True)
    thread.start()
    try:
        yield target
    finally:
        target.shutdown()
        target.server_close()
        thread.join(timeout=5)
