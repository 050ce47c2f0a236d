"""The launch's audit trail: every signal and update as it arrived, accepted or refused with
the reason. A refusal never fails the launch; it is recorded here and shows in `status`.

Whatever a sender puts in a payload, an entry stays small: a payload whose JSON is larger
than `KEEP_PAYLOAD_BYTES` is kept as the start of its text with its size, a note as its first
`KEEP_NOTE_CHARS` characters, and the trail keeps its newest `KEEP_AUDIT` entries, counting
the ones it let go.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.launch_messages import AuditEntry

M = TypeVar("M", bound=BaseModel)
KEEP_AUDIT = 100
KEEP_PAYLOAD_BYTES = 2048
KEEP_NOTE_CHARS = 1000
# How many of a malformed payload's problems a refusal lists.
KEEP_PROBLEMS = 10


class AuditTrail:
    def __init__(
        self,
        on_change: Callable[[], None],
        entries: list[AuditEntry] | None = None,
        dropped: int = 0,
    ) -> None:
        self.entries: list[AuditEntry] = list(entries or [])
        # Entries no longer kept, oldest first.
        self.dropped = dropped
        self._on_change = on_change

    def parse(self, handler: str, model: type[M], payload: Any) -> M | None:
        """The payload as `model`, or None after recording it as malformed, field by field."""
        try:
            return model.model_validate(payload)
        except ValidationError as err:
            errors = err.errors()
            problems = [
                f"{'.'.join(str(p)[:64] for p in e['loc']) or 'input'}: {e['msg']}"
                for e in errors[:KEEP_PROBLEMS]
            ]
            if len(errors) > KEEP_PROBLEMS:
                problems.append(f"and {len(errors) - KEEP_PROBLEMS} more")
            self.record(handler, payload, accepted=False, note=f"malformed: {'; '.join(problems)}")
            return None

    def record(self, handler: str, payload: Any, *, accepted: bool, note: str = "") -> None:
        if not accepted:
            workflow.logger.warning("refused %s: %s", handler, note[:KEEP_NOTE_CHARS])
        kept, size = _printable(payload)
        entry = AuditEntry(
            at=workflow.now(),
            handler=handler,
            payload=kept,
            accepted=accepted,
            note=note[:KEEP_NOTE_CHARS],
            payload_bytes=size,
        )
        entries = [*self.entries, entry]
        self.dropped += max(0, len(entries) - KEEP_AUDIT)
        self.entries = entries[-KEEP_AUDIT:]
        self._on_change()


def _printable(payload: Any) -> tuple[Any, int]:
    """What an audit entry keeps of `payload`: the payload itself when its JSON is at most
    `KEEP_PAYLOAD_BYTES`, else the start of that JSON text and its size in bytes. A proof or
    seal is kept as its length (the request's other fields say what it was for)."""
    if isinstance(payload, dict):
        payload = {
            key: f"<{len(value)} characters>"
            if key in ("proof", "seal") and isinstance(value, str) and value
            else value
            for key, value in payload.items()
        }
    try:
        text = json.dumps(payload, default=repr, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        # Nested too deep, or keys JSON cannot have: its repr says what it was.
        text = repr(payload)
    size = len(text.encode())
    if size <= KEEP_PAYLOAD_BYTES and isinstance(payload, dict | list | str | int | float | bool):
        return payload, 0
    if payload is None:
        return None, 0
    preview = text.encode()[:KEEP_PAYLOAD_BYTES].decode(errors="ignore")
    return preview, size
