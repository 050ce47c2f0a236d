"""The checkout demo against real processes: flag routing, stickiness, faults and scraping."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.demo_service.load import run_load
from devstack.processes import (
    BinaryNotFoundError,
    ManagedProcess,
    start_demo_service,
    start_load,
    start_prometheus,
    wait_for_first_scrape,
)

pytestmark = pytest.mark.integration

FLAG_KEY = "checkout-v2"
# Long enough for the 200 ms file poll plus a loaded machine; short enough to fail fast.
PICKUP_TIMEOUT_S = 5.0
PROBE_USERS = [f"probe-{n}" for n in range(64)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def write_flag(path: Path, canary_percent: float) -> None:
    """The flag as Phasegate's router writes it: integer thousandths of a percent, atomically."""
    canary = round(canary_percent * 1000)
    document = {
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": {
            FLAG_KEY: {
                "state": "ENABLED",
                "variants": {"stable": "stable", "canary": "canary"},
                "defaultVariant": "stable",
                "targeting": {"fractional": [["canary", canary], ["stable", 100_000 - canary]]},
            }
        },
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document))
    os.replace(temporary, path)


async def variants_of(
    http: httpx.AsyncClient, service: ManagedProcess, users: Sequence[str]
) -> dict[str, str]:
    async def one(user: str) -> str:
        response = await http.get(f"{service.url}/checkout", params={"user": user})
        response.raise_for_status()
        variant: str = response.json()["variant"]
        return variant

    return dict(zip(users, await asyncio.gather(*(one(user) for user in users)), strict=True))


async def wait_for_canary_share(
    http: httpx.AsyncClient, service: ManagedProcess, low: float, high: float
) -> None:
    """Wait until the service routes a share of the probe users in [low, high] to canary."""
    share = -1.0
    deadline = asyncio.get_running_loop().time() + PICKUP_TIMEOUT_S
    while asyncio.get_running_loop().time() < deadline:
        variants = await variants_of(http, service, PROBE_USERS)
        share = sum(v == "canary" for v in variants.values()) / len(variants)
        if low <= share <= high:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"canary share stayed at {share:.2f}, not in [{low}, {high}], after a flag change")


async def scrape(http: httpx.AsyncClient, service: ManagedProcess) -> Samples:
    response = await http.get(f"{service.url}/metrics")
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def prometheus_value(http: httpx.AsyncClient, prometheus: ManagedProcess, expr: str) -> float:
    response = await http.get(f"{prometheus.url}/api/v1/query", params={"query": expr})
    response.raise_for_status()
    result = response.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else float("nan")


async def wait_for_prometheus(
    http: httpx.AsyncClient, prometheus: ManagedProcess, expected: dict[str, float]
) -> None:
    """Wait until each query returns its expected value, i.e. a scrape after the load ended."""
    seen: dict[str, float] = {}
    deadline = asyncio.get_running_loop().time() + 15
    while asyncio.get_running_loop().time() < deadline:
        seen = {expr: await prometheus_value(http, prometheus, expr) for expr in expected}
        if seen == expected:
            return
        await asyncio.sleep(0.25)
    pytest.fail(f"Prometheus answered {seen}, expected {expected}")


@pytest.fixture(scope="module")
def shared_flag_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flags") / "flags.json"
    write_flag(path, 0)
    return path


