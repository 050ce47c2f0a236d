"""Launches with an infra_setup phase and the replica router: real Temporal dev server, real
worker, the local Kubernetes control plane."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.kube import LAUNCH_ANNOTATION, KubeConnection
from activities.kube_client import metadata_of
from devstack.kube_cluster import ControlPlane
from devstack.processes import start_worker
from schemas.launch_messages import LaunchResult
from schemas.plan import LaunchPlan
from tests.support.kube import deployment_manifest, image_of, name_of, service_manifest
from tests.support.launches import gate_open, start_launch, wait_for
from tests.support.servers import running_worker
from workflows.launch import LaunchWorkflow

pytestmark = pytest.mark.integration


def write_manifests(directory: Path, *, config_maps: int = 1, broken: bool = False) -> Path:
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"web-config-{n}"},
            "data": {"n": str(n)},
        }
        for n in range(config_maps)
    ]
    deployment = deployment_manifest("web", "web:1", replicas=4)
    if broken:  # the pods' labels no longer match the selector: the API server refuses it
        deployment["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    documents += [service_manifest("web"), deployment]
    path = directory / "web.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


def kube_plan(
    manifests: Path, namespace: str, *, launch: bool = True, approval_at_50: bool = False
) -> LaunchPlan:
    phases: list[dict[str, Any]] = [
        {
            "name": "infra-setup",
            "kind": "infra_setup",
            "namespace": namespace,
            "manifests": [str(manifests)],
            "secrets": [{"name": "web-db", "data": {"password": {"env": "WEB_DB_PASSWORD"}}}],
            "rollout_timeout": "90s",
        }
    ]
    if launch:
        phases += [
            {
                "name": "soft-launch",
                "kind": "soft_launch",
                "steps": [{"weight": 25}, {"weight": 50, "approval": approval_at_50}],
            },
            {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
        ]
    return LaunchPlan.model_validate(
        {
            "service": "web",
            "version": "2.0.0",
            "targets": {
                "router": {
                    "kind": "kube_replicas",
                    "namespace": namespace,
                    "stable": "web",
                    "images": {"web": "web:2"},
                }
            },
            "approvals": {"identity": "none", "approvers": ["alice"], "timeout": "10m"},
            "phases": phases,
        }
    )


def objects_of_launch(api: client.ApiClient, launch_id: str) -> list[str]:
    """Every object anywhere in the cluster that this launch applied (by its annotation)."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    found = []
    for kind, items in (
        ("Namespace", core.list_namespace().items),
        ("ConfigMap", core.list_config_map_for_all_namespaces().items),
        ("Secret", core.list_secret_for_all_namespaces().items),
        ("Service", core.list_service_for_all_namespaces().items),
        ("Deployment", apps.list_deployment_for_all_namespaces().items),
    ):
        for item in items:
            metadata = metadata_of(item)
            if (metadata.annotations or {}).get(LAUNCH_ANNOTATION) == launch_id:
                found.append(f"{kind} {metadata.namespace or ''}/{metadata.name}")
    return found


def namespace_gone(api: client.ApiClient, name: str) -> bool:
    return name not in {name_of(n) for n in client.CoreV1Api(api).list_namespace().items}


@dataclass
class KubeLaunches:
    """Launches of the `web` manifests into one fresh namespace, on a real worker whose
    Kubernetes activities talk to the local control plane."""

    env: WorkflowEnvironment
    task_queue: str
    namespace: str
    workdir: Path

    async def start(
        self, *, broken: bool = False, approval_at_50: bool = False
    ) -> WorkflowHandle[LaunchWorkflow, LaunchResult]:
        manifests = write_manifests(self.workdir, broken=broken)
        plan = kube_plan(manifests, self.namespace, approval_at_50=approval_at_50)
        return await start_launch(self.env.client, plan, self.task_queue)


@pytest.fixture
async def launches(
    dev_env: WorkflowEnvironment, kube: ControlPlane, namespace_name: str, tmp_path: Path
) -> AsyncIterator[KubeLaunches]:
    async with running_worker(dev_env.client, KubeConnection(str(kube.kubeconfig))) as queue:
        yield KubeLaunches(dev_env, queue, namespace_name, tmp_path)


@pytest.fixture(autouse=True)
def db_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_DB_PASSWORD", "hunter2")


