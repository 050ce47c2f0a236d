"""Health schedules end to end: the dev server's real Schedules, a real worker, Prometheus and
the demo service under load, and a local webhook receiver standing in for Alertmanager and Slack.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.flags import FlagdFileRouter
from devstack.demo import DemoStack, example_plan
from schemas.health_messages import HealthReport
from schemas.health_profile import HealthProfile
from schemas.launch_messages import LaunchStatus
from schemas.plan import load_plan
from starters import schedules
from tests.support.launches import start_launch
from tests.support.receiver import Receiver, webhook_receiver
from workers.settings import Settings
from workflows.health import HealthValidationWorkflow
from workflows.launch import LaunchWorkflow

pytestmark = pytest.mark.integration

ERROR_RATE = "sum(rate(demo_request_errors_total[10s])) / sum(rate(demo_requests_total[10s]))"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as running:
        yield running


def demo_profile(stack: DemoStack, receiver: Receiver, **changes: Any) -> HealthProfile:
    data: dict[str, Any] = {
        "name": f"e2e-{uuid.uuid4().hex[:8]}",
        "service": "checkout",
        "prometheus": {"url": stack.prometheus.url},
        "schedule": {"every": "2s", "overlap": "skip"},
        "checks": [
            {
                "name": "error-rate",
                "kind": "prometheus",
                "query": ERROR_RATE,
                "warn": {"max": 0.01},
                "fail": {"max": 0.05},
                "critical": True,
            },
            {"name": "healthz", "kind": "http", "url": f"{stack.service.url}/healthz"},
        ],
        "alerts": {
            "receivers": [
                {"name": "am", "kind": "alertmanager", "url": f"{receiver.url}/api/v2/alerts"},
                {"name": "chat", "kind": "slack", "url": f"{receiver.url}/slack"},
            ]
        },
    }
    data.update(changes)
    return HealthProfile.model_validate(data)


def alerts_received(receiver: Receiver) -> dict[str, list[str]]:
    """What each receiver was told, in order: Alertmanager by endsAt, Slack by its text."""
    manager = [
        f"{item['labels']['check']}:{'resolved' if 'endsAt' in item else 'firing'}"
        for body in receiver.bodies("/api/v2/alerts")
        for item in body
    ]
    chat = [
        f"{line.split('*')[1]}:{'firing' if 'FIRING' in line else 'resolved'}"
        for body in receiver.bodies("/slack")
        for line in body["attachments"][0]["text"].splitlines()
    ]
    return {"am": manager, "chat": chat}


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.5)


async def started_runs(
    client: Client, schedule_id: str
) -> list[WorkflowHandle[HealthValidationWorkflow, HealthReport]]:
    """The runs the schedule started, oldest first, as the schedule itself records them."""
    description = await client.get_schedule_handle(schedule_id).describe()
    runs = []
    for action in description.info.recent_actions:
        started = action.action
        if not isinstance(started, ScheduleActionExecutionStartWorkflow):
            pytest.fail(f"schedule {schedule_id} took a {type(started).__name__} action")
        runs.append(
            client.get_workflow_handle_for(
                HealthValidationWorkflow.run,
                started.workflow_id,
                run_id=started.first_execution_run_id,
            )
        )
    return runs


async def finished_reports(
    client: Client, schedule_id: str, *, after: set[str] | frozenset[str] = frozenset()
) -> list[HealthReport]:
    """The reports of the schedule's recent runs that have completed, skipping `after`'s runs.

    A run's own state (describe), not visibility, says whether it is finished."""
    reports = []
    for handle in await started_runs(client, schedule_id):
        if handle.run_id in after:
            continue
        if (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED:
            reports.append(await handle.result())
    return reports


async def reports_until(
    client: Client,
    schedule_id: str,
    done: Callable[[list[HealthReport]], bool],
    what: str,
    timeout: float,
    *,
    after: set[str] | frozenset[str] = frozenset(),
) -> list[HealthReport]:
    """The finished reports (of runs not in `after`, oldest first) once `done` holds for them."""
    deadline = time.monotonic() + timeout
    while True:
        reports = await finished_reports(client, schedule_id, after=after)
        if done(reports):
            return reports
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} of {schedule_id}; "
                f"finished so far: {[report.status for report in reports]}"
            )
        await asyncio.sleep(0.5)


async def runs_so_far(client: Client, schedule_id: str) -> set[str]:
    """The run ids of every run started until now, finished or not."""
    return {handle.run_id or "" for handle in await started_runs(client, schedule_id)}


