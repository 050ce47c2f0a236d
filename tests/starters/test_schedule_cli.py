"""`phasegate schedule ...` against the dev server's real Schedules; profiles checked offline.

Plain `def` tests: each command runs its own `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import ScheduleOverlapPolicy
from temporalio.testing import WorkflowEnvironment

from starters import schedules
from tests.support.cli import against, phasegate, unused_address
from tests.support.health_profiles import profile_dict
from workers.client import connect
from workers.settings import Settings


def write_profile(path: Path, **overrides: Any) -> Path:
    path.write_text(yaml.safe_dump(profile_dict(**overrides), sort_keys=False))
    return path


def test_an_invalid_profile_lists_every_problem_and_creates_nothing(tmp_path: Path) -> None:
    checks = [
        {"name": "error-rate", "kind": "prometheus", "query": "x", "fail": {}},
        {"name": "web", "kind": "http", "url": "ftp://example"},
    ]
    profile = write_profile(
        tmp_path / "p.yaml", checks=checks, schedule={"every": "10s", "catchup_window": "2s"}
    )

    result = phasegate("--address", unused_address(), "schedule", "create", str(profile))

    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{profile}: 3 problem(s)",
        "  schedule.catchup_window: must be at least 10s (Temporal's minimum)",
        "  checks[0].fail: give `max` and/or `min`",
        "  checks[1].url: must be an http:// or https:// URL without spaces",
    ]


def test_without_a_server_it_is_one_red_line(tmp_path: Path) -> None:
    result = phasegate(
        "--address", unused_address(), "schedule", "create", str(write_profile(tmp_path / "p.yaml"))
    )

    assert result.exit_code == 1
    assert result.stderr.startswith("cannot reach Temporal at 127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_schedule_is_created_listed_paused_updated_and_deleted(
    tmp_path: Path, dev_settings: Settings, dev_env: WorkflowEnvironment
) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    profile = write_profile(tmp_path / "p.yaml", name=name)

    created = against(dev_settings, "schedule", "create", str(profile), "--paused")
    again = against(dev_settings, "schedule", "create", str(profile))
    listed = listed_row(dev_settings, f"health-{name}")
    unpaused = against(dev_settings, "schedule", "unpause", name)
    paused = against(dev_settings, "schedule", "pause", name, "-m", "maintenance")
    write_profile(
        tmp_path / "p.yaml",
        name=name,
        schedule={"cron": "*/5 * * * *", "overlap": "buffer_one", "jitter": "3s"},
    )
    updated = against(dev_settings, "schedule", "update", str(profile), "--launch", "l-123")
    relisted = listed_row(dev_settings, f"health-{name}")
    description = asyncio.run(_describe(dev_settings, f"health-{name}"))
    deleted = against(dev_settings, "schedule", "delete", name)
    missing = against(dev_settings, "schedule", "trigger", name)

    assert created.exit_code == 0, created.output
    assert created.stdout.splitlines() == [
        f"health-{name} created (paused)",
        f"http://ui.example/namespaces/default/schedules/health-{name}",
    ]
    assert again.exit_code == 1
    assert again.stderr.strip() == (
        f"schedule health-{name} already exists; change it with `phasegate schedule update`"
    )
    assert "paused (created by phasegate)" in listed
    assert "every 10s, overlap skip" in listed
    assert unpaused.stdout.strip() == f"health-{name} unpaused"
    assert paused.stdout.strip() == f"health-{name} paused"
    assert updated.exit_code == 0, updated.output
    assert "paused (maintenance)" in relisted
    assert "cron */5 * * * * ±3s, overlap buffer_one" in relisted
    assert "l-123" in relisted
    assert description.schedule.policy.overlap == ScheduleOverlapPolicy.BUFFER_ONE
    assert description.schedule.spec.jitter is not None
    assert description.schedule.spec.jitter.total_seconds() == 3
    assert deleted.stdout.strip() == f"health-{name} deleted"
    assert missing.exit_code == 1
    assert missing.stderr.strip() == (
        f"no schedule health-{name}; create it with `phasegate schedule create`"
    )


def listed_row(settings: Settings, schedule_id: str) -> str:
    """The schedule's row in `schedule list`, which finds schedules through visibility: that
    trails a create by a moment, so the row is waited for."""
    deadline = time.monotonic() + 15
    while True:
        result = against(settings, "schedule", "list")
        assert result.exit_code == 0, result.output
        rows = [line for line in result.stdout.splitlines() if schedule_id in line]
        if rows:
            return rows[0]
        assert time.monotonic() < deadline, f"{schedule_id} never listed:\n{result.stdout}"
        time.sleep(0.3)


async def _describe(settings: Settings, schedule_id: str) -> Any:
    client = await connect(settings)
    return await client.get_schedule_handle(schedule_id).describe()


def test_attaching_a_launch_keeps_or_sets_what_a_failing_check_does_to_it(tmp_path: Path) -> None:
    plain = write_profile(tmp_path / "plain.yaml")
    pausing = write_profile(
        tmp_path / "pausing.yaml", launch={"id": "l-1", "on_critical_failure": "pause"}
    )

    def link(path: Path, *args: Any) -> tuple[str, str] | None:
        launch = schedules.validate_profile(path, *args).launch
        return None if launch is None else (launch.id, launch.on_critical_failure)

    assert link(plain) is None
    assert link(plain, "l-2") == ("l-2", "abort")
    assert link(plain, "l-2", "pause") == ("l-2", "pause")
    assert link(pausing) == ("l-1", "pause")
    assert link(pausing, "l-2") == ("l-2", "pause")
    assert link(pausing, None, "abort") == ("l-1", "abort")
    refused = phasegate(
        "schedule", "create", str(plain), "--launch", "l-2", "--on-critical-failure", "stop"
    )
    assert refused.exit_code == 2
    assert "'stop' is not one of 'abort', 'pause'" in refused.stderr
