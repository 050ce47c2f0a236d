"""Plans and profiles read from YAML, with every problem in the user's own terms: one
`path: message` line each, the path as the user wrote it.

A document is refused before it is parsed when it is larger than `MAX_DOCUMENT_BYTES` or not
UTF-8 text, and while it is parsed when it repeats a key in a mapping, nests deeper than
`MAX_DEPTH` or expands (through aliases) to more than `MAX_NODES` values. Nothing but a
`PlanError` ever leaves `read_document` and `parse_document`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

from schemas.basics import quoted


class Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)
M = TypeVar("M", bound=BaseModel)

# The largest plan or profile file: a plan is copied into every phase's workflow input, and
# 256 KiB of YAML stays far below Temporal's 2 MB payload limit even with every default
# written out (the history budget, `schemas/budget.py`, checks the plan as serialized).
MAX_DOCUMENT_BYTES = 256 * 1024
# How deep mappings and lists may nest; a plan needs fewer than 12 levels.
MAX_DEPTH = 32
# How many values a document may hold once its aliases are expanded (a plan of the largest
# size written out has fewer): an alias to an alias to ... is refused, not expanded.
MAX_NODES = 100_000

# The tag of a branch of a union that is not told apart by a `kind` field: `<issuer>`.
_TAG = re.compile(r"^<[a-z_]+>$")
# A model validator that finds problems at places inside its model raises them one per line,
# each starting with its path relative to the model (`steps[2].weight: ...`).
_RELATIVE_PROBLEM = re.compile(r"^[a-z_][a-z0-9_]*(\[\d+\]|\.[A-Za-z0-9_-]+)*: ")


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
    raise_problems(problems)


def raise_problems(problems: Sequence[str]) -> None:
    """Raise `problems` (`path: message` lines, paths relative to the model validating) from
    a model validator; `describe_errors` puts each on its own line under the model's path."""
    if problems:
        raise ValueError("\n".join(problems))


class PlanError(ValueError):
    """A plan that cannot start; `problems` holds one `path: message` line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        # A key or value quoted from the document is shown escaped: a problem is one line,
        # and no control character in a plan reaches the terminal that prints it.
        self.problems = [printable(problem) for problem in problems]
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(self.problems))


def printable(text: str) -> str:
    """`text` with every character that is not printable (newlines, escapes) escaped."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


_MESSAGES = {
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
    "string_too_short": "must not be empty",
    "string_too_long": "must be at most {max_length} characters",
    "string_pattern_mismatch": "must match {pattern}",
    "string_type": "must be text",
    "union_tag_invalid": "must be one of: {expected_tags}",
    "union_tag_not_found": "is required",
    "finite_number": "must be a finite number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "time_delta_type": "is not a duration; write e.g. 30s, 5m, 1h30m or 500ms",
}


_NO_DATA = object()


def _path(loc: tuple[int | str, ...], branches: Collection[str], data: Any = _NO_DATA) -> str:
    """The user's path to `loc`. With the document's `data`, a part of `loc` that is not in
    it (the branch pydantic tried of a union: `flagd`, `IdentitySpec`) is left out, unless
    it is the last part (a field that is missing)."""
    path = ""
    previous: int | str | None = None
    node = data
    for index, part in enumerate(loc):
        present = node is not _NO_DATA and (
            (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node))
            or (isinstance(node, dict) and part in node)
        )
        if present:
            node = node[part]
        elif node is not _NO_DATA and part != "[key]" and index < len(loc) - 1:
            continue  # a branch of a union, not a place in the document
        if isinstance(part, int):
            path += f"[{part}]"
        elif (part in branches and isinstance(previous, int)) or _TAG.match(part):
            pass  # the discriminator's branch name is not part of the user's path
        elif part == "[key]":
            path += " (the key)"
        else:
            name = part if len(part) <= 64 else part[:63] + "…"
            path += f".{name}" if path else name
        previous = part
    return path


def _message(item: Any) -> str:
    context = {
        key: f"{value:g}" if isinstance(value, float) else value
        for key, value in (item.get("ctx") or {}).items()
    }
    if item["type"] == "model_type" and context.get("class_name") == "SecretRef":
        return "must be a secret reference, {env: NAME} or {file: PATH}; never the secret itself"
    template = _MESSAGES.get(item["type"])
    if template is not None:
        return template.format(**context)
    message = str(item["msg"]).removeprefix("Value error, ")
    if item["type"] == "time_delta_parsing":
        detail = message.partition(", ")[2] or "not understood"
        return f"is not a duration ({detail}); write e.g. 30s, 5m, 1h30m or 500ms"
    return message


