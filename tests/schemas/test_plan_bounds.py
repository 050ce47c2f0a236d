"""Every value a plan gives is bounded: durations, numbers, weights, approver lists, sizes of
lists, dicts and strings. Each hostile value gets one problem line naming its field, and
nothing but a `PlanError` ever leaves `parse_plan`."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from schemas.gate_spec import GateSpec
from schemas.health_profile import HealthProfile
from schemas.plan import LaunchPlan, parse_plan
from schemas.problems import PlanError
from tests.support.plans import plan_dict, plan_problems

Change = Callable[[dict[str, Any]], None]


def at(path: str, value: Any) -> Change:
    """A change setting the plan's field at `path` (`phases.1.steps.0.pause`) to `value`."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = data
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def problems_of(change: Change) -> list[str]:
    data = plan_dict()
    change(data)
    return plan_problems(data)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        # durations: never negative, never beyond their field's bound, never an overflow
        (at("phases.1.steps.0.pause", -5), "phases[1].steps[0].pause: must not be negative"),
        (
            at("analysis.error-rate.initial_delay", -3),
            "analysis.error-rate.initial_delay: must not be negative",
        ),
        (at("approvals.timeout", "3000000d"), "approvals.timeout: must be at most 30d"),
        (at("approvals.timeout", "99999999999d"), "approvals.timeout: must be at most 30d"),
        (at("approvals.timeout", 10**30), "approvals.timeout: must be at most 30d"),
        (at("approvals.timeout", "P40D"), "approvals.timeout: must be at most 30d"),
        (at("approvals.timeout", "-PT5S"), "approvals.timeout: must not be negative"),
        (at("approvals.timeout", 0), "approvals.timeout: must be longer than 0s"),
        (
            at("approvals.timeout", math.inf),
            "approvals.timeout: must be a finite number of seconds",
        ),
        (
            at("approvals.timeout", math.nan),
            "approvals.timeout: must be a finite number of seconds",
        ),
        (
            at("approvals.timeout", "1e400"),
            "approvals.timeout: '1e400' is not a duration; write e.g. 30s, 5m, 1h30m or 500ms",
        ),
        (
            at("approvals.timeout", "P99999999999D"),
            "approvals.timeout: is not a duration (a numeric value in the duration is too "
            "large); write e.g. 30s, 5m, 1h30m or 500ms",
        ),
        (at("phases.1.steps.0.pause", "8d"), "phases[1].steps[0].pause: must be at most 7d"),
        (
            at("analysis.error-rate.interval", "2h"),
            "analysis.error-rate.interval: must be at most 1h",
        ),
        (
            at("analysis.error-rate.initial_delay", "25h"),
            "analysis.error-rate.initial_delay: must be at most 1d",
        ),
        # numbers: finite
        (
            at("analysis.error-rate.max", math.nan),
            "analysis.error-rate.max: must be a finite number",
        ),
        (
            at("analysis.error-rate.max", math.inf),
            "analysis.error-rate.max: must be a finite number",
        ),
        (
            at("analysis.error-rate.baseline", {"max_ratio": math.inf}),
            "analysis.error-rate.baseline.max_ratio: must be a finite number",
        ),
        (
            at("analysis.error-rate.baseline", {"min_ratio": 1, "tolerance": math.nan}),
            "analysis.error-rate.baseline.tolerance: must be a finite number",
        ),
        (
            at("phases.1.steps.0.weight", math.nan),
            "phases[1].steps[0].weight: must be a finite number",
        ),
        # weights: strictly increasing within (0, 100]
        (at("phases.0.steps.0.weight", 0), "phases[0].steps[0].weight: must be > 0"),
        (
            at("phases.1.steps", [{"weight": 50}, {"weight": 50}, {"weight": 100}]),
            "phases[1].steps[1].weight: must be above 50 (the weight of steps[0]); each step "
            "exposes more users than the one before",
        ),
        # gates: an approver list given is never empty, a quorum always reachable
        (
            at("phases.0.steps.1.approval", {"approvers": []}),
            "phases[0].steps[1].approval.approvers: must have at least 1 item(s)",
        ),
        (
            at("phases.0.gates", {"before": {"approvers": ["alice"], "min_approvals": 2}}),
            "phases[0].gates.before.min_approvals: 2 people must approve, but approvers names "
            "only 1; name more people, a group:NAME or lower min_approvals",
        ),
        # analysis: a metric can always fail, and never succeed on no data at all
        (
            at("analysis.error-rate.failure_limit", 3),
            "analysis.error-rate.failure_limit: must be below count (3), or the metric could "
            "never fail",
        ),
        (
            at("analysis.error-rate.inconclusive_limit", 5),
            "analysis.error-rate.inconclusive_limit: must be below count (3), or the metric "
            "could never be inconclusive",
        ),
        (at("analysis.error-rate.count", 10**30), "analysis.error-rate.count: must be <= 500"),
        # sizes: lists, dicts, strings
        (
            at(
                "phases.1.steps",
                [{"weight": (n + 1) / 100} for n in range(9_999)] + [{"weight": 100}],
            ),
            "phases[1].steps: must have at most 100 item(s)",
        ),
        (at("description", "x" * 2001), "description: must be at most 2000 characters"),
        (at("version", "1" * 129), "version: must be at most 128 characters"),
        (
            at("analysis.error-rate.query", "up" * 3000),
            "analysis.error-rate.query: must be at most 4096 characters",
        ),
        (
            at("phases.0.steps.0.analysis", ["error-rate", "error-rate"]),
            "phases[0].steps[0].analysis[1]: 'error-rate' is given twice (also at [0])",
        ),
    ],
)
def test_a_hostile_value_gets_one_problem_naming_its_field(change: Change, problem: str) -> None:
    assert problems_of(change) == [problem]


