"""Random signal and update payloads against one running launch waiting at its first gate, on
the dev server with a real worker: look-alikes of every message a launch and its phase take
(`approve`, `reject`, `abort`, `retry_compensation`, `skip_compensation`, `phase_progress`,
`relay_decision`, the `decide` update of the launch and of the waiting phase) with forged and
hostile fields, and any JSON at all.

None of them passes the gate or fails a workflow task; every refusal gives its reason; the
update's refusals come back as errors with a message; a genuine approval then still works.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import FailureError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from schemas.decision_messages import Decision
from schemas.launch_messages import LaunchStatus, LaunchStatusValue
from schemas.plan import LaunchPlan
from tests.support.fuzzing import (
    HANDLERS,
    NOT_A_MESSAGE,
    RELAY,
    UPDATE,
    acts_for_real,
    collect,
    failed_workflow_tasks,
    fuzz_seed,
    payloads,
    replayable,
)
from tests.support.launches import gate_open, start_launch, wait_for
from tests.support.servers import canary_share, running_worker

pytestmark = pytest.mark.integration

PAYLOADS = 500
IN_FLIGHT = 8
# A launch answers an update within a workflow task; far longer means it cannot.
UPDATE_ANSWERED = 30.0
APPROVERS = ["alice"]
PHASE = "soft-launch"
GATE = f"{PHASE}.before"


def gated_plan(flag_file: Path) -> LaunchPlan:
    """Names taken as typed (`identity: none`) and a gate before anything changes."""
    return LaunchPlan.model_validate(
        {
            "service": "fuzz",
            "version": "1.0.0",
            "targets": {
                "router": {"kind": "flagd", "flag_file": str(flag_file), "flag_key": "fuzz"}
            },
            "approvals": {"identity": "none", "approvers": APPROVERS, "timeout": "1h"},
            "phases": [
                {
                    "name": PHASE,
                    "kind": "soft_launch",
                    "gates": {"before": True},
                    "steps": [{"weight": 10}],
                },
                {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
            ],
        }
    )


# The last payloads sent: refused (an unknown gate; a vote no launch relayed), then found in
# the audit trail.
LAST_TO_LAUNCH = {"gate": "end-of-fuzz", "approver": "fuzz"}
LAST_TO_PHASE = {
    "gate": GATE,
    "verb": "approve",
    "launch_run": "end-of-fuzz",
    "person": "end-of-fuzz",
    "source": "signal",
}


def handled_last(current: LaunchStatus) -> bool:
    """Whether the launch's audit trail shows both last payloads refused."""
    payloads = [entry.payload for entry in current.audit]
    relayed = [p for p in payloads if isinstance(p, dict) and p.get("person") == "end-of-fuzz"]
    return LAST_TO_LAUNCH in payloads and bool(relayed)


def _messages(error: BaseException | None) -> str:
    """An update's error as a person reads it: its message and its causes' messages."""
    said = []
    while error is not None:
        if isinstance(error, FailureError):
            said.append(error.message)
            error = error.cause
        else:
            said.append(str(error))
            error = error.__cause__
    return "; ".join(said)


def traceback_free(message: str) -> bool:
    return "Traceback (most recent call last)" not in message and 'File "' not in message


async def test_random_payloads_never_pass_a_gate(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    chosen = fuzz_seed()
    client = dev_env.client
    flag_file = tmp_path / "flags.json"
    async with running_worker(client) as task_queue:
        handle = await start_launch(client, gated_plan(flag_file), task_queue)
        waiting = await gate_open(dev_env, handle, GATE, timeout=60)
        phase = client.get_workflow_handle(f"{handle.id}.{PHASE}")
        fixed = [(handler, body) for handler in HANDLERS for body in NOT_A_MESSAGE]
        drawn = collect(
            payloads(gate=GATE, run=waiting.run_id, phase=PHASE).filter(
                lambda made: not acts_for_real(made[0], made[1], APPROVERS)
            ),
            PAYLOADS - len(fixed),
            chosen,
        )
        sent = fixed + drawn
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def send(handler: str, payload: Any) -> str:
            """The update's refusal, or "" for a signal (the server took it)."""
            try:
                return await deliver(handler, payload)
            except RPCError as err:
                failed = await failed_workflow_tasks(client, [handle.id, phase.id])
                raise AssertionError(
                    f"the server refused {handler} {json.dumps(payload)[:300]}: {err.message}; "
                    f"workflow tasks failed: {failed}"
                ) from None

        async def deliver(handler: str, payload: Any) -> str:
            async with slots:
                if handler == RELAY:
                    await phase.signal(RELAY, payload)
                    return ""
                if handler != UPDATE:
                    await handle.signal(handler, payload)
                    return ""
                # The launch's `decide` update, and the same payload to the waiting phase's.
                refusals = []
                for target in (handle, phase):
                    try:
                        async with asyncio.timeout(UPDATE_ANSWERED):
                            taken = await target.execute_update(
                                UPDATE, payload, result_type=Decision
                            )
                    except WorkflowUpdateFailedError as err:
                        refusals.append(_messages(err.cause))
                        continue
                    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
                        failed = await failed_workflow_tasks(client, [handle.id, phase.id])
                        raise AssertionError(
                            f"{target.id} never answered the update "
                            f"{json.dumps(payload)[:300]}; its workflow tasks failed: {failed}"
                        ) from None
                    raise AssertionError(
                        f"{target.id}'s update took {json.dumps(payload)[:500]}: {taken}"
                    )
                return min(refusals, key=len)

        with replayable(chosen):
            assert len(sent) == PAYLOADS
            # Each send waits for the server, never for the launch: only the updates are
            # answered by the workflow, within the update's own deadline.
            async with asyncio.TaskGroup() as group:  # the first failure stops the rest
                tasks = [group.create_task(send(handler, body)) for handler, body in sent]
            refusals = [task.result() for task in tasks]
            updates = [
                why for (handler, _), why in zip(sent, refusals, strict=True) if handler == UPDATE
            ]
            assert updates, "no update was sent"
            for why in updates:
                assert why.strip(), "an update was refused without a message"
                assert traceback_free(why), why

            # Signals are handled in the order the server took them: once the launch and the
            # phase have refused a last, recognisable one each, they have handled all before.
            await handle.signal("approve", LAST_TO_LAUNCH)
            await phase.signal(RELAY, {**LAST_TO_PHASE, "at": waiting.started_at})
            after = await wait_for(dev_env, handle, handled_last, timeout=60)
            assert (after.status, after.open_gate and after.open_gate.gate) == (
                LaunchStatusValue.WAITING,
                GATE,
            ), after.model_dump_json(indent=1)[:3000]
            assert after.decisions == []
            assert after.exposure in (None, 0.0)
            assert [entry for entry in after.audit if entry.accepted] == []
            assert after.audit, "no refusal was recorded"
            for entry in after.audit:
                assert entry.note.strip(), entry
            failures = await failed_workflow_tasks(client, [handle.id, phase.id])
            assert failures == {handle.id: [], phase.id: []}

            await handle.signal("approve", {"gate": GATE, "approver": "alice", "comment": "go"})
            result = await handle.result()
            assert result.status == LaunchStatusValue.COMPLETED, result.reason
            assert canary_share(flag_file, "fuzz") == 100.0
