"""Kubernetes: read the plan's manifests, snapshot, server-side apply and restore objects, wait
for rollouts. Blocking client calls in plain `def` activities on the worker's thread pool.

Errors from the API server: a 4xx (invalid manifest, forbidden, unknown kind) is `KubeRejected`,
non-retryable, carrying the server's message; 409 conflicts, 429, 5xx and connection errors
are raised as they are and retried by the activity's retry policy.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import urllib3
import yaml
from kubernetes import client
from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError, ResourceNotFoundError
from temporalio import activity, workflow

from activities.errors import ConfigurationError, KubeRejected
from activities.kube_client import (
    ConfigException,
    DynamicResources,
    KubeResource,
    api_client_from_environment,
    api_client_from_kubeconfig,
    metadata_of,
)
from activities.limits import in_force
from activities.options import MINUTE, SECOND, activity_options
from activities.redaction import kept_out
from activities.secrets import resolve_secret
from schemas.budget import MANIFEST_OBJECTS
from schemas.kube_messages import (
    AppliedObject,
    ApplyObjectRequest,
    ApplySecretRequest,
    DeploymentHealth,
    DeploymentHealthReport,
    DeploymentHealthRequest,
    KubeObjectRef,
    Manifests,
    ManifestsRequest,
    ObjectSnapshot,
    RestoreObjectRequest,
    RolloutRequest,
    RolloutStatus,
    SnapshotObjectRequest,
)

FIELD_MANAGER = "phasegate"
MANAGED_BY = "app.kubernetes.io/managed-by"
LAUNCH_LABEL = "phasegate.dev/launch"
SERVICE_LABEL = "phasegate.dev/service"
LAUNCH_ANNOTATION = "phasegate.dev/launch-id"
BACKUP_OF = "phasegate.dev/backup-of"

KUBE_OPTIONS = activity_options(
    MINUTE, attempts=8, first_retry=SECOND / 2, longest_retry=10 * SECOND, heartbeat=20 * SECOND
)


# A health reading reports what it cannot read instead of raising; a hanging API server is
# cut off by HEALTH_REQUEST_TIMEOUT_S and reported like a refused connection.
KUBE_HEALTH_OPTIONS = activity_options(MINUTE, attempts=3)
HEALTH_REQUEST_TIMEOUT_S = 10.0


def rollout_options(timeout: timedelta) -> workflow.ActivityConfig:
    """Waiting is polling by retry: `check_rollout` raises until done, within `timeout`."""
    return activity_options(30 * SECOND, backoff=1.5, longest_retry=5 * SECOND, deadline=timeout)


# Applied first, in this order; anything else keeps its place in the manifests after them.
APPLY_ORDER = ["Namespace", "ServiceAccount", "ConfigMap", "Secret", "Service"]
# Fields the server owns; a restored object must not carry the old values.
_SERVER_METADATA = (
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)


class RolloutPending(Exception):
    """Retryable: the rollout is still going; the retry policy polls again."""


class KubeConnection:
    """One lazily made API client per worker: from `kubeconfig`, else KUBECONFIG or in-cluster.
    Made on first use, so a worker without a cluster still serves every other activity."""

    def __init__(self, kubeconfig: str | None = None, api: client.ApiClient | None = None) -> None:
        self._kubeconfig = kubeconfig
        self._api = api
        self._dynamic: DynamicResources | None = None
        self._lock = threading.Lock()

    def api(self) -> client.ApiClient:
        with self._lock:
            if self._api is None:
                try:
                    if self._kubeconfig:
                        self._api = api_client_from_kubeconfig(self._kubeconfig)
                    else:
                        self._api = api_client_from_environment()
                except (ConfigException, OSError) as err:
                    raise ConfigurationError(
                        f"no Kubernetes cluster configured for the worker ({err}): set "
                        "PHASEGATE_KUBECONFIG or KUBECONFIG"
                    ) from None
            return self._api

    def dynamic(self) -> DynamicResources:
        api = self.api()
        with self._lock:
            if self._dynamic is None:
                self._dynamic = DynamicResources(api)
            return self._dynamic

    def resource(self, api_version: str, kind: str) -> KubeResource:
        try:
            return self.dynamic().find(api_version, kind)
        except ResourceNotFoundError:
            raise KubeRejected(
                f"the API server has no kind {kind!r} in {api_version!r}: fix the manifest "
                "or install the CRD first"
            ) from None

    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api())

    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api())

    def networking(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self.api())


@contextmanager
def api_errors(what: str) -> Iterator[None]:
    """4xx (but 409/429) -> non-retryable `KubeRejected` with the server's own message."""
    try:
        yield
    except (DynamicApiError, client.ApiException) as err:
        status = int(err.status or 0)
        if 400 <= status < 500 and status not in (409, 429):
            raise KubeRejected(f"{what}: {status} {err.reason}: {server_message(err)}") from None
        raise


