"""Load generator for the checkout demo: a steady request rate from a pool of user ids.

Bounded by design: at most rps x duration requests, all to the one target given, stopping at
the deadline (or on SIGTERM/SIGINT) and printing what it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

MAX_RPS = 2_000
MAX_DURATION_S = 24 * 3600
# Beyond this many requests in flight the generator waits rather than opening more connections.
MAX_IN_FLIGHT = 256
# Longer than the largest latency the demo can inject (10 s), so slow is not counted as failed.
REQUEST_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class LoadSummary:
    """What a load run saw: `errors` counts non-2xx answers and transport failures alike."""

    sent: int
    ok: int
    errors: int
    p50_ms: float
    p99_ms: float
    variants: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        shares = ", ".join(f"{name}={count}" for name, count in sorted(self.variants.items()))
        return (
            f"sent={self.sent} ok={self.ok} errors={self.errors} "
            f"p50={self.p50_ms:.1f}ms p99={self.p99_ms:.1f}ms variants: {shares or 'none'}"
        )


@dataclass
class _Tally:
    ok: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    variants: Counter[str] = field(default_factory=Counter)


async def run_load(
    target: str,
    rps: float,
    duration: float,
    users: int = 10_000,
    *,
    seed: int | None = None,
    stop: asyncio.Event | None = None,
) -> LoadSummary:
    """Send `GET {target}/checkout?user=user-N` at `rps` for `duration` seconds.

    Requests are scheduled on a fixed clock (open loop), so a slow service does not lower the
    offered rate until MAX_IN_FLIGHT requests are waiting. `stop` ends the run early.
    """
    _check_bounds(rps, duration, users)
    base = target.rstrip("/")
    pool = random.Random(seed)
    budget = math.floor(rps * duration)
    tally = _Tally()
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    stop = stop or asyncio.Event()
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)

    async with (
        httpx.AsyncClient(
            base_url=base,
            timeout=REQUEST_TIMEOUT_S,
            limits=limits,
            # Never follow a redirect: the generator talks to the target it was given, only.
            follow_redirects=False,
            trust_env=False,
        ) as client,
        asyncio.TaskGroup() as tasks,
    ):
        started = time.monotonic()
        deadline = started + duration
        sent = 0
        while sent < budget and not stop.is_set():
            due = started + sent / rps
            if due >= deadline:
                break
            await _sleep_until(due, stop)
            if stop.is_set():
                break
            await in_flight.acquire()
            user = f"user-{pool.randrange(users)}"
            tasks.create_task(_one_request(client, user, tally, in_flight))
            sent += 1

    return LoadSummary(
        sent=sent,
        ok=tally.ok,
        errors=tally.errors,
        p50_ms=_percentile(tally.latencies_ms, 0.50),
        p99_ms=_percentile(tally.latencies_ms, 0.99),
        variants=dict(tally.variants),
    )


def _check_bounds(rps: float, duration: float, users: int) -> None:
    if not 0 < rps <= MAX_RPS:
        raise ValueError(f"rps must be in (0, {MAX_RPS}], got {rps}")
    if not 0 < duration <= MAX_DURATION_S:
        raise ValueError(f"duration must be in (0, {MAX_DURATION_S}] seconds, got {duration}")
    if users < 1:
        raise ValueError(f"users must be at least 1, got {users}")


async def _sleep_until(when: float, stop: asyncio.Event) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


async def _one_request(
    client: httpx.AsyncClient, user: str, tally: _Tally, in_flight: asyncio.Semaphore
) -> None:
    started = time.perf_counter()
    try:
        response = await client.get("/checkout", params={"user": user})
    except httpx.HTTPError:
        tally.errors += 1
        return
    finally:
        in_flight.release()
    tally.latencies_ms.append((time.perf_counter() - started) * 1000)
    if response.is_success:
        tally.ok += 1
    else:
        tally.errors += 1
    variant = response.headers.get("X-Variant")
    if variant:
        tally.variants[variant] += 1


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.demo_service.load",
        description="Send checkout requests from random users at a steady rate, then summarise.",
    )
    parser.add_argument("--target", default="http://127.0.0.1:8080", help="the demo service URL")
    parser.add_argument("--rps", type=float, default=50.0, help=f"requests/s, at most {MAX_RPS}")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--users", type=int, default=10_000, help="size of the user id pool")
    parser.add_argument("--seed", type=int, default=None, help="fix the user id sequence")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> LoadSummary:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Stopping early still prints the summary, which is what a caller killing us wants to read.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return await run_load(
        args.target, args.rps, args.duration, args.users, seed=args.seed, stop=stop
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    try:
        _check_bounds(args.rps, args.duration, args.users)
    except ValueError as err:
        raise SystemExit(f"load: {err}") from err
    summary = asyncio.run(_main(args))
    print(f"load against {args.target}: {summary.describe()}", flush=True)
    # A run where nothing succeeded is a failure a caller's exit-code check should see.
    sys.exit(0 if summary.ok else 1)


if __name__ == "__main__":
    main()
