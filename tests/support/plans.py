"""Plan builders: a valid plan in one place, so each test states only what differs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.plan import LaunchPlan, parse_plan
from schemas.problems import PlanError


def plan_dict(
    flag_file: Path | str = "/tmp/phasegate-test/flags.json", **overrides: Any
) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "service": "checkout",
        "version": "2.0.0",
        "targets": {
            "prometheus": {"url": "http://127.0.0.1:9090"},
            "router": {"kind": "flagd", "flag_file": str(flag_file), "flag_key": "checkout-v2"},
        },
        "approvals": {
            "identity": "none",
            "approvers": ["alice", "bob"],
            "timeout": "1h",
            "on_timeout": "reject",
        },
        "analysis": {
            "error-rate": {
                "query": 'sum(rate(errors{variant="{{variant}}"}[10s]))',
                "max": 0.05,
                "interval": "5s",
                "count": 3,
            }
        },
        "phases": [
            {
                "name": "soft-launch",
                "kind": "soft_launch",
                "gates": {"before": True},
                "steps": [
                    {"weight": 1, "analysis": ["error-rate"]},
                    {"weight": 10, "approval": True},
                ],
            },
            {
                "name": "full-launch",
                "kind": "full_launch",
                "steps": [{"weight": 50, "pause": "30s"}, {"weight": 100}],
            },
        ],
    }
    plan.update(overrides)
    return plan


def plan_problems(data: dict[str, Any]) -> list[str]:
    """The problems found in plan `data`, written out as a plan file; it must have some."""
    with pytest.raises(PlanError) as caught:
        parse_plan(yaml.safe_dump(data))
    return caught.value.problems


def make_plan(**overrides: Any) -> LaunchPlan:
    return LaunchPlan.model_validate(plan_dict(**overrides))


def exposure_only(steps: list[dict[str, Any]], **overrides: Any) -> LaunchPlan:
    """A plan with one full-launch phase of the given steps and no gates."""
    return make_plan(
        phases=[{"name": "full-launch", "kind": "full_launch", "steps": steps}], **overrides
    )


def migration_phase(**changes: Any) -> dict[str, Any]:
    """A valid migration_cutover phase (DSN from the environment, paths relative to the plan);
    `changes` replace its keys."""
    spec: dict[str, Any] = {
        "name": "migrate",
        "kind": "migration_cutover",
        "source": {"env": "CHECKOUT_DSN"},
        "migrations": "migrations/checkout",
        "backup_dir": "backups",
        "cutover": {"sql": {"forward": "SELECT 1", "backward": "SELECT 2"}},
    }
    spec.update(changes)
    return spec
