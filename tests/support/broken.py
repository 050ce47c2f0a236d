"""Phasegate's workflows with a deliberately broken code path, registered by a test worker under
the real workflows' names, to show that an error of the workflow code never leaves a launch
hanging or its users exposed."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.decision_messages import DecisionRequest, DecisionVerb
    from schemas.launch_messages import (
        CompensationRecord,
        LaunchInput,
        LaunchResult,
        OpenGate,
        PhaseInput,
        PhaseState,
    )
    from schemas.soft_launch_spec import SoftLaunchPhase
    from workflows.exposure import run_exposure_steps
    from workflows.gates import Vote
    from workflows.launch import LaunchWorkflow
    from workflows.phase import UNEXPECTED_ERRORS
    from workflows.rollback import Rollback
    from workflows.soft_launch import SoftLaunchWorkflow


@workflow.defn(name="SoftLaunch", failure_exception_types=UNEXPECTED_ERRORS)
class DividesByZero(SoftLaunchWorkflow):
    """A soft launch that divides by zero once its steps have changed the exposure."""

    @workflow.run
    async def run(self, inp: PhaseInput[SoftLaunchPhase]) -> PhaseState:
        return await self.run_phase(inp, lambda: self._steps(inp))

    async def _steps(self, inp: PhaseInput[SoftLaunchPhase]) -> None:
        await run_exposure_steps(self, inp, promote=False)
        self.state.step = 1 // (self.state.steps - self.state.step)


@workflow.defn(name="SoftLaunch", failure_exception_types=UNEXPECTED_ERRORS)
class LosesItsResult(SoftLaunchWorkflow):
    """A soft launch that does all its work, then fails outside the phase's own error handling."""

    @workflow.run
    async def run(self, inp: PhaseInput[SoftLaunchPhase]) -> PhaseState:
        state = await self.run_phase(inp, lambda: run_exposure_steps(self, inp, promote=False))
        raise KeyError(f"{state.name} result")


@workflow.defn(name="Launch")
class VotesBreak(LaunchWorkflow):
    """A launch whose check of every vote fails with an error of its own code."""

    @workflow.run
    async def run(self, inp: LaunchInput) -> LaunchResult:
        return await super().run(inp)

    async def _vote(
        self, request: DecisionRequest, verb: DecisionVerb | None
    ) -> tuple[Vote, OpenGate]:
        raise TypeError(f"votes for {request.gate} cannot be counted")


class BookkeepingBreaks(Rollback):
    """A rollback whose bookkeeping after the full launch's undo fails."""

    def _undone(self, record: CompensationRecord, result: Any) -> None:
        if record.phase == "full-launch":
            raise AttributeError("'NoneType' object has no attribute 'weight'")
        super()._undone(record, result)


@workflow.defn(name="Launch")
class RollbackBreaks(LaunchWorkflow):
    """A launch whose rollback fails in its own code after one of its undos ran."""

    @workflow.init
    def __init__(self, inp: LaunchInput) -> None:
        super().__init__(inp)
        self._rollback = BookkeepingBreaks(self._notifier, self._publish)

    @workflow.run
    async def run(self, inp: LaunchInput) -> LaunchResult:
        return await super().run(inp)
