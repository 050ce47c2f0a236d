"""The analysis evidence a person approves on: an id for what the launch has measured so far.

`status` shows the current id (`ev-N`, N measurements so far). A decision may name the id the
person looked at; if a measurement failed or was inconclusive since, the decision is refused
with the new evidence, so nobody approves a picture that has changed under them.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.launch_messages import EvidenceMemory, MetricResult, PhaseState
    from workflows.analysis import taken
    from workflows.gates import Refused

KEEP_EVIDENCE = 500


class EvidenceLog:
    def __init__(self) -> None:
        self.current = "ev-0"
        # For each evidence id seen: how many measurements had failed or were inconclusive.
        self._bad: dict[str, int] = {"ev-0": 0}
        self._results: list[MetricResult] = []

    def observe(self, phases: list[PhaseState]) -> None:
        results = [result for phase in phases for result in phase.analysis]
        self._results = results
        self.current = f"ev-{sum(taken(r) for r in results)}"
        if self.current not in self._bad:
            self._bad[self.current] = sum(r.failures + r.inconclusive for r in results)
            while len(self._bad) > KEEP_EVIDENCE:
                del self._bad[next(iter(self._bad))]

    def remember(self) -> EvidenceMemory:
        """What a launch's next run needs to go on checking evidence (it observes the results
        again from the phases it is handed)."""
        return EvidenceMemory(current=self.current, bad=dict(self._bad))

    def recall(self, memory: EvidenceMemory, phases: list[PhaseState]) -> None:
        self._bad = dict(memory.bad) or {"ev-0": 0}
        self.observe(phases)

    def check(self, seen: str) -> None:
        """Refuse a decision made on evidence `seen` if things got worse since."""
        if not seen or seen == self.current:
            return
        if seen not in self._bad:
            raise Refused(
                f"evidence: {seen!r} is not evidence this launch showed; now {self.current}"
            )
        if self._bad[self.current] > self._bad[seen]:
            worse = [
                f"{r.metric} at {r.phase} step {r.step}: {r.verdict} "
                f"({r.failures} failed, {r.inconclusive} inconclusive)"
                for r in self._results
                if r.failures or r.inconclusive
            ]
            raise Refused(
                f"evidence: measurements failed or were inconclusive since {seen}; "
                f"now {self.current}: {'; '.join(worse)[:1000]}. Look again and decide on {self.current}"
            )
