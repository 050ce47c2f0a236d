"""The infra-setup activities against a real API server: apply, wait, undo."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from temporalio.testing import ActivityEnvironment

from activities.errors import ConfigurationError, KubeRejected
from activities.kube import KubeActivities, KubeConnection
from activities.kube_client import metadata_of
from schemas.infra_setup_spec import SecretSpec
from schemas.kube_messages import (
    ApplyObjectRequest,
    ApplySecretRequest,
    KubeObjectRef,
    ManifestsRequest,
    ObjectSnapshot,
    RestoreObjectRequest,
    RolloutRequest,
    SnapshotObjectRequest,
)
from tests.support.kube import (
    deployment_manifest,
    image_of,
    name_of,
    poll_until_rolled_out,
    service_manifest,
)

pytestmark = pytest.mark.integration
LAUNCH = "launch-kube-activities"
# The Secret every test applies, its value read from the environment as a plan's would be.
APP_DB_PASSWORD = "s3cret"
APP_DB_SECRET = SecretSpec.model_validate(
    {"name": "app-db", "data": {"password": {"env": "APP_DB_PASSWORD"}}}
)


def manifests(directory: Path, *, replicas: int = 3, config: str = "new") -> Path:
    path = directory / "app.yaml"
    path.write_text(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "app-config"},
                    "data": {"mode": config},
                },
                deployment_manifest("app", "app:2", replicas=replicas),
                service_manifest("app"),
            ]
        )
    )
    return path


def cluster_state(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    """What a launch may change, as comparable data: namespaces and this namespace's objects."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    namespaces = sorted(
        name_of(n)
        for n in core.list_namespace().items
        if n.status is not None and n.status.phase == "Active"
    )
    if namespace not in namespaces:
        return {"namespaces": namespaces}
    return {
        "namespaces": namespaces,
        "configmaps": {
            name_of(c): (c.data, metadata_of(c).labels)
            for c in core.list_namespaced_config_map(namespace).items
            # Published into every namespace by the controller-manager, whenever it gets to it.
            if name_of(c) != "kube-root-ca.crt"
        },
        "secrets": {
            name_of(s): (s.data, metadata_of(s).labels)
            for s in core.list_namespaced_secret(namespace).items
        },
        "deployments": {
            name_of(d): (d.spec.replicas, image_of(d))
            for d in apps.list_namespaced_deployment(namespace).items
        },
        "services": sorted(name_of(s) for s in core.list_namespaced_service(namespace).items),
    }


def apply_all(
    env: ActivityEnvironment, kube: KubeActivities, request: ManifestsRequest, secret: SecretSpec
) -> list[ObjectSnapshot]:
    """What the infra-setup workflow does: snapshot (the undo) before each apply."""
    objects = env.run(kube.read_manifests, request).objects
    snapshots = []
    for obj in objects:
        ref = KubeObjectRef.of(obj)
        snapshots.append(
            env.run(kube.snapshot_object, SnapshotObjectRequest(ref=ref, launch_id=LAUNCH))
        )
        env.run(kube.apply_object, ApplyObjectRequest(object=obj, launch_id=LAUNCH))
        if obj["kind"] == "Namespace":
            ref = KubeObjectRef(
                api_version="v1", kind="Secret", name=secret.name, namespace=request.namespace
            )
            snapshots.append(
                env.run(kube.snapshot_object, SnapshotObjectRequest(ref=ref, launch_id=LAUNCH))
            )
            env.run(
                kube.apply_secret,
                ApplySecretRequest(
                    secret=secret, namespace=request.namespace, launch_id=LAUNCH, service="app"
                ),
            )
    return snapshots


def undo_all(
    env: ActivityEnvironment, kube: KubeActivities, snapshots: list[ObjectSnapshot]
) -> None:
    for snapshot in reversed(snapshots):
        env.run(kube.restore_object, RestoreObjectRequest(snapshot=snapshot, launch_id=LAUNCH))


@pytest.fixture
def kube_activities(kube_api: client.ApiClient) -> KubeActivities:
    return KubeActivities(KubeConnection(api=kube_api))


@pytest.fixture(autouse=True)
def app_db_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_DB_PASSWORD", APP_DB_PASSWORD)


def app_request(directory: Path, namespace: str, *, replicas: int = 3) -> ManifestsRequest:
    """The app's manifests, to be applied into `namespace`."""
    return ManifestsRequest(
        paths=[str(manifests(directory, replicas=replicas))],
        namespace=namespace,
        launch_id=LAUNCH,
        service="app",
    )


def test_apply_wait_compensate_leaves_a_new_namespace_as_it_was(
    kube_activities: KubeActivities, kube_api: client.ApiClient, namespace_name: str, tmp_path: Path
) -> None:
    env = ActivityEnvironment()
    before = cluster_state(kube_api, namespace_name)
    request = app_request(tmp_path, namespace_name)

    snapshots = apply_all(env, kube_activities, request, APP_DB_SECRET)
    status = poll_until_rolled_out(
        lambda: env.run(
            kube_activities.check_rollout,
            RolloutRequest(namespace=namespace_name, deployments=["app"]),
        ),
        timeout=60,
    )
    assert status.ready == {"app": "3/3 available"}
    applied = cluster_state(kube_api, namespace_name)
    assert applied["deployments"] == {"app": (3, "app:2")}
    assert base64.b64decode(applied["secrets"]["app-db"][0]["password"]) == APP_DB_PASSWORD.encode()
    assert applied["configmaps"]["app-config"][1]["phasegate.dev/launch"] == LAUNCH
    # Applying again changes nothing: server-side apply is idempotent.
    again = env.run(kube_activities.read_manifests, request).objects
    assert not any(
        env.run(
            kube_activities.apply_object, ApplyObjectRequest(object=o, launch_id=LAUNCH)
        ).changed
        for o in again
    )

    undo_all(env, kube_activities, snapshots)
    undo_all(env, kube_activities, snapshots)  # a retried rollback converges
    assert cluster_state(kube_api, namespace_name) == before


