"""The scale benchmark on a real dev server with real worker processes, at a size that runs
in a minute: every figure measured, every launch completed, every flag at 100% — and the
same with one of two workers SIGKILLed halfway through the approvals."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from benchmarks.scale import Figures, Options, main, measure, table

pytestmark = pytest.mark.integration

# Generous: two worker start-ups, a warm-up, and after a kill the activities it held time
# out (30 s) before another worker runs them again.
RUN_TIMEOUT_S = 300


async def run(tmp_path: Path, launches: int, options: Options) -> Figures:
    (figures,) = await asyncio.wait_for(
        measure([launches], options, workdir=tmp_path), RUN_TIMEOUT_S
    )
    return figures


def assert_all_completed(figures: Figures, launches: int) -> None:
    assert figures.error_samples == []
    assert (figures.completed, figures.errors, figures.flags_wrong) == (launches, 0, 0)
    assert figures.waiting_reached == launches
    assert figures.all_waiting_s is not None
    assert figures.complete_s is not None
    assert figures.approvals_refused == 0


async def test_a_small_run_measures_every_figure(tmp_path: Path) -> None:
    options = Options(server="dev", workers=1)
    figures = await run(tmp_path, 3, options)

    assert_all_completed(figures, 3)
    assert figures.start_rate > 0
    assert figures.approval_rate > 0
    assert 0 < figures.rss_idle_kb <= figures.rss_waiting_kb + 4096
    assert figures.events_per_launch > 0
    assert 0 < figures.workflow_tasks_per_launch < figures.events_per_launch
    # Exposure 10%, then 100%, then promotion: three flag writes per launch, none repeated.
    assert figures.side_effects["flag_writes"] == 9
    assert figures.side_effects["ran_more_than_once"] == 0
    assert figures.killed_worker is None
    shown = table([figures], options)
    assert "| launches started /s | " in shown
    assert "| errors (not completed) | 0 | 0 | met |" in shown


async def test_every_launch_completes_when_one_of_two_workers_is_killed(tmp_path: Path) -> None:
    figures = await run(tmp_path, 4, Options(server="dev", workers=2, kill_worker=True))

    assert_all_completed(figures, 4)
    assert figures.killed_worker is not None
    assert figures.killed_worker["after_approvals"] == 2
    assert figures.killed_worker["replaced"] is False
    # Whatever the killed worker was running ran again elsewhere, at most once more.
    writes = figures.side_effects
    assert writes["flag_writes"] == 12 + sum(r["times"] - 1 for r in writes["repeated"])
    assert all(r["times"] == 2 for r in writes["repeated"])


def test_kill_worker_needs_a_second_worker(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--launches", "10", "--kill-worker"])
    assert "--kill-worker needs --workers 2" in capsys.readouterr().err
