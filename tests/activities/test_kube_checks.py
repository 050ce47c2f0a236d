"""Authorization and secret hygiene checks against a real API server (local control plane)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from temporalio.testing import ActivityEnvironment

from activities.kube_checks import KubeCheckActivities, credential_reason, shannon_entropy
from schemas.probe_messages import AuthorizationProbe, Finding, HygieneProbe
from schemas.security_validation_spec import AuthorizationCheck, SecretHygieneCheck
from tests.support.kube import create_config_map

GITHUB_TOKEN = "ghp_" + "Zq8rT2vW9xY4bN7mK3pL6sD1fG5hJ0aQcE2u"
DB_PASSWORD = "Xk9#mP2$vL7qR4!wZ8"


def run(activity: Any, probe: Any) -> dict[str, Finding]:
    report = ActivityEnvironment().run(activity, probe)
    return {finding.id: finding for finding in report.findings}


def grant_configmap_reading(api: client.ApiClient, namespace: str) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="read-config"),
            rules=[
                client.V1PolicyRule(
                    api_groups=[""], resources=["configmaps"], verbs=["get", "list"]
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="checkout-reads-config"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="read-config"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="checkout", namespace=namespace)
            ],
        ),
    )


def authorization(namespace: str) -> AuthorizationCheck:
    return AuthorizationCheck.model_validate(
        {
            "id": "checkout-sa",
            "service_account": "checkout",
            "namespace": namespace,
            "can": [{"verb": "get", "resource": "configmaps", "namespace": namespace}],
            "cannot": [
                {"verb": "list", "resource": "secrets"},
                {"verb": "create", "resource": "pods", "namespace": "kube-system"},
            ],
        }
    )


def test_authorization_passes_for_a_least_privilege_service_account(
    kube_api: client.ApiClient, namespace: str
) -> None:
    grant_configmap_reading(kube_api, namespace)
    checks = KubeCheckActivities(lambda: kube_api)
    findings = run(checks.check_authorization, AuthorizationProbe(check=authorization(namespace)))

    assert {name: f.passed for name, f in findings.items()} == {
        f"checkout-sa.can-get-configmaps-in-{namespace}": True,
        "checkout-sa.cannot-list-secrets-cluster-wide": True,
        "checkout-sa.cannot-create-pods-in-kube-system": True,
    }
    can = findings[f"checkout-sa.can-get-configmaps-in-{namespace}"]
    assert "ALLOWED" in can.evidence
    assert f'allowed by RoleBinding "checkout-reads-config/{namespace}"' in can.evidence
    assert can.target == f"system:serviceaccount:{namespace}:checkout"


def test_authorization_fails_for_an_over_privileged_or_unprivileged_account(
    kube_api: client.ApiClient, namespace: str
) -> None:
    rbac = client.RbacAuthorizationV1Api(kube_api)
    binding = f"{namespace}-checkout-admin"
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=binding),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="admin"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="checkout", namespace=namespace)
            ],
        )
    )
    try:
        checks = KubeCheckActivities(lambda: kube_api)
        data = authorization(namespace).model_dump()
        data["can"].append({"verb": "delete", "resource": "nodes"})
        check = AuthorizationCheck.model_validate(data)
        findings = run(checks.check_authorization, AuthorizationProbe(check=check))
    finally:
        rbac.delete_cluster_role_binding(binding)

    assert {name: f.passed for name, f in findings.items()} == {
        f"checkout-sa.can-get-configmaps-in-{namespace}": True,
        "checkout-sa.can-delete-nodes-cluster-wide": False,
        "checkout-sa.cannot-list-secrets-cluster-wide": False,
        "checkout-sa.cannot-create-pods-in-kube-system": False,
    }
    secrets = findings["checkout-sa.cannot-list-secrets-cluster-wide"]
    assert secrets.evidence.startswith("list secrets cluster-wide: ALLOWED")
    assert binding in secrets.evidence
    assert "denied" in findings["checkout-sa.can-delete-nodes-cluster-wide"].evidence


def test_authorization_of_a_missing_service_account_fails_every_rule(
    kube_api: client.ApiClient, namespace: str
) -> None:
    check = authorization(namespace).model_copy(update={"service_account": "nobody"})
    findings = run(
        KubeCheckActivities(lambda: kube_api).check_authorization,
        AuthorizationProbe(check=check),
    )
    assert not any(f.passed for f in findings.values())
    assert all(f"{namespace}/nobody does not exist" in f.evidence for f in findings.values())


# --- secret hygiene --------------------------------------------------------------------


def deployment(name: str, env: list[client.V1EnvVar]) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="app", image="checkout:2.0.0", env=env)]
                ),
            ),
        ),
    )


def secret_env(name: str, secret: str) -> client.V1EnvVar:
    return client.V1EnvVar(
        name=name,
        value_from=client.V1EnvVarSource(
            secret_key_ref=client.V1SecretKeySelector(name=secret, key="value")
        ),
    )


def hygiene(namespace: str, **changes: Any) -> SecretHygieneCheck:
    return SecretHygieneCheck.model_validate(
        {"id": "secrets", "namespace": namespace, "required_secrets": ["checkout-db"], **changes}
    )


def test_secret_hygiene_passes_when_credentials_live_in_secrets(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="checkout-db"), string_data={"value": DB_PASSWORD}
        ),
    )
    create_config_map(
        kube_api,
        namespace,
        "checkout-config",
        {"LOG_LEVEL": "info", "PAYMENTS_URL": "https://payments.internal/v2"},
    )
    apps.create_namespaced_deployment(
        namespace,
        deployment(
            "checkout",
            [
                client.V1EnvVar(name="FEATURE_X", value="on"),
                secret_env("DB_PASSWORD", "checkout-db"),
            ],
        ),
    )
    findings = run(
        KubeCheckActivities(lambda: kube_api).check_secret_hygiene,
        HygieneProbe(check=hygiene(namespace)),
    )
    assert {name: f.passed for name, f in findings.items()} == {
        "secrets.literals": True,
        "secrets.secrets-exist": True,
    }
    assert (
        "none of 3 literal(s) in 1 ConfigMap(s) and 1 Deployment(s)"
        in findings["secrets.literals"].evidence
    )
    assert (
        findings["secrets.secrets-exist"].evidence
        == "all 1 referenced Secret(s) exist: checkout-db"
    )


def test_secret_hygiene_fails_on_literal_credentials_and_missing_secrets(
    kube_api: client.ApiClient, namespace: str
) -> None:
    create_config_map(
        kube_api, namespace, "checkout-config", {"DB_PASSWORD": DB_PASSWORD, "LOG_LEVEL": "info"}
    )
    client.AppsV1Api(kube_api).create_namespaced_deployment(
        namespace,
        deployment(
            "checkout",
            [
                client.V1EnvVar(name="GIT_CLONE", value=GITHUB_TOKEN),
                client.V1EnvVar(name="API_TOKEN", value="changeme"),  # too short to judge
                secret_env("CACHE_PASSWORD", "cache-credentials"),
            ],
        ),
    )
    findings = run(
        KubeCheckActivities(lambda: kube_api).check_secret_hygiene,
        HygieneProbe(check=hygiene(namespace)),
    )
    literals = findings["secrets.literals"]
    assert not literals.passed
    assert literals.evidence.startswith("2 of 4 literal(s) look like credentials:")
    assert "ConfigMap/checkout-config/DB_PASSWORD (credential-like name" in literals.evidence
    assert "Deployment/checkout/app/GIT_CLONE (GitHub token)" in literals.evidence
    assert DB_PASSWORD not in literals.evidence
    assert GITHUB_TOKEN not in literals.evidence
    missing = findings["secrets.secrets-exist"]
    assert not missing.passed
    assert missing.evidence == (
        "missing Secret(s): cache-credentials (wanted by Deployment/checkout), "
        "checkout-db (wanted by the plan)"
    )

    allowed = hygiene(
        namespace,
        allow=["ConfigMap/checkout-config/DB_PASSWORD", "Deployment/checkout/app/GIT_CLONE"],
    )
    again = run(
        KubeCheckActivities(lambda: kube_api).check_secret_hygiene, HygieneProbe(check=allowed)
    )
    assert again["secrets.literals"].passed


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("DB_PASSWORD", DB_PASSWORD, "credential-like name"),
        ("anything", "-----BEGIN RSA PRIVATE KEY-----\nMIIE", "private key"),
        ("x", "AKIAIOSFODNN7EXAMPLE", "AWS access key id"),
        ("DATABASE_URL", "postgres://app:s3cr3t-pw@db:5432/app", "password in a URL"),
        ("TOKEN", "aaaaaaaaaaaaaaaaaaaa", None),  # long but no entropy
        ("LOG_LEVEL", "Xk9#mP2$vL7qR4!wZ8", None),  # random-looking, but not named as a secret
        ("PASSWORD", "short1!", None),
        ("SECRET_NOTE", "rotate every ninety days", None),
    ],
)
def test_credential_detection_needs_a_pattern_or_a_name_and_entropy(
    name: str, value: str, reason: str | None
) -> None:
    found = credential_reason(name, value, hygiene("ns"))
    if reason is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(reason)


def test_entropy_is_bits_per_character() -> None:
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == 2.0
