"""The launch's audit trail: every signal and update as it arrived, accepted or refused with
the reason. A refusal never fails the launch; it is recorded here and shows in `status`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.launch_messages import AuditEntry

M = TypeVar("M", bound=BaseModel)
KEEP_AUDIT = 200
KEEP_PAYLOAD_CHARS = 500


class AuditTrail:
    def __init__(self, on_change: Callable[[], None]) -> None:
        self.entries: list[AuditEntry] = []
        self._on_change = on_change

    def parse(self, handler: str, model: type[M], payload: Any) -> M | None:
        """The payload as `model`, or None after recording it as malformed, field by field."""
        try:
            return model.model_validate(payload)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in err.errors()
            )
            self.record(handler, payload, accepted=False, note=f"malformed: {problems}")
            return None

    def record(self, handler: str, payload: Any, *, accepted: bool, note: str = "") -> None:
        if not accepted:
            workflow.logger.warning("refused %s: %s", handler, note)
        entry = AuditEntry(
            at=workflow.now(),
            handler=handler,
            payload=_printable(payload),
            accepted=accepted,
            note=note,
        )
        self.entries = [*self.entries, entry][-KEEP_AUDIT:]
        self._on_change()


def _printable(payload: Any) -> Any:
    """Keep an audit entry small and JSON-friendly whatever a sender put in it: a proof or
    seal is kept as its length (the request's other fields say what it was for), and a payload
    longer than `KEEP_PAYLOAD_CHARS` as JSON is kept as the start of its text."""
    if isinstance(payload, dict):
        payload = {
            key: f"<{len(value)} characters>"
            if key in ("proof", "seal") and isinstance(value, str) and value
            else value
            for key, value in payload.items()
        }
    if isinstance(payload, dict | list | int | float | bool | type(None)):
        text = json.dumps(payload, default=repr)
        if len(text) <= KEEP_PAYLOAD_CHARS:
            return payload
    else:
        text = payload if isinstance(payload, str) else repr(payload)
    return text[:KEEP_PAYLOAD_CHARS]
