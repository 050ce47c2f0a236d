"""Webhooks a launch notifies, and the events they hear about."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field

from schemas.basics import Name, SecretRef, StrictModel

NotificationEvent = Literal[
    "launch_started", "gate_opened", "completed", "rolled_back", "compensation_failed"
]


class Webhook(StrictModel):
    name: Name
    url: Annotated[str, Field(pattern=r"^https?://")]
    headers: dict[str, SecretRef] = Field(default_factory=dict)
    events: list[NotificationEvent] = Field(default_factory=lambda: every_event())


def every_event() -> list[NotificationEvent]:
    """What a webhook hears when its `events` are left out: everything."""
    return list(get_args(NotificationEvent))