@pytest.fixture(scope="module")
def shared_service(
    shared_flag_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    workdir = tmp_path_factory.mktemp("demo-service")
    with start_demo_service(flag_file=shared_flag_file, flag_key=FLAG_KEY, workdir=workdir) as svc:
        yield svc


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # A few connections go further than many: client and service share the test machine's CPUs.
    limits = httpx.Limits(max_connections=10)
    async with httpx.AsyncClient(timeout=10, trust_env=False, limits=limits) as client:
        yield client


async def test_prometheus_sees_only_stable_at_zero_then_both_at_fifty(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    flag_file = tmp_path / "flags.json"
    write_flag(flag_file, 0)
    with start_demo_service(flag_file=flag_file, flag_key=FLAG_KEY, workdir=tmp_path) as service:
        try:
            prometheus = start_prometheus(
                scrape_targets={"demo-service": [f"127.0.0.1:{service.port}"]},
                workdir=tmp_path / "prometheus",
            )
        except BinaryNotFoundError as err:
            pytest.fail(f"{err} (deploy/setup.sh installs it)")
        with prometheus:
            at_zero = await run_load(service.url, rps=100, duration=3, users=10_000)
            assert at_zero.sent > 0
            assert at_zero.errors == 0
            await asyncio.to_thread(wait_for_first_scrape, prometheus)
            stable = 'sum(demo_requests_total{variant="stable"})'
            canary = 'sum(demo_requests_total{variant="canary"})'
            await wait_for_prometheus(http, prometheus, {stable: float(at_zero.sent), canary: 0.0})

            write_flag(flag_file, 50)
            await wait_for_canary_share(http, service, 0.2, 0.8)
            at_fifty = await run_load(service.url, rps=100, duration=2, users=10_000)
            assert at_fifty.variants.get("canary", 0) > 0
            assert at_fifty.variants.get("stable", 0) > 0

            # Once it scrapes again, Prometheus must agree with the service's own counters
            # (which include the probe requests that detected the flag change).
            counters = await scrape(http, service)
            await wait_for_prometheus(
                http,
                prometheus,
                {
                    stable: sample(counters, "demo_requests_total", variant="stable", code="200"),
                    canary: sample(counters, "demo_requests_total", variant="canary", code="200"),
                },
            )


async def test_same_user_same_variant_and_canary_users_stay_as_share_grows(
    shared_service: ManagedProcess, shared_flag_file: Path, http: httpx.AsyncClient
) -> None:
    users = [f"user-{n}" for n in range(200)]

    write_flag(shared_flag_file, 20)
    await wait_for_canary_share(http, shared_service, 0.05, 0.4)
    at_twenty = await variants_of(http, shared_service, users)

    write_flag(shared_flag_file, 50)
    await wait_for_canary_share(http, shared_service, 0.3, 0.7)
    rounds = [await variants_of(http, shared_service, users) for _ in range(2)]

    assert rounds[0] == rounds[1], "a user switched variant between requests"
    share = sum(v == "canary" for v in rounds[0].values()) / len(users)
    # Bucketing hashes fixed user ids, so this bound is deterministic, not a flaky sample.
    assert 0.38 <= share <= 0.62
    canary_at_twenty = {user for user, variant in at_twenty.items() if variant == "canary"}
    canary_at_fifty = {user for user, variant in rounds[0].items() if variant == "canary"}
    assert 0 < len(canary_at_twenty) < len(canary_at_fifty)
    assert canary_at_twenty <= canary_at_fifty, "growing the share moved users back to stable"


async def test_injected_faults_show_in_canary_metrics_only(
    shared_service: ManagedProcess, shared_flag_file: Path, http: httpx.AsyncClient
) -> None:
    write_flag(shared_flag_file, 50)
    await wait_for_canary_share(http, shared_service, 0.3, 0.7)
    response = await http.post(
        f"{shared_service.url}/faults", json={"error_rate": 0.3, "latency_ms": 100}
    )
    assert response.status_code == 200
    try:
        current = (await http.get(f"{shared_service.url}/faults")).json()
        assert current == {"error_rate": 0.3, "latency_ms": 100}

        before = await scrape(http, shared_service)
        summary = await run_load(shared_service.url, rps=200, duration=3, users=100_000)
        after = await scrape(http, shared_service)
    finally:
        await http.post(f"{shared_service.url}/faults", json={"error_rate": 0, "latency_ms": 0})

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    canary_total = delta("demo_requests_total", variant="canary", code="200") + delta(
        "demo_requests_total", variant="canary", code="500"
    )
    canary_errors = delta("demo_request_errors_total", variant="canary")
    assert canary_total > 150
    assert canary_errors == delta("demo_requests_total", variant="canary", code="500")
    assert 0.2 <= canary_errors / canary_total <= 0.4
    assert delta("demo_request_errors_total", variant="stable") == 0
    assert summary.errors == canary_errors

    def mean_duration(variant: str) -> float:
        seconds = delta("demo_request_duration_seconds_sum", variant=variant)
        return seconds / delta("demo_request_duration_seconds_count", variant=variant)

    assert mean_duration("canary") >= 0.1
    assert mean_duration("stable") < 0.05


@pytest.mark.parametrize(
    ("payload", "explains"),
    [
        ({"error_rate": 1.5}, "error_rate must be between 0 and 1"),
        ({"error_rate": -0.1}, "error_rate must be between 0 and 1"),
        ({"error_rate": "high"}, "error_rate must be a number"),
        ({"latency_ms": 10_001}, "latency_ms must be between 0 and 10000"),
        ({"latency_ms": -5}, "latency_ms must be between 0 and 10000"),
        ({"errorRate": 0.1}, "unknown fields ['errorRate']"),
        ([0.3, 150], "body must be a JSON object"),
    ],
)
async def test_invalid_faults_are_refused_with_a_reason(
    shared_service: ManagedProcess,
    http: httpx.AsyncClient,
    payload: object,
    explains: str,
) -> None:
    before = (await http.get(f"{shared_service.url}/faults")).json()

    response = await http.post(f"{shared_service.url}/faults", json=payload)

    assert response.status_code == 422
    assert explains in response.json()["error"]
    assert (await http.get(f"{shared_service.url}/faults")).json() == before


async def test_missing_then_broken_flag_file_keeps_serving(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    flag_file = tmp_path / "not-yet" / "flags.json"
    with start_demo_service(flag_file=flag_file, flag_key=FLAG_KEY, workdir=tmp_path) as service:
        health = (await http.get(f"{service.url}/healthz")).json()
        assert health["status"] == "ok"
        assert set((await variants_of(http, service, PROBE_USERS)).values()) == {"stable"}

        flag_file.parent.mkdir()
        write_flag(flag_file, 100)
        await wait_for_canary_share(http, service, 1.0, 1.0)
        assert (await http.get(f"{service.url}/healthz")).json()["flag_provider"] == "READY"

        # A non-atomic writer caught mid-write: the last good flags stay in force.
        flag_file.write_text('{"flags": {"checkout-v2": {"state": ')
        await asyncio.sleep(0.6)
        assert set((await variants_of(http, service, PROBE_USERS)).values()) == {"canary"}

        write_flag(flag_file, 0)
        await wait_for_canary_share(http, service, 0.0, 0.0)


def test_load_command_sends_the_bounded_number_of_requests(
    shared_service: ManagedProcess, tmp_path: Path
) -> None:
    with start_load(
        target=shared_service.url, rps=20, duration=1, workdir=tmp_path, users=50
    ) as load:
        assert load.wait(timeout=20) == 0
        summary_line = load.log_tail(lines=1)

    assert "sent=20 ok=20 errors=0" in summary_line