def server_message(err: DynamicApiError | client.ApiException) -> str:
    body = err.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        parsed = yaml.safe_load(body) if isinstance(body, str) else None
    except yaml.YAMLError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("message"):
        return str(parsed["message"])
    return str(body or err.reason)


def launch_label(launch_id: str) -> str:
    """A label value naming the launch: at most 63 characters, hashed when longer."""
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", launch_id).strip("-_.")
    if len(value) > 63:
        digest = hashlib.sha256(launch_id.encode()).hexdigest()[:10]
        value = f"{value[:52].rstrip('-_.')}-{digest}"
    return value or "launch"


def mark(obj: dict[str, Any], launch_id: str, service: str = "") -> dict[str, Any]:
    """The labels and annotation that say which launch applied an object."""
    marked = copy.deepcopy(obj)
    metadata = marked.setdefault("metadata", {})
    labels = metadata.setdefault("labels", {}) or {}
    labels[MANAGED_BY] = FIELD_MANAGER
    labels[LAUNCH_LABEL] = launch_label(launch_id)
    if service:
        labels[SERVICE_LABEL] = service
    metadata["labels"] = labels
    annotations = metadata.setdefault("annotations", {}) or {}
    annotations[LAUNCH_ANNOTATION] = launch_id
    metadata["annotations"] = annotations
    return marked


