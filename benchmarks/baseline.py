"""What Phasegate's figures are divided by: bare Temporal workflows doing the same amount of work.

Both run on the same dev server, worker and process as the launches they are compared with, so
the ratio measures Phasegate's orchestration (child workflows, progress signals, state), not the
machine.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

NOOP_TIMEOUT = timedelta(seconds=30)


@activity.defn(name="bench_noop")
async def noop() -> None:
    """An activity that does nothing, so only scheduling and dispatch are timed."""


@workflow.defn(name="BenchSequence")
class SequenceWorkflow:
    """Run `count` no-op activities one after another."""

    @workflow.run
    async def run(self, count: int) -> int:
        for _ in range(count):
            await workflow.execute_activity(noop, start_to_close_timeout=NOOP_TIMEOUT)
        return count


@workflow.defn(name="BenchSignalThenActivity")
class SignalThenActivityWorkflow:
    """For each of `count` signals: wait for it, then run a no-op activity."""

    def __init__(self) -> None:
        self._received = 0

    @workflow.signal(name="go")
    def go(self) -> None:
        self._received += 1

    @workflow.query(name="received")
    def received(self) -> int:
        return self._received

    @workflow.run
    async def run(self, count: int) -> int:
        for number in range(1, count + 1):
            await workflow.wait_condition(lambda n=number: self._received >= n)  # type: ignore[misc]
            await workflow.execute_activity(noop, start_to_close_timeout=NOOP_TIMEOUT)
        return count
