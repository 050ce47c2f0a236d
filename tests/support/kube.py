"""The Kubernetes control plane for the tests: built by deploy/kube/build.sh, started once per
session on free loopback ports; `KUBECONFIG` set means use that cluster instead."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from devstack.kube_cluster import ControlPlane, control_plane
from devstack.processes import BinaryNotFoundError, LocalProcessError


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
    api = config.new_client_from_config(config_file=str(kube.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def namespace_name() -> str:
    """A fresh namespace name per test, so tests never see each other's objects."""
    return f"pg-{uuid.uuid4().hex[:10]}"