def restorable(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as read, without status and server-owned metadata, ready to be written back."""
    clean = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
    metadata = clean.get("metadata") or {}
    for key in _SERVER_METADATA:
        metadata.pop(key, None)
    return clean


def _ordered(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def rank(item: tuple[int, dict[str, Any]]) -> tuple[int, int]:
        index, obj = item
        kind = obj.get("kind", "")
        return (APPLY_ORDER.index(kind) if kind in APPLY_ORDER else len(APPLY_ORDER), index)

    return [obj for _, obj in sorted(enumerate(objects), key=rank)]


class KubeActivities:
    """Applies and undoes the infra-setup phase's objects through one `KubeConnection`."""

    def __init__(self, kube: KubeConnection) -> None:
        self._kube = kube

    @activity.defn(name="read_manifests")
    def read_manifests(self, request: ManifestsRequest) -> Manifests:
        """The plan's manifest files as objects in apply order, namespaced and labelled."""
        objects: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": request.namespace}}
        ]
        for path in request.paths:
            problem = in_force().read_problem(path)
            if problem is not None:
                raise ConfigurationError(f"manifest {path}: {problem}")
            try:
                documents = list(yaml.safe_load_all(Path(path).read_text()))
            except OSError as err:
                raise ConfigurationError(f"manifest {path}: cannot read: {err.strerror}") from None
            except yaml.YAMLError as err:
                raise ConfigurationError(f"manifest {path}: not YAML: {err}") from None
            for number, document in enumerate(documents, start=1):
                if document is None:
                    continue
                where = f"manifest {path}, document {number}"
                if not isinstance(document, dict) or not document.get("kind"):
                    raise ConfigurationError(f"{where}: not a Kubernetes object (no `kind`)")
                if not document.get("apiVersion") or not (document.get("metadata") or {}).get(
                    "name"
                ):
                    raise ConfigurationError(f"{where}: needs apiVersion and metadata.name")
                if _holds_secret_data(document):
                    raise ConfigurationError(
                        f"{where}: Secrets do not belong in manifests (their values would enter "
                        "the launch history); declare them under the phase's `secrets` with "
                        "env/file references"
                    )
                if str(document["kind"]).endswith("List") or "items" in document:
                    raise ConfigurationError(
                        f"{where}: a list of objects; give each object a document of its own"
                    )
                if document["kind"] == "Namespace":
                    raise ConfigurationError(
                        f"{where}: the phase's `namespace` creates the namespace; remove it"
                    )
                obj = copy.deepcopy(document)
                namespace = obj["metadata"].get("namespace")
                if namespace not in (None, request.namespace):
                    raise ConfigurationError(
                        f"{where}: namespace {namespace!r} differs from the phase's "
                        f"{request.namespace!r}"
                    )
                objects.append(obj)
        if len(objects) - 1 > MANIFEST_OBJECTS:
            raise ConfigurationError(
                f"manifests: {len(objects) - 1} objects; a phase applies at most "
                f"{MANIFEST_OBJECTS} (its launch's history is budgeted for that many)"
            )
        resolved = []
        for obj in _ordered(objects):
            if obj["kind"] != "Namespace":
                resource = self._kube.resource(obj["apiVersion"], obj["kind"])
                if resource.namespaced:
                    obj["metadata"]["namespace"] = request.namespace
            resolved.append(mark(obj, request.launch_id, request.service))
        return Manifests(objects=resolved)

    @activity.defn(name="snapshot_object")
    def snapshot_object(self, request: SnapshotObjectRequest) -> ObjectSnapshot:
        """The object before the launch touches it. A Secret's data goes to a backup Secret."""
        ref = request.ref
        current = self._get(ref)
        if current is None:
            return ObjectSnapshot(ref=ref, existed=False)
        if ref.kind != "Secret":
            return ObjectSnapshot(ref=ref, existed=True, previous=restorable(current))
        backup = self._backup_name(ref, request.launch_id)
        secrets = self._kube.resource("v1", "Secret")
        if self._get(ref.model_copy(update={"name": backup})) is None:
            body = restorable(current)
            body["metadata"] = {
                "name": backup,
                "namespace": ref.namespace,
                "labels": {
                    MANAGED_BY: FIELD_MANAGER,
                    LAUNCH_LABEL: launch_label(request.launch_id),
                },
                "annotations": {BACKUP_OF: ref.name, "phasegate.dev/original": _json(current)},
            }
            with api_errors(f"backing up {ref.describe()}"):
                secrets.create(body=body, namespace=ref.namespace)
        return ObjectSnapshot(ref=ref, existed=True, backup=backup)

    @activity.defn(name="apply_object")
    def apply_object(self, request: ApplyObjectRequest) -> AppliedObject:
        """Server-side apply under the `phasegate` field manager; applying twice changes nothing.
        Never a Secret: its values would be in this activity's input (`apply_secret` takes
        references instead)."""
        if _holds_secret_data(request.object):
            raise ConfigurationError(
                f"{KubeObjectRef.of(request.object).describe()}: a Secret is applied from "
                "references by apply_secret, never as an object"
            )
        ref = KubeObjectRef.of(request.object)
        return self._apply(ref, request.object)

    @activity.defn(name="apply_secret")
    def apply_secret(self, request: ApplySecretRequest) -> AppliedObject:
        spec = request.secret
        data = {
            key: resolve_secret(value, where=f"secret {spec.name}, key {key}")
            for key, value in spec.data.items()
        }
        body = mark(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": spec.name, "namespace": request.namespace},
                "type": spec.type,
                "stringData": data,
            },
            request.launch_id,
            request.service,
        )
        # The API server may quote what it refuses; the values stay out of the failure.
        with kept_out(data.values()):
            return self._apply(KubeObjectRef.of(body), body)

    @activity.defn(name="restore_object")
    def restore_object(self, request: RestoreObjectRequest) -> AppliedObject:
        """Undo `apply_object`: delete what the launch created, put back what it changed.
        Safe when the apply never happened, and when run twice."""
        snapshot = request.snapshot
        ref = snapshot.ref
        if not snapshot.existed:
            return AppliedObject(ref=ref, changed=self._delete(ref), action="deleted")
        if snapshot.backup is not None:
            previous = self._from_backup(ref, snapshot.backup)
            if previous is None:  # restored earlier and the backup already removed
                return AppliedObject(ref=ref, changed=False, action="restored")
        else:
            previous = copy.deepcopy(snapshot.previous or {})
        changed = self._put(ref, previous)
        if snapshot.backup is not None:
            self._delete(ref.model_copy(update={"name": snapshot.backup}))
        return AppliedObject(ref=ref, changed=changed, action="restored")

    @activity.defn(name="check_rollout")
    def check_rollout(self, request: RolloutRequest) -> RolloutStatus:
        """Done when every Deployment is rolled out as `kubectl rollout status` sees it; raises
        `RolloutPending` (retried: polling) before, `KubeRejected` past its progress deadline."""
        apps = self._kube.apps()
        ready: dict[str, str] = {}
        pending: list[str] = []
        for name in request.deployments:
            with api_errors(f"reading Deployment {request.namespace}/{name}"):
                deployment = apps.read_namespaced_deployment(name, request.namespace)
            done, detail = rollout_state(deployment)
            if done:
                ready[name] = detail
            else:
                pending.append(f"{name}: {detail}")
        if pending:
            raise RolloutPending("waiting for " + "; ".join(pending))
        return RolloutStatus(ready=ready)

    @activity.defn(name="check_deployment_health")
    def check_deployment_health(self, request: DeploymentHealthRequest) -> DeploymentHealthReport:
        """Replicas, rollout state and container restarts of each Deployment, read once.
        Never raises for what it finds: a missing Deployment is `found=False`, an unreachable
        or refusing API server an `error`; the health workflow judges the result."""
        return DeploymentHealthReport(
            namespace=request.namespace,
            deployments=[
                self._deployment_health(request.namespace, name) for name in request.deployments
            ],
        )

    # --- helpers -------------------------------------------------------------------------

    def _deployment_health(self, namespace: str, name: str) -> DeploymentHealth:
        where = f"Deployment {namespace}/{name}"
        try:
            deployment = self._kube.apps().read_namespaced_deployment(
                name, namespace, _request_timeout=HEALTH_REQUEST_TIMEOUT_S
            )
            pods = self._kube.core().list_namespaced_pod(
                namespace,
                label_selector=label_selector(deployment.spec.selector),
                _request_timeout=HEALTH_REQUEST_TIMEOUT_S,
            )
        except client.ApiException as err:
            if err.status == 404:
                return DeploymentHealth(name=name, found=False)
            return DeploymentHealth(
                name=name,
                error=f"reading {where}: {err.status} {err.reason}: {server_message(err)}",
            )
        except (urllib3.exceptions.HTTPError, ConfigurationError) as err:
            return DeploymentHealth(name=name, error=f"reading {where}: {err}")
        rollout: Literal["complete", "progressing", "failed"]
        try:
            done, detail = rollout_state(deployment)
            rollout = "complete" if done else "progressing"
        except KubeRejected as err:  # past its progress deadline
            rollout, detail = "failed", str(err)
        status = deployment.status or client.V1DeploymentStatus()
        restarts = 0
        for pod in pods.items:
            pod_status = pod.status or client.V1PodStatus()
            containers = [
                *(pod_status.container_statuses or []),
                *(pod_status.init_container_statuses or []),
            ]
            restarts += sum(int(container.restart_count or 0) for container in containers)
        return DeploymentHealth(
            name=name,
            desired=deployment.spec.replicas if deployment.spec.replicas is not None else 1,
            available=status.available_replicas or 0,
            updated=status.updated_replicas or 0,
            rollout=rollout,
            rollout_detail=detail,
            restarts=restarts,
        )

    def _get(self, ref: KubeObjectRef) -> dict[str, Any] | None:
        resource = self._kube.resource(ref.api_version, ref.kind)
        with api_errors(f"reading {ref.describe()}"):
            try:
                found = resource.get(name=ref.name, namespace=ref.namespace)
            except NotFoundError:
                return None
        return found

    def _apply(self, ref: KubeObjectRef, body: dict[str, Any]) -> AppliedObject:
        resource = self._kube.resource(ref.api_version, ref.kind)
        before = self._get(ref)
        with api_errors(f"applying {ref.describe()}"):
            after = resource.server_side_apply(body, ref.name, ref.namespace, FIELD_MANAGER)
        changed = before is None or (
            before["metadata"].get("resourceVersion") != after["metadata"].get("resourceVersion")
        )
        activity.logger.info("applied %s (changed=%s)", ref.describe(), changed)
        return AppliedObject(ref=ref, changed=changed, action="applied")

    def _put(self, ref: KubeObjectRef, previous: dict[str, Any]) -> bool:
        resource = self._kube.resource(ref.api_version, ref.kind)
        current = self._get(ref)
        if current is None:
            with api_errors(f"re-creating {ref.describe()}"):
                resource.create(body=previous, namespace=ref.namespace)
            return True
        if restorable(current) == previous:
            return False
        previous.setdefault("metadata", {})["resourceVersion"] = current["metadata"][
            "resourceVersion"
        ]
        with api_errors(f"restoring {ref.describe()}"):
            resource.replace(body=previous, name=ref.name, namespace=ref.namespace)
        return True

    def _delete(self, ref: KubeObjectRef) -> bool:
        """Delete if present and wait until it is gone (a namespace takes a few seconds)."""
        resource = self._kube.resource(ref.api_version, ref.kind)
        if self._get(ref) is None:
            return False
        with api_errors(f"deleting {ref.describe()}"):
            try:
                resource.delete(ref.name, ref.namespace, body={"propagationPolicy": "Background"})
            except NotFoundError:
                return False
        deadline = time.monotonic() + 45
        while self._get(ref) is not None:
            if time.monotonic() > deadline:
                raise RolloutPending(f"{ref.describe()} is still being deleted")
            activity.heartbeat(f"waiting for {ref.describe()} to go")
            time.sleep(0.5)
        return True

    def _from_backup(self, ref: KubeObjectRef, backup: str) -> dict[str, Any] | None:
        found = self._get(ref.model_copy(update={"name": backup}))
        if found is None:
            return None
        original = yaml.safe_load(found["metadata"]["annotations"]["phasegate.dev/original"])
        return restorable(original)

    @staticmethod
    def _backup_name(ref: KubeObjectRef, launch_id: str) -> str:
        digest = hashlib.sha256(f"{launch_id}/{ref.name}".encode()).hexdigest()[:10]
        return f"phasegate-backup-{digest}"


