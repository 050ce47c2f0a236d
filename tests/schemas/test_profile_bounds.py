"""Health profiles are bounded like plans: finite numbers, durations within their fields'
bounds, bounded lists; each problem one line naming its field. The example plans and
profiles stay valid under every bound."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.budget import MAX_EVENTS, estimate
from schemas.health_profile import load_profile, parse_profile
from schemas.plan import load_plan
from schemas.problems import PlanError
from tests.support.health_profiles import profile_dict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def profile_problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(PlanError) as caught:
        parse_profile(yaml.safe_dump(data))
    return caught.value.problems


def with_check(index: int, **changes: Any) -> dict[str, Any]:
    data = profile_dict()
    data["checks"][index].update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            with_check(0, fail={"max": math.nan}),
            "checks[0].fail.max: must be a finite number",
        ),
        (
            with_check(0, warn={"min": -math.inf}),
            "checks[0].warn.min: must be a finite number",
        ),
        (
            profile_dict(schedule={"every": "99999999999d"}),
            "schedule.every: must be at most 30d",
        ),
        (
            profile_dict(schedule={"every": "10s", "jitter": -1}),
            "schedule.jitter: must not be negative",
        ),
        (
            with_check(1, timeout="10m"),
            "checks[1].timeout: must be at most 5m",
        ),
        (
            with_check(1, expect_status=[200] * 21),
            "checks[1].expect_status: must have at most 20 item(s)",
        ),
        (
            with_check(1, headers={"Bad Header": {"env": "TOKEN"}}),
            "checks[1].headers.Bad Header (the key): must be an HTTP header name: no spaces or ':'",
        ),
        (
            with_check(1, headers={"Authorization": {"env": "NOT-A-NAME"}}),
            "checks[1].headers.Authorization.env: must be an environment variable name "
            "(letters, digits and _)",
        ),
        (
            profile_dict(checks=[profile_dict()["checks"][1]] * 51),
            "checks: must have at most 50 item(s)",
        ),
    ],
)
def test_a_hostile_profile_value_gets_one_problem_naming_its_field(
    data: dict[str, Any], problem: str
) -> None:
    assert profile_problems(data) == [problem]


def test_a_profile_file_with_a_duplicate_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile_dict(), sort_keys=False) + "name: other\n")

    with pytest.raises(PlanError) as caught:
        load_profile(path)

    (problem,) = caught.value.problems
    assert problem.endswith("duplicate key 'name' (first on line 1)")


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (EXAMPLES / "plans").rglob("*.yaml") if "manifests" not in p.parts),
    ids=lambda p: str(p.relative_to(EXAMPLES)),
)
def test_every_example_plan_is_valid_and_within_the_budget(path: Path) -> None:
    plan = load_plan(path)
    found = estimate(plan)
    assert found.launch.events <= MAX_EVENTS
    assert all(phase.history.events <= MAX_EVENTS for phase in found.phases)


@pytest.mark.parametrize("path", sorted((EXAMPLES / "health").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_profile_is_valid(path: Path) -> None:
    assert load_profile(path).checks


def test_the_guarded_launch_is_aborted_unless_the_profile_says_pause() -> None:
    aborting = parse_profile(yaml.safe_dump(profile_dict(launch={"id": "checkout-2"})))
    pausing = parse_profile(
        yaml.safe_dump(profile_dict(launch={"id": "checkout-2", "on_critical_failure": "pause"}))
    )

    assert aborting.launch is not None
    assert aborting.launch.on_critical_failure == "abort"
    assert pausing.launch is not None
    assert pausing.launch.on_critical_failure == "pause"
    assert profile_problems(
        profile_dict(launch={"id": "checkout-2", "on_critical_failure": "stop"})
    ) == ["launch.on_critical_failure: Input should be 'abort' or 'pause'"]
