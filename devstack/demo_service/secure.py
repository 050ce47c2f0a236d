"""The checkout demo's secure surface, for the security validation phase to probe: security
headers on every answer, a token-protected and audited `/orders`, a rate-limited `/login`."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = {
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'",
}


@dataclass(frozen=True)
class SecurityOptions:
    orders_token: str
    login_limit: int = 20  # requests per window; the next ones answer 429
    login_window_s: float = 60.0


class SecurityHeaders:
    """ASGI middleware adding the security headers to every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)


@dataclass
class SecureEndpoints:
    options: SecurityOptions
    registry: CollectorRegistry
    audit: Counter = field(init=False)
    _window_start: float = 0.0
    _in_window: int = 0

    def __post_init__(self) -> None:
        self.audit = Counter(
            "demo_audit_records",
            "Audit records written by audited endpoints, by path.",
            ["path"],
            registry=self.registry,
        )

    async def orders(self, request: Request) -> Response:
        authorization = request.headers.get("authorization")
        if authorization is None:
            return JSONResponse({"error": "credentials needed"}, status_code=401)
        expected = f"Bearer {self.options.orders_token}"
        if not hmac.compare_digest(authorization.encode(), expected.encode()):
            return JSONResponse({"error": "bad token"}, status_code=403)
        self.audit.labels("/orders").inc()
        return JSONResponse({"orders": []})

    async def login(self, request: Request) -> Response:
        now = time.monotonic()
        if now - self._window_start > self.options.login_window_s:
            self._window_start, self._in_window = now, 0
        self._in_window += 1
        if self._in_window > self.options.login_limit:
            return JSONResponse({"error": "too many requests"}, status_code=429)
        return JSONResponse({"login": "ok"})

    def routes(self) -> list[Route]:
        return [
            Route("/orders", self.orders, methods=["GET", "POST"]),
            Route("/login", self.login, methods=["GET", "POST"]),
        ]
