"""The checkout demo service: per-user routing through OpenFeature/flagd, injectable canary faults
and the Prometheus metrics Phasegate's analysis reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from openfeature import api as openfeature
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack.demo_service.secure import SecureEndpoints, SecurityHeaders, SecurityOptions

Variant = Literal["stable", "canary"]
VARIANTS: tuple[Variant, ...] = ("stable", "canary")
MAX_LATENCY_MS = 10_000
# The file watcher re-reads the flag file at most this often; also the provider's deadline.
DEFAULT_POLL_MS = 200
# Enough resolution around typical latency SLOs (10-300 ms) for histogram_quantile to be useful.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0,
)  # fmt: skip
# The stable path's own work: a few milliseconds, so latency analysis has a real baseline.
NATURAL_LATENCY_S = (0.001, 0.004)

logger = logging.getLogger("devstack.demo_service")


class FaultsError(ValueError):
    """A fault setting outside its allowed range; the message names the field and the range."""


@dataclass(frozen=True)
class Faults:
    """What the canary path does wrong: answer 500 for a share of requests, and answer late."""

    error_rate: float = 0.0
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        _check_range("error_rate", self.error_rate, 0.0, 1.0)
        _check_range("latency_ms", self.latency_ms, 0.0, MAX_LATENCY_MS)


def _check_range(field: str, value: object, low: float, high: float) -> None:
    # bool is an int in Python, but `"error_rate": true` is a mistake, not a rate of 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultsError(f"{field} must be a number between {low:g} and {high:g}, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise FaultsError(f"{field} must be between {low:g} and {high:g}, got {value!r}")


def parse_faults(payload: object, current: Faults) -> Faults:
    """The faults a `POST /faults` body asks for; fields left out keep their current value."""
    if not isinstance(payload, Mapping):
        raise FaultsError('body must be a JSON object like {"error_rate": 0.3, "latency_ms": 150}')
    unknown = sorted(set(payload) - {"error_rate", "latency_ms"})
    if unknown:
        raise FaultsError(f"unknown fields {unknown}: only error_rate and latency_ms can be set")
    return replace(current, **payload)


class VariantRouter:
    """Picks a user's variant from a flagd flag file through the OpenFeature SDK.

    Until the file exists (or while it cannot be parsed) the provider is in ERROR state but keeps
    polling; evaluations then return the last good flags, or the default "stable" if there are
    none yet. So a missing file is not fatal: the service starts and serves stable.
    """

    def __init__(self, flag_file: Path, flag_key: str, poll_ms: int = DEFAULT_POLL_MS) -> None:
        self.flag_file = flag_file
        self.flag_key = flag_key
        # A domain of our own keeps this router's provider apart from any other in the process.
        self._domain = f"phasegate-demo-{uuid.uuid4().hex}"
        self._provider = FlagdProvider(
            resolver_type=ResolverType.FILE,
            offline_flag_source_path=str(flag_file),
            # In FILE mode deadline_ms is also the interval at which the file's mtime is polled.
            deadline_ms=poll_ms,
        )
        self._client = openfeature.get_client(self._domain)

    def start(self) -> None:
        _quiet_repeated_flagd_errors()
        if not self.flag_file.exists():
            logger.warning("flag file %s does not exist yet: serving stable", self.flag_file)
        # Not set_provider_and_wait: with no flag file yet that raises, and we want to serve.
        openfeature.set_provider(self._provider, domain=self._domain)
        # Handlers go on after the provider: one added while the domain still has the no-op
        # provider (always READY) would run at once and claim the file was loaded.
        self._client.add_handler(ProviderEvent.PROVIDER_READY, self._on_ready)
        self._client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, self._on_change)

    def stop(self) -> None:
        self._provider.shutdown()

    @property
    def status(self) -> str:
        return self._client.get_provider_status().value

    def variant_for(self, user_id: str) -> Variant:
        value = self._client.get_string_value(
            self.flag_key, "stable", EvaluationContext(targeting_key=user_id)
        )
        # Anything but the canary value counts as stable so metric labels stay bounded.
        return "canary" if value == "canary" else "stable"

    def _on_ready(self, details: EventDetails) -> None:
        _RepeatFilter.reset()
        logger.info("flag file %s loaded", self.flag_file)

    def _on_change(self, details: EventDetails) -> None:
        changed = details.flags_changed
        logger.info("flag file %s reloaded, changed flags: %s", self.flag_file, changed)


class _RepeatFilter(logging.Filter):
    """Passes the first of a run of identical flagd watcher errors, without its traceback.

    The file watcher logs the same exception with a full traceback on every poll (5 per second)
    while the flag file is missing or broken; one line per episode is what an operator needs.
    """

    _last: str | None = None

    @classmethod
    def reset(cls) -> None:
        cls._last = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        message = record.getMessage()
        if message == _RepeatFilter._last:
            return False
        _RepeatFilter._last = message
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{message}: {record.exc_info[1]} (logged once until the file is good)"
            record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


def _quiet_repeated_flagd_errors() -> None:
    flagd_logger = logging.getLogger("openfeature.contrib")
    if not any(isinstance(f, _RepeatFilter) for f in flagd_logger.filters):
        flagd_logger.addFilter(_RepeatFilter())


class DemoMetrics:
    """The series Phasegate's analysis queries, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "demo_requests",
            "Checkout requests answered, by variant and HTTP status code.",
            ["variant", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "demo_request_errors",
            "Checkout requests answered with a server error, by variant.",
            ["variant"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "demo_request_duration_seconds",
            "Checkout request duration, by variant.",
            ["variant"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        # Series that exist at zero make rate() and error ratios defined before the first
        # canary request, instead of "no data" that analysis would have to special-case.
        for variant in VARIANTS:
            for code in ("200", "500"):
                self.requests.labels(variant, code)
            self.errors.labels(variant)
            self.duration.labels(variant)

    def observe(self, variant: Variant, code: int, seconds: float) -> None:
        self.requests.labels(variant, str(code)).inc()
        if code >= 500:
            self.errors.labels(variant).inc()
        self.duration.labels(variant).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class CheckoutService:
    """The endpoints, over one router, one metrics registry and the current faults.

    `base_error_rate` is the service's own share of failed requests on both paths, so that a
    canary fault can be a multiple of a real baseline rather than errors against none.
    """

    def __init__(self, router: VariantRouter, faults: Faults, base_error_rate: float = 0.0) -> None:
        _check_range("base_error_rate", base_error_rate, 0.0, 1.0)
        self.router = router
        self.metrics = DemoMetrics()
        self.faults = faults
        self.base_error_rate = base_error_rate

    async def checkout(self, request: Request) -> Response:
        user = request.query_params.get("user", "")
        if not user:
            return JSONResponse({"error": "missing query parameter `user`"}, status_code=400)
        started = time.perf_counter()
        variant = self.router.variant_for(user)
        delay = random.uniform(*NATURAL_LATENCY_S)
        failed = random.random() < self.base_error_rate
        if variant == "canary":
            delay += self.faults.latency_ms / 1000
            failed = random.random() < self.faults.error_rate or failed
        await asyncio.sleep(delay)
        code = 500 if failed else 200
        self.metrics.observe(variant, code, time.perf_counter() - started)
        body = {"user": user, "variant": variant}
        if failed:
            body["error"] = "injected fault"
        return JSONResponse(body, status_code=code, headers={"X-Variant": variant})

    async def get_faults(self, request: Request) -> Response:
        return JSONResponse(asdict(self.faults))

    async def set_faults(self, request: Request) -> Response:
        try:
            payload = json.loads(await request.body())
        except ValueError as err:
            return JSONResponse({"error": f"body is not JSON: {err}"}, status_code=422)
        try:
            self.faults = parse_faults(payload, self.faults)
        except FaultsError as err:
            return JSONResponse({"error": str(err)}, status_code=422)
        logger.info("canary faults set to %s", self.faults)
        return JSONResponse(asdict(self.faults))

    async def healthz(self, request: Request) -> Response:
        # Healthy even without a flag file: serving stable is this service's correct fallback.
        return JSONResponse({"status": "ok", "flag_provider": self.router.status})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def create_app(
    *,
    flag_file: Path,
    flag_key: str,
    faults: Faults | None = None,
    poll_ms: int = DEFAULT_POLL_MS,
    security: SecurityOptions | None = None,
    base_error_rate: float = 0.0,
) -> Starlette:
    """The checkout service; the flag provider starts and stops with the app's lifespan.

    With `security`, it also answers the security validation phase's probes (secure.py).
    """
    router = VariantRouter(flag_file, flag_key, poll_ms)
    service = CheckoutService(router, faults or Faults(), base_error_rate)
    secure = SecureEndpoints(security, service.metrics.registry) if security is not None else None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.router.start()
        try:
            yield
        finally:
            service.router.stop()

    app = Starlette(
        routes=[
            Route("/checkout", service.checkout, methods=["GET"]),
            Route("/faults", service.get_faults, methods=["GET"]),
            Route("/faults", service.set_faults, methods=["POST"]),
            Route("/healthz", service.healthz, methods=["GET"]),
            Route("/metrics", service.metrics_endpoint, methods=["GET"]),
            *(secure.routes() if secure is not None else []),
        ],
        middleware=[Middleware(SecurityHeaders)] if secure is not None else [],
        lifespan=lifespan,
    )
    app.state.metrics_registry = service.metrics.registry
    return app
