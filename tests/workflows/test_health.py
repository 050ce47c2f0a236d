"""Scheduled health validation on the time-skipping server: many runs, as a schedule drives them.

The test server has no Schedules, so each test starts runs one after another exactly as a
schedule with overlap `skip` would; the real Schedules are exercised in tests/e2e.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from approvals.proofs import plan_digest
from schemas.decision_messages import Hold
from schemas.health_messages import HttpProbeResult, LaunchState
from schemas.health_profile import HealthProfile, LaunchActionKind, LaunchLink
from schemas.kube_messages import DeploymentHealth
from schemas.launch_messages import LaunchResult
from tests.support.health_fakes import HealthWorld, health_worker, run_once
from tests.support.health_profiles import make_profile
from tests.support.launches import gate_open, new_launch_id, start_launch, wait_for
from tests.support.plans import make_plan
from tests.support.proofs import ProofMaker, TrustingWorld
from workflows.alert_ledger import AlertLedgerWorkflow
from workflows.health import already_acted_on
from workflows.launch import LaunchWorkflow


def unique_profile(**overrides: Any) -> HealthProfile:
    return make_profile(name=f"t-{uuid.uuid4().hex[:10]}", **overrides)


@asynccontextmanager
async def attached_launch(
    env: WorkflowEnvironment, world: HealthWorld
) -> AsyncIterator[tuple[str, WorkflowHandle[LaunchWorkflow, LaunchResult], HealthProfile]]:
    """A health worker's task queue, a launch on it waiting at its first gate, and a profile
    (without receivers) attached to that launch."""
    async with health_worker(env.client, world) as queue:
        launch = await start_launch(env.client, make_plan(), queue)
        await gate_open(env, launch, "soft-launch.before")
        yield queue, launch, unique_profile(launch={"id": launch.id}, alerts={"receivers": []})


async def test_each_check_is_judged_pass_warn_or_fail(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = HealthWorld(values={"error-rate": 0.02})
    world.probe = HttpProbeResult(status_code=503, latency_seconds=0.3)
    profile = unique_profile(alerts={"receivers": []})
    async with health_worker(time_skipping_env.client, world) as queue:
        report = await run_once(time_skipping_env, queue, profile, world)

    by_name = {check.name: check for check in report.checks}
    assert by_name["error-rate"].status == "warn"
    assert by_name["error-rate"].detail == "0.02 outside max 0.01"
    assert by_name["healthz"].status == "fail"
    assert by_name["healthz"].detail == ("status 503, expected 200; latency 300ms > 200ms")
    assert report.status == "fail"
    assert report.alerts is None


async def test_no_data_and_tls_expiry_follow_the_profile(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    now = await time_skipping_env.get_current_time()
    world = HealthWorld(values={"error-rate": None})
    world.probe = HttpProbeResult(
        status_code=200, latency_seconds=0.01, tls_expires_at=now + timedelta(days=5)
    )
    checks = [
        {
            "name": "error-rate",
            "kind": "prometheus",
            "query": "x",
            "fail": {"max": 0.05},
            "on_no_data": "fail",
        },
        {
            "name": "cert",
            "kind": "http",
            "url": "https://127.0.0.1:8443/",
            "tls_expiry": {"warn": "14d", "fail": "3d"},
        },
    ]
    profile = unique_profile(checks=checks, alerts={"receivers": []})
    async with health_worker(time_skipping_env.client, world) as queue:
        report = await run_once(time_skipping_env, queue, profile, world)

    by_name = {check.name: check for check in report.checks}
    assert (by_name["error-rate"].status, by_name["error-rate"].detail) == (
        "fail",
        "no data for the query",
    )
    assert by_name["cert"].status == "warn"
    assert by_name["cert"].detail.startswith("certificate expires in 5.0 days")


async def test_deployments_are_judged_on_replicas_rollout_and_restarts(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = HealthWorld()
    world.deployments = {
        "web": DeploymentHealth(
            name="web", desired=3, available=3, updated=3, rollout="complete", restarts=2
        ),
        "api": DeploymentHealth(
            name="api",
            desired=3,
            available=2,
            updated=3,
            rollout_detail="2 of 3 updated replicas available",
            restarts=7,
        ),
        "worker": DeploymentHealth(
            name="worker", desired=2, available=1, updated=2, rollout_detail="1 of 2 available"
        ),
        "cron": DeploymentHealth(name="cron", error="reading Deployment shop/cron: 403 Forbidden"),
    }
    limits = {"namespace": "shop", "max_restarts_warn": 5, "max_restarts_fail": 10}
    checks = [
        {"name": "web", "kind": "kubernetes", "deployments": ["web"], **limits},
        {"name": "api", "kind": "kubernetes", "deployments": ["api"], **limits},
        {
            "name": "worker",
            "kind": "kubernetes",
            "namespace": "shop",
            "deployments": ["worker"],
            "min_available": 1,
        },
        {"name": "gone", "kind": "kubernetes", "namespace": "shop", "deployments": ["web", "gone"]},
        {
            "name": "cron",
            "kind": "kubernetes",
            "namespace": "shop",
            "deployments": ["cron"],
            "on_error": "fail",
        },
    ]
    profile = unique_profile(prometheus=None, checks=checks, alerts={"receivers": []})
    async with health_worker(time_skipping_env.client, world) as queue:
        report = await run_once(time_skipping_env, queue, profile, world)

    judged = {check.name: (check.status, check.detail) for check in report.checks}
    assert judged == {
        "web": ("pass", "web: 3/3 available, 2 restarts"),
        "api": (
            "fail",
            "api: 2/3 available, rolling out: 2 of 3 updated replicas available, 7 restarts > 5",
        ),
        "worker": ("warn", "worker: 1/2 available, rolling out: 1 of 2 available, 0 restarts"),
        "gone": ("fail", "web: 3/3 available, 2 restarts; Deployment shop/gone not found"),
        "cron": ("fail", "shop/cron: reading Deployment shop/cron: 403 Forbidden"),
    }
    assert report.status == "fail"


async def test_many_runs_alert_once_when_firing_and_once_when_resolved(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """30 runs: healthy, failing for ten, healthy again; the ledger continues as new twice."""
    world = HealthWorld(values={"error-rate": 0.0})
    profile = unique_profile()
    client = time_skipping_env.client
    reports = []
    async with health_worker(client, world) as queue:
        for index in range(30):
            world.values["error-rate"] = 0.5 if 10 <= index < 20 else 0.0
            reports.append(
                await run_once(time_skipping_env, queue, profile, world, runs_per_history=12)
            )
            await time_skipping_env.sleep(timedelta(seconds=10))
        ledger = client.get_workflow_handle(profile.ledger_id)
        alerts = await ledger.query(AlertLedgerWorkflow.alerts)
        description = await ledger.describe()

    for receiver in ("am", "chat"):
        assert world.received(receiver) == [("error-rate", "firing"), ("error-rate", "resolved")]
    assert [r.alerts.firing if r.alerts else None for r in reports[9:12]] == [
        [],
        ["error-rate"],
        ["error-rate"],
    ]
    assert reports[10].alerts is not None
    assert {(d.receiver, d.status, d.delivered) for d in reports[10].alerts.deliveries} == {
        ("am", "firing", True),
        ("chat", "firing", True),
    }
    assert reports[11].alerts is not None
    assert reports[11].alerts.deliveries == []
    assert reports[20].alerts is not None
    assert {d.status for d in reports[20].alerts.deliveries} == {"resolved"}
    assert alerts == []  # resolved everywhere: nothing left to remember
    # 30 runs at 12 per history: the ledger is in its third run of the chain.
    assert description.run_id != description.raw_description.workflow_execution_info.first_run_id


async def test_a_receiver_that_is_down_is_recorded_and_retried_next_run(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = HealthWorld(values={"error-rate": 0.5}, down={"chat"})
    profile = unique_profile()
    client = time_skipping_env.client
    async with health_worker(client, world) as queue:
        first = await run_once(time_skipping_env, queue, profile, world)
        second = await run_once(time_skipping_env, queue, profile, world)
        world.down.clear()
        third = await run_once(time_skipping_env, queue, profile, world)
        fourth = await run_once(time_skipping_env, queue, profile, world)

    assert world.attempts["chat"] == 4 + 4 + 1  # every attempt of the retry policy, twice
    assert first.alert_error.startswith("chat: receiver down: activity send_alerts failed")
    assert "connection refused" in first.alert_error
    assert second.alert_error.startswith("chat: receiver down")
    assert third.alert_error == ""
    assert world.received("chat") == [("error-rate", "firing")]
    assert world.received("am") == [("error-rate", "firing")]
    assert fourth.alerts is not None
    assert fourth.alerts.deliveries == []


async def test_warn_alerts_only_when_asked(time_skipping_env: WorkflowEnvironment) -> None:
    world = HealthWorld(values={"error-rate": 0.02})
    quiet = unique_profile()
    loud = unique_profile(
        alerts={**make_profile().alerts.model_dump(mode="json"), "alert_on": "warn"}
    )
    client = time_skipping_env.client
    async with health_worker(client, world) as queue:
        await run_once(time_skipping_env, queue, quiet, world)
        await run_once(time_skipping_env, queue, loud, world)

    profiles = {batch.profile for batch in world.sent}
    assert profiles == {loud.name}


async def test_a_failing_critical_check_aborts_the_attached_launch(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = HealthWorld(values={"error-rate": 0.5})
    async with attached_launch(time_skipping_env, world) as (queue, launch, profile):
        report = await run_once(time_skipping_env, queue, profile, world)
        final = await launch.result()
        after = await run_once(time_skipping_env, queue, profile, world)
        await wait_for(time_skipping_env, launch, lambda s: s.finished_at is not None)

    assert report.launch is not None
    assert report.launch.signalled
    assert final.status == "rolled_back"
    assert final.reason.startswith(
        f"aborted by health:{profile.name}: critical health check(s) failed: error-rate (0.5 outside max 0.05)"
    )
    assert after.launch is not None
    assert not after.launch.signalled
    assert after.launch.detail.startswith(f"launch {launch.id} is not running")


async def test_the_schedules_sealed_abort_stops_a_launch_whose_approvals_are_proven(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    # No person's proof: the health workflow's worker seals its abort.
    env = time_skipping_env
    launch_id = new_launch_id()
    now = (await env.get_current_time()).timestamp()
    maker = ProofMaker(launch=launch_id, run="", idp="http://idp.test", clock=lambda: now)
    world = HealthWorld(values={"error-rate": 0.5}, launch_world=TrustingWorld(maker))
    plan = make_plan(
        approvals={"identity": {"issuer": "http://idp.test"}, "approvers": ["bob"], "timeout": "1h"}
    )
    start = maker.proof("alice", "start", plan_digest(plan), lifetime=timedelta(minutes=14))
    async with health_worker(env.client, world) as queue:
        launch = await start_launch(env.client, plan, queue, launch_id=launch_id, start_proof=start)
        await gate_open(env, launch, "soft-launch.before")
        profile = unique_profile(launch={"id": launch.id}, alerts={"receivers": []})
        report = await run_once(env, queue, profile, world)
        final = await launch.result()
    assert report.launch is not None
    assert report.launch.signalled
    assert final.status == "rolled_back"
    assert final.reason.startswith(f"aborted by health:{profile.name}: critical health check")


async def test_healthy_runs_leave_the_launch_alone(time_skipping_env: WorkflowEnvironment) -> None:
    world = HealthWorld(values={"error-rate": 0.0})
    async with attached_launch(time_skipping_env, world) as (queue, launch, profile):
        report = await run_once(time_skipping_env, queue, profile, world)
        current = await launch.query(LaunchWorkflow.status)
        # Ended the ordinary way: a terminated launch leaves its phase's timers to the test server.
        await launch.signal(LaunchWorkflow.abort, {"reason": "test over", "by": "test"})
        await launch.result()

    assert report.launch is not None
    assert report.launch.action == "none"
    assert current.status == "waiting"


async def test_pause_on_failure_fails_the_run_with_its_report(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = HealthWorld(values={"error-rate": 0.5})
    profile = unique_profile(
        schedule={"every": "10s", "pause_on_failure": True}, alerts={"receivers": []}
    )
    async with health_worker(time_skipping_env.client, world) as queue:
        with pytest.raises(WorkflowFailureError) as failure:
            await run_once(time_skipping_env, queue, profile, world)

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.message == "critical check(s) failed: error-rate"
    assert cause.details[0]["status"] == "fail"


async def test_a_failing_critical_check_pauses_the_attached_launch_once_per_incident(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    env = time_skipping_env
    world = HealthWorld(values={"error-rate": 0.5})
    async with attached_launch(env, world) as (queue, launch, profile):
        pausing = profile.model_copy(
            update={"launch": LaunchLink(id=launch.id, on_critical_failure="pause")}
        )
        first = await run_once(env, queue, pausing, world)
        paused = await wait_for(env, launch, lambda s: s.paused is not None)
        second = await run_once(env, queue, pausing, world)
        await launch.signal("resume", {"reason": "looked at it", "by": "alice"})
        resumed = await wait_for(env, launch, lambda s: s.paused is None)
        third = await run_once(env, queue, pausing, world)
        again = await wait_for(env, launch, lambda s: s.paused is not None)
        await launch.signal(LaunchWorkflow.abort, {"reason": "test over", "by": "test"})
        await launch.result()

    assert first.launch is not None
    assert (first.launch.action, first.launch.signalled) == ("pause", True)
    assert first.launch.detail.startswith("pause sent: critical health check(s) failed: error-rate")
    hold = paused.paused
    assert hold is not None
    assert (paused.status, hold.source, hold.by) == ("paused", "health", f"health:{profile.name}")
    assert hold.reason == "critical health check(s) failed: error-rate (0.5 outside max 0.05)"
    # The same incident: the launch is still held, so nothing is sent again.
    assert second.launch is not None
    assert (second.launch.action, second.launch.signalled) == ("pause", False)
    assert second.launch.detail.startswith(
        f"launch {launch.id} is already paused by health:{profile.name} (health) since "
    )
    pauses = [entry for entry in paused.audit if entry.handler == "pause"]
    assert [(entry.accepted, entry.note) for entry in pauses] == [
        (True, f"paused by health:{profile.name}")
    ]
    assert resumed.status == "waiting"
    # A person resumed it while the check still fails: the next failing run holds it again.
    assert third.launch is not None
    assert third.launch.signalled
    assert again.paused is not None
    assert again.paused.source == "health"


async def test_a_failing_run_sends_nothing_to_a_launch_that_is_gone(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = HealthWorld(values={"error-rate": 0.5})
    profile = unique_profile(
        launch={"id": "no-such-launch", "on_critical_failure": "pause"}, alerts={"receivers": []}
    )
    async with health_worker(time_skipping_env.client, world) as queue:
        report = await run_once(time_skipping_env, queue, profile, world)

    assert report.launch is not None
    assert (report.launch.action, report.launch.signalled) == ("pause", False)
    assert report.launch.detail == "launch no-such-launch is not running (not found); alerted only"


HELD = Hold(
    by="alice", reason="looking", at=datetime(2026, 12, 2, 4, 0, tzinfo=UTC), source="person"
)


@pytest.mark.parametrize(
    ("state", "action", "why"),
    [
        (LaunchState(launch_id="l", running=True, status="running"), "pause", ""),
        (LaunchState(launch_id="l", running=True, status="waiting"), "abort", ""),
        (
            LaunchState(launch_id="l", running=True, status="paused", paused=HELD),
            "pause",
            "launch l is already paused by alice (person) since 2026-12-02 04:00:00; "
            "pause not sent again",
        ),
        # A paused launch can still be aborted: a hold is not a rollback.
        (LaunchState(launch_id="l", running=True, status="paused", paused=HELD), "abort", ""),
        (
            LaunchState(launch_id="l", running=True, status="rolling_back"),
            "abort",
            "launch l is already rolling back (rolling_back); abort not sent again",
        ),
        (
            LaunchState(launch_id="l", running=True, status="needs_attention"),
            "pause",
            "launch l is already rolling back (needs_attention); pause not sent again",
        ),
        (
            LaunchState(launch_id="l", status="terminated"),
            "abort",
            "launch l is not running (terminated); alerted only",
        ),
        (
            LaunchState(launch_id="l", found=False),
            "pause",
            "launch l is not running (not found); alerted only",
        ),
    ],
)
def test_a_launch_already_acted_on_is_left_alone(
    state: LaunchState, action: LaunchActionKind, why: str
) -> None:
    assert already_acted_on(state, action) == why
