"""The infra-setup phase's logic on the time-skipping server, Kubernetes activities mocked,
and replay of its recorded histories."""

from __future__ import annotations

import os
from typing import Any

from temporalio.testing import WorkflowEnvironment

from schemas.plan import LaunchPlan
from tests.support.fakes import running_launch
from tests.support.histories import HISTORIES, replay, save_history
from tests.support.kube_fakes import KubeFakeWorld, config_map, deployment
from tests.support.launches import wait_for
from tests.support.plans import plan_dict


def infra_plan(**phase: Any) -> LaunchPlan:
    spec = {
        "name": "infra-setup",
        "kind": "infra_setup",
        "namespace": "shop",
        "manifests": ["/plans/shop.yaml"],
        "secrets": [{"name": "db", "data": {"password": {"env": "DB_PASSWORD"}}}],
        **phase,
    }
    full = {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]}
    return LaunchPlan.model_validate(plan_dict(phases=[spec, full]))


async def run(
    env: WorkflowEnvironment, world: KubeFakeWorld, plan: LaunchPlan
) -> list[tuple[str, str]]:
    async with running_launch(env.client, plan, world) as handle:
        result = await handle.result()
        await wait_for(env, handle, lambda s: s.finished_at is not None)
        ids = [handle.id] + [
            f"{handle.id}.{p.name}" for p in result.final.phases if p.status != "pending"
        ]
        world.calls.append(("result", result.status.value))
        return [
            (
                workflow_id,
                (await env.client.get_workflow_handle(workflow_id).fetch_history()).to_json(),
            )
            for workflow_id in ids
        ]


async def test_each_object_is_snapshotted_before_it_is_applied(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = KubeFakeWorld(objects=[config_map("cfg"), deployment("web")])
    await run(time_skipping_env, world, infra_plan())
    kube_calls = [c for c in world.calls if c[0] not in ("send_notification",)]
    assert kube_calls[:9] == [
        ("read_manifests", ["/plans/shop.yaml"]),
        ("snapshot_object", "Namespace shop"),
        ("apply_object", "Namespace shop"),
        ("snapshot_object", "Secret shop/db"),
        ("apply_secret", "Secret shop/db"),
        ("snapshot_object", "ConfigMap shop/cfg"),
        ("apply_object", "ConfigMap shop/cfg"),
        ("snapshot_object", "Deployment shop/web"),
        ("apply_object", "Deployment shop/web"),
    ]
    assert ("check_rollout", ["web"]) in world.calls
    assert world.calls[-1] == ("result", "completed")


async def test_named_prometheus_jobs_are_checked_after_the_rollout(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = KubeFakeWorld(objects=[deployment("web")])
    await run(time_skipping_env, world, infra_plan(prometheus_jobs=["web"]))
    names = world.names()
    assert names.index("check_rollout") < names.index("check_targets_up")
    assert ("check_targets_up", ["web"]) in world.calls


async def test_a_refused_object_rolls_back_everything_applied_in_reverse(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = KubeFakeWorld(
        objects=[config_map("cfg"), deployment("web")],
        reject={"Deployment shop/web"},
        cluster={"ConfigMap shop/cfg": {"data": "old"}},
    )
    await run(time_skipping_env, world, infra_plan())
    assert [c for c in world.calls if c[0] == "restore_object"] == [
        ("restore_object", "Deployment shop/web"),
        ("restore_object", "ConfigMap shop/cfg"),
        ("restore_object", "Secret shop/db"),
        ("restore_object", "Namespace shop"),
    ]
    assert world.cluster == {"ConfigMap shop/cfg": {"data": "old"}}  # changed one put back
    assert world.calls[-1] == ("result", "rolled_back")
    assert ("check_rollout", ["web"]) not in world.calls


async def test_infra_setup_histories_replay(time_skipping_env: WorkflowEnvironment) -> None:
    recorded = {
        "infra_completed": await run(
            time_skipping_env,
            KubeFakeWorld(objects=[config_map("cfg"), deployment("web")]),
            infra_plan(),
        ),
        "infra_refused": await run(
            time_skipping_env,
            KubeFakeWorld(
                objects=[config_map("cfg"), deployment("web")], reject={"Deployment shop/web"}
            ),
            infra_plan(),
        ),
    }
    for name, histories in recorded.items():
        await replay(histories)
        if os.environ.get("PHASEGATE_RECORD_HISTORIES"):
            for index, (workflow_id, text) in enumerate(histories):
                kind = "launch" if index == 0 else workflow_id.rsplit(".", 1)[1]
                save_history(HISTORIES / f"{name}.{kind}.json", workflow_id, text)