def test_too_many_phases_and_analyses_are_refused() -> None:
    data = plan_dict()
    metric = data["analysis"]["error-rate"]
    data["analysis"] = {f"m{n}": metric for n in range(21)}
    data["phases"] = [
        {"name": f"p{n}", "kind": "soft_launch", "steps": [{"weight": 1}]} for n in range(21)
    ]
    assert plan_problems(data) == [
        "analysis: must have at most 20 item(s)",
        "phases: must have at most 20 item(s)",
    ]


def test_a_gate_never_takes_the_defaults_for_what_it_gives() -> None:
    plan = parse_plan(yaml.safe_dump(plan_dict()))
    gate = plan.gate(GateSpec(approvers=["carol"], min_approvals=1))
    assert (gate.approvers, gate.min_approvals, gate.timeout) == (
        ["carol"],
        1,
        timedelta(hours=1),
    )
    assert plan.gate(GateSpec()).approvers == ["alice", "bob"]


# --- every list, dict and string of a plan or profile has a bound -----------------------


def unbounded(model: type[BaseModel]) -> list[str]:
    """Where `model`'s JSON schema lets a list, a dict, a key or a string grow without bound."""
    schema = model.model_json_schema()
    definitions = schema.get("$defs", {})
    found: list[str] = []

    def walk(node: dict[str, Any], path: str, seen: frozenset[str]) -> None:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name not in seen:
                walk(definitions[name], path, seen | {name})
            return
        for alternative in node.get("anyOf", []) + node.get("oneOf", []):
            walk(alternative, path, seen)
        kind = node.get("type")
        if kind == "string" and "enum" not in node and "const" not in node:
            if "maxLength" not in node and node.get("format") != "duration":
                found.append(f"{path}: a string without maxLength")
        elif kind == "array":
            if "maxItems" not in node:
                found.append(f"{path}: a list without maxItems")
            walk(node.get("items", {}), f"{path}[]", seen)
        elif kind == "object":
            for key, value in node.get("properties", {}).items():
                walk(value, f"{path}.{key}", seen)
            values = [
                *node.get("patternProperties", {}).values(),
                *(
                    [node["additionalProperties"]]
                    if isinstance(node.get("additionalProperties"), dict)
                    else []
                ),
            ]
            if values:
                if "maxProperties" not in node:
                    found.append(f"{path}: a dict without maxProperties")
                if "maxLength" not in node.get("propertyNames", {}):
                    found.append(f"{path}: a dict whose keys have no maxLength")
            for value in values:
                walk(value, f"{path}{{}}", seen)

    walk(schema, model.__name__, frozenset())
    return found


@pytest.mark.parametrize("model", [LaunchPlan, HealthProfile])
def test_every_list_dict_and_string_is_bounded(model: type[BaseModel]) -> None:
    assert unbounded(model) == []


def test_the_bound_check_sees_an_unbounded_field() -> None:
    class Loose(BaseModel):
        names: list[str]
        labels: dict[str, int]

    assert unbounded(Loose) == [
        "Loose.names: a list without maxItems",
        "Loose.names[]: a string without maxLength",
        "Loose.labels: a dict without maxProperties",
        "Loose.labels: a dict whose keys have no maxLength",
    ]


# --- whatever a field holds, parse_plan raises nothing but PlanError --------------------

HOSTILE_VALUES: list[Any] = [
    None,
    -1,
    10**100,
    math.nan,
    -math.inf,
    "",
    "x" * 5000,
    "\x00\u202e",
    "99999999999d",
    [None] * 200,
    {"": {"": {}}},
]


def leaves(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every value in `data`, containers included."""
    if path:
        yield path
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaves(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from leaves(value, (*path, index))


def replaced(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    node: Any = changed
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return changed


PROBLEM_LINE = re.compile(r"^(\((plan|yaml|file)\)|[\w\-\[\].… ()]+?)( line \d+.*)?: \S")


def test_no_value_anywhere_escapes_as_anything_but_a_plan_error() -> None:
    base = plan_dict()
    refused = 0
    for path in leaves(base):
        for value in HOSTILE_VALUES:
            text = yaml.safe_dump(replaced(base, path, value), allow_unicode=True)
            problems = refusal(text)
            refused += bool(problems)
            for line in problems:
                assert PROBLEM_LINE.match(line), (path, value, line)
                assert len(line) < 1000, (path, value, line[:200])
    assert refused > 300


def refusal(text: str) -> list[str]:
    """The problems `parse_plan` finds in `text`, or [] if it takes it; any other exception
    fails the test."""
    try:
        parse_plan(text)
    except PlanError as err:
        return err.problems
    return []


def test_group_approvers_need_a_proven_identity() -> None:
    defaults = plan_dict()
    defaults["approvals"] = {"identity": "none", "approvers": ["alice", "group:ops"]}
    gate = plan_dict()
    gate["approvals"] = {"identity": "none", "approvers": ["alice"]}
    gate["phases"][0]["gates"] = {"before": {"approvers": ["group:sre"]}}
    found = []
    for data in (defaults, gate):
        with pytest.raises(PlanError) as caught:
            parse_plan(yaml.safe_dump(data))
        found.extend(caught.value.problems)
    assert [line.split(":")[0] for line in found] == [
        "approvals.approvers[1]",
        "phases[0].gates.before.approvers[0]",
    ]
    assert all("with `identity: none` name people or `*`" in line for line in found)
