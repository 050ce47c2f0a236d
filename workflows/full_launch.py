"""Full launch: take the new version to every user, then make it the stable one."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.full_launch_spec import FullLaunchPhase
    from schemas.launch_messages import PhaseInput, PhaseState
    from workflows.exposure import run_exposure_steps
    from workflows.phase import UNEXPECTED_ERRORS, PhaseWorkflow


@workflow.defn(name="FullLaunch", failure_exception_types=UNEXPECTED_ERRORS)
class FullLaunchWorkflow(PhaseWorkflow):
    @workflow.run
    async def run(self, inp: PhaseInput[FullLaunchPhase]) -> PhaseState:
        return await self.run_phase(inp, lambda: run_exposure_steps(self, inp, promote=True))
