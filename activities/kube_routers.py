"""Kubernetes traffic routers behind `TrafficRouter`: replica weights and nginx ingress canary.

Replica weights (Argo Rollouts' basic canary): a canary Deployment, the stable one's pod
template with the new images, is scaled against the stable one so that the ready pods split
as the step's weight says; the Service in front selects both. Promotion gives the stable
Deployment the new images and removes the canary; restore puts the stable Deployment back on
the revision it had (as `kubectl rollout undo` does, from that revision's ReplicaSet) and
scales the canary to zero, deleting it when the launch created it.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from kubernetes import client
from kubernetes.dynamic.exceptions import NotFoundError

from activities.errors import ConfigurationError, RouterError
from activities.kube import (
    FIELD_MANAGER,
    KubeConnection,
    RolloutPending,
    api_errors,
    launch_label,
    mark,
    restorable,
    rollout_state,
)
from activities.kube_client import KubeResource, metadata_of, to_dict
from schemas.routing_messages import RouterSnapshot
from schemas.targets import IngressCanaryRouter, ReplicaCanaryRouter

VARIANT_LABEL = "phasegate.dev/variant"
TOTAL_REPLICAS = "phasegate.dev/total-replicas"
REVISION = "deployment.kubernetes.io/revision"
CANARY = "nginx.ingress.kubernetes.io/canary"
CANARY_WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"
CANARY_WEIGHT_TOTAL = "nginx.ingress.kubernetes.io/canary-weight-total"
# nginx weights are integers; hundredths of a percent give 0.01% resolution.
INGRESS_WEIGHT_TOTAL = 10_000


def split_replicas(total: int, weight: float) -> tuple[int, int]:
    """(stable, canary) pods for `weight` percent on the canary, out of `total`.

    Rounded up, as Argo Rollouts does; a weight above 0 gets at least one canary pod and one below 100 keeps one stable pod, so
    the split is as close to the weight as whole pods allow.
    """
    if weight <= 0:
        return total, 0
    if weight >= 100:
        return 0, total
    canary = min(total - 1, max(1, math.ceil(round(total * weight / 100, 6))))
    return total - canary, canary


class ReplicaWeightRouter:
    def __init__(self, kube: KubeConnection) -> None:
        self._kube = kube

    def snapshot(self, spec: ReplicaCanaryRouter) -> RouterSnapshot:
        stable = self._read(spec, spec.stable)
        if stable is None:
            raise RouterError(
                f"stable Deployment {spec.namespace}/{spec.stable} does not exist: apply it "
                "first (e.g. in an infra_setup phase) or fix targets.router.stable"
            )
        canary = self._read(spec, spec.canary_name)
        annotations = metadata_of(stable).annotations or {}
        return RouterSnapshot(
            kind=spec.kind,
            existed=canary is not None,
            definition={
                "stable_replicas": _total(stable),
                "stable_revision": annotations.get(REVISION),
                "stable_template": to_dict(stable.spec.template),
                "stable_annotations": {k: v for k, v in annotations.items() if k != REVISION},
                "canary": restorable(to_dict(canary)) if canary is not None else None,
            },
        )

    def set_weight(self, spec: ReplicaCanaryRouter, weight: float, launch_id: str) -> bool:
        stable = self._require_stable(spec)
        total = _total(stable)
        if total < 2 and 0 < weight < 100:
            raise ConfigurationError(
                f"Deployment {spec.namespace}/{spec.stable} has {total} replica(s): a "
                "replica-weighted canary needs at least 2 to split traffic"
            )
        stable_count, canary_count = split_replicas(total, weight)
        changed = self._apply_canary(spec, stable, canary_count, launch_id)
        changed |= self._scale_stable(spec, stable, stable_count, total)
        self._wait_ready(spec, stable_count, canary_count)
        return changed

    def promote(self, spec: ReplicaCanaryRouter, launch_id: str) -> bool:
        stable = self._require_stable(spec)
        total = _total(stable)
        containers = [{"name": name, "image": image} for name, image in spec.images.items()]
        images = {c.name: c.image for c in _containers(stable)}
        changed = False
        if any(images.get(name) != image for name, image in spec.images.items()) or (
            stable.spec.replicas != total
            or TOTAL_REPLICAS in (metadata_of(stable).annotations or {})
        ):
            with api_errors(f"promoting Deployment {spec.namespace}/{spec.stable}"):
                self._apps().patch_namespaced_deployment(
                    spec.stable,
                    spec.namespace,
                    {
                        "metadata": {"annotations": {TOTAL_REPLICAS: None}},
                        "spec": {
                            "replicas": total,
                            "template": {"spec": {"containers": containers}},
                        },
                    },
                )
            changed = True
        promoted = self._require_stable(spec)
        done, detail = rollout_state(promoted)
        if not done:
            raise RolloutPending(f"stable Deployment {spec.stable} promoting: {detail}")
        return self._delete_canary(spec) or changed

    def restore(self, spec: ReplicaCanaryRouter, snapshot: RouterSnapshot) -> bool:
        before = snapshot.definition or {}
        changed = self._scale(spec, spec.canary_name, 0)
        stable = self._read(spec, spec.stable)
        if stable is not None:
            changed |= self._undo_stable(spec, stable, before)
        if snapshot.existed and before.get("canary"):
            changed |= self._put_back(spec, before["canary"])
        else:
            changed |= self._delete_canary(spec)
        return changed

    # --- the stable Deployment -------------------------------------------------------------

    def _undo_stable(
        self, spec: ReplicaCanaryRouter, stable: client.V1Deployment, before: dict[str, Any]
    ) -> bool:
        """Put the stable Deployment back on its earlier revision, like `kubectl rollout undo
        --to-revision`: the pod template from that revision's ReplicaSet, and its replicas."""
        template = self._revision_template(spec, stable, before.get("stable_revision"))
        if template is None:
            template = before["stable_template"]
        current = to_dict(stable.spec.template)
        annotations = metadata_of(stable).annotations or {}
        wanted_annotations = dict(before.get("stable_annotations") or {})
        if (
            current == template
            and stable.spec.replicas == before["stable_replicas"]
            and {k: v for k, v in annotations.items() if k != REVISION} == wanted_annotations
        ):
            return False
        patch: list[dict[str, Any]] = [
            {"op": "replace", "path": "/spec/template", "value": template},
            {"op": "replace", "path": "/spec/replicas", "value": before["stable_replicas"]},
        ]
        if TOTAL_REPLICAS in annotations and TOTAL_REPLICAS not in wanted_annotations:
            patch.append(
                {"op": "remove", "path": "/metadata/annotations/" + _pointer(TOTAL_REPLICAS)}
            )
        with api_errors(f"rolling back Deployment {spec.namespace}/{spec.stable}"):
            self._apps().patch_namespaced_deployment(spec.stable, spec.namespace, patch)
        return True

    def _revision_template(
        self, spec: ReplicaCanaryRouter, stable: client.V1Deployment, revision: str | None
    ) -> dict[str, Any] | None:
        """The pod template of the stable Deployment's ReplicaSet at `revision`, if it is kept."""
        if revision is None:
            return None
        with api_errors(f"listing ReplicaSets in {spec.namespace}"):
            sets = self._apps().list_namespaced_replica_set(spec.namespace).items
        uid = metadata_of(stable).uid
        for replica_set in sets:
            metadata = metadata_of(replica_set)
            if not any(o.uid == uid for o in metadata.owner_references or []):
                continue
            if (metadata.annotations or {}).get(REVISION) != revision:
                continue
            if replica_set.spec.template is None:
                continue
            template = to_dict(replica_set.spec.template)
            labels = template.get("metadata", {}).get("labels", {})
            labels.pop("pod-template-hash", None)
            return template
        return None

    def _scale_stable(
        self, spec: ReplicaCanaryRouter, stable: client.V1Deployment, count: int, total: int
    ) -> bool:
        annotations = metadata_of(stable).annotations or {}
        if stable.spec.replicas == count and annotations.get(TOTAL_REPLICAS) == str(total):
            return False
        with api_errors(f"scaling Deployment {spec.namespace}/{spec.stable}"):
            self._apps().patch_namespaced_deployment(
                spec.stable,
                spec.namespace,
                {
                    "metadata": {"annotations": {TOTAL_REPLICAS: str(total)}},
                    "spec": {"replicas": count},
                },
            )
        return True

    # --- the canary Deployment -------------------------------------------------------------

    def _apply_canary(
        self, spec: ReplicaCanaryRouter, stable: client.V1Deployment, replicas: int, launch_id: str
    ) -> bool:
        template = copy.deepcopy(to_dict(stable.spec.template))
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        labels[VARIANT_LABEL] = spec.canary_variant
        template["metadata"].pop("annotations", None)
        for container in template["spec"]["containers"]:
            if container["name"] in spec.images:
                container["image"] = spec.images[container["name"]]
        missing = set(spec.images) - {c["name"] for c in template["spec"]["containers"]}
        if missing:
            raise ConfigurationError(
                f"targets.router.images names container(s) {', '.join(sorted(missing))} that "
                f"Deployment {spec.namespace}/{spec.stable} does not have"
            )
        selector = dict(stable.spec.selector.match_labels or {})
        selector[VARIANT_LABEL] = spec.canary_variant
        body = mark(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": spec.canary_name, "namespace": spec.namespace},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": selector},
                    "template": template,
                },
            },
            launch_id,
        )
        body["metadata"]["labels"][VARIANT_LABEL] = spec.canary_variant
        resource = self._kube.resource("apps/v1", "Deployment")
        before = self._read(spec, spec.canary_name)
        if before is None and replicas == 0:
            return False
        with api_errors(f"applying canary Deployment {spec.namespace}/{spec.canary_name}"):
            after = resource.server_side_apply(
                body, spec.canary_name, spec.namespace, FIELD_MANAGER
            )
        return (
            before is None
            or metadata_of(before).resource_version != after["metadata"]["resourceVersion"]
        )

    def _delete_canary(self, spec: ReplicaCanaryRouter) -> bool:
        if self._read(spec, spec.canary_name) is None:
            return False
        with api_errors(f"deleting canary Deployment {spec.namespace}/{spec.canary_name}"):
            try:
                self._apps().delete_namespaced_deployment(
                    spec.canary_name, spec.namespace, propagation_policy="Background"
                )
            except client.ApiException as err:
                if err.status != 404:
                    raise
                return False
        return True

    def _put_back(self, spec: ReplicaCanaryRouter, previous: dict[str, Any]) -> bool:
        current = self._read(spec, spec.canary_name)
        body = copy.deepcopy(previous)
        resource = self._kube.resource("apps/v1", "Deployment")
        with api_errors(f"restoring canary Deployment {spec.namespace}/{spec.canary_name}"):
            if current is None:
                resource.create(body=body, namespace=spec.namespace)
                return True
            if restorable(to_dict(current)) == previous:
                return False
            body["metadata"]["resourceVersion"] = metadata_of(current).resource_version
            resource.replace(body=body, name=spec.canary_name, namespace=spec.namespace)
        return True

    # --- shared ---------------------------------------------------------------------------

    def _wait_ready(self, spec: ReplicaCanaryRouter, stable_count: int, canary_count: int) -> None:
        """Raise `RolloutPending` (retried) until ready pods match the split exactly."""
        problems = []
        for name, wanted in ((spec.stable, stable_count), (spec.canary_name, canary_count)):
            deployment = self._read(spec, name)
            if deployment is None:
                if wanted:
                    problems.append(f"{name} is missing")
                continue
            status = deployment.status or client.V1DeploymentStatus()
            ready, total = status.ready_replicas or 0, status.replicas or 0
            observed = (status.observed_generation or 0) >= (
                metadata_of(deployment).generation or 0
            )
            if not observed or ready != wanted or total != wanted:
                problems.append(f"{name}: {ready} ready / {total} pods, want {wanted}")
        if problems:
            raise RolloutPending("replica split not reached yet: " + "; ".join(problems))

    def _scale(self, spec: ReplicaCanaryRouter, name: str, replicas: int) -> bool:
        deployment = self._read(spec, name)
        if deployment is None or deployment.spec.replicas == replicas:
            return False
        with api_errors(f"scaling Deployment {spec.namespace}/{name}"):
            self._apps().patch_namespaced_deployment_scale(
                name, spec.namespace, {"spec": {"replicas": replicas}}
            )
        return True

    def _require_stable(self, spec: ReplicaCanaryRouter) -> client.V1Deployment:
        stable = self._read(spec, spec.stable)
        if stable is None:
            raise RouterError(f"stable Deployment {spec.namespace}/{spec.stable} does not exist")
        return stable

    def _read(self, spec: ReplicaCanaryRouter, name: str) -> client.V1Deployment | None:
        with api_errors(f"reading Deployment {spec.namespace}/{name}"):
            try:
                return self._apps().read_namespaced_deployment(name, spec.namespace)
            except client.ApiException as err:
                if err.status == 404:
                    return None
                raise

    def _apps(self) -> client.AppsV1Api:
        return self._kube.apps()


