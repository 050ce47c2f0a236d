"""The notification activity: one event to the plan's webhooks."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from schemas.basics import Message
from schemas.notification_spec import NotificationEvent, Webhook


class Notification(Message):
    event: NotificationEvent
    launch_id: str
    service: str
    version: str
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)
    webhooks: list[Webhook]


class NotificationResult(Message):
    delivered: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict)
