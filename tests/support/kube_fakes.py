"""The Kubernetes activities mocked by name, on top of FakeWorld's, for workflow-logic tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from schemas import kube_messages
from schemas.metrics_messages import (
    TargetsUp,
    TargetsUpRequest,
)
from tests.support.fakes import FakeWorld


@dataclass
class KubeFakeWorld(FakeWorld):
    """A cluster as a dict of `Kind ns/name` -> object; `reject` names objects refused with 422."""

    cluster: dict[str, dict[str, Any]] = field(default_factory=dict)
    reject: set[str] = field(default_factory=set)
    objects: list[dict[str, Any]] = field(default_factory=list)

    @activity.defn(name="read_manifests")
    async def read_manifests(
        self, request: kube_messages.ManifestsRequest
    ) -> kube_messages.Manifests:
        self.calls.append(("read_manifests", request.paths))
        namespace = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": request.namespace},
        }
        return kube_messages.Manifests(objects=[namespace, *self.objects])

    @activity.defn(name="snapshot_object")
    async def snapshot_object(
        self, request: kube_messages.SnapshotObjectRequest
    ) -> kube_messages.ObjectSnapshot:
        key = request.ref.describe()
        self.calls.append(("snapshot_object", key))
        previous = self.cluster.get(key)
        return kube_messages.ObjectSnapshot(
            ref=request.ref, existed=previous is not None, previous=previous
        )

    @activity.defn(name="apply_object")
    async def apply_object(
        self, request: kube_messages.ApplyObjectRequest
    ) -> kube_messages.AppliedObject:
        ref = kube_messages.KubeObjectRef.of(request.object)
        self.calls.append(("apply_object", ref.describe()))
        if ref.describe() in self.reject:
            raise ApplicationError(
                f"applying {ref.describe()}: 422 Unprocessable Entity",
                type="KubeRejected",
                non_retryable=True,
            )
        self.cluster[ref.describe()] = request.object
        return kube_messages.AppliedObject(ref=ref, changed=True, action="applied")

    @activity.defn(name="apply_secret")
    async def apply_secret(
        self, request: kube_messages.ApplySecretRequest
    ) -> kube_messages.AppliedObject:
        ref = kube_messages.KubeObjectRef(
            api_version="v1",
            kind="Secret",
            name=request.secret.name,
            namespace=request.namespace,
        )
        self.calls.append(("apply_secret", ref.describe()))
        self.cluster[ref.describe()] = {"kind": "Secret"}
        return kube_messages.AppliedObject(ref=ref, changed=True, action="applied")

    @activity.defn(name="restore_object")
    async def restore_object(
        self, request: kube_messages.RestoreObjectRequest
    ) -> kube_messages.AppliedObject:
        key = request.snapshot.ref.describe()
        self.calls.append(("restore_object", key))
        if request.snapshot.existed:
            self.cluster[key] = request.snapshot.previous or {}
        else:
            self.cluster.pop(key, None)
        return kube_messages.AppliedObject(
            ref=request.snapshot.ref, changed=True, action="restored"
        )

    @activity.defn(name="check_rollout")
    async def check_rollout(
        self, request: kube_messages.RolloutRequest
    ) -> kube_messages.RolloutStatus:
        self.calls.append(("check_rollout", request.deployments))
        return kube_messages.RolloutStatus(ready={name: "ready" for name in request.deployments})

    @activity.defn(name="check_targets_up")
    async def check_targets_up(self, request: TargetsUpRequest) -> TargetsUp:
        self.calls.append(("check_targets_up", request.jobs))
        return TargetsUp(up={job: 1 for job in request.jobs})


def deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "shop"},
    }


def config_map(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "shop"},
    }
