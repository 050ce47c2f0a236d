"""`phasegate-worker` as the scale benchmark runs it: the same worker (`workers.main`), plus a
line in a JSON Lines file for every activity it starts and finishes, so the benchmark can
count how often each side effect ran across workers, including one that was killed.

    python -m benchmarks.scale_worker --record FILE     # configured like phasegate-worker

Each line: {"event": "start"|"end", "activity", "launch", "weight", "attempt", "workflow",
"pid"}; a line is written (not fsynced) before the activity runs, so a worker killed in the
middle still shows what it began.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import os
import signal
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError
from temporalio import activity, client
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from workers.client import connect
from workers.main import build_worker, load_worker_backup_keys, load_worker_limits, worker_http
from workers.settings import WORKER_READY_LINE, Settings, settings_problem

# Promoting puts everyone on the new version: the flag reads 100% afterwards.
PROMOTED_WEIGHT = 100.0


class RecordActivities(client.Interceptor, Interceptor):
    """Appends one line per activity start and end to `out`; given to the client, so the
    worker built on that client picks it up."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def write(self, event: str, input: ExecuteActivityInput) -> None:
        info = activity.info()
        request = input.args[0] if input.args else None
        weight = getattr(request, "weight", None)
        if weight is None and info.activity_type == "promote_exposure":
            weight = PROMOTED_WEIGHT
        line = {
            "event": event,
            "activity": info.activity_type,
            "launch": getattr(request, "launch_id", "") or (info.workflow_id or "").split(".")[0],
            "weight": weight,
            "attempt": info.attempt,
            "workflow": info.workflow_id,
            "pid": os.getpid(),
        }
        self._out.write(json.dumps(line) + "\n")
        self._out.flush()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        recorder = self

        class Recorded(ActivityInboundInterceptor):
            async def execute_activity(self, input: ExecuteActivityInput) -> Any:
                recorder.write("start", input)
                result = await super().execute_activity(input)
                recorder.write("end", input)
                return result

        return Recorded(next)


async def serve(settings: Settings, record: IO[str]) -> None:
    """`workers.main.serve` with every activity recorded in `record`."""
    limits = load_worker_limits(settings)
    backup_keys = load_worker_backup_keys(settings)
    runtime = Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=settings.metrics_address))
    )
    config = (await connect(settings, runtime=runtime)).config()
    config["interceptors"] = [RecordActivities(record)]
    recorded = Client(**config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=settings.max_concurrent_activities
    ) as executor:
        async with worker_http(settings, limits) as http:
            worker = build_worker(
                recorded, http, executor, settings, limits=limits, backup_keys=backup_keys
            )
            async with worker:
                logging.info("%s on task queue %s", WORKER_READY_LINE, settings.task_queue)
                await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--record", type=Path, required=True, help="JSON Lines file to append")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings()
    except ValidationError as err:
        raise SystemExit(f"scale worker: {settings_problem(err)}") from None
    with open(args.record, "a", encoding="utf-8") as record:
        asyncio.run(serve(settings, record))


if __name__ == "__main__":
    main()
