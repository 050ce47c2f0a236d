"""Plan admission: the worker checks a plan against its own limits before the launch changes
anything, and answers with every problem it found."""

from __future__ import annotations

from pydantic import Field

from schemas.basics import Message
from schemas.plan import LaunchPlan


class AdmissionRequest(Message):
    launch_id: str
    plan: LaunchPlan


class Admission(Message):
    """One `field.path: why` line per problem, the path as the plan's author wrote it
    (`notifications[0].url: ...`); empty means admitted. Never holds a secret's value."""

    problems: list[str] = Field(default_factory=list)

    @property
    def admitted(self) -> bool:
        return not self.problems
