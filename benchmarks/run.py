"""Phasegate's three launch figures, measured on a real dev server; prints one JSON document.

    python -m benchmarks.run            # the full run (a few minutes)
    python -m benchmarks.run --quick    # fewer rounds, for a smoke check

- orchestration overhead: a launch whose steps hit instant targets (a flag file) against a bare
  workflow running the same number of no-op activities, same server, worker and process;
- approval latency: `approve` signal sent -> the next activity started, p50/p99, against a bare
  workflow that waits for a signal and then runs a no-op activity;
- rollback reaction: fault injected into the demo service -> exposure back to 0, against the
  budget scrape interval + 2 x analysis interval + 2 s.

Next to the times, what they are spent on (`benchmarks/counts.py`): workflow tasks, history
events, signals and activities per launch and per approval, against the same baselines.

Figures are medians over rounds interleaved with their baselines, so a noisy neighbour
slows both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import temporalio
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor, Worker

from activities.flags import FlagdFileRouter
from activities.limits import FileLimits, NetworkLimits, WorkerLimits
from benchmarks.baseline import SequenceWorkflow, SignalThenActivityWorkflow, noop
from benchmarks.counts import (
    Counts,
    count_events,
    launch_counts,
    launch_histories,
    signal_to_activity,
    signals_named,
    updates_taken,
)
from devstack.demo import demo_stack, example_plan
from devstack.processes import start_temporal_dev_server
from schemas.launch_messages import LaunchStatus
from schemas.plan import LaunchPlan, load_plan
from starters import launches
from workers.client import connect
from workers.main import WORKFLOW_RUNNER, WORKFLOWS, activities
from workers.sealing import SealInterceptor, load_keys
from workers.settings import Settings
from workflows.launch import LaunchWorkflow

TASK_QUEUE = "phasegate-bench"
APPROVER = "bench"
# The demo's Prometheus scrapes every second (deploy/prometheus/prometheus.yml).
SCRAPE_INTERVAL_S = 1.0
ANALYSIS_INTERVAL_S = 1.0


@dataclass
class ActivityStarts:
    """When each activity began executing on this worker (perf_counter seconds)."""

    times: list[float] = field(default_factory=list)

    def first_after(self, moment: float) -> float | None:
        later = [t for t in self.times if t > moment]
        return min(later) if later else None


class RecordStarts(Interceptor):
    def __init__(self, starts: ActivityStarts) -> None:
        self._starts = starts

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        starts = self._starts

        class Recorder(ActivityInboundInterceptor):
            async def execute_activity(self, input: ExecuteActivityInput) -> Any:
                starts.times.append(time.perf_counter())
                return await super().execute_activity(input)

        return Recorder(next)


# --- plans ------------------------------------------------------------------------------


def instant_plan(flag_file: Path, soft_steps: int, full_steps: int, *, gated: bool) -> LaunchPlan:
    """Steps with nothing to wait for but the flag file, optionally each behind an approval."""
    soft = [{"weight": n, "approval": True if gated else None} for n in range(1, soft_steps + 1)]
    full = [
        {"weight": 100 - 10 * (full_steps - n), "approval": None} for n in range(1, full_steps + 1)
    ]
    return LaunchPlan.model_validate(
        {
            "service": "bench",
            "version": "1.0.0",
            "targets": {
                "router": {"kind": "flagd", "flag_file": str(flag_file), "flag_key": "bench"}
            },
            "approvals": {"identity": "none", "approvers": [APPROVER], "timeout": "1h"},
            "phases": [
                {"name": "soft-launch", "kind": "soft_launch", "steps": soft},
                {"name": "full-launch", "kind": "full_launch", "steps": full},
            ],
        }
    )


def reaction_plan(base: LaunchPlan) -> LaunchPlan:
    """The demo plan cut to one long-analysed 20% step: healthy until the fault arrives."""
    data = base.model_dump(mode="json")
    data["analysis"] = {
        "error-rate": {
            **data["analysis"]["error-rate"],
            "initial_delay": "2s",
            "interval": f"{ANALYSIS_INTERVAL_S:g}s",
            "count": 500,
            "failure_limit": 0,
            "inconclusive_limit": 499,
            "consecutive_error_limit": 10,
        }
    }
    data["phases"] = [
        {
            "name": "soft-launch",
            "kind": "soft_launch",
            "steps": [{"weight": 20, "analysis": ["error-rate"]}],
        },
        {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
    ]
    return LaunchPlan.model_validate(data)


# --- counts -----------------------------------------------------------------------------


def typical(samples: list[Counts]) -> Counts:
    """Each count's lower median over `samples` (a count, never a half)."""
    names = [f.name for f in dataclasses.fields(Counts)]
    return Counts(
        **{name: statistics.median_low([getattr(c, name) for c in samples]) for name in names}
    )


