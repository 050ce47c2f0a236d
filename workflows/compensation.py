"""The compensation log: every change registers its undo just before it is made.

A phase registers records as it goes and reports them to the launch at once, so the
launch can undo them even if the phase dies in the middle. The launch runs the undos in
reverse order (`workflows/rollback.py`), and only undos named in `UNDOS`: a record names its
undo, and the registry says which activity runs it and what request it takes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.kube import KubeActivities
    from activities.options import MINUTE, SECOND, activity_options
    from activities.postgres import PostgresActivities
    from activities.routing import RouterActivities
    from schemas.kube_messages import RestoreObjectRequest
    from schemas.launch_messages import CompensationRecord, PhaseState
    from schemas.migration_messages import (
        RestoreDatabaseRequest,
        SqlSwitchRequest,
        WritesGuardRequest,
    )
    from schemas.routing_messages import RestoreRequest

R = TypeVar("R", bound=BaseModel)

# An undo is retried with backoff; if it still fails, a person is alerted and asked to
# retry or skip it explicitly. It is never dropped silently.
COMPENSATION_OPTIONS = activity_options(2 * MINUTE, attempts=5, longest_retry=30 * SECOND)


@dataclass(frozen=True)
class Undo(Generic[R]):
    """One kind of undo: the name its records carry, the activity that runs it, its request."""

    name: str
    activity: Callable[[Any, R], Any]
    request: type[R]


RESTORE_EXPOSURE = Undo("restore_exposure", RouterActivities.restore_exposure, RestoreRequest)
RESTORE_OBJECT = Undo("restore_object", KubeActivities.restore_object, RestoreObjectRequest)
RESTORE_DATABASE = Undo(
    "restore_database", PostgresActivities.restore_database, RestoreDatabaseRequest
)
CHECK_WRITES_SINCE_CUTOVER = Undo(
    "check_writes_since_cutover", PostgresActivities.check_writes_since_cutover, WritesGuardRequest
)
SWITCH_BACK_SQL = Undo("switch_back_sql", PostgresActivities.switch_back_sql, SqlSwitchRequest)

# Every undo a rollback may run; a record naming anything else is refused, never run.
UNDOS: dict[str, Undo[Any]] = {
    undo.name: undo
    for undo in (
        RESTORE_EXPOSURE,
        RESTORE_OBJECT,
        RESTORE_DATABASE,
        CHECK_WRITES_SINCE_CUTOVER,
        SWITCH_BACK_SQL,
    )
}


def compensation_options(record: CompensationRecord) -> workflow.ActivityConfig:
    """The default undo options, with the record's own timeouts where it registered them,
    and its description as the summary the UI shows."""
    options = COMPENSATION_OPTIONS.copy()
    options["summary"] = record.description
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
        undo: Undo[R],
        request: R,
        description: str,
        *,
        run_timeout: timedelta | None = None,
        heartbeat: timedelta | None = None,
    ) -> None:
        """Record the undo, and make sure the launch knows of it, before the change runs.

        `run_timeout` / `heartbeat` replace the default start-to-close timeout for undos that
        run long (a database restore), heartbeating so a dead worker is noticed quickly.
        """
        self._state.compensations.append(
            CompensationRecord(
                id=f"{self._state.name}.{len(self._state.compensations) + 1}",
                phase=self._state.name,
                activity=undo.name,
                input=request.model_dump(mode="json"),
                description=description,
                timeout_seconds=run_timeout.total_seconds() if run_timeout else None,
                heartbeat_seconds=heartbeat.total_seconds() if heartbeat else None,
            )
        )
        await self._report()
