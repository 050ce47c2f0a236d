"""Generated valid plans started as real launches on the dev server with a real worker, each
aborted soon after it starts: at once, once its first phase runs, once exposure changed, or
once a gate opens (the seed picks which).

Whatever the plan, no workflow task fails in the launch or any of its phases, the launch ends
refused (by the worker's admission) or rolled back, the flag file ends exactly as it began, the
final status shows the exposure the flag file gives, and the secret the plans name appears in
no history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.flags import flag_definition
from schemas.launch_messages import LaunchResult, LaunchStatus, LaunchStatusValue
from schemas.plan import LaunchPlan
from schemas.targets import FlagdRouter
from tests.support.fuzzing import (
    SECRET_ENV,
    collect,
    every_run,
    failed_workflow_tasks,
    fuzz_seed,
    replayable,
    valid_plans,
)
from tests.support.launches import start_launch, status, wait_for
from tests.support.servers import canary_share, running_worker
from workflows.launch import LaunchWorkflow

pytestmark = pytest.mark.integration

LAUNCHES = 25
IN_FLIGHT = 5
# Phases whose every undo can run on a machine without a Kubernetes cluster: an undo that
# cannot run makes the launch wait for a person, which is not what this test is about.
KINDS = ("security_validation", "soft_launch", "full_launch", "migration_cutover")
FLAG_KEY = "fuzz"
PLACEHOLDER = "/placeholder/flags.json"
MOMENTS = ("start", "phase", "exposure", "gate")
# How long a launch may take to reach the moment it is aborted at, and to end once aborted
# (its probes, queries and webhooks reach nothing that makes them wait).
MOMENT_WAIT = 15.0
ENDS_WITHIN = 120.0


def tamed(value: Any, key: str = "") -> Any:
    """`value` with names taken as typed (no approval service runs here, so no groups), no CA
    file, every URL on a loopback port nothing serves and every secret the one the test sets:
    what the test session's worker limits admit."""
    if key == "identity":
        return "none"
    if key == "url":
        return "https://127.0.0.1:9/"
    if key == "approvers" and isinstance(value, list):
        # Groups need a proven identity; `*` allows any quorum as a group does.
        return list(dict.fromkeys("*" if str(a).startswith("group:") else a for a in value))
    if isinstance(value, list):
        return [tamed(item, key) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) in ({"env"}, {"file"}):
        return {"env": SECRET_ENV}
    return {name: tamed(item, name) for name, item in value.items() if name != "ca_file"}


def launchable(data: dict[str, Any], flag_file: Path, *, tame: bool) -> LaunchPlan:
    """The generated plan on its own flag file (`tame`d, or as drawn, which the worker may
    refuse), ending at a gate nobody approves: only the abort, or the plan itself failing,
    ends the launch."""
    text = json.dumps(data).replace(json.dumps(PLACEHOLDER), json.dumps(str(flag_file)))
    plan: dict[str, Any] = json.loads(text)
    if tame:
        plan = tamed(plan)
    plan["targets"]["router"] = {"kind": "flagd", "flag_file": str(flag_file), "flag_key": FLAG_KEY}
    plan["phases"][-1]["gates"] = {
        **plan["phases"][-1].get("gates", {}),
        "after": {"approvers": ["nobody"], "timeout": "1h", "on_timeout": "reject"},
    }
    return LaunchPlan.model_validate(plan)


def seed_flags(flag_file: Path) -> dict[str, Any]:
    """A flag file with the launch's flag at 0% and a flag of someone else's beside it."""
    ours = FlagdRouter(flag_file=str(flag_file), flag_key=FLAG_KEY)
    theirs = FlagdRouter(flag_file=str(flag_file), flag_key="someone-else")
    flags = {FLAG_KEY: flag_definition(ours, 0.0), "someone-else": flag_definition(theirs, 35.0)}
    document = {"$schema": "https://flagd.dev/schema/v0/flags.json", "flags": flags}
    flag_file.write_text(json.dumps(document))
    return document


def reached(moment: str, current: LaunchStatus) -> bool:
    if current.status not in (LaunchStatusValue.RUNNING, LaunchStatusValue.WAITING):
        return True
    return {
        "start": True,
        "phase": current.phase_index >= 0,
        "exposure": bool(current.exposure),
        "gate": current.open_gate is not None,
    }[moment]


