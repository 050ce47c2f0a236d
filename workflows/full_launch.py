"""Full launch: take the new version to every user, then make it the stable one."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.launch_messages import FullLaunchInput, PhaseState
    from workflows.exposure import run_exposure_steps
    from workflows.phase import PhaseWorkflow


@workflow.defn(name="FullLaunch")
class FullLaunchWorkflow(PhaseWorkflow):
    @workflow.run
    async def run(self, inp: FullLaunchInput) -> PhaseState:
        return await self.run_phase(inp, lambda: run_exposure_steps(self, inp, promote=True))