class NginxCanaryRouter:
    """A canary Ingress, the stable one's copy pointing at the canary Service, weighted by
    nginx's canary annotations. Promotion points the stable Ingress at the canary Service."""

    def __init__(self, kube: KubeConnection) -> None:
        self._kube = kube

    def snapshot(self, spec: IngressCanaryRouter) -> RouterSnapshot:
        stable = self._read(spec, spec.ingress)
        if stable is None:
            raise RouterError(f"stable Ingress {spec.namespace}/{spec.ingress} does not exist")
        canary = self._read(spec, spec.canary_name)
        return RouterSnapshot(
            kind=spec.kind,
            existed=canary is not None,
            definition={
                "stable": restorable(stable),
                "canary": restorable(canary) if canary else None,
            },
        )

    def set_weight(self, spec: IngressCanaryRouter, weight: float, launch_id: str) -> bool:
        stable = self._read(spec, spec.ingress)
        if stable is None:
            raise RouterError(f"stable Ingress {spec.namespace}/{spec.ingress} does not exist")
        body = mark(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": {
                    "name": spec.canary_name,
                    "namespace": spec.namespace,
                    "annotations": {
                        CANARY: "true",
                        CANARY_WEIGHT: str(round(weight * INGRESS_WEIGHT_TOTAL / 100)),
                        CANARY_WEIGHT_TOTAL: str(INGRESS_WEIGHT_TOTAL),
                    },
                },
                "spec": _retarget(stable["spec"], spec.canary_service),
            },
            launch_id,
        )
        return self._apply(spec, body)

    def promote(self, spec: IngressCanaryRouter, launch_id: str) -> bool:
        stable = self._read(spec, spec.ingress)
        if stable is None:
            raise RouterError(f"stable Ingress {spec.namespace}/{spec.ingress} does not exist")
        changed = False
        retargeted = _retarget(stable["spec"], spec.canary_service)
        if retargeted != stable["spec"]:
            body = restorable(stable)
            body["spec"] = retargeted
            body["metadata"]["resourceVersion"] = stable["metadata"]["resourceVersion"]
            with api_errors(f"promoting Ingress {spec.namespace}/{spec.ingress}"):
                self._resource().replace(body=body, name=spec.ingress, namespace=spec.namespace)
            changed = True
        return self._delete(spec, spec.canary_name) or changed

    def restore(self, spec: IngressCanaryRouter, snapshot: RouterSnapshot) -> bool:
        before = snapshot.definition or {}
        changed = self._put(spec, spec.ingress, before["stable"])
        if before.get("canary"):
            changed |= self._put(spec, spec.canary_name, before["canary"])
        else:
            changed |= self._delete(spec, spec.canary_name)
        return changed

    def _apply(self, spec: IngressCanaryRouter, body: dict[str, Any]) -> bool:
        before = self._read(spec, spec.canary_name)
        with api_errors(f"applying canary Ingress {spec.namespace}/{spec.canary_name}"):
            after = self._resource().server_side_apply(
                body, spec.canary_name, spec.namespace, FIELD_MANAGER
            )
        return before is None or (
            before["metadata"]["resourceVersion"] != after["metadata"]["resourceVersion"]
        )

    def _put(self, spec: IngressCanaryRouter, name: str, previous: dict[str, Any]) -> bool:
        current = self._read(spec, name)
        body = copy.deepcopy(previous)
        with api_errors(f"restoring Ingress {spec.namespace}/{name}"):
            if current is None:
                self._resource().create(body=body, namespace=spec.namespace)
                return True
            if restorable(current) == previous:
                return False
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            self._resource().replace(body=body, name=name, namespace=spec.namespace)
        return True

    def _delete(self, spec: IngressCanaryRouter, name: str) -> bool:
        if self._read(spec, name) is None:
            return False
        with api_errors(f"deleting Ingress {spec.namespace}/{name}"):
            try:
                self._resource().delete(name=name, namespace=spec.namespace)
            except NotFoundError:
                return False
        return True

    def _read(self, spec: IngressCanaryRouter, name: str) -> dict[str, Any] | None:
        with api_errors(f"reading Ingress {spec.namespace}/{name}"):
            try:
                return self._resource().get(name=name, namespace=spec.namespace)
            except NotFoundError:
                return None

    def _resource(self) -> KubeResource:
        return self._kube.resource("networking.k8s.io/v1", "Ingress")


def _retarget(ingress_spec: dict[str, Any], service: str) -> dict[str, Any]:
    """The Ingress spec with every backend Service replaced by `service`."""
    result = copy.deepcopy(ingress_spec)
    backends = []
    if result.get("defaultBackend", {}).get("service"):
        backends.append(result["defaultBackend"])
    for rule in result.get("rules") or []:
        for path in (rule.get("http") or {}).get("paths") or []:
            if path.get("backend", {}).get("service"):
                backends.append(path["backend"])
    for backend in backends:
        backend["service"]["name"] = service
    return result


def _total(stable: client.V1Deployment) -> int:
    """The stable Deployment's replicas before any canary split (kept in an annotation)."""
    annotations = metadata_of(stable).annotations or {}
    if TOTAL_REPLICAS in annotations:
        return int(annotations[TOTAL_REPLICAS])
    return int(stable.spec.replicas if stable.spec.replicas is not None else 1)


def _containers(deployment: client.V1Deployment) -> list[client.V1Container]:
    """The containers of a Deployment's pod template; none when the template has no spec."""
    pod = deployment.spec.template.spec
    return pod.containers if pod is not None else []


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


__all__ = ["NginxCanaryRouter", "ReplicaWeightRouter", "launch_label", "split_replicas"]
