"""The Deployment health check against a real API server: the activity reads, the health
workflow's judge decides, as a scheduled run would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from temporalio.testing import ActivityEnvironment

from activities.kube import KubeActivities, KubeConnection
from schemas.health_messages import CheckResult
from schemas.health_profile import KubernetesCheck
from schemas.kube_messages import DeploymentHealthReport, DeploymentHealthRequest
from tests.support.kube import deployment_manifest, name_of
from workflows.health import judge_deployments

pytestmark = pytest.mark.integration


@pytest.fixture
def namespace(kube_api: client.ApiClient, namespace_name: str) -> Iterator[str]:
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace_name)))
    yield namespace_name
    core.delete_namespace(namespace_name, propagation_policy="Background")


def deployment(name: str, replicas: int, cpu: str = "10m") -> client.V1Deployment:
    """Pods on image app:1, each asking for `cpu` (more than a node has: never scheduled)."""
    manifest = deployment_manifest(name, "app:1", replicas=replicas)
    manifest["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": cpu}}
    return client.V1Deployment.model_validate(manifest)


def check(namespace: str, *names: str, **limits: Any) -> KubernetesCheck:
    return KubernetesCheck(
        name="deployments",
        kind="kubernetes",
        namespace=namespace,
        deployments=list(names),
        **limits,
    )


def run_check(
    api: client.ApiClient, health: KubernetesCheck
) -> tuple[DeploymentHealthReport, CheckResult]:
    activities = KubeActivities(KubeConnection(api=api))
    report = ActivityEnvironment().run(
        activities.check_deployment_health,
        DeploymentHealthRequest(namespace=health.namespace, deployments=health.deployments),
    )
    return report, judge_deployments(health, report)


def until(
    api: client.ApiClient, health: KubernetesCheck, wanted: str, timeout: float = 60
) -> CheckResult:
    """Run the check until its detail is `wanted`: pods take a moment to become Ready."""
    deadline = time.monotonic() + timeout
    while True:
        _, result = run_check(api, health)
        if result.detail == wanted:
            return result
        assert time.monotonic() < deadline, f"still {result.status}: {result.detail}"
        time.sleep(0.5)


def test_a_ready_deployment_passes_and_restarts_are_counted(
    kube_api: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, deployment("web", 3))
    health = check(namespace, "web", max_restarts_warn=3, max_restarts_fail=10)

    ready = until(kube_api, health, "web: 3/3 available, 0 restarts")
    assert ready.status == "pass"

    # kwok plays the kubelet and never restarts a container: record restarts the way a kubelet
    # would, in the pod's status.
    pod = core.list_namespaced_pod(namespace, label_selector="app=web").items[0]
    assert pod.status is not None
    assert pod.status.container_statuses
    pod.status.container_statuses[0].restart_count = 4
    core.replace_namespaced_pod_status(name_of(pod), namespace, pod)
    restarted = until(kube_api, health, "web: 3/3 available, 4 restarts > 3")
    assert restarted.status == "warn"


def test_a_deployment_short_of_replicas_or_missing_fails_with_the_numbers(
    kube_api: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(kube_api)
    # Each fake node has 64 CPUs and the session has two: only two such pods fit anywhere.
    apps.create_namespaced_deployment(namespace, deployment("big", 2, cpu="40"))
    health = check(namespace, "big", "absent")
    until(
        kube_api, health, f"big: 2/2 available, 0 restarts; Deployment {namespace}/absent not found"
    )

    apps.patch_namespaced_deployment_scale("big", namespace, {"spec": {"replicas": 3}})
    short = until(
        kube_api,
        check(namespace, "big"),
        "big: 2/3 available, rolling out: 2 of 3 updated replicas available, 0 restarts",
    )
    assert short.status == "fail"
    report, result = run_check(kube_api, health)
    assert result.status == "fail"
    assert [(d.name, d.found, d.desired, d.available) for d in report.deployments] == [
        ("big", True, 3, 2),
        ("absent", False, 0, 0),
    ]
    tolerant = run_check(kube_api, check(namespace, "big", min_available=2))[1]
    assert tolerant.status == "warn"


def test_an_unreachable_api_server_is_reported_not_raised() -> None:
    dead = client.Configuration()
    dead.host = "https://127.0.0.1:9"  # nothing listens on the discard port
    dead.retries = 0
    report, result = run_check(client.ApiClient(dead), check("shop", "web", on_error="fail"))
    assert report.deployments[0].error.startswith("reading Deployment shop/web: ")
    assert (result.status, result.detail.split(": ")[0]) == ("fail", "shop/web")
