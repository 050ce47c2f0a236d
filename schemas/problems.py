"""Plans and profiles read from YAML, with every problem in the user's own terms: one
`path: message` line each, the path as the user wrote it."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import yaml
from pydantic import BaseModel, ValidationError


class Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)
M = TypeVar("M", bound=BaseModel)
# A problem `check_items` found names its item first: `phases[2].name: ...`.
_ITEM_PATH = re.compile(r"^[a-z_]+\[\d+\]")


def check_items(
    items: Sequence[N], path: str, noun: str, check: Callable[[int, N], Iterable[str]]
) -> None:
    """Raise every problem of a list of named items at once, item by item in order: a name
    an earlier item already has (`phases[2].name: ...`), then what `check` finds."""
    problems: list[str] = []
    for index, item in enumerate(items):
        if item.name in [earlier.name for earlier in items[:index]]:
            problems.append(f"{path}[{index}].name: {item.name!r} is used by an earlier {noun}")
        problems.extend(check(index, item))
    if problems:
        raise ValueError("; ".join(problems))


class PlanError(ValueError):
    """A plan that cannot start; `problems` holds one `path: message` line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))


_MESSAGES = {
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "too_short": "must have at least {min_length} item(s)",
    "string_too_short": "must not be empty",
    "string_pattern_mismatch": "must match {pattern}",
    "union_tag_invalid": "must be one of: {expected_tags}",
    "union_tag_not_found": "is required",
}


def _path(loc: tuple[int | str, ...], branches: Collection[str]) -> str:
    path = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in branches and isinstance(previous, int):
            pass  # the discriminator's branch name is not part of the user's path
        else:
            path += f".{part}" if path else str(part)
        previous = part
    return path


def describe_errors(
    error: ValidationError, branches: Collection[str] = (), document: str = "plan"
) -> list[str]:
    """One `path: message` line per problem, in the document's own terms; `branches` are the
    tags of discriminated unions, left out of paths (`phases[0].steps`, not
    `phases[0].soft_launch.steps`); a problem of the whole document says `(plan)`."""
    lines: list[str] = []
    for item in error.errors():
        template = _MESSAGES.get(item["type"])
        context = {
            key: f"{value:g}" if isinstance(value, float) else value
            for key, value in (item.get("ctx") or {}).items()
        }
        if template is not None:
            message = template.format(**context)
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
        path = _path(tuple(item["loc"]), branches) or f"({document})"
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path += "." + str(context.get("discriminator", "kind")).strip("'")
        if item["type"] == "value_error" and _ITEM_PATH.match(message):
            lines.extend(message.split("; "))  # `check_items`' problems, each with its path
            continue
        lines.append(f"{path}: {message}")
    return lines


def read_document(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise PlanError(str(path), [f"(file): cannot read: {err.strerror}"]) from None


def parse_document(
    text: str,
    model: type[M],
    *,
    source: str,
    document: str,
    fields: str,
    branches: Collection[str] = (),
) -> M:
    """A YAML `document` (a plan, a profile) as `model`, or a `PlanError` with every problem:
    where the YAML is broken, or each field that does not validate."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise PlanError(source, [f"(yaml) {where}: {getattr(err, 'problem', err)}"]) from None
    if not isinstance(data, dict):
        raise PlanError(source, [f"({document}): must be a mapping with {fields}, ..."])
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise PlanError(source, describe_errors(err, branches, document)) from None
