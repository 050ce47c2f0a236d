"""The exposure loop soft and full launch share: set weight, bake, analyse, ask, next step.

The undo is registered before the first change: a snapshot of the routing state as the
phase found it, restored exactly on rollback (exposure back to 0 for a first launch).

A flag file changes in a moment and writing it again is harmless, so a flagd router's reads and
writes run as local activities: a run of instant steps costs one workflow task, not one per
step. Kubernetes routers wait on rollouts and stay activities of their own (as every undo does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.routing import LOCAL_ROUTING_OPTIONS, ROUTING_OPTIONS, RouterActivities
    from schemas.exposure_spec import ExposurePhase
    from schemas.gate_spec import gate_id
    from schemas.launch_messages import PhaseInput
    from schemas.routing_messages import (
        ExposureRequest,
        PromoteRequest,
        RestoreRequest,
        RouterSnapshot,
        SnapshotRequest,
    )
    from schemas.targets import FlagdRouter, TrafficRouter, describe_router
    from workflows.compensation import RESTORE_EXPOSURE
    from workflows.phase import PhaseWorkflow


# Launches started since this patch change a flag file by local activities.
LOCAL_FLAG_CHANGES = "flag-changes-local"

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")


async def _route(
    router: TrafficRouter,
    method: Callable[[RouterActivities, RequestT], ResultT],
    request: RequestT,
) -> ResultT:
    """Run a router activity: locally in the workflow task for a flag file, else on its own."""
    if isinstance(router, FlagdRouter) and workflow.patched(LOCAL_FLAG_CHANGES):
        return await workflow.execute_local_activity_method(
            method, request, **LOCAL_ROUTING_OPTIONS
        )
    return await workflow.execute_activity_method(method, request, **ROUTING_OPTIONS)


async def run_exposure_steps(
    phase: PhaseWorkflow,
    inp: PhaseInput[ExposurePhase],
    *,
    promote: bool,
) -> None:
    plan, spec, state = inp.plan, inp.phase, phase.state
    router = plan.targets.router

    state.activity = "reading the current routing state"
    snapshot: RouterSnapshot = await _route(
        router, RouterActivities.snapshot_exposure, SnapshotRequest(router=router)
    )
    await phase.compensations.register(
        RESTORE_EXPOSURE,
        RestoreRequest(router=router, snapshot=snapshot),
        f"put {describe_router(router)} back as it was before {spec.name}",
    )

    for number, step in enumerate(spec.steps, start=1):
        await phase.holding()
        state.step = number
        state.activity = f"setting exposure to {step.weight:g}%"
        await _route(
            router,
            RouterActivities.set_exposure,
            ExposureRequest(router=router, weight=step.weight, launch_id=inp.launch_id),
        )
        state.exposure = step.weight
        await phase.progress()

        if step.pause is not None:
            state.activity = f"baking at {step.weight:g}% for {step.pause}"
            await phase.report()
            await workflow.sleep(step.pause, summary=f"{spec.name} step {number} bakes")

        if step.analysis:
            state.activity = f"analysing {', '.join(step.analysis)} at {step.weight:g}%"
            await phase.report()
            await phase.analyse(
                inp,
                step.analysis,
                where=f"at {spec.name} step {number} ({step.weight:g}%)",
                gate=gate_id(spec.name, number, "analysis"),
                go_on="go on at this exposure",
            )

        if step.approval is not None:
            state.activity = f"waiting for approval at {step.weight:g}%"
            await phase.require(
                gate_id(spec.name, number),
                step.approval,
                f"{plan.service} {plan.version} serves {step.weight:g}% of users. Go on?",
                inp,
            )

    if promote:
        await phase.holding()
        state.activity = f"promoting {plan.version} to stable"
        await _route(
            router,
            RouterActivities.promote_exposure,
            PromoteRequest(router=router, launch_id=inp.launch_id),
        )
        state.exposure = 100.0
        await phase.progress()
