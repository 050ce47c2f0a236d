"""The plan schema: every problem is reported with its path, and nothing invalid gets through."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from schemas.exposure_spec import ExposurePhase
from schemas.plan import LaunchPlan, load_plan, parse_plan
from schemas.problems import PlanError
from schemas.targets import FlagdRouter
from tests.support.plans import plan_dict, plan_problems


def exposure_phase(plan: LaunchPlan, index: int) -> ExposurePhase:
    phase = plan.phases[index]
    if not isinstance(phase, ExposurePhase):
        pytest.fail(f"phases[{index}] is a {type(phase).__name__}, not a soft or full launch")
    return phase


def test_a_valid_plan_parses_with_defaults_filled() -> None:
    plan = parse_plan(yaml.safe_dump(plan_dict()))
    assert exposure_phase(plan, 1).steps[0].pause == timedelta(seconds=30)
    assert plan.phases[0].gate_ids() == [
        "soft-launch.before",
        "soft-launch.step-1.analysis",
        "soft-launch.step-2",
    ]
    approval = exposure_phase(plan, 0).steps[1].approval
    if approval is None:
        pytest.fail("phases[0].steps[1] has no approval gate; `approval: true` was dropped")
    gate = plan.gate(approval)
    assert (gate.approvers, gate.timeout, gate.on_timeout) == (
        ["alice", "bob"],
        timedelta(hours=1),
        "reject",
    )


def test_every_problem_is_listed_with_its_path() -> None:
    data = plan_dict()
    data["phases"][1]["steps"][1]["weight"] = 150
    data["phases"][0]["steps"][0]["pause"] = "soon"
    data["phases"][0]["colour"] = "blue"
    data["approvals"]["approvers"] = []
    assert plan_problems(data) == [
        "approvals.approvers: must have at least 1 item(s)",
        "phases[0].steps[0].pause: 'soon' is not a duration; write e.g. 30s, 5m, 1h30m or 500ms",
        "phases[0].colour: is not a known field",
        "phases[1].steps[1].weight: must be <= 100",
    ]


def test_references_and_phase_rules_are_checked() -> None:
    data = plan_dict()
    data["phases"][0]["steps"][0]["analysis"] = ["latency"]
    data["phases"][1]["name"] = "soft-launch"
    assert plan_problems(data) == [
        "phases[0].steps[0].analysis: no analysis named 'latency' (defined: error-rate)",
        "phases[1].name: 'soft-launch' is used by an earlier phase",
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"steps": [{"weight": 20}, {"weight": 10}]},
            "phases[0].steps[1].weight: must be above 20 (the weight of steps[0]); each step "
            "exposes more users than the one before",
        ),
        ({"steps": [{"weight": 100}]}, "phases[0].steps[0].weight: a soft launch stays below 100%"),
        (
            {"kind": "migration"},
            "phases[0].kind: must be one of: 'infra_setup', 'security_validation', 'soft_launch', "
            "'full_launch', 'migration_cutover'",
        ),
    ],
)
def test_phase_rules(change: dict[str, object], expected: str) -> None:
    data = plan_dict()
    data["phases"][0].update(change)
    assert any(expected in line for line in plan_problems(data)), plan_problems(data)


def test_full_launch_must_reach_everyone() -> None:
    data = plan_dict()
    data["phases"][1]["steps"] = [{"weight": 50}]
    assert plan_problems(data) == [
        "phases[1].steps[0].weight: a full launch must end with a step of weight 100"
    ]


def test_metrics_need_a_condition_and_baselines_need_variants() -> None:
    data = plan_dict(
        analysis={"m": {"query": "up"}, "b": {"query": "up", "baseline": {"max_ratio": 2}}}
    )
    data["phases"][0]["steps"][0]["analysis"] = []
    assert plan_problems(data) == [
        "analysis.b: `baseline` compares variants, so the query must contain {{variant}}",
        "analysis.m: give a success condition: `max`, `min`, `baseline` or `compare`",
    ]


def test_secrets_are_references_never_values() -> None:
    data = plan_dict(
        notifications=[
            {"name": "ops", "url": "http://x", "headers": {"Authorization": "Bearer abc"}}
        ]
    )
    assert plan_problems(data)[0].startswith("notifications[0].headers.Authorization:")
    data = plan_dict(
        notifications=[
            {
                "name": "ops",
                "url": "http://x",
                "headers": {"Authorization": {"env": "T", "file": "f"}},
            }
        ]
    )
    assert plan_problems(data) == [
        "notifications[0].headers.Authorization: give exactly one of `env` or `file`"
    ]


def test_yaml_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("service: checkout\nphases: [\n")
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    assert caught.value.problems[0].startswith("(yaml) line 3")


def test_relative_flag_files_resolve_against_the_plan(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan_dict(flag_file="flags/checkout.json")))
    router = load_plan(path).targets.router
    if not isinstance(router, FlagdRouter):
        pytest.fail(f"the plan's router parsed as {type(router).__name__}, not FlagdRouter")
    assert router.flag_file == str(tmp_path / "flags" / "checkout.json")


def test_missing_file_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path / "absent.yaml")
