"""The launch's rollback: every registered undo, in reverse order, each until it succeeds.

An undo is retried with backoff (`COMPENSATION_OPTIONS`); one that still fails stops the
rollback at `needs_attention`, alerts, and waits for a person to retry it after fixing the
cause or to skip it on record. Only undos in the registry (`workflows/compensation.py`) run.
An error of the workflow code while running an undo counts as that undo failing, so the
rollback still reaches every undo. The rollback also knows the exposure in force: the weight
the latest exposure undo restored.

A database restore that would lose live writes (its `WritesAtRisk` failure) stops the same
way and shows what would be lost. Besides retry and skip (the database stays migrated), a
person may then keep those writes (`keep_writes`: the migration's carry_over.sql runs after
the revert) or drop them on record (`drop_writes`), for the next attempt only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import NondeterminismError

with workflow.unsafe.imports_passed_through():
    from approvals.proofs import Act
    from schemas.decision_messages import CompensationAction
    from schemas.launch_messages import CompensationRecord
    from schemas.migration_messages import WritesAtRiskReport, WritesDecision
    from schemas.routing_messages import ExposureState
    from workflows.compensation import (
        RESTORE_DATABASE,
        RESTORE_EXPOSURE,
        UNDOS,
        compensation_options,
    )
    from workflows.notifier import Notifier
    from workflows.phase import failure_reason, internal_error

UndoAction = Literal["retry", "skip", "keep_writes", "drop_writes"]
# The signal that asks for each action, which is also the act an approval proof names.
SIGNALS: dict[UndoAction, Act] = {
    "retry": "retry_compensation",
    "skip": "skip_compensation",
    "keep_writes": "keep_writes",
    "drop_writes": "drop_writes",
}
WRITES_AT_RISK = "WritesAtRisk"
# Tables named one by one in the rollback's plain-words summary; the status has them all.
SHOWN_TABLES = 20


@dataclass(frozen=True)
class Attempt:
    """One run of an undo: why it failed ("" when it did not), its result, and what a database
    restore that stopped on live writes would lose."""

    error: str
    result: Any = None
    at_risk: WritesAtRiskReport | None = None


class Rollback:
    def __init__(self, notifier: Notifier, on_change: Callable[[], None]) -> None:
        self._notifier = notifier
        self._on_change = on_change
        self._action: tuple[UndoAction, CompensationAction, str] | None = None
        # Request ids already acted on: a signal delivered twice acts once.
        self._taken: set[str] = set()
        self.stuck: CompensationRecord | None = None
        # What the stuck undo (a database restore) would lose, when live writes stopped it.
        self.at_risk: WritesAtRiskReport | None = None
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
                self.stuck, self.at_risk = None, None
                self._on_change()
                await self._alert(record)

    async def _compensate(self, record: CompensationRecord) -> None:
        """Run one undo until it succeeds, or until a person explicitly skips it."""
        # Only a person's decision on this rollback may let a restore drop or keep live writes.
        record.input.pop("writes", None)
        while True:
            record.attempts += 1
            attempt = await self._attempt(record)
            if not attempt.error:
                record.status, record.error = "done", ""
                self._undone(record, attempt.result)
                self._on_change()
                return
            # A person's answer to writes at risk covers the attempt it was given for only:
            # writes found since are decided on anew.
            record.input.pop("writes", None)
            record.status, record.error = "failed", attempt.error
            self._not_undone(record, f"failed ({attempt.error[:200]})")
            self.stuck, self.at_risk = record, attempt.at_risk
            self._on_change()
            await self._alert(record)
            await workflow.wait_condition(lambda: self._action is not None)
            assert self._action is not None
            action, request, person = self._action
            at_risk = self.at_risk
            self._action = None
            self.stuck, self.at_risk = None, None
            if action == "skip":
                record.status = "skipped"
                record.resolved_by = f"skipped by {person}: {request.comment}".rstrip(": ")
                if at_risk is not None:
                    record.resolved_by += "; the database stays migrated"
                self._not_undone(record, f"was skipped by {person}")
                self._on_change()
                return
            if action == "retry" or at_risk is None:
                record.resolved_by = f"retry requested by {person}"
                continue
            decision = WritesDecision(
                action="carry_over" if action == "keep_writes" else "drop",
                by=person,
                comment=request.comment,
                at_most_rows=at_risk.rows,
            )
            record.input["writes"] = decision.model_dump(mode="json")
            record.resolved_by = (
                f"{at_risk.rows} live-written row(s) kept by {person} (carry_over.sql)"
                if decision.action == "carry_over"
                else f"at most {at_risk.rows} live-written row(s) dropped by {person}: "
                f"{request.comment}"
            )

    async def _attempt(self, record: CompensationRecord) -> Attempt:
        """Run the undo once (the activity retries on its own)."""
        undo = UNDOS.get(record.activity)
        if undo is None:
            return Attempt(f"no undo is named {record.activity!r}; it is never run")
        try:
            request = undo.request.model_validate(record.input)
        except ValidationError as err:
            problem = err.errors()[0]["msg"]
            return Attempt(f"the undo's input does not fit {undo.request.__name__}: {problem}")
        try:
            result = await workflow.execute_activity_method(
                undo.activity, request, **compensation_options(record)
            )
        except ActivityError as err:
            return Attempt(failure_reason(err), at_risk=_writes_at_risk(record, err))
        except Exception as err:
            if isinstance(err, NondeterminismError):
                raise
            workflow.logger.error("undo %s: internal error", record.id, exc_info=err)
            return Attempt(internal_error(f"undo {record.id}", err))
        return Attempt("", result)

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
        details: dict[str, Any] = {"compensation": record.id, "description": record.description}
        summary = (
            f"undo {record.id} keeps failing ({record.error}); the rollback waits for a person"
        )
        at_risk = self.at_risk
        if at_risk is not None:
            details.update(
                rows_at_risk=at_risk.rows, saved=at_risk.saved, tables=sorted(at_risk.tables)
            )
            summary = (
                f"undo {record.id} would lose {at_risk.rows} live-written row(s), saved in "
                f"{at_risk.saved or 'no file'}; the rollback waits for a person to keep them, "
                "drop them or leave the database migrated"
            )
        try:
            await self._notifier.send("compensation_failed", summary, details)
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
        if request.id and request.id in self._taken:
            return f"id: request {request.id!r} was already taken"
        if action in ("skip", "drop_writes") and not request.comment.strip():
            what = "skipping an undo" if action == "skip" else "dropping live writes"
            return f"comment: {what} needs a comment saying why"
        if action in ("keep_writes", "drop_writes"):
            at_risk = self.at_risk
            if at_risk is None:
                return (
                    f"compensation: undo {stuck.id!r} did not stop on live writes at risk; "
                    f"{SIGNALS[action]} answers only a database restore that did (retry or "
                    "skip this one)"
                )
            if request.rows is not None and request.rows != at_risk.rows:
                return (
                    f"rows: {at_risk.rows} live-written row(s) are at risk now, not "
                    f"{request.rows}; look at the launch's status again"
                )
        return ""

    def act(self, action: UndoAction, request: CompensationAction, person: str) -> None:
        """Take `action` on the stuck undo on behalf of `person`; `refusal` said it may be."""
        if request.id:
            self._taken.add(request.id)
        self._action = (action, request, person)

    def waiting_for(self) -> str:
        """What the stuck undo waits for, in plain words with the signals that move it on."""
        record = self.stuck
        if record is None:
            return ""
        if self.at_risk is not None:
            return _writes_at_risk_gate(record, self.at_risk)
        return (
            f"Rollback blocked: undo {record.id} ({record.description}) keeps failing: {record.error}\n"
            f"Fix the cause, then run `phasegate compensation retry LAUNCH {record.id}`, or give "
            f"it up on record with `phasegate compensation skip LAUNCH {record.id} -m WHY` "
            f"(signals `retry_compensation` / `skip_compensation`, input "
            f'`{{"compensation": "{record.id}", "comment": "why", "proof": "..."}}`).'
        )


def _writes_at_risk(record: CompensationRecord, err: ActivityError) -> WritesAtRiskReport | None:
    """What a database restore that stopped on live writes would lose, from its failure's
    details; None for any other failure, or one whose details are not such a report (an
    ordinary failure, then)."""
    cause = err.cause
    if (
        record.activity != RESTORE_DATABASE.name
        or not isinstance(cause, ApplicationError)
        or cause.type != WRITES_AT_RISK
        or not cause.details
    ):
        return None
    try:
        return WritesAtRiskReport.model_validate(cause.details[0])
    except ValidationError as bad:
        workflow.logger.error("undo %s: WritesAtRisk without a report", record.id, exc_info=bad)
        return None


def _writes_at_risk_gate(record: CompensationRecord, at_risk: WritesAtRiskReport) -> str:
    """The stop of a database restore that would lose live writes: what would be lost, where
    those rows are kept, and the answers a person may give."""
    how = "its down scripts" if at_risk.method == "down_scripts" else "its backup"
    lines = [
        f"Rollback blocked: undo {record.id} ({record.description}) stopped before changing "
        f"anything: reverting the migration with {how} would lose "
        f"{at_risk.rows} row(s) written live since the backup:"
    ]
    for name, loss in sorted(at_risk.tables.items())[:SHOWN_TABLES]:
        parts = []
        if loss.rows_lost:
            parts.append(f"{loss.rows_lost} row(s) inserted or updated live would be gone")
        if loss.deletes_undone:
            parts.append(f"{loss.deletes_undone} live delete(s) would be undone")
        if loss.table_gone:
            parts.append("the revert drops the table")
        lines.append(f"  - {name}: {'; '.join(parts) or 'changed live'}")
    if len(at_risk.tables) > SHOWN_TABLES:
        lines.append(f"  - and {len(at_risk.tables) - SHOWN_TABLES} more table(s) (see the status)")
    lines.append(
        f"Those rows are saved, encrypted, in {at_risk.saved}."
        if at_risk.saved
        else "Those rows are not saved anywhere else."
    )
    undo = record.id
    lines += [
        "Answer with one of:",
        f"  - keep them: `phasegate compensation keep-writes LAUNCH {undo}` reverts, then runs "
        "the migration folder's carry_over.sql in the same transaction (signal `keep_writes`, "
        f'input `{{"compensation": "{undo}", "proof": "..."}}`);',
        f"  - drop them on record: `phasegate compensation drop-writes LAUNCH {undo} -m WHY` "
        f"reverts and drops at most {at_risk.rows} row(s) (signal `drop_writes`, input "
        f'`{{"compensation": "{undo}", "comment": "why", "proof": "..."}}`);',
        f"  - stop: `phasegate compensation skip LAUNCH {undo} -m WHY` leaves the database "
        "migrated, as it is now (signal `skip_compensation`, same input as `drop_writes`);",
        f"  - after moving the rows by hand: `phasegate compensation retry LAUNCH {undo}` checks "
        f'again (signal `retry_compensation`, input `{{"compensation": "{undo}", '
        '"proof": "..."}`).',
        'With `identity: none`, put "by": "<your name>" in the input instead of the proof. '
        "A decision covers the next attempt only: if more rows are at risk by then, the "
        "rollback stops here again.",
    ]
    return "\n".join(lines)
