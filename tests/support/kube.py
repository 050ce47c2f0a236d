"""The Kubernetes control plane for the tests: built by deploy/kube/build.sh, started once per
session on free loopback ports; `KUBECONFIG` set means use that cluster instead."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any, TypeVar

import pytest
from kubernetes import client

from activities.kube import RolloutPending
from activities.kube_client import HasMetadata, api_client_from_kubeconfig, metadata_of
from devstack.kube_cluster import ControlPlane, control_plane
from devstack.processes import BinaryNotFoundError, LocalProcessError

T = TypeVar("T")


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running cluster: `kube.kubeconfig` is cluster-admin, `kube.user_kubeconfig(...)`
    makes a certificate user for RBAC checks (local control plane only)."""
    try:
        with control_plane(tmp_path_factory.mktemp("kube")) as plane:
            yield plane
    except BinaryNotFoundError as err:
        pytest.fail(f"{err} (deploy/setup.sh builds it)")
    except LocalProcessError as err:
        pytest.fail(f"the local Kubernetes control plane did not start: {err}")


@pytest.fixture(scope="session")
def kube_api(kube: ControlPlane) -> Iterator[client.ApiClient]:
    with closing(api_client_from_kubeconfig(kube.kubeconfig)) as api:
        yield api


@pytest.fixture
def namespace_name() -> str:
    """A fresh namespace name per test, so tests never see each other's objects."""
    return f"pg-{uuid.uuid4().hex[:10]}"


def name_of(obj: HasMetadata) -> str:
    """The name of an object read from the API server (which always sends one)."""
    name = metadata_of(obj).name
    assert name is not None, f"{type(obj).__name__} came back without metadata.name"
    return name


def pod_spec_of(owner: client.V1Pod | client.V1PodTemplateSpec) -> client.V1PodSpec:
    """The spec of a pod or of a pod template (the API server requires one)."""
    assert owner.spec is not None, f"{type(owner).__name__} without a spec"
    return owner.spec


def image_of(deployment: client.V1Deployment) -> str | None:
    """The image of a Deployment's first container."""
    return pod_spec_of(deployment.spec.template).containers[0].image


def create_config_map(
    api: client.ApiClient, namespace: str, name: str, data: dict[str, str]
) -> None:
    """Put a ConfigMap `name` holding `data` into `namespace`."""
    client.CoreV1Api(api).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data=data)
    )


def poll_until_rolled_out(call: Callable[[], T], *, timeout: float) -> T:
    """Call until it stops raising RolloutPending, the way the activity's retry policy does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except RolloutPending:
            assert time.monotonic() < deadline, f"still pending after {timeout:g}s"
            time.sleep(0.5)


def deployment_manifest(name: str, image: str, *, replicas: int) -> dict[str, Any]:
    """A Deployment `name` of `replicas` pods labelled app=`name`, one container on `image`."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": image}]},
            },
        },
    }


def service_manifest(name: str) -> dict[str, Any]:
    """A Service `name` on port 80 in front of the pods labelled app=`name`."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}]},
    }


def web_deployment(*, replicas: int) -> client.V1Deployment:
    """A Deployment `web` of `replicas` pods labelled app=web, on image web:1."""
    return client.V1Deployment.model_validate(
        deployment_manifest("web", "web:1", replicas=replicas)
    )
