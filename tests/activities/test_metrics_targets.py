"""`check_targets_up` against a real Prometheus scraping itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from activities.metrics import MetricsActivities, TargetsDown
from devstack.processes import ManagedProcess, free_port, start_prometheus, wait_for_first_scrape
from schemas.metrics_messages import TargetsUpRequest
from schemas.targets import PrometheusTarget

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("prometheus")
    with start_prometheus(
        scrape_targets={
            "self": [f"127.0.0.1:{port}"],
            "nothing-there": [f"127.0.0.1:{free_port()}"],
        },
        workdir=workdir,
        port=port,
    ) as running:
        wait_for_first_scrape(running)
        yield running


def test_up_jobs_pass_and_down_ones_are_named(prometheus: ManagedProcess) -> None:
    env, metrics = ActivityEnvironment(), MetricsActivities()
    target = PrometheusTarget(url=prometheus.url)
    assert env.run(
        metrics.check_targets_up, TargetsUpRequest(prometheus=target, jobs=["self"])
    ).up == {"self": 1}
    with pytest.raises(
        TargetsDown, match="no target up for Prometheus job\\(s\\): nothing-there, unknown"
    ):
        env.run(
            metrics.check_targets_up,
            TargetsUpRequest(prometheus=target, jobs=["self", "nothing-there", "unknown"]),
        )
