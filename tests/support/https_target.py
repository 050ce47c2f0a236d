"""A real HTTPS service to probe, good or bad per check, with certificates from a test CA.

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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from devstack.pki import LOOPBACK
from devstack.processes import free_port

VALID_TOKEN = "orders-token-4f9c2a"
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
}


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
