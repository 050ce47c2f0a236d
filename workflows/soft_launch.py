"""Soft launch: expose the new version to a growing part of the users, analysing each step."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.launch_messages import PhaseInput, PhaseState
    from schemas.soft_launch_spec import SoftLaunchPhase
    from workflows.exposure import run_exposure_steps
    from workflows.phase import UNEXPECTED_ERRORS, PhaseWorkflow


@workflow.defn(name="SoftLaunch", failure_exception_types=UNEXPECTED_ERRORS)
class SoftLaunchWorkflow(PhaseWorkflow):
    @workflow.run
    async def run(self, inp: PhaseInput[SoftLaunchPhase]) -> PhaseState:
        return await self.run_phase(inp, lambda: run_exposure_steps(self, inp, promote=False))
