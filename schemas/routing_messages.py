"""Router activities: snapshot, set, restore and promote exposure."""

from __future__ import annotations

from typing import Any

from schemas.basics import Message
from schemas.targets import TrafficRouter


class RouterSnapshot(Message):
    """The routing state before a phase touched it, enough to put it back exactly."""

    kind: str
    existed: bool
    definition: dict[str, Any] | None = None


class SnapshotRequest(Message):
    router: TrafficRouter


class ExposureRequest(Message):
    router: TrafficRouter
    weight: float
    launch_id: str = ""


class ExposureState(Message):
    weight: float
    changed: bool


class RestoreRequest(Message):
    router: TrafficRouter
    snapshot: RouterSnapshot


class PromoteRequest(Message):
    router: TrafficRouter
    launch_id: str = ""
