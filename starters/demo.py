"""The demo stack and the demo launch: the checkout service under load, Prometheus, a worker,
and the example plan pointed at them. Used by `phasegate demo` and by the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from temporalio.client import Client

from phasegate.activities.flags import FlagdFileRouter
from phasegate.starters import launches
from phasegate.starters.local import (
    ManagedProcess,
    start_demo_service,
    start_load,
    start_prometheus,
    wait_for_first_scrape,
)
from phasegate.workflows.messages import LaunchStatus
from phasegate.workflows.plan import FlagdRouter, LaunchPlan, PrometheusTarget

FLAG_KEY = "checkout-v2"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "plans"


@dataclass
class DemoStack:
    """The running demo components; `plan_for` points a plan's targets at them."""

    workdir: Path
    flag_file: Path
    service: ManagedProcess
    prometheus: ManagedProcess
    load: ManagedProcess
    extra: list[ManagedProcess] = field(default_factory=list)

    @property
    def router(self) -> FlagdRouter:
        return FlagdRouter(flag_file=str(self.flag_file), flag_key=FLAG_KEY)

    def plan_for(self, plan: LaunchPlan) -> LaunchPlan:
        targets = plan.targets.model_copy(
            update={
                "router": plan.targets.router.model_copy(update={"flag_file": str(self.flag_file)}),
                "prometheus": PrometheusTarget(url=self.prometheus.url),
            }
        )
        return plan.model_copy(update={"targets": targets})

    def set_faults(self, *, error_rate: float = 0.0, latency_ms: int = 0) -> None:
        response = httpx.post(
            f"{self.service.url}/faults",
            json={"error_rate": error_rate, "latency_ms": latency_ms},
            timeout=5,
            trust_env=False,
        )
        response.raise_for_status()

    def wait_until_quiet(self, timeout: float = 30.0) -> None:
        """Wait until no errors remain in the analysis windows, e.g. after a fault was healed."""
        query = "sum(increase(demo_request_errors_total[15s]))"
        deadline = time.monotonic() + timeout
        while True:
            response = httpx.get(
                f"{self.prometheus.url}/api/v1/query", params={"query": query}, timeout=5, trust_env=False
            )
            result = response.json()["data"]["result"]
            if result and float(result[0]["value"][1]) == 0.0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"errors still in Prometheus' windows after {timeout:g}s: {result}")
            time.sleep(0.5)

    def reset_exposure(self) -> None:
        """Back to everyone on stable, as before any launch."""
        FlagdFileRouter().set_weight(self.router, 0.0, "")

    def stop(self) -> None:
        for process in (self.load, self.prometheus, self.service, *self.extra):
            process.stop()


@contextlib.contextmanager
def demo_stack(
    workdir: Path,
    *,
    rps: float = 40,
    duration: float = 3600,
    error_rate: float = 0.0,
    extra_scrape_targets: dict[str, list[str]] | None = None,
    prometheus_port: int | None = None,
    service_port: int | None = None,
) -> Iterator[DemoStack]:
    """Start the checkout service (everyone on stable), its load and Prometheus scraping both."""
    workdir.mkdir(parents=True, exist_ok=True)
    flag_file = workdir / "flags" / "checkout.json"
    flag_file.parent.mkdir(parents=True, exist_ok=True)
    FlagdFileRouter().set_weight(FlagdRouter(flag_file=str(flag_file), flag_key=FLAG_KEY), 0.0, "")
    started: list[ManagedProcess] = []
    try:
        service = start_demo_service(
            flag_file=flag_file,
            flag_key=FLAG_KEY,
            workdir=workdir,
            port=service_port,
            error_rate=error_rate,
        )
        started.append(service)
        targets = {"demo-service": [f"127.0.0.1:{service.port}"], **(extra_scrape_targets or {})}
        prometheus = start_prometheus(
            scrape_targets=targets, workdir=workdir / "prometheus", port=prometheus_port
        )
        started.append(prometheus)
        load = start_load(target=service.url, rps=rps, duration=duration, workdir=workdir)
        started.append(load)
        wait_for_first_scrape(prometheus)
        yield DemoStack(workdir, flag_file, service, prometheus, load)
    finally:
        for process in reversed(started):
            process.stop()


def example_plan(name: str = "checkout.yaml") -> Path:
    return EXAMPLES / name


async def auto_approve(
    client: Client,
    launch_id: str,
    approver: str,
    on_status: Callable[[LaunchStatus], None] | None = None,
    *,
    interval: float = 0.5,
) -> LaunchStatus:
    """Approve every gate as it opens until the launch finishes; returns the final status."""
    decided: set[tuple[str, str]] = set()
    while True:
        status = await launches.get_status(client, launch_id)
        if on_status is not None:
            on_status(status)
        if status.status in ("completed", "rolled_back"):
            return status
        gate = status.open_gate
        if gate is not None and (gate.gate, gate.opened_at.isoformat()) not in decided:
            decided.add((gate.gate, gate.opened_at.isoformat()))
            with contextlib.suppress(launches.DecisionError):
                await launches.decide(client, launch_id, gate.gate, approver, "approve", "auto-approved by the demo")
        await asyncio.sleep(interval)
