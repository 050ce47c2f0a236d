"""What every phase kind has: a name, the gates before and after it, and the gates and
analyses its own work uses, so a plan's references and decisions can be checked up front."""

from __future__ import annotations

from schemas.basics import Name, StrictModel
from schemas.gate_spec import PhaseGates, gate_id


class PhaseSpec(StrictModel):
    kind: str  # each kind narrows it to its own name, which tells the plan's phases apart
    name: Name
    gates: PhaseGates = PhaseGates()

    def gate_ids(self) -> list[str]:
        """Every gate this phase can open, in the order it opens them."""
        before = [gate_id(self.name, "before")] if self.gates.before is not None else []
        after = [gate_id(self.name, "after")] if self.gates.after is not None else []
        return before + self.work_gate_ids() + after

    def work_gate_ids(self) -> list[str]:
        """The gates the phase's own work may open, between `before` and `after`."""
        return []

    def analysis_references(self) -> list[tuple[str, list[str]]]:
        """(path within the phase, analysis names) for every place the phase runs analyses."""
        return []

    def prometheus_needs(self) -> list[tuple[str, str]]:
        """(path within the phase, what for) wherever the phase itself queries Prometheus."""
        return []

    def step_count(self) -> int:
        """How many steps the phase shows before it starts (a phase may find more as it runs)."""
        return 0
