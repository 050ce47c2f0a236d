"""Webhooks a launch notifies, and the events they hear about.

A webhook's URL is a plain `https://...` string, or a secret reference when the URL itself is
the credential (Slack-style URLs with a token in the path); header values are always secret
references. Only the references enter workflow history.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field

from schemas.basics import Name, SecretRef, StrictModel
from schemas.targets import UrlOrSecret

NotificationEvent = Literal[
    "launch_started", "gate_opened", "completed", "rolled_back", "compensation_failed"
]
MAX_HEADERS = 16
# An HTTP field name (RFC 9110 token).
HeaderName = Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", max_length=128)]


class Webhook(StrictModel):
    name: Name
    url: UrlOrSecret
    headers: dict[HeaderName, SecretRef] = Field(default_factory=dict, max_length=MAX_HEADERS)
    events: list[NotificationEvent] = Field(
        default_factory=lambda: every_event(),
        min_length=1,
        max_length=len(get_args(NotificationEvent)),
    )


def every_event() -> list[NotificationEvent]:
    """What a webhook hears when its `events` are left out: everything."""
    return list(get_args(NotificationEvent))