async def only_run_report(client: Client, schedule_id: str, timeout: float) -> HealthReport:
    """The report of the one run the schedule started, once that run has finished."""
    deadline = time.monotonic() + timeout
    while not (runs := await started_runs(client, schedule_id)):
        if time.monotonic() > deadline:
            raise AssertionError(f"schedule {schedule_id} started no run within {timeout:g}s")
        await asyncio.sleep(0.2)
    (run,) = runs
    return await asyncio.wait_for(run.result(), max(deadline - time.monotonic(), 1.0))


def prometheus_value(stack: DemoStack, query: str) -> float | None:
    response = httpx.get(
        f"{stack.prometheus.url}/api/v1/query", params={"query": query}, timeout=5, trust_env=False
    )
    result = response.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def expose_canary(stack: DemoStack, weight: float = 50.0) -> None:
    """The demo's faults hit the new version only: put half the users on it."""
    FlagdFileRouter().set_weight(stack.router, weight, "")


async def fail_the_canary_then_trigger(client: Client, stack: DemoStack, name: str) -> None:
    """Half the users on a canary that fails half its requests; once Prometheus shows the
    fault, schedule `name` runs once."""
    expose_canary(stack)
    stack.set_faults(error_rate=0.5)
    await until(
        lambda: (prometheus_value(stack, ERROR_RATE) or 0) > 0.1,
        30,
        "the fault to show in Prometheus",
    )
    await schedules.trigger(client, name)


async def test_a_schedule_alerts_once_on_a_fault_and_resolves_once_when_it_heals(
    dev_env: WorkflowEnvironment, worker: str, clean_stack: DemoStack, receiver: Receiver
) -> None:
    client = dev_env.client
    expose_canary(clean_stack)
    profile = demo_profile(clean_stack, receiver)
    settings = Settings().model_copy(update={"task_queue": worker})
    await schedules.create_schedule(client, profile, settings)
    try:
        # Healthy: runs pass and nobody is alerted.
        reports = await reports_until(
            client, profile.schedule_id, lambda done: len(done) >= 2, "two finished runs", 60
        )
        assert {report.status for report in reports} == {"pass"}
        assert receiver.posts == []

        clean_stack.set_faults(error_rate=0.5)
        firing = {"am": ["error-rate:firing"], "chat": ["error-rate:firing"]}
        try:
            await until(
                lambda: alerts_received(receiver) == firing,
                90,
                "one firing alert on each receiver",
            )
        except AssertionError:
            reports = await finished_reports(client, profile.schedule_id)
            raise AssertionError(
                f"no firing alert within 90s; received {receiver.posts}; last report {reports[-1:]}"
            ) from None
        # Four more runs see the same failure; the ledger resends nothing.
        fired_before = await runs_so_far(client, profile.schedule_id)
        failing = await reports_until(
            client,
            profile.schedule_id,
            lambda done: len(done) >= 4,
            "four more finished runs",
            60,
            after=fired_before,
        )
        assert {report.status for report in failing} == {"fail"}
        assert alerts_received(receiver) == firing

        clean_stack.set_faults()
        resolved = {
            "am": ["error-rate:firing", "error-rate:resolved"],
            "chat": ["error-rate:firing", "error-rate:resolved"],
        }
        await until(lambda: alerts_received(receiver) == resolved, 90, "one resolved alert each")
        # The alert resolves once the check is no longer failing; as the error window drains the
        # runs go from warn to pass, and neither sends anything more.
        resolved_before = await runs_so_far(client, profile.schedule_id)
        healing = await reports_until(
            client,
            profile.schedule_id,
            lambda done: len(done) >= 3 and done[-1].status == "pass",
            "three more finished runs, the last one passing",
            90,
            after=resolved_before,
        )
        assert {report.status for report in healing} <= {"warn", "pass"}
        assert alerts_received(receiver) == resolved

        listing = await schedules.describe(client, profile.name)
        assert (listing.paused, listing.timing) == (False, "every 2s, overlap skip")
        reports = await finished_reports(client, profile.schedule_id)
        assert all(report.alert_error == "" for report in reports)
    finally:
        await schedules.delete(client, profile.name)

    ledger = client.get_workflow_handle(profile.ledger_id)
    await asyncio.wait_for(ledger.result(), 20)  # retired with the schedule
    with pytest.raises(RPCError):
        await client.get_schedule_handle(profile.schedule_id).describe()


