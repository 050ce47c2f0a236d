"""Building blocks of plans and messages: durations, names, bounded text, secret references,
model bases.

Everything a plan holds is bounded: a duration is never negative and never longer than its
field allows (and never longer than `LONGEST`, so no arithmetic on it can overflow), a number
is finite, a string has a maximum length (`MAX_TEXT` unless its field says less).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    model_validator,
)
from pydantic_core import core_schema

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# The longest duration any plan field may give: two years (an HSTS max-age threshold is the
# longest a plan has a use for). Fields that become timers or timeouts allow far less.
LONGEST = timedelta(days=731)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)

# The longest string a plan or profile may hold where its field sets no tighter limit.
MAX_TEXT = 4096
# A value a problem line quotes is cut to this many characters.
QUOTED = 64


def show_duration(value: timedelta) -> str:
    """A duration as a plan writes it: `30d`, `24h`, `90m`, `1.5s`."""
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def quoted(value: object) -> str:
    """`value`'s repr, cut short: a problem line never repeats a huge input."""
    text = repr(value)
    return text if len(text) <= QUOTED else text[: QUOTED - 1] + "…"


@dataclass(frozen=True)
class DurationRange:
    """The bounds of a duration field, as pydantic metadata: at most `longest`, and longer
    than zero unless `zero` is allowed. A duration is written `30s`, `1h30m`, `500ms`, as a
    number of seconds or in ISO 8601 (`PT5M`); a number is checked before it becomes a
    `timedelta`, so no value can overflow."""

    longest: timedelta = LONGEST
    zero: bool = True

    def _parse(self, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return timedelta(seconds=self._seconds(value))
        if isinstance(value, str):
            text = value.strip().replace(" ", "")
            if text and _DURATION_PART.sub("", text) == "":
                seconds = sum(
                    float(number) * _DURATION_UNITS[unit]
                    for number, unit in _DURATION_PART.findall(text)
                )
                return timedelta(seconds=self._seconds(seconds))
            if not text.upper().lstrip("+-").startswith("P"):
                raise ValueError(
                    f"{quoted(value)} is not a duration; write e.g. 30s, 5m, 1h30m or 500ms"
                )
        return value

    def _seconds(self, value: int | float) -> float:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        if value < 0:
            raise ValueError("must not be negative")
        if value > self.longest.total_seconds():
            raise ValueError(f"must be at most {show_duration(self.longest)}")
        return float(value)

    def _check(self, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        if value > self.longest:
            raise ValueError(f"must be at most {show_duration(self.longest)}")
        if not self.zero and value == timedelta(0):
            raise ValueError("must be longer than 0s")
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        checked = core_schema.no_info_after_validator_function(self._check, handler(source))
        return core_schema.no_info_before_validator_function(self._parse, checked)


def up_to(longest: timedelta, *, zero: bool = False) -> DurationRange:
    """A duration field's bounds: `Annotated[timedelta, up_to(DAY)]` is longer than 0s and at
    most a day; with `zero`, 0s is allowed too."""
    if longest > LONGEST:
        raise ValueError(f"no plan duration may be longer than {show_duration(LONGEST)}")
    return DurationRange(longest=longest, zero=zero)


# Durations bounded only by LONGEST: zero or more (a pause, a delay), or longer than zero (an
# interval, a timeout). Fields that become timers or timeouts use `up_to` with less.
Duration = Annotated[timedelta, DurationRange()]
PositiveDuration = Annotated[timedelta, DurationRange(zero=False)]


def matching(pattern: str, problem: str) -> AfterValidator:
    """A text check whose problem says in words what `pattern` wants."""

    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(problem)
        return value

    return AfterValidator(check)


Name = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", max_length=63)]
# Short words a plan gives: a header scheme, a claim, a job, a key, an extension.
Label = Annotated[str, Field(min_length=1, max_length=256)]
# Free text people read: a description.
Description = Annotated[str, Field(max_length=2000)]
# A PromQL or SQL query.
Query = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
# A path on the worker's machine: no control characters, so no NUL byte reaches the OS.
FilePath = Annotated[
    str,
    Field(min_length=1, max_length=1024),
    matching(r"[^\x00-\x1f\x7f]+", "must not contain control characters"),
]
# An http(s) URL a probe or check requests.
HttpUrl = Annotated[
    str,
    Field(min_length=1, max_length=2048),
    matching(r"https?://\S+", "must be an http:// or https:// URL without spaces"),
]
HttpsUrl = Annotated[
    str,
    Field(min_length=1, max_length=2048),
    matching(r"https://\S+", "must be an https:// URL without spaces"),
]
EnvName = Annotated[
    str,
    Field(min_length=1, max_length=128),
    matching(
        r"[A-Za-z_][A-Za-z0-9_]*", "must be an environment variable name (letters, digits and _)"
    ),
]


M = TypeVar("M", bound=BaseModel)


def one_of(model: M, fields: Sequence[str], problem: str, *, exactly: bool = False) -> M:
    """`model` if it gives one of `fields` (just one, if `exactly`); else the `problem`.
    A field left at None or empty is not given."""
    given = [name for name in fields if getattr(model, name) not in (None, [], {})]
    if not given or (exactly and len(given) > 1):
        raise ValueError(problem)
    return model


def unique(
    items: Sequence[Any], path: str, key: Callable[[Any], object] = lambda item: item
) -> list[str]:
    """`path[i]: ...` for every item whose `key` an earlier item already has."""
    seen: dict[object, int] = {}
    problems = []
    for index, item in enumerate(items):
        value = key(item)
        if value in seen:
            problems.append(
                f"{path}[{index}]: {quoted(value)} is given twice (also at [{seen[value]}])"
            )
        else:
            seen[value] = index
    return problems


class StrictModel(BaseModel):
    """Base of everything a person writes (plans, profiles): unknown fields are errors,
    numbers are finite, strings at most `MAX_TEXT` characters unless a field says less. A
    validation error never repeats the value it refused (it may be a credential)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        str_max_length=MAX_TEXT,
        hide_input_in_errors=True,
    )


class SecretRef(StrictModel):
    """Where a secret lives. Only the reference enters workflow history; activities resolve it."""

    env: EnvName | None = None
    file: FilePath | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> SecretRef:
        return one_of(self, ("env", "file"), "give exactly one of `env` or `file`", exactly=True)


class Message(BaseModel):
    """Base of every message between processes: unknown fields are ignored, so a field can be
    added without breaking a running workflow; a validation error never repeats the value it
    refused."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)
