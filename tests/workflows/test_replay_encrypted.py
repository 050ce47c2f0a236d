"""Replay with encrypted payloads: launches run with the codec leave only ciphertext in their
histories, replay under the same keys, and fail to replay, naming the key id, without them."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from schemas.launch_messages import LaunchStatus
from schemas.metrics_messages import MetricReading
from schemas.plan import LaunchPlan
from tests.support import sealing
from tests.support.fakes import FakeWorld, running_launch
from tests.support.launches import decide_gate, wait_for
from tests.support.payloads import clear_text_in, with_converter
from tests.support.plans import make_plan
from workers.codec import PayloadKeys, PayloadUnreadable, encrypted_data_converter
from workers.main import WORKFLOWS

# Plan values that must never appear in clear in a history.
FLAG_KEY = "replay-codec-flag-5d1a"
APPROVER = "approver-q7x"


@dataclass(frozen=True)
class Recorded:
    status: LaunchStatus
    histories: list[tuple[str, str]]


def recognisable_plan(**overrides: object) -> LaunchPlan:
    base = make_plan(**overrides)
    router = base.targets.router.model_copy(update={"flag_key": FLAG_KEY})
    approvals = base.approvals.model_copy(update={"approvers": [APPROVER, "bob"]})
    return base.model_copy(
        update={
            "targets": base.targets.model_copy(update={"router": router}),
            "approvals": approvals,
        }
    )


@pytest.fixture
async def encrypted_client(
    time_skipping_env: WorkflowEnvironment, encrypted_converter: DataConverter
) -> Client:
    """A client of the session's time-skipping server that encrypts every payload."""
    return with_converter(time_skipping_env.client, encrypted_converter)


async def run_and_record(
    env: WorkflowEnvironment, client: Client, plan: LaunchPlan, world: FakeWorld, approve: bool
) -> Recorded:
    async with running_launch(client, plan, world) as handle:
        if approve:
            for gate in ("soft-launch.before", "soft-launch.step-2"):
                await decide_gate(env, handle, gate, "approve", APPROVER)
        await handle.result()
        final = await wait_for(env, handle, lambda s: s.finished_at is not None)
    ids = [handle.id] + [
        f"{handle.id}.{phase.name}" for phase in final.phases if phase.status != "pending"
    ]
    histories = []
    for workflow_id in ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        histories.append((workflow_id, history.to_json()))
    return Recorded(status=final, histories=histories)


async def replay_failures(
    histories: list[tuple[str, str]], converter: DataConverter
) -> list[str | None]:
    replayer = Replayer(
        workflows=list(WORKFLOWS),
        data_converter=converter,
        interceptors=sealing.test_interceptors(),
    )
    failures = []
    for workflow_id, text in histories:
        result = await replayer.replay_workflow(
            WorkflowHistory.from_json(workflow_id, text), raise_on_replay_failure=False
        )
        failures.append(None if result.replay_failure is None else str(result.replay_failure))
    return failures


@pytest.fixture
async def approved(time_skipping_env: WorkflowEnvironment, encrypted_client: Client) -> Recorded:
    return await run_and_record(
        time_skipping_env, encrypted_client, recognisable_plan(), FakeWorld(), approve=True
    )


@pytest.fixture
async def rolled_back(time_skipping_env: WorkflowEnvironment, encrypted_client: Client) -> Recorded:
    """The analysis fails and the launch rolls itself back: failures cross the codec too."""
    plan = recognisable_plan(
        phases=[
            {
                "name": "full-launch",
                "kind": "full_launch",
                "steps": [{"weight": 5, "analysis": ["error-rate"]}, {"weight": 100}],
            }
        ]
    )
    world = FakeWorld(readings=lambda query: MetricReading(value=0.9))
    return await run_and_record(time_skipping_env, encrypted_client, plan, world, approve=False)


def assert_only_ciphertext(histories: list[tuple[str, str]]) -> None:
    for workflow_id, text in histories:
        history = WorkflowHistory.from_json(workflow_id, text)
        assert clear_text_in(history, [FLAG_KEY, APPROVER, "error-rate"]) == [], workflow_id


async def test_an_approved_launch_rests_encrypted_and_replays(
    approved: Recorded, encrypted_converter: DataConverter
) -> None:
    assert approved.status.status == "completed"
    assert {d.by for d in approved.status.decisions} == {APPROVER}
    assert len(approved.histories) >= 2
    assert_only_ciphertext(approved.histories)

    assert await replay_failures(approved.histories, encrypted_converter) == [None] * len(
        approved.histories
    )


async def test_a_rolled_back_launch_keeps_its_reasons_encrypted_and_readable(
    rolled_back: Recorded, encrypted_client: Client, encrypted_converter: DataConverter
) -> None:
    # Through the client (which decodes), the reason names the failing analysis.
    assert rolled_back.status.status == "rolled_back"
    assert "error-rate" in (rolled_back.status.reason or "")
    assert_only_ciphertext(rolled_back.histories)
    failure_events = [
        event
        for _, text in rolled_back.histories
        for event in WorkflowHistory.from_json("w", text).events
        if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED
        or event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED
        or event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]
    messages = {
        getattr(event, attributes).failure.message
        for event in failure_events
        for attributes in (
            "child_workflow_execution_failed_event_attributes",
            "workflow_execution_failed_event_attributes",
            "activity_task_failed_event_attributes",
        )
        if event.HasField(attributes)
    }
    assert messages == {"Encoded failure"}

    assert await replay_failures(rolled_back.histories, encrypted_converter) == [None] * len(
        rolled_back.histories
    )


async def test_without_the_key_replay_fails_naming_the_key_id(
    approved: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    other_keys = PayloadKeys(current="other-1", keys={"other-1": os.urandom(32)}, source="k.keys")

    with caplog.at_level(logging.ERROR, logger="temporalio.worker"):
        (failure,) = await replay_failures(
            approved.histories[:1], encrypted_data_converter(other_keys)
        )

    # The task failure itself is encrypted like every failure; its type and the worker's log
    # say what is wrong.
    assert failure is not None
    assert 'r#type: "PayloadUnreadable"' in failure
    logged = [
        str(record.exc_info[1])
        for record in caplog.records
        if record.exc_info is not None and isinstance(record.exc_info[1], PayloadUnreadable)
    ]
    assert logged
    assert logged[0] == (
        "a payload was encrypted with payload key 'test-payloads-1', which payload key file "
        "k.keys does not hold (it holds other-1): add key 'test-payloads-1' back under keys"
    )