def describe_errors(
    error: ValidationError,
    branches: Collection[str] = (),
    document: str = "plan",
    data: Any = _NO_DATA,
) -> list[str]:
    """One `path: message` line per problem, in the document's own terms; `branches` are the
    tags of discriminated unions, left out of paths (`phases[0].steps`, not
    `phases[0].soft_launch.steps`), as is, given the document's `data`, every branch of a
    union the document does not spell out; a problem of the whole document says `(plan)`."""
    lines: list[str] = []
    for item in error.errors():
        message = _message(item)
        path = _path(tuple(item["loc"]), branches, data)
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            discriminator = str((item.get("ctx") or {}).get("discriminator", "kind"))
            path += "." + discriminator.strip("'")
        for line in message.split("\n") if item["type"] == "value_error" else [message]:
            if item["type"] == "value_error" and _RELATIVE_PROBLEM.match(line):
                # A model validator's problem at a place inside its model.
                lines.append(f"{path}{'' if not path or line[0] == '[' else '.'}{line}")
            else:
                lines.append(f"{path or f'({document})'}: {line}")
    return lines


def read_document(path: Path, document: str = "plan") -> str:
    """The text of a plan or profile file: at most `MAX_DOCUMENT_BYTES` are ever read, and the
    file must be UTF-8 text."""
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            data = b"" if size > MAX_DOCUMENT_BYTES else file.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as err:
        raise PlanError(str(path), [f"(file): cannot read: {err.strerror}"]) from None
    if size > MAX_DOCUMENT_BYTES or len(data) > MAX_DOCUMENT_BYTES:
        raise PlanError(str(path), [f"(file): {_too_large(document)}"])
    return _decoded(data, str(path))


def _too_large(document: str) -> str:
    return f"larger than {MAX_DOCUMENT_BYTES // 1024} KiB, the most a {document} may be"


def _decoded(data: bytes, source: str) -> str:
    nul = data.find(b"\0")
    if nul >= 0:
        raise PlanError(
            source,
            [f"(file): not UTF-8 text: a NUL byte at offset {nul}, as in a binary file"],
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise PlanError(
            source,
            [
                f"(file): not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} "
                f"(line {line}) is not UTF-8; save the file as UTF-8"
            ],
        ) from None


class _DocumentLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing duplicate keys, deep nesting and alias bombs."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values = 0
        self._sizes: dict[int, int] = {}  # node id -> values it holds, aliases expanded

    def _count(self, values: int, mark: Any) -> None:
        self._values += values
        if self._values > MAX_NODES:
            raise ComposerError(
                None,
                None,
                f"the document holds more than {MAX_NODES} values once its aliases are "
                "expanded; write it out without aliases of aliases",
                mark,
            )

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self.check_event()  # reads the next event into `current_event`, leaving it unread
        event: yaml.Event = self.current_event
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            anchored = self.anchors.get(event.anchor)
            if anchored is not None:
                size = self._sizes.get(id(anchored))
                if size is None:  # the anchored node is still being read: it holds the alias
                    raise ComposerError(
                        None,
                        None,
                        f"alias *{quoted(event.anchor)[1:-1]} refers to a value that contains it",
                        mark,
                    )
                self._count(size, mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
        before = self._values
        self._count(1, mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._sizes[id(node)] = self._values - before
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as err:
            # e.g. an integer of more digits than Python reads, a date that does not exist
            why = str(err).split(";")[0]
            raise ConstructorError(
                None, None, f"cannot read this value: {why}", node.start_mark
            ) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if isinstance(node, MappingNode):
            first: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in are overridden by the mapping's own, as YAML says
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: the constructor says so below
                if earlier is not key_node:
                    raise ConstructorError(
                        None,
                        None,
                        f"duplicate key {quoted(key)} "
                        f"(first on line {earlier.start_mark.line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_DocumentLoader)
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        raise PlanError(
            source,
            [
                f"(yaml) line {line}: unacceptable character #x{err.character:04x}; "
                "control characters are not allowed"
            ],
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise PlanError(source, [f"(yaml) {where}: {getattr(err, 'problem', err)}"]) from None
    except (ValueError, RecursionError) as err:
        raise PlanError(source, [f"(yaml): a value cannot be read: {str(err)[:200]}"]) from None


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
    if len(text) > MAX_DOCUMENT_BYTES or (
        len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES
    ):
        raise PlanError(source, [f"({document}): {_too_large(document)}"])
    data = _load_yaml(text, source)
    if not isinstance(data, dict):
        raise PlanError(source, [f"({document}): must be a mapping with {fields}, ..."])
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise PlanError(source, describe_errors(err, branches, document, data)) from None
    except RecursionError:
        raise PlanError(source, [f"({document}): a value refers to itself"]) from None


def as_received(model: M, *, source: str, document: str, branches: Collection[str] = ()) -> M:
    """`model` validated again from its JSON, as a worker receives it: whatever the client did
    to it after parsing (paths made absolute) must still pass, or the launch would fail on the
    worker instead of at `phasegate validate`."""
    sent = model.model_dump_json()
    try:
        return type(model).model_validate_json(sent)
    except ValidationError as err:
        raise PlanError(
            source, describe_errors(err, branches, document, json.loads(sent))
        ) from None