def rollout_state(deployment: client.V1Deployment) -> tuple[bool, str]:
    """(done, what is happening), the way `kubectl rollout status` decides. A Deployment
    without a status yet is one the controller has not seen."""
    spec = deployment.spec
    status = deployment.status or client.V1DeploymentStatus()
    metadata = metadata_of(deployment)
    wanted = spec.replicas if spec.replicas is not None else 1
    generation = metadata.generation or 0
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            raise KubeRejected(
                f"Deployment {metadata.namespace}/{metadata.name} "
                f"exceeded its progress deadline: {condition.message}"
            )
    if (status.observed_generation or 0) < generation:
        return False, "the controller has not seen the latest spec yet"
    updated = status.updated_replicas or 0
    total = status.replicas or 0
    available = status.available_replicas or 0
    if updated < wanted:
        return False, f"{updated} of {wanted} replicas updated"
    if total > updated:
        return False, f"{total - updated} old replicas still terminating"
    if available < updated:
        return False, f"{available} of {updated} updated replicas available"
    return True, f"{available}/{wanted} available"


def label_selector(selector: client.V1LabelSelector) -> str:
    """A Deployment's selector as the `labelSelector` query string `list` takes."""
    terms = [f"{key}={value}" for key, value in sorted((selector.match_labels or {}).items())]
    for expression in selector.match_expressions or []:
        values = ",".join(expression.values or [])
        terms.append(
            {
                "In": f"{expression.key} in ({values})",
                "NotIn": f"{expression.key} notin ({values})",
                "Exists": expression.key,
                "DoesNotExist": f"!{expression.key}",
            }[expression.operator]
        )
    return ",".join(terms)


def _holds_secret_data(obj: dict[str, Any]) -> bool:
    """A Secret or a list of them, however the kind is spelt."""
    return str(obj.get("kind", "")).lower() in ("secret", "secretlist")


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(restorable(obj), sort_keys=True)
