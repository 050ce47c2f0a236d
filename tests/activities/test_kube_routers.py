"""Kubernetes traffic routers against a real API server: weights, promotion, rollback."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from functools import partial

import pytest
from kubernetes import client

from activities.kube import KubeConnection
from activities.kube_client import metadata_of
from activities.kube_routers import NginxCanaryRouter, ReplicaWeightRouter, split_replicas
from schemas.targets import IngressCanaryRouter, ReplicaCanaryRouter
from tests.support.kube import (
    image_of,
    name_of,
    pod_spec_of,
    poll_until_rolled_out,
    web_deployment,
)

pytestmark = pytest.mark.integration
LAUNCH = "launch-routers"


def ready_images(api: client.ApiClient, namespace: str) -> Counter[str | None]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="app=web").items
    return Counter(
        pod_spec_of(pod).containers[0].image
        for pod in pods
        if metadata_of(pod).deletion_timestamp is None
        and pod.status is not None
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    )


def wait_for_images(api: client.ApiClient, namespace: str, wanted: dict[str | None, int]) -> None:
    deadline = time.monotonic() + 90
    while dict(ready_images(api, namespace)) != wanted:
        assert time.monotonic() < deadline, f"{dict(ready_images(api, namespace))} != {wanted}"
        time.sleep(0.5)


@pytest.fixture
def web(kube_api: client.ApiClient, namespace_name: str) -> Iterator[str]:
    """A namespace with a stable Deployment `web` of 10 ready pods on image web:1."""
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace_name)))
    apps.create_namespaced_deployment(namespace_name, web_deployment(replicas=10))
    wait_for_images(kube_api, namespace_name, {"web:1": 10})
    yield namespace_name
    core.delete_namespace(namespace_name)


def replica_canary(
    api: client.ApiClient, namespace: str
) -> tuple[ReplicaCanaryRouter, ReplicaWeightRouter]:
    """The replica router's plan entry for `web` in `namespace` (canary on web:2), and the router."""
    spec = ReplicaCanaryRouter(
        kind="kube_replicas", namespace=namespace, stable="web", images={"web": "web:2"}
    )
    return spec, ReplicaWeightRouter(KubeConnection(api=api))


def test_split_rounds_to_whole_pods_and_keeps_both_sides() -> None:
    assert split_replicas(10, 0) == (10, 0)
    assert split_replicas(10, 25) == (7, 3)
    assert split_replicas(10, 0.1) == (9, 1)
    assert split_replicas(10, 99.9) == (1, 9)
    assert split_replicas(10, 100) == (0, 10)


def test_replica_canary_reaches_each_ratio_promotes_and_rolls_back(
    kube_api: client.ApiClient, web: str
) -> None:
    apps = client.AppsV1Api(kube_api)
    spec, router = replica_canary(kube_api, web)
    original_sets = {name_of(rs) for rs in apps.list_namespaced_replica_set(web).items}
    snapshot = router.snapshot(spec)
    assert snapshot.existed is False

    for weight, canary in ((10, 1), (30, 3), (50, 5)):
        set_weight = partial(router.set_weight, spec, weight, LAUNCH)
        assert poll_until_rolled_out(set_weight, timeout=90) in (True, False)
        assert ready_images(kube_api, web) == Counter({"web:1": 10 - canary, "web:2": canary})
        assert router.set_weight(spec, weight, LAUNCH) is False  # idempotent
    canary_deployment = apps.read_namespaced_deployment("web-canary", web)
    assert (metadata_of(canary_deployment).labels or {})["phasegate.dev/launch"] == LAUNCH

    poll_until_rolled_out(lambda: router.promote(spec, LAUNCH), timeout=90)
    stable = apps.read_namespaced_deployment("web", web)
    assert (stable.spec.replicas, image_of(stable)) == (10, "web:2")
    wait_for_images(kube_api, web, {"web:2": 10})
    assert "web-canary" not in {name_of(d) for d in apps.list_namespaced_deployment(web).items}

    # The launch fails later: the stable Deployment goes back to its previous revision.
    assert router.restore(spec, snapshot) is True
    assert router.restore(spec, snapshot) is False  # a retried undo converges
    stable = apps.read_namespaced_deployment("web", web)
    assert image_of(stable) == "web:1"
    assert "phasegate.dev/total-replicas" not in (metadata_of(stable).annotations or {})
    wait_for_images(kube_api, web, {"web:1": 10})
    active = {
        name_of(rs)
        for rs in apps.list_namespaced_replica_set(web).items
        if rs.spec.replicas and [o.name for o in metadata_of(rs).owner_references or []] == ["web"]
    }
    assert (
        active <= original_sets
    )  # the old revision's ReplicaSet serves again, as rollout undo does