async def abort_at(
    env: WorkflowEnvironment, handle: WorkflowHandle[LaunchWorkflow, LaunchResult], moment: str
) -> LaunchResult:
    """Abort the launch once `moment` is reached, or after `MOMENT_WAIT` if it is not (a plan
    may analyse for hours before its first gate), unless it ended on its own; its result."""
    with contextlib.suppress(AssertionError):  # `wait_for`'s timeout: abort now instead
        await wait_for(env, handle, lambda current: reached(moment, current), timeout=MOMENT_WAIT)
    with contextlib.suppress(RPCError):  # it may have ended meanwhile
        await handle.signal(LaunchWorkflow.abort, {"reason": "fuzz", "by": "fuzz"})
    async with asyncio.timeout(ENDS_WITHIN):
        return await handle.result()


async def workflow_ids(client: Client, launch: str, plan: LaunchPlan) -> list[str]:
    """The launch and each phase it started."""
    found = [launch]
    for phase in plan.phases:
        try:
            await client.get_workflow_handle(f"{launch}.{phase.name}").describe()
        except RPCError:
            continue
        found.append(f"{launch}.{phase.name}")
    return found


async def test_generated_plans_launch_and_abort_cleanly(
    dev_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"fuzz-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv(SECRET_ENV, secret)
    chosen = fuzz_seed()
    drawn = collect(
        st.tuples(valid_plans(flag_file=PLACEHOLDER, kinds=KINDS), st.sampled_from(MOMENTS)),
        LAUNCHES,
        chosen,
    )
    client = dev_env.client
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def launch(
        number: int, data: dict[str, Any], moment: str, queue: str
    ) -> tuple[LaunchStatusValue, str]:
        """How the launch ended, and "" when it ended cleanly, else what went wrong."""
        flag_file = tmp_path / f"flags-{number}.json"
        before = seed_flags(flag_file)
        plan = launchable(data, flag_file, tame=number % 3 != 0)
        async with slots:
            handle = await start_launch(client, plan, queue)
            try:
                result = await abort_at(dev_env, handle, moment)
            except TimeoutError:
                current = await status(handle)
                return current.status, (
                    f"launch {number} (abort at {moment}) did not end within "
                    f"{ENDS_WITHIN:g}s: {current.model_dump_json(indent=1)[:4000]}"
                )
        ids = await workflow_ids(client, handle.id, plan)
        failed = {
            name: why for name, why in (await failed_workflow_tasks(client, ids)).items() if why
        }
        leaked = [
            workflow_id
            for workflow_id in ids
            for history in await every_run(client, workflow_id)
            if secret in history.to_json()
        ]
        problems = []
        if result.status not in (LaunchStatusValue.REFUSED, LaunchStatusValue.ROLLED_BACK):
            problems.append(f"ended {result.status.value}: {result.reason}")
        if failed:
            problems.append(f"workflow tasks failed: {failed}")
        if leaked:
            problems.append(f"the secret's value is in the history of {leaked}")
        after = json.loads(flag_file.read_text())
        if after != before:
            problems.append(f"the flag file changed from {before} to {after}")
        in_force = canary_share(flag_file, FLAG_KEY)
        if result.final.exposure not in (None, in_force):
            problems.append(f"status shows {result.final.exposure}% exposed, the flag {in_force}%")
        if secret in result.model_dump_json():
            problems.append("the secret's value is in the launch's result")
        if not problems:
            return result.status, ""
        shown = plan.model_dump_json(indent=1, exclude_defaults=True)[:4000]
        return result.status, (
            f"launch {number} (abort at {moment}): {'; '.join(problems)}\nplan: {shown}"
        )

    with replayable(chosen):
        async with running_worker(client) as queue, asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(launch(n, data, moment, queue))
                for n, (data, moment) in enumerate(drawn)
            ]
        outcomes = [task.result() for task in tasks]
        assert len(drawn) == LAUNCHES
        ends = [ended.value for ended, _ in outcomes]
        print(
            f"{LAUNCHES} launches: " + ", ".join(f"{ends.count(e)} {e}" for e in sorted(set(ends)))
        )
        assert [problem for _, problem in outcomes if problem] == []
        # Not vacuous: launches the worker admitted ran (their plans are tamed to its limits).
        assert LaunchStatusValue.ROLLED_BACK in [ended for ended, _ in outcomes]