def test_compensation_restores_changed_objects_and_deletes_created_ones(
    kube_activities: KubeActivities, kube_api: client.ApiClient, namespace_name: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=namespace_name, labels={"team": "shop"})
        )
    )
    core.create_namespaced_config_map(
        namespace_name,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="app-config"), data={"mode": "old"}),
    )
    core.create_namespaced_secret(
        namespace_name,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="app-db"), string_data={"password": "old"}
        ),
    )
    try:
        env = ActivityEnvironment()
        before = cluster_state(kube_api, namespace_name)
        request = app_request(tmp_path, namespace_name, replicas=2)
        snapshots = apply_all(env, kube_activities, request, APP_DB_SECRET)
        changed = cluster_state(kube_api, namespace_name)
        assert changed["configmaps"]["app-config"][0] == {"mode": "new"}
        assert (
            base64.b64decode(changed["secrets"]["app-db"][0]["password"])
            == APP_DB_PASSWORD.encode()
        )
        # The old Secret value is kept in the cluster, never in the snapshot (workflow history).
        secret_snapshot = next(s for s in snapshots if s.ref.kind == "Secret")
        assert secret_snapshot.previous is None
        assert secret_snapshot.backup in changed["secrets"]

        undo_all(env, kube_activities, snapshots)
        assert cluster_state(kube_api, namespace_name) == before
        assert (metadata_of(core.read_namespace(namespace_name)).labels or {})["team"] == "shop"
    finally:
        core.delete_namespace(namespace_name)


def test_an_invalid_manifest_is_refused_with_the_servers_message(
    kube_activities: KubeActivities, namespace_name: str
) -> None:
    env = ActivityEnvironment()
    env.run(
        kube_activities.apply_object,
        ApplyObjectRequest(
            object={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace_name}},
            launch_id=LAUNCH,
        ),
    )
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "Bad_Name", "namespace": namespace_name},
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "y"}}},
        },
    }
    with pytest.raises(KubeRejected) as refused:
        env.run(kube_activities.apply_object, ApplyObjectRequest(object=bad, launch_id=LAUNCH))
    message = str(refused.value)
    assert f"applying Deployment {namespace_name}/Bad_Name: 422" in message
    assert "`selector` does not match template `labels`" in message
    env.run(
        kube_activities.restore_object,
        RestoreObjectRequest(
            snapshot=ObjectSnapshot(
                ref=KubeObjectRef(api_version="v1", kind="Namespace", name=namespace_name),
                existed=False,
            ),
            launch_id=LAUNCH,
        ),
    )


def test_unknown_kinds_and_secrets_in_manifests_are_refused(
    kube_activities: KubeActivities, tmp_path: Path
) -> None:
    env = ActivityEnvironment()
    path = tmp_path / "m.yaml"
    path.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {a: b}\n")
    with pytest.raises(Exception, match="Secrets do not belong in manifests"):
        env.run(
            kube_activities.read_manifests,
            ManifestsRequest(paths=[str(path)], namespace="x", launch_id=LAUNCH, service="a"),
        )
    path.write_text("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
    with pytest.raises(KubeRejected, match=re.escape("no kind 'Widget' in 'example.com/v1'")):
        env.run(
            kube_activities.read_manifests,
            ManifestsRequest(paths=[str(path)], namespace="x", launch_id=LAUNCH, service="a"),
        )


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        (
            "apiVersion: v1\nkind: SecretList\nmetadata: {name: s}\nitems: []\n",
            "Secrets do not belong in manifests",
        ),
        (
            "apiVersion: v1\nkind: secret\nmetadata: {name: s}\ndata: {a: YQ==}\n",
            "Secrets do not belong in manifests",
        ),
        (
            "apiVersion: v1\nkind: List\nmetadata: {name: l}\nitems:\n"
            "- {apiVersion: v1, kind: Secret, metadata: {name: s}, data: {a: YQ==}}\n",
            "a list of objects; give each object a document of its own",
        ),
    ],
)
def test_secret_data_never_becomes_an_activity_result(
    tmp_path: Path, manifest: str, problem: str
) -> None:
    """Refused before any cluster is asked, so no object of these reaches the history."""
    kube = KubeActivities(KubeConnection(kubeconfig=str(tmp_path / "no-cluster")))
    path = tmp_path / "m.yaml"
    path.write_text(manifest)
    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        ActivityEnvironment().run(
            kube.read_manifests,
            ManifestsRequest(paths=[str(path)], namespace="x", launch_id=LAUNCH, service="a"),
        )


def test_a_secret_is_never_applied_as_an_object(tmp_path: Path) -> None:
    kube = KubeActivities(KubeConnection(kubeconfig=str(tmp_path / "no-cluster")))
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "x"}}
    with pytest.raises(ConfigurationError, match="a Secret is applied from references"):
        ActivityEnvironment().run(
            kube.apply_object, ApplyObjectRequest(object=secret, launch_id=LAUNCH)
        )
