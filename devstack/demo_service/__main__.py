"""Command line for the checkout demo: options (or PHASEGATE_DEMO_* variables) to a uvicorn server.

uvicorn turns SIGTERM and SIGINT into a graceful shutdown, which also stops the flag watcher.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import uvicorn
from prometheus_client import start_http_server

from devstack.demo_service.app import (
    DEFAULT_POLL_MS,
    MAX_LATENCY_MS,
    Faults,
    FaultsError,
    create_app,
)
from devstack.demo_service.secure import SecurityOptions

# Long enough for in-flight requests with injected latency, short enough for test teardown.
GRACEFUL_SHUTDOWN_S = 5


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"PHASEGATE_DEMO_{name}", default)


# Reads an option's text as a number: `float`, `int`, or either checked by `_in_range`.
NumberParser = Callable[[str], float]


def _in_range(kind: NumberParser, low: float, high: float) -> NumberParser:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from err
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.demo_service",
        description="Checkout demo: routes each user to the stable or canary path by a flagd "
        "flag file, with injectable canary faults and Prometheus metrics on /metrics.",
    )
    parser.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="default 127.0.0.1")
    parser.add_argument("--port", type=int, default=_env("PORT", "8080"), help="default 8080")
    parser.add_argument(
        "--flag-file",
        type=Path,
        default=_env("FLAG_FILE"),
        required=_env("FLAG_FILE") is None,
        help="flagd JSON flag file; may not exist yet (everyone is on stable until it does)",
    )
    parser.add_argument("--flag-key", default=_env("FLAG_KEY", "checkout-v2"))

    def number(
        option: str, kind: NumberParser, low: float, high: float, default: float, text: str
    ) -> None:
        """A number from `low` to `high`; PHASEGATE_DEMO_<OPTION> if set, else `default`."""
        variable = option.removeprefix("--").replace("-", "_").upper()
        parser.add_argument(
            option, type=_in_range(kind, low, high), default=_env(variable, str(default)), help=text
        )

    latency = f"latency added to canary requests, 0..{MAX_LATENCY_MS} ms"
    number("--error-rate", float, 0.0, 1.0, 0, "share of canary requests that answer 500, 0..1")
    number("--latency-ms", float, 0, MAX_LATENCY_MS, 0, latency)
    base = "share of requests on either path that answer 500 (the service's own failures), 0..1"
    number("--base-error-rate", float, 0.0, 1.0, 0, base)
    number(
        "--poll-ms", int, 10, 60_000, DEFAULT_POLL_MS, "how often the flag file's mtime is checked"
    )
    parser.add_argument(
        "--tls-cert", type=Path, default=_env("TLS_CERT"), help="serve HTTPS with this PEM chain"
    )
    parser.add_argument("--tls-key", type=Path, default=_env("TLS_KEY"), help="its PEM key")
    parser.add_argument(
        "--orders-token-file",
        type=Path,
        default=_env("ORDERS_TOKEN_FILE"),
        help="turn on the secure surface: security headers, /orders needing this bearer token "
        "(audited), rate-limited /login",
    )
    number("--login-limit", int, 1, 100_000, 20, "/login requests per minute before 429")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=_env("METRICS_PORT"),
        help="also serve /metrics over plain HTTP on this port (for Prometheus when on HTTPS)",
    )
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        faults = Faults(error_rate=args.error_rate, latency_ms=args.latency_ms)
    except FaultsError as err:
        raise SystemExit(f"invalid fault settings: {err}") from err
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("give both --tls-cert and --tls-key, or neither")
    security = None
    if args.orders_token_file is not None:
        try:
            token = args.orders_token_file.read_text().strip()
        except OSError as err:
            raise SystemExit(
                f"--orders-token-file {args.orders_token_file}: {err.strerror}"
            ) from err
        security = SecurityOptions(orders_token=token, login_limit=int(args.login_limit))
    app = create_app(
        flag_file=args.flag_file,
        flag_key=args.flag_key,
        faults=faults,
        poll_ms=int(args.poll_ms),
        security=security,
        base_error_rate=args.base_error_rate,
    )
    if args.metrics_port is not None:
        start_http_server(
            int(args.metrics_port), addr=args.host, registry=app.state.metrics_registry
        )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level=args.log_level.lower(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
    )


if __name__ == "__main__":
    main()
