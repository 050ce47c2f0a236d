"""Many launches at once: how start rate, time to the first gate, worker memory, approval
throughput, time to completion and history size grow with the number of launches.

    python -m benchmarks.scale --launches 10 100 1000
    python -m benchmarks.scale --launches 1000 --server cluster --workers 2
    python -m benchmarks.scale --launches 1000 --workers 2 --kill-worker
    python -m benchmarks.scale --launches 1000 --cache 200      # workflow cache < launches

Each launch runs the minimal plan: one soft-launch step at 10% behind an approval gate, then
100% and promotion, on a flag file of its own (steps take no time). The server is the dev
server or the real cluster (PostgreSQL persistence, TLS, tokens from the identity provider);
the workers are 1 or 2 `phasegate-worker` processes (`benchmarks/scale_worker.py`, which also
records every activity it starts), started afresh for each launch count so each one's memory
is its own. Launches start and approvals are sent with at most `--concurrency` calls in flight.

`--kill-worker` (two workers) SIGKILLs one worker once half the approvals are in and goes on
with the other (`--replace` starts a new one in its place); the activity records then say how
many flag writes ran more than once, and every flag file is checked for 100%, promoted.

Prints a table (figures as rows, launch counts as columns, with the targets), or JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import httpx
from temporalio.client import Client, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError

from activities.flags import FlagdFileRouter, canary_weight
from activities.limits import WorkerLimits
from benchmarks.counts import launch_counts
from benchmarks.run import bench_limits, machine
from devstack.processes import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    run_stoppable,
    start_temporal_dev_server,
    stop_on_signals,
    wait_until_ready,
    write_worker_limits,
)
from schemas.plan import LaunchPlan
from schemas.targets import FlagdRouter
from starters import launches
from workers.client import connect
from workers.codec import data_converter_for
from workers.settings import WORKER_READY_LINE, Settings

REPO = Path(__file__).resolve().parents[1]
# What a worker imports; copied when the benchmark starts (see `snapshot_source`).
PACKAGES = (
    "schemas",
    "approvals",
    "workflows",
    "activities",
    "workers",
    "starters",
    "devstack",
    "benchmarks",
)
APPROVER = "bench"
GATE = "soft-launch.step-1"
SOFT_WEIGHT = 10.0
# Launches started and approvals sent at once.
CONCURRENCY = 32
# Launches whose histories are counted (they all run the same plan).
COUNTED_LAUNCHES = 5
WORKER_READY_TIMEOUT_S = 60.0
POLL_S = 0.25
# The flag writes a launch of this plan makes: soft launch, full launch, promotion.
SIDE_EFFECTS = ("set_exposure", "promote_exposure", "restore_exposure")

# The targets.
TARGET_START_RATE = 50.0
TARGET_KB_PER_WAITING = 200.0

ServerKind = Literal["dev", "cluster"]


# --- servers and workers -------------------------------------------------------------------


@dataclass
class Server:
    """A running Temporal server: how the benchmark's client and its workers reach it."""

    kind: ServerKind
    client: Client
    worker_env: Callable[[], dict[str, str]]


@asynccontextmanager
async def dev_server(workdir: Path) -> AsyncIterator[Server]:
    server = start_temporal_dev_server(workdir=workdir / "dev-server")
    try:
        client = await connect(Settings(TEMPORAL_ADDRESS=server.address))
        yield Server("dev", client, lambda: {"TEMPORAL_ADDRESS": server.address})
    finally:
        server.stop()


@asynccontextmanager
async def cluster_server(workdir: Path) -> AsyncIterator[Server]:
    # Imported here: the dev server needs none of the cluster's parts.
    from devstack.identity_provider import TEMPORAL_MACHINE_CLIENTS, start_identity_provider
    from devstack.postgres_cluster import postgres_cluster
    from devstack.temporal_cluster import temporal_cluster

    with (
        postgres_cluster(workdir / "postgres") as postgres,
        start_identity_provider(
            workdir / "identity", machine_clients=TEMPORAL_MACHINE_CLIENTS
        ) as provider,
        temporal_cluster(workdir / "cluster", postgres, provider) as cluster,
    ):
        client = await Client.connect(
            cluster.address,
            namespace=cluster.namespace,
            tls=cluster.tls_config(),
            api_key=cluster.token("phasegate-worker"),
            data_converter=data_converter_for(Settings()),
        )
        yield Server("cluster", client, lambda: cluster.client_env("phasegate-worker"))


