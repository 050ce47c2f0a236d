"""The history budget: its estimate covers real histories, and a plan whose launch could come
near Temporal's limits is refused with the workflow that would, by phase."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.testing import ActivityEnvironment

from activities.errors import ConfigurationError
from activities.kube import KubeActivities, KubeConnection
from schemas import budget
from schemas.budget import MAX_BYTES, MAX_EVENTS, MAX_PAYLOAD, MAX_PLAN_BYTES, estimate
from schemas.kube_messages import ManifestsRequest
from schemas.launch_messages import LaunchInput
from schemas.plan import MAX_PHASES, LaunchPlan, parse_plan
from schemas.problems import MAX_DOCUMENT_BYTES, PlanError
from tests.support.histories import HISTORIES
from tests.support.plans import plan_dict, plan_problems

ADVICE = "use fewer phases, steps, metrics, checks or gates, or a smaller count"


def test_the_budget_stays_well_inside_temporals_limits() -> None:
    assert MAX_EVENTS < 10_240  # Temporal warns here, and terminates at 51,200
    assert MAX_BYTES <= 50 * 1024 * 1024 * 0.4  # terminates at 50 MB
    assert MAX_PAYLOAD <= 2 * 1024 * 1024 * 0.9  # a payload may be 2 MB
    # Every copy of the largest plan the launch's history holds still leaves room.
    assert MAX_PLAN_BYTES * (MAX_PHASES + 2) < MAX_BYTES * 0.6
    assert MAX_DOCUMENT_BYTES <= MAX_PLAN_BYTES


LABELS = ("background", "watch")


def recorded() -> list[tuple[str, LaunchPlan, dict[str, int]]]:
    """(scenario, plan, events per workflow: `launch` and each phase by name) of every
    committed launch history."""
    scenarios = []
    for launch in sorted(HISTORIES.glob("*.launch.json")):
        scenario = launch.name.removesuffix(".launch.json")
        started = json.loads(launch.read_text())["events"][0]
        payload = started["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]
        plan = LaunchInput.model_validate_json(base64.b64decode(payload["data"])).plan
        events = {"launch": len(json.loads(launch.read_text())["events"])}
        for phase in HISTORIES.glob(f"{scenario}.*.json"):
            name = phase.name.removeprefix(f"{scenario}.").removesuffix(".json")
            if name != "launch":
                events[name] = len(json.loads(phase.read_text())["events"])
        scenarios.append((scenario, plan, events))
    return scenarios


def test_the_estimate_covers_every_recorded_history() -> None:
    scenarios = recorded()
    assert len(scenarios) >= 10
    kinds = set()
    for scenario, plan, real in scenarios:
        found = estimate(plan)
        estimated = {"launch": found.launch.events} | {
            phase.name: est.history.events
            for phase, est in zip(plan.phases, found.phases, strict=True)
        }
        # Background and watch analysis workflows: each run of one.
        estimated |= {f"analysis-{label}": found.continuous.events for label in LABELS}
        for workflow, events in real.items():
            assert events <= estimated[workflow], f"{scenario}: {workflow}"
        kinds |= {phase.kind for phase in plan.phases if phase.name in real}
    # Every kind of phase is calibrated against a real run.
    assert kinds == {
        "infra_setup",
        "security_validation",
        "soft_launch",
        "full_launch",
        "migration_cutover",
    }


def analysis_plan(steps: int, count: int, metrics: int = 1, phases: int = 1) -> dict[str, Any]:
    """A plan of soft launch phases whose every step runs `metrics` metrics `count` times."""
    data = plan_dict()
    metric = {**data["analysis"]["error-rate"], "count": count}
    data["analysis"] = {f"m{n}": metric for n in range(metrics)}
    data["phases"] = [
        {
            "name": f"soft-{p}",
            "kind": "soft_launch",
            "steps": [
                {"weight": (n + 1) / 10, "analysis": list(data["analysis"])} for n in range(steps)
            ],
        }
        for p in range(phases)
    ]
    return data


def test_a_phase_over_the_event_budget_is_refused_by_its_index() -> None:
    data = analysis_plan(steps=10, count=100, metrics=1)
    data["phases"].insert(0, plan_dict()["phases"][1])  # a full launch, no analysis

    (problem,) = plan_problems(data)

    assert problem.startswith("phases[1]: would write about ")
    events = int(problem.split("about ")[1].split(" ")[0])
    assert events > MAX_EVENTS
    assert problem.endswith(f"history events; at most {MAX_EVENTS}: {ADVICE}")


def test_a_launch_over_the_budget_is_refused_though_each_phase_fits() -> None:
    data = analysis_plan(steps=2, count=200, metrics=1, phases=12)
    found = estimate(LaunchPlan.model_validate(analysis_plan(steps=2, count=200, phases=1)))
    assert found.phases[0].history.events <= MAX_EVENTS

    problems = plan_problems(data)

    assert problems[0].startswith("phases: the launch, over all its phases, would write about ")
    assert problems[0].endswith(f"history events; at most {MAX_EVENTS}: {ADVICE}")
    assert all(problem.startswith("phases: ") for problem in problems)


def test_the_largest_count_fits_on_its_own() -> None:
    data = analysis_plan(steps=1, count=500)
    plan = parse_plan(yaml.safe_dump(data))
    assert estimate(plan).phases[0].history.events <= MAX_EVENTS


def test_a_plan_too_large_to_send_is_refused_by_validate() -> None:
    """A small file can still make a huge plan: every alias is written out when it is sent."""
    data = plan_dict()
    del data["phases"]
    lines = [yaml.safe_dump(data, sort_keys=False), "phases:"]
    for p in range(10):
        lines += [f"  - name: p{p}", "    kind: soft_launch", "    steps:"]
        for n in range(100):
            gate = "&gate {description: " + "x" * 2000 + "}" if p == n == 0 else "*gate"
            lines.append(f"      - {{weight: {(n + 1) / 2}, approval: {gate}}}")
    text = "\n".join(lines) + "\n"
    assert len(text.encode()) < MAX_DOCUMENT_BYTES

    with pytest.raises(PlanError) as caught:
        parse_plan(text)

    (problem,) = caught.value.problems
    assert problem.startswith("(plan): as the workers receive it the plan is ")
    assert problem.endswith(f"KiB; at most {MAX_PLAN_BYTES // 1024} KiB: {ADVICE}")


def test_the_estimate_grows_with_what_the_workflows_do() -> None:
    small = estimate(LaunchPlan.model_validate(analysis_plan(steps=1, count=3)))
    more_steps = estimate(LaunchPlan.model_validate(analysis_plan(steps=2, count=3)))
    more_count = estimate(LaunchPlan.model_validate(analysis_plan(steps=1, count=6)))

    per_measurement = budget.ACTIVITY + budget.TIMER + budget.SIGNAL_OUT
    assert (
        more_count.phases[0].history.events - small.phases[0].history.events >= 3 * per_measurement
    )
    assert more_steps.phases[0].history.events > small.phases[0].history.events
    assert more_steps.launch.events > small.launch.events


def test_an_infra_phase_applies_no_more_objects_than_budgeted(tmp_path: Path) -> None:
    """The budget cannot see into manifest files; the worker refuses more objects than it
    assumed, before it touches the cluster (no cluster is reachable here)."""
    manifests = tmp_path / "many.yaml"
    manifests.write_text(
        "".join(
            f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{n}}}\n"
            for n in range(budget.MANIFEST_OBJECTS + 1)
        )
    )
    kube = KubeActivities(KubeConnection(kubeconfig=str(tmp_path / "no-kubeconfig")))
    request = ManifestsRequest(
        paths=[str(manifests)], namespace="checkout", launch_id="launch-1", service="checkout"
    )

    with pytest.raises(ConfigurationError) as caught:
        ActivityEnvironment().run(kube.read_manifests, request)

    assert str(caught.value) == (
        f"manifests: {budget.MANIFEST_OBJECTS + 1} objects; a phase applies at most "
        f"{budget.MANIFEST_OBJECTS} (its launch's history is budgeted for that many)"
    )
