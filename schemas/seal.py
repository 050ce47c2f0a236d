"""Messages between Phasegate's own workflows, sealed by the worker that sends them.

A workflow's signals can be sent by anyone with access to the namespace, so a message that
carries authority (a phase's report, a relayed vote, the health schedule's abort) counts only
with a seal: an HMAC the sending worker computes with a key it holds outside history
(`workers/sealing.py`). The receiving worker checks it before the handler runs and leaves
`seal` at `VERIFIED` or empty, whatever the sender put there.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field

from schemas.basics import Message

VERIFIED = "verified"


class Sealed(Message):
    seal: Annotated[str, Field(max_length=128)] = ""

    @property
    def sealed(self) -> bool:
        """Whether a Phasegate worker sent this message (set by the receiving worker)."""
        return self.seal == VERIFIED


def sealed_body(signal: str, target: str, message: Any) -> bytes:
    """What a seal covers: the signal, the workflow it is for, and the message without its
    seal, as canonical JSON (a model and the dict a receiver gets from it agree)."""
    if isinstance(message, Message):
        body = json.loads(message.model_dump_json(exclude={"seal"}))
    elif isinstance(message, dict):
        body = {key: value for key, value in message.items() if key != "seal"}
    else:
        raise TypeError(f"cannot seal a {type(message).__name__}")
    canonical = json.dumps([signal, target, body], sort_keys=True, separators=(",", ":"))
    return canonical.encode()