async def test_a_failing_critical_check_aborts_the_running_launch(
    dev_env: WorkflowEnvironment, worker: str, clean_stack: DemoStack, receiver: Receiver
) -> None:
    client = dev_env.client
    plan = clean_stack.plan_for(load_plan(example_plan()))
    launch = await start_launch(client, plan, worker)
    profile = demo_profile(
        clean_stack,
        receiver,
        schedule={"every": "1h"},
        launch={"id": launch.id},
    )
    settings = Settings().model_copy(update={"task_queue": worker})
    await schedules.create_schedule(client, profile, settings, paused=True)
    try:
        await fail_the_canary_then_trigger(client, clean_stack, profile.name)
        result = await asyncio.wait_for(launch.result(), 90)
        # The run signals the launch before it alerts, so the launch can finish first.
        report = await only_run_report(client, profile.schedule_id, 60)
    finally:
        await schedules.delete(client, profile.name)

    assert result.status == "rolled_back"
    assert result.reason.startswith(
        f"aborted by health:{profile.name}: critical health check(s) failed: error-rate ("
    )
    assert report.launch is not None
    assert report.launch.signalled
    assert alerts_received(receiver)["am"] == ["error-rate:firing"]


async def launch_status_until(
    launch: WorkflowHandle[LaunchWorkflow, Any],
    done: Callable[[LaunchStatus], bool],
    timeout: float,
) -> LaunchStatus:
    deadline = time.monotonic() + timeout
    while not done(status := await launch.query(LaunchWorkflow.status)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s; last status: {status}")
        await asyncio.sleep(0.2)
    return status


async def test_a_pausing_profile_pauses_the_running_launch_once_per_incident(
    dev_env: WorkflowEnvironment, worker: str, clean_stack: DemoStack, receiver: Receiver
) -> None:
    client = dev_env.client
    plan = clean_stack.plan_for(load_plan(example_plan()))
    launch = await start_launch(client, plan, worker)
    profile = demo_profile(
        clean_stack,
        receiver,
        schedule={"every": "1h"},
        launch={"id": launch.id, "on_critical_failure": "pause"},
    )
    settings = Settings().model_copy(update={"task_queue": worker})
    await schedules.create_schedule(client, profile, settings, paused=True)
    try:
        await fail_the_canary_then_trigger(client, clean_stack, profile.name)
        first = await reports_until(
            client, profile.schedule_id, lambda done: len(done) >= 1, "the first run", 60
        )
        paused = await launch_status_until(launch, lambda s: s.paused is not None, 30)
        await schedules.trigger(client, profile.name)
        both = await reports_until(
            client, profile.schedule_id, lambda done: len(done) >= 2, "the second run", 60
        )
        still = await launch.query(LaunchWorkflow.status)
        await launch.signal(LaunchWorkflow.abort, {"reason": "test over", "by": "test"})
        await asyncio.wait_for(launch.result(), 90)
    finally:
        await schedules.delete(client, profile.name)

    assert [report.status for report in both] == ["fail", "fail"]
    acted, left_alone = (report.launch for report in both)
    assert first[0].launch == acted
    assert acted is not None
    assert (acted.action, acted.signalled) == ("pause", True)
    assert paused.paused is not None
    assert (paused.paused.by, paused.paused.source) == (f"health:{profile.name}", "health")
    assert paused.paused.reason.startswith("critical health check(s) failed: error-rate (")
    assert left_alone is not None
    assert (left_alone.action, left_alone.signalled) == ("pause", False)
    assert left_alone.detail.startswith(
        f"launch {launch.id} is already paused by health:{profile.name} (health) since "
    )
    assert [(e.handler, e.accepted) for e in still.audit if e.handler == "pause"] == [
        ("pause", True)
    ]
    assert still.status == "paused"


async def test_pause_on_failure_pauses_the_schedule_when_a_critical_check_fails(
    dev_env: WorkflowEnvironment, worker: str, clean_stack: DemoStack, receiver: Receiver
) -> None:
    client = dev_env.client
    profile = demo_profile(
        clean_stack, receiver, schedule={"every": "1h", "pause_on_failure": True}
    )
    settings = Settings().model_copy(update={"task_queue": worker})
    await schedules.create_schedule(client, profile, settings)
    try:
        await fail_the_canary_then_trigger(client, clean_stack, profile.name)
        deadline = time.monotonic() + 60
        while not (listing := await schedules.describe(client, profile.name)).paused:
            if time.monotonic() > deadline:
                raise AssertionError(f"the schedule did not pause within 60s: {listing}")
            await asyncio.sleep(0.5)
    finally:
        await schedules.delete(client, profile.name)

    assert "failed" in listing.note.lower()
    assert alerts_received(receiver)["am"] == ["error-rate:firing"]
