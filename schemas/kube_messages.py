"""Messages between the infra-setup phase, the Kubernetes routers and activities/kube.py.

Objects travel as plain dicts (what the API server speaks). Secret values never do: a Secret
is applied from `SecretRef`s inside the activity, and a Secret's previous state is kept in a
backup Secret in the cluster, not in workflow history.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from schemas.basics import Message
from schemas.infra_setup_spec import SecretSpec


class KubeObjectRef(Message):
    api_version: str
    kind: str
    name: str
    namespace: str | None = None

    def describe(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"

    @classmethod
    def of(cls, obj: dict[str, Any]) -> KubeObjectRef:
        metadata = obj.get("metadata") or {}
        return cls(
            api_version=str(obj.get("apiVersion", "")),
            kind=str(obj.get("kind", "")),
            name=str(metadata.get("name", "")),
            namespace=metadata.get("namespace"),
        )


class ManifestsRequest(Message):
    paths: list[str]
    namespace: str
    launch_id: str
    service: str


class Manifests(Message):
    """The objects of the plan's manifest files, in apply order, labelled for the launch."""

    objects: list[dict[str, Any]] = Field(default_factory=list)


class SnapshotObjectRequest(Message):
    ref: KubeObjectRef
    launch_id: str


class ObjectSnapshot(Message):
    """An object as it was before the launch touched it: enough to put it back exactly."""

    ref: KubeObjectRef
    existed: bool
    previous: dict[str, Any] | None = None
    # Secrets: the name of the backup Secret holding the previous data (same namespace).
    backup: str | None = None


class ApplyObjectRequest(Message):
    object: dict[str, Any]
    launch_id: str


class ApplySecretRequest(Message):
    secret: SecretSpec
    namespace: str
    launch_id: str
    service: str


class AppliedObject(Message):
    ref: KubeObjectRef
    changed: bool
    action: str = ""


class RestoreObjectRequest(Message):
    snapshot: ObjectSnapshot
    launch_id: str


class RolloutRequest(Message):
    namespace: str
    deployments: list[str]


class RolloutStatus(Message):
    ready: dict[str, str] = Field(default_factory=dict)


class DeploymentHealthRequest(Message):
    namespace: str
    deployments: list[str]


class DeploymentHealth(Message):
    """One Deployment as the API server sees it now; the health workflow judges it."""

    name: str
    found: bool = True
    desired: int = 0
    available: int = 0
    updated: int = 0
    rollout: Literal["complete", "progressing", "failed"] = "progressing"
    rollout_detail: str = ""
    restarts: int = 0
    # Reading this Deployment or its pods failed (connection, forbidden, ...): nothing above
    # is known.
    error: str = ""


class DeploymentHealthReport(Message):
    namespace: str
    deployments: list[DeploymentHealth] = Field(default_factory=list)
