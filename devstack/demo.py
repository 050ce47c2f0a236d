"""The demo stack and the demo launch: the checkout service under load, Prometheus, a worker,
and the example plan pointed at them (with `authenticated`, also the identity provider and the
approval service: `devstack/authenticated_demo.py`). Used by `phasegate demo` and by the
end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from temporalio.client import Client

from activities.flags import FlagdFileRouter
from activities.limits import FileLimits, NetworkLimits, SecretLimits, WorkerLimits
from devstack import authenticated_demo
from devstack.authenticated_demo import SignInStack, start_sign_in_stack
from devstack.processes import (
    LOOPBACK,
    LocalProcessError,
    ManagedProcess,
    free_port,
    start_demo_service,
    start_load,
    start_prometheus,
    start_temporal_dev_server,
    start_worker,
    wait_for_first_scrape,
)
from devstack.secure_demo import SecureService, start_secure_demo_service
from schemas.launch_messages import LaunchStatus
from schemas.migration_cutover_spec import MigrationCutoverPhase
from schemas.plan import LaunchPlan, Phase
from schemas.targets import FlagdRouter, PrometheusTarget
from starters import launches
from workers.client import connect
from workers.settings import Settings

T = TypeVar("T")

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
        phases = [self._phase_for(phase) for phase in plan.phases]
        plan = plan.model_copy(update={"phases": phases})
        targets = plan.targets.model_copy(
            update={
                "router": plan.targets.router.model_copy(update={"flag_file": str(self.flag_file)}),
                "prometheus": PrometheusTarget(url=self.prometheus.url),
            }
        )
        return plan.model_copy(update={"targets": targets})

    def _phase_for(self, phase: Phase) -> Phase:
        """A migration's cutover flag moves into the stack's flag file, beside the launch's."""
        if not isinstance(phase, MigrationCutoverPhase) or phase.cutover.flag is None:
            return phase
        flag = phase.cutover.flag.model_copy(update={"flag_file": str(self.flag_file)})
        cutover = phase.cutover.model_copy(update={"flag": flag})
        return phase.model_copy(update={"cutover": cutover})

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
                f"{self.prometheus.url}/api/v1/query",
                params={"query": query},
                timeout=5,
                trust_env=False,
            )
            result = response.json()["data"]["result"]
            if result and float(result[0]["value"][1]) == 0.0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"errors still in Prometheus' windows after {timeout:g}s: {result}"
                )
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
    """Start the checkout service (everyone on stable), its load and Prometheus scraping both.

    `prometheus_port` and `service_port` are wishes: a port another process holds is replaced
    by a free one.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    flag_file = workdir / "flags" / "checkout.json"
    flag_file.parent.mkdir(parents=True, exist_ok=True)
    FlagdFileRouter().set_weight(FlagdRouter(flag_file=str(flag_file), flag_key=FLAG_KEY), 0.0, "")
    started: list[ManagedProcess] = []
    try:
        service = _on_preferred_ports(
            functools.partial(
                start_demo_service,
                flag_file=flag_file,
                flag_key=FLAG_KEY,
                workdir=workdir,
                error_rate=error_rate,
            ),
            port=service_port,
        )
        started.append(service)
        targets = {"demo-service": [f"127.0.0.1:{service.port}"], **(extra_scrape_targets or {})}
        prometheus = _on_preferred_ports(
            functools.partial(
                start_prometheus, scrape_targets=targets, workdir=workdir / "prometheus"
            ),
            port=prometheus_port,
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
                await launches.decide(
                    client, launch_id, gate.gate, approver, "approve", "auto-approved by the demo"
                )
        await asyncio.sleep(interval)


@dataclass
class DemoOptions:
    workdir: Path
    plan: Path
    auto_approve: bool = False
    faulty: bool = False
    keep_running: bool = False
    worker_env: dict[str, str] = field(default_factory=dict)  # e.g. a database's DSN
    # What the plan may touch beyond the demo stack (e.g. the migration's database and folders).
    worker_limits: WorkerLimits = field(default_factory=WorkerLimits)
    temporal_port: int = 7233
    ui_port: int = 8233
    prometheus_port: int = 9090
    service_port: int = 8080
    secure: bool = False  # also serve the demo over TLS and probe it (security validation)
    secure_port: int = 8443
    # People sign in at a local identity provider; decisions carry proofs from an approval service.
    authenticated: bool = False
    identity_port: int = authenticated_demo.IDENTITY_PORT
    approvals_port: int = authenticated_demo.APPROVALS_PORT


def _on_preferred_ports(start: Callable[..., T], **preferred: int | None) -> T:
    """`start(**preferred)` when all those ports are free (so the README's links work), else
    `start` on free ones: also when another process takes one between the look and the start.
    """
    if all(port is not None and _is_free(port) for port in preferred.values()):
        try:
            return start(**preferred)
        except LocalProcessError:
            if all(port is not None and _is_free(port) for port in preferred.values()):
                raise  # it failed for another reason than its ports
    return start(**dict.fromkeys(preferred))


def _is_free(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


async def run_demo(
    options: DemoOptions,
    say: Callable[[str], None],
    on_status: Callable[[LaunchStatus], None],
) -> LaunchStatus:
    """Start the dev server, the demo stack and a worker; launch the plan; follow it to the end.

    Everything it started is stopped when it returns, fails or is cancelled (as `run_stoppable`
    cancels it on a stop signal); with `keep_running` it waits for that cancellation.
    """
    server = _on_preferred_ports(
        functools.partial(start_temporal_dev_server, workdir=options.workdir),
        port=options.temporal_port,
        ui_port=options.ui_port,
    )
    settings = Settings(TEMPORAL_ADDRESS=server.address, PHASEGATE_UI_URL=server.url)
    say(
        f"Temporal dev server on {server.address}, UI at {server.url} (state in {options.workdir / 'temporal.db'})"
    )
    metrics_port = free_port()
    secure_metrics_port = free_port()
    scrape = {"phasegate-worker": [f"127.0.0.1:{metrics_port}"]}
    if options.secure:
        scrape["demo-service-tls"] = [f"127.0.0.1:{secure_metrics_port}"]
    try:
        with demo_stack(
            options.workdir / "stack",
            error_rate=0.5 if options.faulty else 0.0,
            extra_scrape_targets=scrape,
            prometheus_port=options.prometheus_port,
            service_port=options.service_port,
        ) as stack:
            fault = " with the new path failing half its requests" if options.faulty else ""
            say(
                f"demo service at {stack.service.url} under load{fault}; Prometheus at {stack.prometheus.url}"
            )
            secure = None
            if options.secure:
                secure = _on_preferred_ports(
                    functools.partial(
                        start_secure_demo_service,
                        flag_file=stack.flag_file,
                        flag_key=FLAG_KEY,
                        workdir=options.workdir / "secure",
                        metrics_port=secure_metrics_port,
                    ),
                    port=options.secure_port,
                )
                stack.extra.append(secure.process)
                say(f"the same service behind TLS at {secure.url} (CA {secure.ca_file})")
            with contextlib.ExitStack() as running:
                sign_in = _start_sign_in(options, say) if options.authenticated else None
                worker_env = dict(options.worker_env)
                if sign_in is not None:
                    running.callback(sign_in.stop)
                    stack.extra.extend(sign_in.processes)
                    worker_env.update(sign_in.worker_env(options.workdir))
                worker = start_worker(
                    address=server.address,
                    workdir=options.workdir,
                    metrics_port=metrics_port,
                    extra_env=worker_env,
                    limits=joined(demo_limits(stack, secure), options.worker_limits),
                )
                running.callback(worker.stop)
                stack.extra.append(worker)
                final = await _launch_and_follow(
                    options, settings, stack, say, on_status, secure, sign_in
                )
                if options.keep_running:
                    say(
                        f"launch {final.launch_id} {final.status.value}; everything keeps "
                        "running: press Ctrl-C to stop"
                    )
                    await asyncio.Event().wait()  # until cancelled by a stop signal
                return final
    finally:
        server.stop()


def demo_limits(stack: DemoStack, secure: SecureService | None = None) -> WorkerLimits:
    """Only what the demo's plans need: the stack's loopback servers and flag file folder, and
    with TLS the demo CA and the orders token (those files alone: a limits folder may be one
    file)."""
    return WorkerLimits(
        network=NetworkLimits(private=[f"{LOOPBACK}/32"]),
        files=FileLimits(
            flags=[str(stack.flag_file.parent)],
            read=[str(secure.ca_file)] if secure else [],
        ),
        secrets=SecretLimits(files=[str(secure.token_file)] if secure else []),
    )


def joined(*parts: WorkerLimits) -> WorkerLimits:
    """Limits allowing what any of `parts` allows (every list put together)."""

    def merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
        for key, value in extra.items():
            if isinstance(value, dict):
                merge(into.setdefault(key, {}), value)
            else:
                into[key] = [*into.get(key, []), *(v for v in value if v not in into.get(key, []))]

    merged: dict[str, Any] = {}
    for part in parts:
        merge(merged, part.model_dump(exclude_defaults=True))
    return WorkerLimits.model_validate(merged)


def _start_sign_in(options: DemoOptions, say: Callable[[str], None]) -> SignInStack:
    """The identity provider and the approval service, on the demo's ports when they are free."""
    sign_in = _on_preferred_ports(
        functools.partial(start_sign_in_stack, options.workdir / "sign-in"),
        identity_port=options.identity_port,
        approvals_port=options.approvals_port,
    )
    say(
        f"identity provider at {sign_in.provider.issuer}, approval service at "
        f"{sign_in.service.url}; the people who can sign in there:"
    )
    for line in sign_in.people():
        say(line)
    return sign_in


async def _launch_and_follow(
    options: DemoOptions,
    settings: Settings,
    stack: DemoStack,
    say: Callable[[str], None],
    on_status: Callable[[LaunchStatus], None],
    secure: SecureService | None = None,
    sign_in: SignInStack | None = None,
) -> LaunchStatus:
    plan = stack.plan_for(launches.validate_plan(options.plan))
    if secure is not None:
        plan = secure.plan_for(plan)
    client = await connect(settings)
    if sign_in is not None:
        return await authenticated_demo.launch_and_follow(
            client,
            settings,
            sign_in.plan_for(plan),
            sign_in,
            auto_approve=options.auto_approve,
            say=say,
            on_status=on_status,
        )
    handle = await launches.start_launch(client, plan, settings=settings)
    launch_id = handle.id
    say(f"launch {launch_id} started: {launches.ui_link(settings, launch_id)}")
    if options.auto_approve:
        say("--auto-approve: every gate is approved by demo-bot as it opens")
        return await auto_approve(client, launch_id, "demo-bot", on_status)
    say(
        "Approve each gate in the Temporal UI (workflow page → ⋯ → Send a Signal → `approve`, input "
        '{"gate": "<gate>", "approver": "release-manager"}) or from another terminal with '
        f"`TEMPORAL_ADDRESS={settings.temporal_address} .venv/bin/phasegate approve {launch_id} <gate> --as release-manager`"
    )
    final = None
    async for status in launches.follow_launch(client, launch_id, interval=0.5):
        on_status(status)
        final = status
    assert final is not None
    return final
