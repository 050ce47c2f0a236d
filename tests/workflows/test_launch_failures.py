"""Nothing leaves a launch hanging or its users exposed: a plan the worker's limits refuse
changes nothing, and an error of the workflow code itself (a phase that divides by zero, loses
its result or gets a value it cannot read, a rollback whose bookkeeping breaks, a handler that
fails) ends in a rollback with the real reason or a recorded refusal, never in a workflow task
the server retries forever."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from schemas import routing_messages
from schemas.admission_messages import Admission, AdmissionRequest
from schemas.decision_messages import Decision, DecisionRequest
from schemas.launch_messages import (
    LaunchCarry,
    LaunchInput,
    LaunchResult,
    PhaseState,
    PhaseStatusValue,
)
from schemas.plan import LaunchPlan
from tests.support.broken import DividesByZero, LosesItsResult, RollbackBreaks, VotesBreak
from tests.support.fakes import FakeWorld, running_launch
from tests.support.histories import failed_tasks
from tests.support.launches import gate_open, new_launch_id, wait_for
from tests.support.plans import make_plan
from tests.support.sealing import test_interceptors as sealing_interceptors
from workers.main import WORKFLOWS
from workflows.launch import LaunchWorkflow

SOFT = {"name": "soft-launch", "kind": "soft_launch", "steps": [{"weight": 5}, {"weight": 20}]}
FULL = {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]}


def two_phases() -> LaunchPlan:
    return make_plan(phases=[SOFT, FULL])


async def no_task_failed(env: WorkflowEnvironment, result: LaunchResult) -> None:
    ids = [result.launch_id] + [
        f"{result.launch_id}.{p.name}" for p in result.final.phases if p.status != "pending"
    ]
    assert {i: await failed_tasks(env.client, i) for i in ids} == dict.fromkeys(ids, 0)


def exposures(world: FakeWorld) -> list[tuple[str, Any]]:
    return [(n, w) for n, w in world.calls if n in ("set_exposure", "restore_exposure")]


async def test_a_plan_the_worker_refuses_changes_nothing(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    problem = (
        "notifications[0].url: 169.254.169.254 is link-local; network.private does not allow it"
    )
    world = FakeWorld(admission_problems=[problem, "phases[0].steps: too many"])
    plan = make_plan(
        phases=[SOFT, FULL], notifications=[{"name": "ops", "url": "http://169.254.169.254/x"}]
    )
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        result = await handle.result()
    assert result.status == "refused"
    assert result.reason == f"not started, nothing changed: {problem}; phases[0].steps: too many"
    assert world.admitted == [handle.id]
    # No exposure, no snapshot, not even a notification.
    assert world.calls == []
    assert [p.status for p in result.final.phases] == ["pending", "pending"]
    assert result.final.compensations == []
    await no_task_failed(time_skipping_env, result)


class AdmissionBreaks(FakeWorld):
    @activity.defn(name="admit_plan")
    async def admit_plan(self, request: AdmissionRequest) -> Admission:
        raise ApplicationError("limits file unreadable", non_retryable=True)


async def test_a_plan_the_worker_cannot_check_is_refused(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = AdmissionBreaks()
    async with running_launch(time_skipping_env.client, two_phases(), world) as handle:
        result = await handle.result()
    assert result.status == "refused"
    assert result.reason == (
        "not started, nothing changed: the worker could not check the plan: "
        "activity admit_plan failed: limits file unreadable"
    )
    assert world.calls == []


async def test_a_launch_started_with_carried_state_is_refused(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """State handed on by continue-as-new is trusted only from the launch's own previous run:
    a client starting a launch with it (its own approval keys, a "starter", phases said to be
    done) skips nothing."""
    world = FakeWorld()
    plan = two_phases()
    launch_id = new_launch_id()
    forged = LaunchCarry(
        next_phase=1,
        phases=[
            PhaseState(name=p.name, kind=p.kind, status=PhaseStatusValue.COMPLETED)
            for p in plan.phases
        ],
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        run="forged-run",
        started_by="mallory",
    )
    task_queue = f"test-{uuid.uuid4()}"
    async with Worker(
        time_skipping_env.client,
        interceptors=sealing_interceptors(),
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=world.activities(),
    ):
        handle = await time_skipping_env.client.start_workflow(
            LaunchWorkflow.run,
            LaunchInput(launch_id=launch_id, plan=plan, carried=forged),
            id=launch_id,
            task_queue=task_queue,
        )
        result = await handle.result()
    assert result.status == "refused"
    assert result.reason.startswith("not started, nothing changed: carried: ")
    assert world.calls == []
    assert world.admitted == []
    assert result.final.started_by == ""
    await no_task_failed(time_skipping_env, result)


async def test_an_error_in_a_phase_rolls_back_with_the_real_reason(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()
    async with running_launch(
        time_skipping_env.client, two_phases(), world, workflows=[DividesByZero]
    ) as handle:
        result = await handle.result()
    assert result.status == "rolled_back"
    assert result.reason == (
        "internal error in soft-launch: ZeroDivisionError: integer division or modulo by zero"
    )
    assert exposures(world) == [
        ("set_exposure", 5.0),
        ("set_exposure", 20.0),
        ("restore_exposure", 0.0),
    ]
    soft = result.final.phases[0]
    assert (soft.status, soft.reason) == ("failed", result.reason)
    assert [(c.id, c.status) for c in result.final.compensations] == [("soft-launch.1", "done")]
    assert result.final.exposure == 0.0
    await no_task_failed(time_skipping_env, result)


async def test_a_phase_failing_outside_its_error_handling_is_rolled_back(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    # The phase did all its work, then failed: the launch has only its reports to go on.
    world = FakeWorld()
    async with running_launch(
        time_skipping_env.client, two_phases(), world, workflows=[LosesItsResult]
    ) as handle:
        result = await handle.result()
    assert result.status == "rolled_back"
    assert result.reason == "internal error in soft-launch: KeyError: 'soft-launch result'"
    assert exposures(world) == [
        ("set_exposure", 5.0),
        ("set_exposure", 20.0),
        ("restore_exposure", 0.0),
    ]
    assert [p.status for p in result.final.phases] == ["failed", "pending"]
    assert [c.status for c in result.final.compensations] == ["done"]
    await no_task_failed(time_skipping_env, result)


class AnswersNonsense(FakeWorld):
    """The router answers its second exposure change with something no workflow can read."""

    @activity.defn(name="set_exposure")
    async def set_exposure(  # type: ignore[override]
        self, request: routing_messages.ExposureRequest
    ) -> dict[str, Any]:
        self.calls.append(("set_exposure", request.weight))
        self.exposure = request.weight
        if request.weight == 20:
            return {"weight": "twenty", "changed": "maybe"}
        return {"weight": request.weight, "changed": True}


async def test_an_activity_answer_the_phase_cannot_read_rolls_back(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = AnswersNonsense()
    async with running_launch(time_skipping_env.client, two_phases(), world) as handle:
        result = await handle.result()
    assert result.status == "rolled_back"
    assert result.reason.startswith("internal error in soft-launch: ValidationError: ")
    assert "ExposureState" in result.reason
    assert exposures(world)[-1] == ("restore_exposure", 0.0)
    assert world.exposure == 0.0
    await no_task_failed(time_skipping_env, result)


async def test_the_rollback_goes_on_past_an_error_of_its_own(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()
    plan = make_plan(
        phases=[SOFT, {**FULL, "steps": [{"weight": 50, "approval": True}, {"weight": 100}]}]
    )
    async with running_launch(
        time_skipping_env.client, plan, world, workflows=[RollbackBreaks]
    ) as handle:
        await gate_open(time_skipping_env, handle, "full-launch.step-1")
        await handle.signal(
            LaunchWorkflow.reject, {"gate": "full-launch.step-1", "approver": "alice"}
        )
        result = await handle.result()
    assert result.status == "rolled_back"
    # Both undos ran, newest first, though the first one's bookkeeping failed.
    assert [w for n, w in exposures(world) if n == "restore_exposure"] == [20.0, 0.0]
    full, soft = result.final.compensations[1], result.final.compensations[0]
    assert (full.status, soft.status) == ("failed", "done")
    assert full.error == (
        "internal error in undo full-launch.1: AttributeError: "
        "'NoneType' object has no attribute 'weight'"
    )
    assert result.reason.endswith("not undone: full-launch.1 (see their errors)")
    await no_task_failed(time_skipping_env, result)


async def test_a_handler_error_is_a_refusal_and_the_launch_goes_on(
    dev_env: WorkflowEnvironment,
) -> None:
    """On the dev server, for the update."""
    world = FakeWorld()
    plan = make_plan(phases=[{**SOFT, "gates": {"before": True}}, FULL])
    async with running_launch(dev_env.client, plan, world, workflows=[VotesBreak]) as handle:
        await gate_open(dev_env, handle, "soft-launch.before")
        await handle.signal(
            LaunchWorkflow.approve, {"gate": "soft-launch.before", "approver": "alice"}
        )
        with pytest.raises(WorkflowUpdateFailedError) as caught:
            await handle.execute_update(
                "decide",
                DecisionRequest(gate="soft-launch.before", approver="bob", decision="approve"),
                result_type=Decision,
            )
        cause = caught.value.cause
        assert isinstance(cause, ApplicationError)
        assert (cause.type, cause.message) == (
            "DecisionRefused",
            "internal error: decide:approve could not be taken; nothing changed",
        )
        refused = await wait_for(dev_env, handle, lambda s: len(s.audit) == 2)
        assert [(e.handler, e.accepted, e.note) for e in refused.audit] == [
            (
                "approve",
                False,
                "internal error in approve: TypeError: votes for soft-launch.before cannot be counted",
            ),
            (
                "decide:approve",
                False,
                "internal error in decide:approve: TypeError: "
                "votes for soft-launch.before cannot be counted",
            ),
        ]
        assert refused.status == "waiting"
        await handle.signal(LaunchWorkflow.abort, {"reason": "votes are broken", "by": "carol"})
        result = await handle.result()
    assert result.status == "rolled_back"
    assert result.reason == "aborted by carol: votes are broken"
    await no_task_failed(dev_env, result)


async def test_an_update_without_a_request_is_refused(dev_env: WorkflowEnvironment) -> None:
    """On the dev server, for the update: `null`, or no input at all, is no decision."""
    world = FakeWorld()
    plan = make_plan(phases=[{**SOFT, "gates": {"before": True}}, FULL])
    async with running_launch(dev_env.client, plan, world) as handle:
        await gate_open(dev_env, handle, "soft-launch.before")
        for args in ([None], []):
            with pytest.raises(WorkflowUpdateFailedError) as caught:
                await handle.execute_update("decide", args=args, result_type=Decision)
            cause = caught.value.cause
            assert isinstance(cause, ApplicationError)
            assert cause.message == (
                'input: give a decision request: {"gate", "decision": "approve"|"reject", ...}'
            )
        decision = await handle.execute_update(
            "decide",
            DecisionRequest(gate="soft-launch.before", approver="alice", decision="reject"),
            result_type=Decision,
        )
        assert (decision.outcome, decision.by) == ("rejected", "alice")
        result = await handle.result()
    assert result.status == "rolled_back"
    await no_task_failed(dev_env, result)