def snapshot_source(workdir: Path) -> Path:
    """A copy of Phasegate's packages as they are now, for the workers to import: the workflow
    sandbox reads workflow modules again for each run, so a tree edited during a long run
    would otherwise change (or break) the code being measured half-way."""
    source = workdir / "source"
    for package in PACKAGES:
        shutil.copytree(
            REPO / package,
            source / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.go", "go.*", "data"),
        )
    return source


@dataclass(frozen=True)
class WorkerFiles:
    """What every worker of a run shares: the sealing key and the source it imports."""

    key_file: Path
    source: Path

    @property
    def digest(self) -> str:
        """12 hex digits naming the workflow, activity and worker code the workers ran."""
        hashed = hashlib.sha256()
        for package in ("workflows", "activities", "workers"):
            for path in sorted((self.source / package).rglob("*.py")):
                hashed.update(path.relative_to(self.source).as_posix().encode())
                hashed.update(path.read_bytes())
        return hashed.hexdigest()[:12]


@dataclass
class Worker:
    process: ManagedProcess
    record: Path

    @property
    def pid(self) -> int:
        return self.process.process.pid


def start_scale_worker(
    server: Server,
    workdir: Path,
    *,
    task_queue: str,
    limits: WorkerLimits,
    files: WorkerFiles,
    cache: int | None,
) -> Worker:
    """One worker process (`benchmarks.scale_worker`), ready when it polls `task_queue`."""
    workdir.mkdir(parents=True, exist_ok=True)
    metrics_port = free_port()
    record = workdir / "activities.jsonl"
    env = {
        **server.worker_env(),
        # Ahead of the editable install's finder, so the copy in `source` is what runs.
        "PYTHONPATH": str(files.source),
        "PHASEGATE_TASK_QUEUE": task_queue,
        "PHASEGATE_METRICS_ADDRESS": f"{LOOPBACK}:{metrics_port}",
        "PHASEGATE_WORKER_LIMITS": str(write_worker_limits(workdir, limits)),
        "PHASEGATE_WORKER_KEY_FILE": str(files.key_file),
        **({"PHASEGATE_MAX_CACHED_WORKFLOWS": str(cache)} if cache is not None else {}),
    }
    log_path = workdir / "worker.log"
    process = ManagedProcess(
        "worker",
        [sys.executable, "-m", "benchmarks.scale_worker", "--record", str(record)],
        workdir=workdir,
        port=metrics_port,
        url=f"http://{LOOPBACK}:{metrics_port}/metrics",
        env=env,
    )
    wait_until_ready(
        process,
        lambda: WORKER_READY_LINE in log_path.read_text(errors="replace"),
        WORKER_READY_TIMEOUT_S,
    )
    return Worker(process, record)


def cache_metrics(workers: Sequence[Worker]) -> dict[str, float]:
    """The workers' workflow cache, summed from the SDK's Prometheus metrics: runs cached now
    and runs evicted to make room (each replays from its history when its next task comes)."""
    found = {"cached": 0.0, "forced_evictions": 0.0}
    names = {
        "sticky_cache_size": "cached",
        "sticky_cache_total_forced_eviction": "forced_evictions",
    }
    for worker in workers:
        if not worker.process.running:
            continue
        try:
            text = httpx.get(worker.process.url, timeout=5).text
        except httpx.HTTPError:
            continue
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            metric, value = line.rsplit(" ", 1)
            name = metric.split("{", 1)[0].removeprefix("temporal_")
            if name in names:
                found[names[name]] += float(value)
    return found


