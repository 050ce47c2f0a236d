"""The local control plane itself: what the other Kubernetes tests rely on."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client

from activities.kube_client import api_client_from_kubeconfig
from devstack import kube_cluster
from devstack.kube_cluster import ControlPlane
from tests.support.kube import web_deployment
from tests.support.servers import IN_CI

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_pinned_versions_match_the_build_script() -> None:
    pinned = dict(
        line.split("=", 1)
        for line in (REPO / "deploy" / "kube" / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pinned == {
        "KUBE_VERSION": kube_cluster.KUBE_VERSION,
        "ETCD_VERSION": kube_cluster.ETCD_VERSION,
        "KWOK_VERSION": kube_cluster.KWOK_VERSION,
    }


def test_api_server_reports_its_version_and_nodes_are_ready(
    kube: ControlPlane, kube_api: client.ApiClient
) -> None:
    version = client.VersionApi(kube_api).get_code()
    if kube.local:
        assert version.git_version == kube_cluster.KUBE_VERSION
    nodes = client.CoreV1Api(kube_api).list_node().items
    assert nodes
    assert all(
        node.status is not None
        and any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
        for node in nodes
    )


def test_deployment_pods_become_ready_and_deleted_pods_go_away(
    kube_api: client.ApiClient, namespace_name: str
) -> None:
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace_name)))
    try:
        apps.create_namespaced_deployment(namespace_name, web_deployment(replicas=3))
        wait_until(
            lambda: ready_replicas(apps.read_namespaced_deployment("web", namespace_name)) == 3
        )
        apps.patch_namespaced_deployment_scale("web", namespace_name, {"spec": {"replicas": 1}})
        wait_until(lambda: len(core.list_namespaced_pod(namespace_name).items) == 1)
    finally:
        core.delete_namespace(namespace_name)


def test_rbac_applies_to_certificate_users(kube: ControlPlane, kube_api: client.ApiClient) -> None:
    if not kube.local:
        # A cluster given by KUBECONFIG has no CA here to sign a user with; CI always runs
        # the local control plane, so there this is a failure, never a skip.
        message = "needs the local control plane's CA to make a user (KUBECONFIG is set)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    api = api_client_from_kubeconfig(kube.user_kubeconfig("dora", ["devs"]))
    with pytest.raises(client.ApiException) as refused:
        client.CoreV1Api(api).list_namespace()
    assert refused.value.status == 403
    assert refused.value.body is not None
    assert (
        'User "dora" cannot list resource "namespaces"' in json.loads(refused.value.body)["message"]
    )

    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name="devs-view"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="view"
            ),
            subjects=[
                client.RbacV1Subject(
                    kind="Group", name="devs", api_group="rbac.authorization.k8s.io"
                )
            ],
        )
    )
    try:
        wait_until(lambda: _can_list_pods(api))
    finally:
        rbac.delete_cluster_role_binding("devs-view")


def _can_list_pods(api: client.ApiClient) -> bool:
    try:
        client.CoreV1Api(api).list_pod_for_all_namespaces()
    except client.ApiException as err:
        if err.status == 403:
            return False
        raise
    return True


def ready_replicas(deployment: client.V1Deployment) -> int:
    return (deployment.status.ready_replicas or 0) if deployment.status is not None else 0


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.3)
