"""The flagd router against real files, judged by flagd's own evaluator (openfeature-flagd-core)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from temporalio.testing import ActivityEnvironment

from activities.errors import ConfigurationError, RouterError
from activities.flags import FlagdFileRouter, canary_weight
from activities.routing import RouterActivities
from schemas.routing_messages import (
    ExposureRequest,
    ExposureState,
    PromoteRequest,
    RestoreRequest,
    SnapshotRequest,
)
from schemas.targets import FlagdRouter, ReplicaCanaryRouter

USERS = [f"user-{n}" for n in range(4000)]


@pytest.fixture
def spec(tmp_path: Path) -> FlagdRouter:
    return FlagdRouter(flag_file=str(tmp_path / "flags.json"), flag_key="checkout-v2")


def variants(spec: FlagdRouter) -> dict[str, str]:
    """Which variant flagd gives each user with the file as it is now."""
    core = FlagdCore()
    core.set_flags(Path(spec.flag_file).read_text())
    return {
        user: core.resolve_string_value(
            spec.flag_key, "stable", EvaluationContext(targeting_key=user)
        ).value
        for user in USERS
    }


def share(assignments: dict[str, str]) -> float:
    return sum(v == "canary" for v in assignments.values()) / len(assignments)


def test_weights_expose_that_share_of_users_and_users_stay_put(spec: FlagdRouter) -> None:
    router = FlagdFileRouter()
    router.set_weight(spec, 5, "launch-1")
    at_5 = variants(spec)
    router.set_weight(spec, 25, "launch-1")
    at_25 = variants(spec)
    assert 0.03 < share(at_5) < 0.07
    assert 0.22 < share(at_25) < 0.28
    assert all(at_25[user] == "canary" for user, v in at_5.items() if v == "canary")


def test_small_weights_are_representable(spec: FlagdRouter) -> None:
    FlagdFileRouter().set_weight(spec, 0.1, "launch-1")
    definition = json.loads(Path(spec.flag_file).read_text())["flags"]["checkout-v2"]
    assert definition["targeting"]["fractional"] == [["canary", 100], ["stable", 99900]]
    assert canary_weight(definition, spec) == pytest.approx(0.1)


def test_setting_the_same_weight_twice_changes_nothing(spec: FlagdRouter) -> None:
    router = FlagdFileRouter()
    assert router.set_weight(spec, 10, "launch-1") is True
    mtime = Path(spec.flag_file).stat().st_mtime_ns
    assert router.set_weight(spec, 10, "launch-1") is False
    assert Path(spec.flag_file).stat().st_mtime_ns == mtime


def test_restore_puts_back_exactly_what_was_there_and_keeps_other_flags(spec: FlagdRouter) -> None:
    other = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
    previous = {
        "state": "ENABLED",
        "variants": {"stable": "stable", "canary": "canary"},
        "defaultVariant": "stable",
    }
    Path(spec.flag_file).write_text(
        json.dumps({"flags": {"dark-mode": other, "checkout-v2": previous}})
    )
    router = FlagdFileRouter()
    snapshot = router.snapshot(spec)
    router.set_weight(spec, 50, "launch-1")
    router.restore(spec, snapshot)
    router.restore(spec, snapshot)  # a retried undo converges
    flags = json.loads(Path(spec.flag_file).read_text())["flags"]
    assert flags == {"dark-mode": other, "checkout-v2": previous}


def test_restoring_a_flag_that_did_not_exist_means_zero_exposure(spec: FlagdRouter) -> None:
    router = FlagdFileRouter()
    snapshot = router.snapshot(spec)
    assert snapshot.existed is False
    router.set_weight(spec, 30, "launch-1")
    router.restore(spec, snapshot)
    assert share(variants(spec)) == 0.0


def test_promote_sends_everyone_to_the_new_version(spec: FlagdRouter) -> None:
    FlagdFileRouter().promote(spec, "launch-1")
    assert share(variants(spec)) == 1.0


def test_a_broken_flag_file_is_refused_not_overwritten(spec: FlagdRouter) -> None:
    Path(spec.flag_file).write_text("{not json")
    with pytest.raises(RouterError, match="is not JSON"):
        FlagdFileRouter().set_weight(spec, 5, "launch-1")
    assert Path(spec.flag_file).read_text() == "{not json"


def test_a_missing_folder_is_a_configuration_error(tmp_path: Path) -> None:
    spec = FlagdRouter(flag_file=str(tmp_path / "nowhere" / "flags.json"), flag_key="k")
    with pytest.raises(ConfigurationError, match="does not exist"):
        FlagdFileRouter().set_weight(spec, 5, "launch-1")


def test_concurrent_writers_never_leave_a_torn_file(spec: FlagdRouter, tmp_path: Path) -> None:
    router = FlagdFileRouter()
    other = FlagdRouter(flag_file=spec.flag_file, flag_key="search-v3")
    with ThreadPoolExecutor(max_workers=4) as pool:
        for weight in range(1, 60):
            pool.submit(router.set_weight, spec, float(weight), "a")
            pool.submit(router.set_weight, other, float(weight), "b")
    flags = json.loads(Path(spec.flag_file).read_text())["flags"]
    assert set(flags) == {"checkout-v2", "search-v3"}
    assert not list(tmp_path.glob(".flags.json.*.tmp"))


def test_exposure_activities_reach_the_router_of_the_plans_kind(spec: FlagdRouter) -> None:
    env = ActivityEnvironment()
    exposure = RouterActivities({"flagd": FlagdFileRouter()})
    snapshot = env.run(exposure.snapshot_exposure, SnapshotRequest(router=spec))
    assert (snapshot.kind, snapshot.existed) == ("flagd", False)

    set_to = env.run(exposure.set_exposure, ExposureRequest(router=spec, weight=25, launch_id="l"))
    assert set_to == ExposureState(weight=25, changed=True)
    assert 0.22 < share(variants(spec)) < 0.28
    promoted = env.run(exposure.promote_exposure, PromoteRequest(router=spec, launch_id="l"))
    assert promoted == ExposureState(weight=100, changed=True)
    assert share(variants(spec)) == 1.0
    restored = env.run(exposure.restore_exposure, RestoreRequest(router=spec, snapshot=snapshot))
    assert restored == ExposureState(weight=0, changed=True)
    assert share(variants(spec)) == 0.0


def test_a_router_kind_the_worker_does_not_serve_is_a_configuration_error(
    spec: FlagdRouter,
) -> None:
    exposure = RouterActivities({"flagd": FlagdFileRouter()})
    replicas = ReplicaCanaryRouter(
        kind="kube_replicas", namespace="shop", stable="web", images={"web": "web:2"}
    )
    with pytest.raises(
        ConfigurationError,
        match=r"router kind 'kube_replicas' is not served by this worker \(it serves: flagd\)",
    ):
        ActivityEnvironment().run(exposure.snapshot_exposure, SnapshotRequest(router=replicas))