def test_rollback_during_soft_launch_scales_the_canary_away(
    kube_api: client.ApiClient, web: str
) -> None:
    apps = client.AppsV1Api(kube_api)
    spec, router = replica_canary(kube_api, web)
    snapshot = router.snapshot(spec)
    poll_until_rolled_out(lambda: router.set_weight(spec, 20, LAUNCH), timeout=90)
    assert ready_images(kube_api, web) == Counter({"web:1": 8, "web:2": 2})

    router.restore(spec, snapshot)
    wait_for_images(kube_api, web, {"web:1": 10})
    assert [name_of(d) for d in apps.list_namespaced_deployment(web).items] == ["web"]
    assert apps.read_namespaced_deployment("web", web).spec.replicas == 10


def test_nginx_canary_weight_promotion_and_restore(kube_api: client.ApiClient, web: str) -> None:
    networking = client.NetworkingV1Api(kube_api)
    networking.create_namespaced_ingress(
        web,
        client.V1Ingress.model_validate(
            {
                "metadata": {"name": "web"},
                "spec": {
                    "rules": [
                        {
                            "host": "web.example",
                            "http": {
                                "paths": [
                                    {
                                        "path": "/",
                                        "pathType": "Prefix",
                                        "backend": {
                                            "service": {"name": "web", "port": {"number": 80}}
                                        },
                                    }
                                ]
                            },
                        }
                    ]
                },
            }
        ),
    )
    spec = IngressCanaryRouter(
        kind="nginx_ingress", namespace=web, ingress="web", canary_service="web-v2"
    )
    router = NginxCanaryRouter(KubeConnection(api=kube_api))
    snapshot = router.snapshot(spec)

    assert router.set_weight(spec, 12.5, LAUNCH) is True
    assert router.set_weight(spec, 12.5, LAUNCH) is False
    canary = networking.read_namespaced_ingress("web-canary", web)
    annotations = metadata_of(canary).annotations or {}
    assert annotations["nginx.ingress.kubernetes.io/canary"] == "true"
    assert annotations["nginx.ingress.kubernetes.io/canary-weight"] == "1250"
    assert annotations["nginx.ingress.kubernetes.io/canary-weight-total"] == "10000"
    assert backend_services(canary) == ["web-v2"]

    router.promote(spec, LAUNCH)
    names = [name_of(i) for i in networking.list_namespaced_ingress(web).items]
    assert names == ["web"]
    assert backend_services(networking.read_namespaced_ingress("web", web)) == ["web-v2"]

    assert router.restore(spec, snapshot) is True
    assert router.restore(spec, snapshot) is False
    assert backend_services(networking.read_namespaced_ingress("web", web)) == ["web"]


def backend_services(ingress: client.V1Ingress) -> list[str]:
    """The Service behind each path of each rule, in order."""
    assert ingress.spec is not None
    return [
        path.backend.service.name
        for rule in ingress.spec.rules or []
        for path in (rule.http.paths if rule.http is not None else [])
        if path.backend.service is not None
    ]