def compared(measured: Counts, baseline: Counts) -> dict[str, Any]:
    """Measured and baseline counts, with their ratio for workflow tasks and events."""
    return {
        "measured": measured.as_dict(),
        "baseline": baseline.as_dict(),
        "ratio_workflow_tasks": round(measured.workflow_tasks / baseline.workflow_tasks, 2),
        "ratio_events": round(measured.events / baseline.events, 2),
    }


# --- measurements -----------------------------------------------------------------------


async def orchestration_overhead(
    client: Client, settings: Settings, workdir: Path, rounds: int
) -> dict[str, Any]:
    soft_steps, full_steps = 8, 4
    launch_s: list[float] = []
    bare_s: list[float] = []
    activities_per_launch = 0
    launch_counted: list[Counts] = []
    bare_counted: list[Counts] = []
    per_workflow: dict[str, Counts] = {}
    for number in range(rounds):
        plan = instant_plan(
            workdir / f"overhead-{number}.json", soft_steps, full_steps, gated=False
        )
        started = time.perf_counter()
        handle = await launches.start_launch(client, plan, settings=settings)
        result = await handle.result()
        launch_s.append(time.perf_counter() - started)
        assert result.status == "completed", result.reason
        per_workflow = await launch_counts(client, handle.id)
        launch_counted.append(per_workflow["total"])
        # The bare workflow runs each of the launch's activities, local ones included, as an
        # activity of its own: the same work, with no orchestration around it.
        activities_per_launch = (
            per_workflow["total"].activities + per_workflow["total"].local_activities
        )

        started = time.perf_counter()
        bare_id = f"bench-bare-{uuid.uuid4().hex[:8]}"
        await client.execute_workflow(
            SequenceWorkflow.run, activities_per_launch, id=bare_id, task_queue=TASK_QUEUE
        )
        bare_s.append(time.perf_counter() - started)
        bare_counted.append((await launch_counts(client, bare_id))["total"])
    launch_median, bare_median = statistics.median(launch_s), statistics.median(bare_s)
    return {
        "steps_per_launch": soft_steps + full_steps,
        "activities_per_launch": activities_per_launch,
        "rounds": rounds,
        "launch_median_s": round(launch_median, 4),
        "bare_median_s": round(bare_median, 4),
        "ratio": round(launch_median / bare_median, 3),
        "target_ratio_max": 1.3,
        "counts_per_launch": compared(typical(launch_counted), typical(bare_counted)),
        # The last round's launch, by workflow: where its tasks and events are spent.
        "counts_by_workflow": {
            ("launch" if name == handle.id else name.removeprefix(f"{handle.id}.")): c.as_dict()
            for name, c in per_workflow.items()
            if name != "total"
        },
    }


