"""The launch's rollback: every registered undo, in reverse order, each until it succeeds.

An undo is retried with backoff (`COMPENSATION_OPTIONS`); one that still fails stops the
rollback at `needs_attention`, alerts, and waits for a person to retry it after fixing the
cause or to skip it on record. Only undos in the registry (`workflows/compensation.py`) run.
An error of the workflow code while running an undo counts as that undo failing, so the
rollback still reaches every undo. The rollback also knows the exposure in force: the weight
the latest exposure undo restored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError
from temporalio.workflow import NondeterminismError

with workflow.unsafe.imports_passed_through():
    from schemas.decision_messages import CompensationAction
    from schemas.launch_messages import CompensationRecord
    from schemas.routing_messages import ExposureState
    from workflows.compensation import RESTORE_EXPOSURE, UNDOS, compensation_options
    from workflows.notifier import Notifier
    from workflows.phase import failure_reason, internal_error

UndoAction = Literal["retry", "skip"]


class Rollback:
    def __init__(self, notifier: Notifier, on_change: Callable[[], None]) -> None:
        self._notifier = notifier
        self._on_change = on_change
        self._action: tuple[UndoAction, CompensationAction, str] | None = None
        self.stuck: CompensationRecord | None = None
        # The weight the latest exposure undo restored (None until one ran), and why the
        # router may serve something else (the latest exposure undo failed or was skipped).
        self.exposure: float | None = None
        self.exposure_note = ""

    async def run(self, records: list[CompensationRecord]) -> None:
        """Undo what `records` describe, newest first; what is done or skipped stays so."""
        for record in reversed(records):
            if record.status in ("done", "skipped"):
                continue
            try:
                await self._compensate(record)
            except Exception as err:
                if isinstance(err, NondeterminismError):
                    raise
                # The undo's own failures wait for a person in `_compensate`; this is an error
                # of the rollback's code around it: say so loudly and go on to the next undo.
                workflow.logger.error("undo %s: internal error", record.id, exc_info=err)
                record.status, record.error = "failed", internal_error(f"undo {record.id}", err)
                self.stuck = None
                self._on_change()
                await self._alert(record)

    async def _compensate(self, record: CompensationRecord) -> None:
        """Run one undo until it succeeds, or until a person explicitly skips it."""
        while True:
            record.attempts += 1
            error, result = await self._attempt(record)
            if not error:
                record.status, record.error = "done", ""
                self._undone(record, result)
                self._on_change()
                return
            record.status, record.error = "failed", error
            self._not_undone(record, f"failed ({error[:200]})")
            self.stuck = record
            self._on_change()
            await self._alert(record)
            await workflow.wait_condition(lambda: self._action is not None)
            assert self._action is not None
            action, request, person = self._action
            self._action = None
            self.stuck = None
            if action == "skip":
                record.status = "skipped"
                record.resolved_by = f"skipped by {person}: {request.comment}".rstrip(": ")
                self._not_undone(record, f"was skipped by {person}")
                self._on_change()
                return
            record.resolved_by = f"retry requested by {person}"

    async def _attempt(self, record: CompensationRecord) -> tuple[str, Any]:
        """Run the undo once (the activity retries on its own): ("", its result) or why it
        failed."""
        undo = UNDOS.get(record.activity)
        if undo is None:
            return f"no undo is named {record.activity!r}; it is never run", None
        try:
            request = undo.request.model_validate(record.input)
        except ValidationError as err:
            problem = err.errors()[0]["msg"]
            return f"the undo's input does not fit {undo.request.__name__}: {problem}", None
        try:
            result = await workflow.execute_activity_method(
                undo.activity, request, **compensation_options(record)
            )
        except ActivityError as err:
            return failure_reason(err), None
        except Exception as err:
            if isinstance(err, NondeterminismError):
                raise
            workflow.logger.error("undo %s: internal error", record.id, exc_info=err)
            return internal_error(f"undo {record.id}", err), None
        return "", result

    def _undone(self, record: CompensationRecord, result: Any) -> None:
        if record.activity == RESTORE_EXPOSURE.name and isinstance(result, ExposureState):
            self.exposure, self.exposure_note = result.weight, ""

    def _not_undone(self, record: CompensationRecord, what: str) -> None:
        if record.activity == RESTORE_EXPOSURE.name:
            self.exposure_note = (
                f"the exposure undo {record.id} {what}: the router may still serve the "
                "exposure shown"
            )

    async def _alert(self, record: CompensationRecord) -> None:
        """Tell people an undo keeps failing; a notification that cannot be built or sent is
        logged, never a reason to stop the rollback."""
        try:
            await self._notifier.send(
                "compensation_failed",
                f"undo {record.id} keeps failing ({record.error}); the rollback waits for a person",
                {"compensation": record.id, "description": record.description},
            )
        except Exception as err:
            if isinstance(err, NondeterminismError):
                raise
            workflow.logger.error("compensation_failed not sent", exc_info=err)

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