def rss_kb(pid: int) -> int:
    """The resident set of process `pid` in KiB (VmRSS), 0 once it has ended."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --- the plan ------------------------------------------------------------------------------


def scale_plan(service: str, flag_file: Path) -> LaunchPlan:
    """One soft-launch step at 10% behind an approval, then 100%: nothing to wait for but the
    flag file and the approver."""
    return LaunchPlan.model_validate(
        {
            "service": service,
            "version": "1.0.0",
            "targets": {
                "router": {"kind": "flagd", "flag_file": str(flag_file), "flag_key": service}
            },
            "approvals": {"identity": "none", "approvers": [APPROVER], "timeout": "2h"},
            "phases": [
                {
                    "name": "soft-launch",
                    "kind": "soft_launch",
                    "steps": [{"weight": SOFT_WEIGHT, "approval": True}],
                },
                {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
            ],
        }
    )


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Options:
    server: ServerKind = "dev"
    workers: int = 1
    kill_worker: bool = False
    replace: bool = False
    cache: int | None = None
    concurrency: int = CONCURRENCY
    # Each launch count's run ends by then (seconds from its workers' start): a stage still
    # going is cut short and its figure left empty, what was not finished counts as an error.
    budget_s: float = 840.0
    # The warm-up launches' allowance.
    warm_up_s: float = 120.0


@dataclass
class Figures:
    """What one run of `launches` launches measured; None where the stage did not finish."""

    launches: int
    server: str
    workers: int
    cache: int | None
    load_before: float
    source: str = ""
    load_after: float = 0.0
    start_s: float = 0.0
    start_rate: float = 0.0
    all_waiting_s: float | None = None
    waiting_reached: int = 0
    rss_idle_kb: int = 0
    rss_waiting_kb: int = 0
    kb_per_waiting: float = 0.0
    approve_s: float | None = None
    approval_rate: float = 0.0
    approvals_refused: int = 0
    complete_s: float | None = None
    completed: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    flags_wrong: int = 0
    rss_end_kb: int = 0
    events_per_launch: int = 0
    workflow_tasks_per_launch: int = 0
    cache_waiting: dict[str, float] = field(default_factory=dict)
    cache_end: dict[str, float] = field(default_factory=dict)
    killed_worker: dict[str, Any] | None = None
    side_effects: dict[str, Any] = field(default_factory=dict)


async def bounded(concurrency: int, calls: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Await every call with at most `concurrency` in flight."""
    pending = iter(calls)

    async def lane() -> None:
        for call in pending:
            await call()

    await asyncio.gather(*(lane() for _ in range(min(concurrency, len(calls)))))


async def count(client: Client, query: str) -> int:
    return (await client.count_workflows(query)).count


async def wait_for_count(
    client: Client, query: str, target: int, within: float
) -> tuple[float | None, int]:
    """Seconds until `query` counts `target` workflows (None past `within`), and the count."""
    started = time.perf_counter()
    seen = 0
    while time.perf_counter() - started < within:
        seen = await count(client, query)
        if seen >= target:
            return time.perf_counter() - started, seen
        await asyncio.sleep(POLL_S)
    return None, seen


def total_rss(workers: Sequence[Worker]) -> int:
    return sum(rss_kb(w.pid) for w in workers if w.process.running)


async def settle_rss(workers: Sequence[Worker]) -> int:
    """RSS once it stops moving (the worker may still be finishing tasks)."""
    last = total_rss(workers)
    for _ in range(20):
        await asyncio.sleep(0.5)
        now = total_rss(workers)
        if abs(now - last) < 512:
            return now
        last = now
    return last


