"""The compensation log: every change registers its undo just before it is made.

A phase registers records as it goes and reports them to the launch at once, so the
launch can undo them even if the phase dies in the middle. The launch runs the undos
in reverse order (`LaunchWorkflow._roll_back`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

from schemas.launch_messages import CompensationRecord, PhaseState

# An undo is retried with backoff; if it still fails, a person is alerted and asked to
# retry or skip it explicitly. It is never dropped silently.
COMPENSATION_OPTIONS = workflow.ActivityConfig(
    start_to_close_timeout=timedelta(minutes=2),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=5,
    ),
)


def compensation_options(record: CompensationRecord) -> workflow.ActivityConfig:
    """The default undo options, with the record's own timeouts where it registered them."""
    options = COMPENSATION_OPTIONS.copy()
    if record.timeout_seconds:
        options["start_to_close_timeout"] = timedelta(seconds=record.timeout_seconds)
    if record.heartbeat_seconds:
        options["heartbeat_timeout"] = timedelta(seconds=record.heartbeat_seconds)
    return options


class CompensationLog:
    def __init__(self, state: PhaseState, report: Callable[[], Awaitable[None]]) -> None:
        self._state = state
        self._report = report

    async def register(
        self,
        activity: Callable[..., Any],
        request: BaseModel,
        description: str,
        *,
        run_timeout: timedelta | None = None,
        heartbeat: timedelta | None = None,
    ) -> None:
        """Record the undo, and make sure the launch knows of it, before the change runs.

        `run_timeout` / `heartbeat` replace the default start-to-close timeout for undos that
        run long (a database restore), heartbeating so a dead worker is noticed quickly.
        """
        name = getattr(activity, "__temporal_activity_definition").name
        self._state.compensations.append(
            CompensationRecord(
                id=f"{self._state.name}.{len(self._state.compensations) + 1}",
                phase=self._state.name,
                activity=name,
                input=request.model_dump(mode="json"),
                description=description,
                timeout_seconds=run_timeout.total_seconds() if run_timeout else None,
                heartbeat_seconds=heartbeat.total_seconds() if heartbeat else None,
            )
        )
        await self._report()