async def wait_for(predicate: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while not await predicate():  # noqa: ASYNC110 -- polls a server, no event to await
            await asyncio.sleep(0.005)


async def next_start_after(starts: ActivityStarts, moment: float) -> float:
    deadline = time.monotonic() + 30
    while (first := starts.first_after(moment)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("no activity started after the signal")
        await asyncio.sleep(0.001)
    return first - moment


async def approval_latency(
    client: Client, settings: Settings, workdir: Path, starts: ActivityStarts, gates: int
) -> dict[str, Any]:
    """Gates decided in turn the UI's way (the `approve` signal to the launch, which relays it)
    and the CLI's way (`launches.decide`: the `decide` update to the phase that waits), then as
    many `go` signals to the bare workflow."""
    plan = instant_plan(workdir / "approval.json", gates, 1, gated=True)
    handle = await launches.start_launch(client, plan, settings=settings)
    signal_ms: list[float] = []
    direct_ms: list[float] = []
    for number in range(1, gates + 1):
        gate = f"soft-launch.step-{number}"

        async def gate_open(gate: str = gate) -> bool:
            current: LaunchStatus = await handle.query(LaunchWorkflow.status)
            return current.open_gate is not None and current.open_gate.gate == gate

        await wait_for(gate_open)
        sent = time.perf_counter()
        if number % 2:
            await handle.signal(
                LaunchWorkflow.approve,
                {"gate": gate, "approver": APPROVER, "id": f"bench-{number}"},
            )
            signal_ms.append(1000 * await next_start_after(starts, sent))
        else:
            await launches.decide(client, handle.id, gate, APPROVER, "approve", phase="soft-launch")
            direct_ms.append(1000 * await next_start_after(starts, sent))
    result = await handle.result()
    assert result.status == "completed", result.reason

    bare = await client.start_workflow(
        SignalThenActivityWorkflow.run,
        gates,
        id=f"bench-signal-{uuid.uuid4().hex[:8]}",
        task_queue=TASK_QUEUE,
    )
    bare_ms: list[float] = []
    for _ in range(gates):
        await asyncio.sleep(0.05)  # the previous no-op finishes; the workflow waits again
        sent = time.perf_counter()
        await bare.signal(SignalThenActivityWorkflow.go)
        bare_ms.append(1000 * await next_start_after(starts, sent))
    await bare.result()
    # Per approval: the events of the launch and its phases from the `approve` the server
    # recorded (or the workflow task the phase's `decide` update was taken in) to the first
    # activity started after it (by the server's event times); per bare signal likewise.
    histories = await launch_histories(client, handle.id)
    relayed = [
        count_events(signal_to_activity(histories, signaled))
        for signaled in signals_named(histories[handle.id], "approve")
    ]
    direct = [
        count_events(signal_to_activity(histories, taken))
        for taken in updates_taken(histories[f"{handle.id}.soft-launch"], "decide")
    ]
    bare_histories = await launch_histories(client, bare.id)
    bare_signals = [
        count_events(signal_to_activity(bare_histories, signaled))
        for signaled in signals_named(bare_histories[bare.id], "go")
    ]
    bare_p50 = percentile(bare_ms, 50)
    return {
        "samples": gates,
        "launch_p50_ms": round(percentile(signal_ms, 50), 2),
        "launch_p99_ms": round(percentile(signal_ms, 99), 2),
        "direct_p50_ms": round(percentile(direct_ms, 50), 2),
        "direct_p99_ms": round(percentile(direct_ms, 99), 2),
        "bare_p50_ms": round(bare_p50, 2),
        "bare_p99_ms": round(percentile(bare_ms, 99), 2),
        "ratio_p50": round(percentile(signal_ms, 50) / bare_p50, 3),
        "direct_ratio_p50": round(percentile(direct_ms, 50) / bare_p50, 3),
        "target_ratio_p50_max": 1.5,
        "counts_per_approval": {
            **compared(typical(relayed), typical(bare_signals)),
            "events_range": [min(c.events for c in relayed), max(c.events for c in relayed)],
        },
        "counts_per_direct_approval": {
            **compared(typical(direct), typical(bare_signals)),
            "events_range": [min(c.events for c in direct), max(c.events for c in direct)],
        },
    }


async def rollback_reaction(
    client: Client, settings: Settings, workdir: Path, rounds: int
) -> dict[str, Any]:
    budget = SCRAPE_INTERVAL_S + 2 * ANALYSIS_INTERVAL_S + 2
    reactions: list[float] = []
    with demo_stack(workdir / "stack", rps=40, duration=1800) as stack:
        plan = reaction_plan(stack.plan_for(load_plan(example_plan())))
        flags = FlagdFileRouter()
        for _ in range(rounds):
            handle = await launches.start_launch(client, plan, settings=settings)

            async def analysed_healthy(handle: WorkflowHandle[Any, Any] = handle) -> bool:
                current: LaunchStatus = await handle.query(LaunchWorkflow.status)
                results = [r for p in current.phases for r in p.analysis]
                return bool(results) and results[-1].successes >= 3

            await wait_for(analysed_healthy, within=60)
            injected = time.perf_counter()
            await asyncio.to_thread(stack.set_faults, error_rate=0.5)
            while flags.current_weight(stack.router) > 0:
                if time.perf_counter() - injected > 60:
                    raise TimeoutError("the faulty canary was not rolled back within 60 s")
                await asyncio.sleep(0.01)
            reactions.append(time.perf_counter() - injected)
            result = await handle.result()
            assert result.status == "rolled_back", result.status
            await asyncio.to_thread(stack.set_faults, error_rate=0.0)
            await asyncio.to_thread(stack.wait_until_quiet, 60.0)
            stack.reset_exposure()
    return {
        "rounds": rounds,
        "reaction_median_s": round(statistics.median(reactions), 3),
        "reaction_max_s": round(max(reactions), 3),
        "reactions_s": [round(r, 3) for r in reactions],
        "budget_s": budget,
        "ratio_to_budget": round(statistics.median(reactions) / budget, 3),
    }


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least pct% of values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def bench_limits(workdir: Path) -> WorkerLimits:
    """What the benchmark's plans touch: flag files in `workdir`, the loopback Prometheus."""
    return WorkerLimits(
        network=NetworkLimits(private=["127.0.0.1/32"]), files=FileLimits(flags=[str(workdir)])
    )


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(int(meminfo[1]) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "temporalio": temporalio.__version__,
        "platform": platform.platform(),
    }


async def run(quick: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="phasegate-bench-"))
    server = start_temporal_dev_server(workdir=workdir)
    starts = ActivityStarts()
    try:
        # Launches start as `phasegate launch` starts them, on the benchmark's task queue.
        settings = Settings(TEMPORAL_ADDRESS=server.address, task_queue=TASK_QUEUE)
        client = await connect(settings)
        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as executor:
            async with (
                httpx.AsyncClient() as http,
                Worker(
                    client,
                    task_queue=TASK_QUEUE,
                    workflows=[*WORKFLOWS, SequenceWorkflow, SignalThenActivityWorkflow],
                    activities=[*activities(http, client, limits=bench_limits(workdir)), noop],
                    activity_executor=executor,
                    interceptors=[RecordStarts(starts), SealInterceptor(load_keys(None))],
                    workflow_runner=WORKFLOW_RUNNER,
                ),
            ):
                # One launch first, so imports and the server's caches are warm for both sides.
                await orchestration_overhead(client, settings, workdir, rounds=1)
                overhead = await orchestration_overhead(
                    client, settings, workdir, rounds=3 if quick else 7
                )
                approval = await approval_latency(
                    client, settings, workdir, starts, 10 if quick else 40
                )
                reaction = await rollback_reaction(
                    client, settings, workdir, rounds=1 if quick else 3
                )
    finally:
        server.stop()
    return {
        "machine": machine(),
        "orchestration_overhead": overhead,
        "approval_latency": approval,
        "rollback_reaction": reaction,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke check")
    args = parser.parse_args()
    figures = asyncio.run(run(args.quick))
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