async def test_infra_setup_then_replica_canary_runs_end_to_end(
    launches: KubeLaunches, kube_api: client.ApiClient, namespace_name: str
) -> None:
    handle = await launches.start()
    try:
        result = await asyncio.wait_for(handle.result(), timeout=240)
        assert result.status == "completed", result.reason
        apps = client.AppsV1Api(kube_api)
        assert [name_of(d) for d in apps.list_namespaced_deployment(namespace_name).items] == [
            "web"
        ]
        stable = apps.read_namespaced_deployment("web", namespace_name)
        assert (stable.spec.replicas, image_of(stable)) == (4, "web:2")
        infra = result.final.phases[0]
        assert [c.description for c in infra.compensations] == [
            f"delete Namespace {namespace_name}",
            f"delete Secret {namespace_name}/web-db",
            f"delete ConfigMap {namespace_name}/web-config-0",
            f"delete Service {namespace_name}/web",
            f"delete Deployment {namespace_name}/web",
        ]
    finally:
        client.CoreV1Api(kube_api).delete_namespace(namespace_name)


async def test_failed_soft_launch_leaves_no_object_the_launch_created(
    launches: KubeLaunches, kube_api: client.ApiClient, namespace_name: str
) -> None:
    handle = await launches.start(approval_at_50=True)
    await gate_open(launches.env, handle, "soft-launch.step-2", timeout=120)
    assert len(objects_of_launch(kube_api, handle.id)) == 6  # namespace, secret, 2 + canary
    await handle.signal(LaunchWorkflow.reject, {"gate": "soft-launch.step-2", "approver": "alice"})
    result = await asyncio.wait_for(handle.result(), timeout=120)

    assert result.status == "rolled_back"
    assert all(c.status == "done" for c in result.final.compensations)
    assert objects_of_launch(kube_api, handle.id) == []
    assert namespace_gone(kube_api, namespace_name)


async def test_invalid_manifest_fails_fast_with_the_servers_message(
    launches: KubeLaunches, kube_api: client.ApiClient, namespace_name: str
) -> None:
    started = time.monotonic()
    result = await asyncio.wait_for((await launches.start(broken=True)).result(), timeout=90)

    assert result.status == "rolled_back"
    assert time.monotonic() - started < 45  # no retrying a 4xx
    assert f"applying Deployment {namespace_name}/web: 422" in result.reason
    assert "`selector` does not match template `labels`" in result.reason
    undone = [c.description for c in result.final.compensations if c.status == "done"]
    assert undone[0] == f"delete Namespace {namespace_name}"
    assert len(undone) == 5  # namespace, secret, config map, service, and the refused Deployment
    assert namespace_gone(kube_api, namespace_name)


async def test_worker_killed_mid_apply_converges_after_restart(
    dev_env: WorkflowEnvironment,
    kube: ControlPlane,
    kube_api: client.ApiClient,
    namespace_name: str,
    tmp_path: Path,
) -> None:
    address = dev_env.client.service_client.config.target_host
    plan = kube_plan(write_manifests(tmp_path, config_maps=12), namespace_name, launch=False)
    task_queue = f"kube-kill-{uuid.uuid4().hex[:8]}"
    env = {"PHASEGATE_KUBECONFIG": str(kube.kubeconfig), "WEB_DB_PASSWORD": "hunter2"}
    first = start_worker(
        address=address, workdir=tmp_path / "w1", task_queue=task_queue, extra_env=env
    )
    try:
        handle = await start_launch(dev_env.client, plan, task_queue)
        await wait_for(
            dev_env, handle, lambda s: bool(s.phases) and s.phases[0].step >= 5, timeout=120
        )
        first.kill()
    finally:
        first.stop()
    partial = client.CoreV1Api(kube_api).list_namespaced_config_map(namespace_name).items
    assert len([c for c in partial if name_of(c).startswith("web-config")]) < 12

    second = start_worker(
        address=address, workdir=tmp_path / "w2", task_queue=task_queue, extra_env=env
    )
    try:
        result = await asyncio.wait_for(handle.result(), timeout=180)
    finally:
        second.stop()
    try:
        assert result.status == "completed", result.reason
        names = sorted(
            name_of(c)
            for c in client.CoreV1Api(kube_api).list_namespaced_config_map(namespace_name).items
            if name_of(c).startswith("web-config")
        )
        assert names == sorted(f"web-config-{n}" for n in range(12))
        web = client.AppsV1Api(kube_api).read_namespaced_deployment("web", namespace_name)
        assert web.status is not None
        assert web.status.ready_replicas == 4
        # One undo per object, none twice, whatever the crash interrupted.
        descriptions = [c.description for c in result.final.phases[0].compensations]
        assert len(descriptions) == len(set(descriptions)) == 12 + 4
    finally:
        client.CoreV1Api(kube_api).delete_namespace(namespace_name)