async def run_launches(
    server: Server, workdir: Path, number: int, options: Options, files: WorkerFiles
) -> Figures:
    client = server.client
    tag = uuid.uuid4().hex[:6]
    service = f"scale-{number}-{tag}"
    task_queue = f"phasegate-scale-{tag}"
    settings = Settings(task_queue=task_queue)
    flags = workdir / f"flags-{tag}"
    flags.mkdir()
    limits = bench_limits(flags)
    figures = Figures(
        number, server.kind, options.workers, options.cache, os.getloadavg()[0], files.digest
    )
    deadline = time.perf_counter() + options.budget_s

    def left() -> float:
        return max(deadline - time.perf_counter(), 1.0)

    workers = [
        start_scale_worker(
            server,
            workdir / f"worker-{tag}-{n}",
            task_queue=task_queue,
            limits=limits,
            files=files,
            cache=options.cache,
        )
        for n in range(1, options.workers + 1)
    ]
    try:
        # Warm-up: every worker has run a launch (imports, sandbox, connections) before the
        # idle memory is read.
        await warm_up(client, settings, flags, service, 2 * options.workers, options)
        figures.rss_idle_kb = await settle_rss(workers)

        plans = {
            launches.new_launch_id(plan := scale_plan(service, flags / f"{n}.json")): plan
            for n in range(number)
        }

        async def start(launch_id: str, plan: LaunchPlan) -> None:
            await launches.start_launch(client, plan, settings=settings, launch_id=launch_id)

        first_start = time.perf_counter()
        await bounded(options.concurrency, [partial(start, i, p) for i, p in plans.items()])
        figures.start_s = time.perf_counter() - first_start
        figures.start_rate = number / figures.start_s
        waiting = launches.launch_query(service=service, status="waiting")
        waited, figures.waiting_reached = await wait_for_count(client, waiting, number, left())
        if waited is not None:
            figures.all_waiting_s = time.perf_counter() - first_start
        figures.rss_waiting_kb = await settle_rss(workers)
        figures.kb_per_waiting = (figures.rss_waiting_kb - figures.rss_idle_kb) / number
        figures.cache_waiting = await asyncio.to_thread(cache_metrics, workers)

        killer = WorkerKiller(workers, number // 2) if options.kill_worker else None
        first_approval = time.perf_counter()
        refused: list[str] = []

        async def approve(launch_id: str) -> None:
            try:
                await launches.decide(client, launch_id, GATE, APPROVER, "approve")
            except (
                launches.LaunchError,
                RPCError,
                WorkflowUpdateRPCTimeoutOrCancelledError,
            ) as err:
                # The SDK reports a cancelled update as this error: a run cut short (or
                # stopped) must end here, not go on to the next approval.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from err
                refused.append(f"{launch_id}: {type(err).__name__}: {err}")
            if killer is not None:
                await killer.approved(server, workdir, task_queue, limits, files, options)

        try:
            await asyncio.wait_for(
                bounded(options.concurrency, [partial(approve, i) for i in plans]), left()
            )
            figures.approve_s = time.perf_counter() - first_approval
            figures.approval_rate = number / figures.approve_s
        except TimeoutError:
            refused.append(f"approvals cut short after {options.budget_s:g} s")
        figures.approvals_refused = len(refused)
        figures.error_samples.extend(refused[:5])
        if killer is not None:
            figures.killed_worker = killer.report
            workers = [*workers, *killer.replacements]

        closed = f"{launches.launch_query(service=service)} AND ExecutionStatus != 'Running'"
        done, _ = await wait_for_count(client, closed, number, left())
        if done is not None:
            figures.complete_s = time.perf_counter() - first_approval
        figures.rss_end_kb = total_rss(workers)
        figures.cache_end = await asyncio.to_thread(cache_metrics, workers)
        await outcomes(client, plans, closed, figures, options)
        figures.side_effects = side_effects(workers, set(plans))
        figures.flags_wrong = wrong_flags(plans, limits)
        await history_counts(client, list(plans), figures)
    finally:
        for worker in workers:
            worker.process.stop()
        figures.load_after = os.getloadavg()[0]
    return figures


async def warm_up(
    client: Client,
    settings: Settings,
    flags: Path,
    service: str,
    count_: int,
    options: Options,
) -> None:
    handles = [
        await launches.start_launch(
            client, scale_plan(f"{service}-warm", flags / f"warm-{n}.json"), settings=settings
        )
        for n in range(count_)
    ]
    query = launches.launch_query(service=f"{service}-warm", status="waiting")
    seconds, _ = await wait_for_count(client, query, count_, options.warm_up_s)
    if seconds is None:
        raise RuntimeError("warm-up launches did not reach their gate: is the worker running?")
    for handle in handles:
        await launches.decide(client, handle.id, GATE, APPROVER, "approve")
    for handle in handles:
        await asyncio.wait_for(handle.result(), options.warm_up_s)


@dataclass
class WorkerKiller:
    """SIGKILLs the first worker once `after` approvals are in (and starts a replacement when
    asked); `report` says when and what it held."""

    workers: list[Worker]
    after: int
    approvals: int = 0
    report: dict[str, Any] | None = None
    replacements: list[Worker] = field(default_factory=list)

    async def approved(
        self,
        server: Server,
        workdir: Path,
        task_queue: str,
        limits: WorkerLimits,
        files: WorkerFiles,
        options: Options,
    ) -> None:
        self.approvals += 1
        if self.approvals != self.after:
            return
        victim = self.workers[0]
        rss = rss_kb(victim.pid)
        in_flight = activities_in_flight(victim.record)
        victim.process.kill()
        self.report = {
            "after_approvals": self.approvals,
            "pid": victim.pid,
            "rss_kb": rss,
            "activities_in_flight": in_flight,
            "replaced": options.replace,
        }
        if options.replace:
            replacement = await asyncio.to_thread(
                start_scale_worker,
                server,
                workdir / f"worker-replacement-{uuid.uuid4().hex[:6]}",
                task_queue=task_queue,
                limits=limits,
                files=files,
                cache=options.cache,
            )
            self.replacements.append(replacement)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The lines a worker wrote; a last line cut short by a kill is skipped."""
    found: list[dict[str, Any]] = []
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


def activities_in_flight(path: Path) -> int:
    started: Counter[tuple[str, str, int]] = Counter()
    for r in read_records(path):
        key = (r["workflow"], r["activity"], r["attempt"])
        started[key] += 1 if r["event"] == "start" else -1
    return sum(1 for v in started.values() if v > 0)


def side_effects(workers: Sequence[Worker], launch_ids: set[str]) -> dict[str, Any]:
    """Flag writes per (launch, activity, weight) across every worker, and which ran twice."""
    starts: Counter[tuple[str, str, float]] = Counter()
    for worker in workers:
        for r in read_records(worker.record):
            if (
                r["event"] == "start"
                and r["activity"] in SIDE_EFFECTS
                and r["launch"] in launch_ids
            ):
                starts[(r["launch"], r["activity"], float(r["weight"] or 0))] += 1
    repeated = {key: n for key, n in starts.items() if n > 1}
    return {
        "flag_writes": sum(starts.values()),
        "flag_writes_per_launch": round(sum(starts.values()) / max(len(launch_ids), 1), 3),
        "ran_more_than_once": len(repeated),
        "repeated": [
            {"launch": k[0], "activity": k[1], "weight": k[2], "times": n}
            for k, n in sorted(repeated.items())[:10]
        ],
    }


def wrong_flags(plans: dict[str, LaunchPlan], limits: WorkerLimits) -> int:
    """Launches whose flag does not end at 100%, promoted."""
    router = FlagdFileRouter(limits)
    wrong = 0
    for plan in plans.values():
        spec = plan.targets.router
        assert isinstance(spec, FlagdRouter)
        definition = router.snapshot(spec).definition or {}
        promoted = definition.get("metadata", {}).get("promoted") is True
        if canary_weight(definition, spec) != 100.0 or not promoted:
            wrong += 1
    return wrong


async def outcomes(
    client: Client, plans: dict[str, LaunchPlan], closed: str, figures: Figures, options: Options
) -> None:
    """How each launch ended; the ones still running (visibility query `closed` does not list
    them) are not asked, since only a busy worker could answer."""
    finished = {execution.id async for execution in client.list_workflows(closed)}
    statuses: Counter[str] = Counter()
    running = [launch_id for launch_id in plans if launch_id not in finished]
    if running:
        figures.error_samples.append(f"{len(running)} launches still running, e.g. {running[0]}")

    async def result(launch_id: str) -> None:
        try:
            status = await asyncio.wait_for(launches.get_status(client, launch_id), 30)
            statuses[status.status.value] += 1
            if status.status.value != "completed" and len(figures.error_samples) < 5:
                figures.error_samples.append(f"{launch_id}: {status.status.value} {status.reason}")
        except (launches.LaunchError, RPCError, TimeoutError) as err:
            statuses["unknown"] += 1
            if len(figures.error_samples) < 5:
                figures.error_samples.append(f"{launch_id}: {err or 'no answer'}")

    await bounded(options.concurrency, [partial(result, i) for i in plans if i in finished])
    figures.completed = statuses["completed"]
    figures.errors = len(plans) - figures.completed


async def history_counts(client: Client, launch_ids: list[str], figures: Figures) -> None:
    counted = [
        (await launch_counts(client, launch_id))["total"]
        for launch_id in launch_ids[:COUNTED_LAUNCHES]
    ]
    figures.events_per_launch = statistics.median_low(c.events for c in counted)
    figures.workflow_tasks_per_launch = statistics.median_low(c.workflow_tasks for c in counted)


# --- the whole run -------------------------------------------------------------------------


@asynccontextmanager
async def running_server(kind: ServerKind, workdir: Path) -> AsyncIterator[Server]:
    async with (dev_server if kind == "dev" else cluster_server)(workdir) as server:
        yield server


async def measure(
    counts: Sequence[int],
    options: Options,
    on_figures: Callable[[Figures], None] | None = None,
    *,
    workdir: Path | None = None,
) -> list[Figures]:
    """Run each launch count in turn on one server, fresh workers for each; servers, worker
    logs and activity records live in `workdir` (default: a new temporary folder, kept)."""
    if options.kill_worker and options.workers < 2:
        raise ValueError("--kill-worker needs --workers 2: someone must carry on")
    measured: list[Figures] = []
    workdir = workdir or Path(tempfile.mkdtemp(prefix="phasegate-scale-"))
    key_file = workdir / "worker.key"
    key_file.write_text(secrets.token_hex(32) + "\n")
    key_file.chmod(0o600)
    files = WorkerFiles(key_file, snapshot_source(workdir))
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(running_server(options.server, workdir))
        for number in counts:
            figures = await run_launches(server, workdir, number, options, files)
            measured.append(figures)
            if on_figures is not None:
                on_figures(figures)
    return measured


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def table(measured: Sequence[Figures], options: Options) -> str:
    """Markdown: one row per figure, one column per launch count, then target and verdict."""
    if not measured:
        return ""
    largest = measured[-1]
    rows: list[tuple[str, list[str], str, str]] = []

    def row(name: str, values: list[str], target: str = "", verdict: bool | None = None) -> None:
        mark = "" if verdict is None else ("met" if verdict else "missed")
        rows.append((name, values, target, mark))

    row(
        "launches started /s",
        [_fmt(f.start_rate) for f in measured],
        f">= {TARGET_START_RATE:g}",
        min(f.start_rate for f in measured) >= TARGET_START_RATE,
    )
    row("s until all wait at the gate", [_fmt(f.all_waiting_s) for f in measured])
    row("worker RSS idle, MiB", [_fmt(f.rss_idle_kb / 1024) for f in measured])
    row("worker RSS, all waiting, MiB", [_fmt(f.rss_waiting_kb / 1024) for f in measured])
    big = [f for f in measured if f.launches >= 100] or list(measured)
    row(
        "KiB per waiting launch",
        [_fmt(f.kb_per_waiting, 0) for f in measured],
        f"< {TARGET_KB_PER_WAITING:g}",
        all(f.kb_per_waiting < TARGET_KB_PER_WAITING for f in big),
    )
    row("approvals /s", [_fmt(f.approval_rate) for f in measured])
    row("s from first approval to all complete", [_fmt(f.complete_s) for f in measured])
    row(
        "errors (not completed)",
        [str(f.errors) for f in measured],
        "0",
        all(f.errors == 0 and f.flags_wrong == 0 for f in measured),
    )
    row("flags not at 100% at the end", [str(f.flags_wrong) for f in measured])
    row(
        "workflow runs cached, all waiting",
        [_fmt(f.cache_waiting.get("cached"), 0) for f in measured],
    )
    row(
        "cache evictions to make room (by the end)",
        [_fmt(f.cache_end.get("forced_evictions"), 0) for f in measured],
    )
    row("history events per launch (median)", [str(f.events_per_launch) for f in measured])
    row("workflow tasks per launch (median)", [str(f.workflow_tasks_per_launch) for f in measured])
    row(
        "flag writes per launch",
        [str(f.side_effects.get("flag_writes_per_launch", "—")) for f in measured],
    )
    row(
        "flag writes that ran twice",
        [str(f.side_effects.get("ran_more_than_once", "—")) for f in measured],
    )
    if options.cache is not None:
        row(
            "worker RSS at the end, MiB",
            [_fmt(f.rss_end_kb / 1024) for f in measured],
        )
    row("code (workflows, activities, workers)", [f.source for f in measured])
    row(
        "load average (1 min) before / after",
        [f"{f.load_before:.1f} / {f.load_after:.1f}" for f in measured],
    )
    header = ["", *(f"N = {f.launches:,}" for f in measured), "target", ""]
    lines = [
        f"{options.server} server, {options.workers} worker(s)"
        + (f", workflow cache {options.cache}" if options.cache is not None else "")
        + (", one worker SIGKILLed mid-load" if options.kill_worker else "")
        + f" (largest run: {largest.launches:,} launches)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += [
        "| " + " | ".join([name, *values, target, mark]) + " |"
        for name, values, target, mark in rows
    ]
    for f in measured:
        if f.killed_worker is not None:
            lines.append("")
            lines.append(f"N = {f.launches:,}: killed worker {f.killed_worker}")
        if f.side_effects.get("repeated"):
            lines.append(f"N = {f.launches:,}: repeated flag writes {f.side_effects['repeated']}")
        if f.error_samples:
            lines.append(f"N = {f.launches:,}: errors {f.error_samples}")
    return "\n".join(lines)


def as_json(measured: Sequence[Figures], options: Options) -> dict[str, Any]:
    return {
        "machine": machine(),
        "options": asdict(options),
        "targets": {
            "start_rate_min": TARGET_START_RATE,
            "kb_per_waiting_max": TARGET_KB_PER_WAITING,
            "errors": 0,
        },
        "runs": [asdict(f) for f in measured],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--launches", type=int, nargs="+", required=True, metavar="N")
    parser.add_argument("--server", choices=("dev", "cluster"), default="dev")
    parser.add_argument("--workers", type=int, choices=(1, 2), default=1)
    parser.add_argument("--kill-worker", action="store_true", help="SIGKILL one worker mid-load")
    parser.add_argument("--replace", action="store_true", help="start a worker in its place")
    parser.add_argument("--cache", type=int, help="PHASEGATE_MAX_CACHED_WORKFLOWS for workers")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument(
        "--budget", type=float, default=840.0, help="seconds each launch count may take"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.launches):
        parser.error("--launches: each N must be at least 1")
    if args.kill_worker and args.workers < 2:
        parser.error("--kill-worker needs --workers 2")
    if args.cache is not None and args.cache < 0:
        parser.error("--cache: must be 0 or more")
    options = Options(
        server=args.server,
        workers=args.workers,
        kill_worker=args.kill_worker,
        replace=args.replace,
        cache=args.cache,
        concurrency=args.concurrency,
        budget_s=args.budget,
    )

    def progress(figures: Figures) -> None:
        print(f"N={figures.launches}: {json.dumps(figures.__dict__, default=str)}", file=sys.stderr)

    with stop_on_signals("benchmarks.scale"):
        measured = run_stoppable(measure(args.launches, options, progress))
    if args.json:
        json.dump(as_json(measured, options), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(table(measured, options))


if __name__ == "__main__":
    main()
