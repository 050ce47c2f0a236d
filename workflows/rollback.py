"""The launch's rollback: every registered undo, in reverse order, each until it succeeds.

An undo is retried with backoff (`COMPENSATION_OPTIONS`); one that still fails stops the
rollback at `needs_attention`, alerts, and waits for a person to retry it after fixing the
cause or to skip it on record. Only undos in the registry (`workflows/compensation.py`) run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from schemas.decision_messages import CompensationAction
    from schemas.launch_messages import CompensationRecord
    from workflows.compensation import UNDOS, compensation_options
    from workflows.notifier import Notifier
    from workflows.phase import failure_reason

UndoAction = Literal["retry", "skip"]


class Rollback:
    def __init__(self, notifier: Notifier, on_change: Callable[[], None]) -> None:
        self._notifier = notifier
        self._on_change = on_change
        self._action: tuple[UndoAction, CompensationAction, str] | None = None
        self.stuck: CompensationRecord | None = None

    async def run(self, records: list[CompensationRecord]) -> None:
        """Undo what `records` describe, newest first; what is done or skipped stays so."""
        for record in reversed(records):
            if record.status not in ("done", "skipped"):
                await self._compensate(record)

    async def _compensate(self, record: CompensationRecord) -> None:
        """Run one undo until it succeeds, or until a person explicitly skips it."""
        while True:
            record.attempts += 1
            error = await self._attempt(record)
            if not error:
                record.status, record.error = "done", ""
                self._on_change()
                return
            record.status, record.error = "failed", error
            self.stuck = record
            self._on_change()
            await self._notifier.send(
                "compensation_failed",
                f"undo {record.id} keeps failing ({record.error}); the rollback waits for a person",
                {"compensation": record.id, "description": record.description},
            )
            await workflow.wait_condition(lambda: self._action is not None)
            assert self._action is not None
            action, request, person = self._action
            self._action = None
            self.stuck = None
            if action == "skip":
                record.status = "skipped"
                record.resolved_by = f"skipped by {person}: {request.comment}".rstrip(": ")
                self._on_change()
                return
            record.resolved_by = f"retry requested by {person}"

    async def _attempt(self, record: CompensationRecord) -> str:
        """Run the undo once (the activity retries on its own); "" or why it failed."""
        undo = UNDOS.get(record.activity)
        if undo is None:
            return f"no undo is named {record.activity!r}; it is never run"
        try:
            request = undo.request.model_validate(record.input)
        except ValidationError as err:
            return (
                f"the undo's input does not fit {undo.request.__name__}: {err.errors()[0]['msg']}"
            )
        try:
            await workflow.execute_activity_method(
                undo.activity, request, **compensation_options(record)
            )
        except ActivityError as err:
            return failure_reason(err)
        return ""

    def refusal(self, action: UndoAction, request: CompensationAction) -> str:
        """Why `action` cannot be taken on the stuck undo now, or "" if it can (who may take
        it is the launch's check)."""
        stuck = self.stuck
        if stuck is None or stuck.id != request.compensation:
            waiting = f"the stuck undo is {stuck.id!r}" if stuck else "no undo is waiting"
            return f"compensation: {request.compensation!r} is not waiting; {waiting}"
        if action == "skip" and not request.comment.strip():
            return "comment: skipping an undo needs a comment saying why"
        return ""

    def act(self, action: UndoAction, request: CompensationAction, person: str) -> None:
        """Retry or skip the stuck undo on behalf of `person`; `refusal` said it may be."""
        self._action = (action, request, person)

    def waiting_for(self) -> str:
        """What the stuck undo waits for, in plain words with the signals that move it on."""
        record = self.stuck
        if record is None:
            return ""
        return (
            f"Rollback blocked: undo {record.id} ({record.description}) keeps failing: {record.error}\n"
            f"Fix the cause, then run `phasegate compensation retry LAUNCH {record.id}`, or give "
            f"it up on record with `phasegate compensation skip LAUNCH {record.id} -m WHY` "
            f"(signals `retry_compensation` / `skip_compensation`, input "
            f'`{{"compensation": "{record.id}", "comment": "why", "proof": "..."}}`).'
        )
