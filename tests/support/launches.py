"""Starting launches and waiting on their `status` query, on the time-skipping test server or
the real dev server alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from schemas.launch_messages import LaunchInput, LaunchResult, LaunchStatus
from schemas.plan import LaunchPlan
from workflows.launch import LaunchWorkflow

# Workflow time skipped per poll: far below any gate timeout a test relies on.
POLL_SKIP = timedelta(milliseconds=500)


async def start_launch(
    client: Client,
    plan: LaunchPlan,
    task_queue: str,
    start_signal: tuple[str, Any] | None = None,
    *,
    launch_id: str | None = None,
    start_proof: str = "",
    continue_after_events: int = 0,
) -> WorkflowHandle[LaunchWorkflow, LaunchResult]:
    """Start the launch workflow on `task_queue`, with `start_signal` (name, payload) delivered
    in its first moment if given, and the starter's proof; the workflow id is the launch id.
    With `continue_after_events` the launch continues as new between phases once its history
    holds that many events."""
    launch_id = launch_id or new_launch_id()
    signal_name, payload = start_signal or (None, None)
    return await client.start_workflow(
        LaunchWorkflow.run,
        LaunchInput(
            launch_id=launch_id,
            plan=plan,
            start_proof=start_proof,
            continue_after_events=continue_after_events,
        ),
        id=launch_id,
        task_queue=task_queue,
        start_signal=signal_name,
        start_signal_args=[payload] if start_signal else [],
    )


def new_launch_id() -> str:
    return f"launch-{uuid.uuid4().hex[:12]}"


async def status(handle: WorkflowHandle[LaunchWorkflow, Any]) -> LaunchStatus:
    return await handle.query(LaunchWorkflow.status)


async def wait_for(
    env: WorkflowEnvironment,
    handle: WorkflowHandle[LaunchWorkflow, Any],
    predicate: Callable[[LaunchStatus], bool],
    *,
    timeout: float = 20.0,
) -> LaunchStatus:
    """Poll the `status` query until `predicate` holds, letting workflow time move on meanwhile;
    fail with the last status after `timeout` seconds of real time."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current = await status(handle)
        if predicate(current):
            return current
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s; last status: {current.model_dump_json(indent=1)}"
            )
        if env.supports_time_skipping:
            await env.sleep(POLL_SKIP)
        else:
            await asyncio.sleep(0.05)


async def gate_open(
    env: WorkflowEnvironment,
    handle: WorkflowHandle[LaunchWorkflow, Any],
    gate: str,
    *,
    timeout: float = 20.0,
) -> LaunchStatus:
    """Wait until `gate` is the launch's open gate."""
    return await wait_for(
        env,
        handle,
        lambda s: s.open_gate is not None and s.open_gate.gate == gate,
        timeout=timeout,
    )


async def decide_gate(
    env: WorkflowEnvironment,
    handle: WorkflowHandle[LaunchWorkflow, Any],
    gate: str,
    decision: Literal["approve", "reject"],
    approver: str,
    comment: str | None = None,
) -> None:
    """Wait until `gate` is open, then send the `approve` or `reject` signal for it."""
    await gate_open(env, handle, gate)
    payload = {"gate": gate, "approver": approver}
    if comment is not None:
        payload["comment"] = comment
    signal = LaunchWorkflow.approve if decision == "approve" else LaunchWorkflow.reject
    await handle.signal(signal, payload)
