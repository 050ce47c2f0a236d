"""Building blocks of plans and messages: durations, names, secret references, model bases."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _parse_duration(value: Any) -> Any:
    """Accept `30s`, `1h30m`, `500ms` or a number of seconds; leave ISO 8601 to pydantic."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text and _DURATION_PART.sub("", text) == "":
            seconds = sum(
                float(number) * _DURATION_UNITS[unit]
                for number, unit in _DURATION_PART.findall(text)
            )
            return timedelta(seconds=seconds)
        if not text.upper().startswith("P"):
            raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 5m, 1h30m or 500ms")
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


Duration = Annotated[timedelta, BeforeValidator(_parse_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(_parse_duration), AfterValidator(_positive)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", max_length=63)]


M = TypeVar("M", bound=BaseModel)


def one_of(model: M, fields: Sequence[str], problem: str, *, exactly: bool = False) -> M:
    """`model` if it gives one of `fields` (just one, if `exactly`); else the `problem`.
    A field left at None or empty is not given."""
    given = [name for name in fields if getattr(model, name) not in (None, [], {})]
    if not given or (exactly and len(given) > 1):
        raise ValueError(problem)
    return model


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(StrictModel):
    """Where a secret lives. Only the reference enters workflow history; activities resolve it."""

    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> SecretRef:
        return one_of(self, ("env", "file"), "give exactly one of `env` or `file`", exactly=True)


class Message(BaseModel):
    """Base of every message between processes: unknown fields are ignored, so a field can be
    added without breaking a running workflow."""

    model_config = ConfigDict(extra="ignore")
