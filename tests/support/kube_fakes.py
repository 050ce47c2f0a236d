"""The Kubernetes activities mocked by name, on top of FakeWorld's, for workflow-logic tests."""

from __future__ import annotations

from collections.abc import Callable
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

    def activities(self) -> list[Callable[..., Any]]:
        world = self

        @activity.defn(name="read_manifests")
        async def read_manifests(
            request: kube_messages.ManifestsRequest,
        ) -> kube_messages.Manifests:
            world.calls.append(("read_manifests", request.paths))
            namespace = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": request.namespace},
            }
            return kube_messages.Manifests(objects=[namespace, *world.objects])

        @activity.defn(name="snapshot_object")
        async def snapshot_object(
            request: kube_messages.SnapshotObjectRequest,
        ) -> kube_messages.ObjectSnapshot:
            key = request.ref.describe()
            world.calls.append(("snapshot_object", key))
            previous = world.cluster.get(key)
            return kube_messages.ObjectSnapshot(
                ref=request.ref, existed=previous is not None, previous=previous
            )

        @activity.defn(name="apply_object")
        async def apply_object(
            request: kube_messages.ApplyObjectRequest,
        ) -> kube_messages.AppliedObject:
            ref = kube_messages.KubeObjectRef.of(request.object)
            world.calls.append(("apply_object", ref.describe()))
            if ref.describe() in world.reject:
                raise ApplicationError(
                    f"applying {ref.describe()}: 422 Unprocessable Entity",
                    type="KubeRejected",
                    non_retryable=True,
                )
            world.cluster[ref.describe()] = request.object
            return kube_messages.AppliedObject(ref=ref, changed=True, action="applied")

        @activity.defn(name="apply_secret")
        async def apply_secret(
            request: kube_messages.ApplySecretRequest,
        ) -> kube_messages.AppliedObject:
            ref = kube_messages.KubeObjectRef(
                api_version="v1",
                kind="Secret",
                name=request.secret.name,
                namespace=request.namespace,
            )
            world.calls.append(("apply_secret", ref.describe()))
            world.cluster[ref.describe()] = {"kind": "Secret"}
            return kube_messages.AppliedObject(ref=ref, changed=True, action="applied")

        @activity.defn(name="restore_object")
        async def restore_object(
            request: kube_messages.RestoreObjectRequest,
        ) -> kube_messages.AppliedObject:
            key = request.snapshot.ref.describe()
            world.calls.append(("restore_object", key))
            if request.snapshot.existed:
                world.cluster[key] = request.snapshot.previous or {}
            else:
                world.cluster.pop(key, None)
            return kube_messages.AppliedObject(
                ref=request.snapshot.ref, changed=True, action="restored"
            )

        @activity.defn(name="check_rollout")
        async def check_rollout(
            request: kube_messages.RolloutRequest,
        ) -> kube_messages.RolloutStatus:
            world.calls.append(("check_rollout", request.deployments))
            return kube_messages.RolloutStatus(
                ready={name: "ready" for name in request.deployments}
            )

        @activity.defn(name="check_targets_up")
        async def check_targets_up(request: TargetsUpRequest) -> TargetsUp:
            world.calls.append(("check_targets_up", request.jobs))
            return TargetsUp(up={job: 1 for job in request.jobs})

        return [
            *super().activities(),
            check_targets_up,
            read_manifests,
            snapshot_object,
            apply_object,
            apply_secret,
            restore_object,
            check_rollout,
        ]


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
