"""Security checks that ask the Kubernetes API server: what a service account is authorized to
do (SubjectAccessReview), and secret hygiene in the launch's namespace. Blocking client calls,
so plain `def` activities on the worker's thread pool. Evidence names places, never values.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from temporalio import activity

from activities.options import MINUTE, SECOND, activity_options
from activities.probes import finding
from schemas.probe_messages import AuthorizationProbe, CheckReport, HygieneProbe
from schemas.security_validation_spec import AccessRule, AuthorizationCheck, SecretHygieneCheck

KUBE_CHECK_OPTIONS = activity_options(MINUTE, attempts=5, first_retry=SECOND / 2)

# A name that says "credential", and known credential formats whatever the name.
CREDENTIAL_NAME = re.compile(
    r"pass(word|wd)?|secret|token|api[_-]?key|private[_-]?key|credential|access[_-]?key|auth",
    re.IGNORECASE,
)
CREDENTIAL_FORMATS = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "JSON web token": re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),
    "password in a URL": re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]{3,}@", re.IGNORECASE),
}
# The CA bundle every namespace gets: public certificates, not secrets.
SKIPPED_CONFIGMAPS = {"kube-root-ca.crt"}


def shannon_entropy(value: str) -> float:
    """Bits per character of `value`'s own character distribution."""
    if not value:
        return 0.0
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def credential_reason(name: str, value: str, check: SecretHygieneCheck) -> str | None:
    """Why this name/value pair looks like a credential, or None if it does not."""
    for label, pattern in CREDENTIAL_FORMATS.items():
        if pattern.search(value):
            return label
    if CREDENTIAL_NAME.search(name) and len(value) >= check.min_length and " " not in value:
        entropy = shannon_entropy(value)
        if entropy >= check.min_entropy:
            return f"credential-like name, {len(value)} chars at {entropy:.1f} bits/char"
    return None


@dataclass
class PlainValue:
    place: str  # `ConfigMap/<name>/<key>` or `Deployment/<name>/<container>/<ENV>`
    name: str
    value: str


class KubeCheckActivities:
    """RBAC and secret-hygiene checks; `api` makes the client on first use (the worker passes
    `KubeConnection.api`, shared with the infra and router activities)."""

    def __init__(self, api: Callable[[], client.ApiClient]) -> None:
        self._api = api

    @activity.defn(name="check_authorization")
    def check_authorization(self, probe: AuthorizationProbe) -> CheckReport:
        check = probe.check
        core = client.CoreV1Api(self._api())
        account = f"system:serviceaccount:{check.namespace}:{check.service_account}"
        try:
            core.read_namespaced_service_account(check.service_account, check.namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            evidence = f"service account {check.namespace}/{check.service_account} does not exist"
            return CheckReport(
                findings=[finding(check, a, account, False, evidence) for a in check.aspects()]
            )
        findings = []
        for expected, rules in ((True, check.can), (False, check.cannot)):
            for rule in rules:
                allowed, why = self._review(check, rule)
                aspect = f"{'can' if expected else 'cannot'}-{rule.label()}"
                evidence = f"{_describe(rule)}: {'ALLOWED' if allowed else 'denied'}" + (
                    f" ({why})" if why else ""
                )
                findings.append(finding(check, aspect, account, allowed == expected, evidence))
        return CheckReport(findings=findings)

    def _review(self, check: AuthorizationCheck, rule: AccessRule) -> tuple[bool, str]:
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{check.namespace}:{check.service_account}",
                groups=[
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{check.namespace}",
                    "system:authenticated",
                ],
                resource_attributes=client.V1ResourceAttributes(
                    verb=rule.verb,
                    resource=rule.resource,
                    group=rule.group,
                    subresource=rule.subresource or None,
                    namespace=rule.namespace or "",
                ),
            )
        )
        answer = client.AuthorizationV1Api(self._api()).create_subject_access_review(review)
        status = answer.status
        if status is None:
            return False, "the API server answered without a status"
        return bool(status.allowed), status.reason or status.evaluation_error or ""

    @activity.defn(name="check_secret_hygiene")
    def check_secret_hygiene(self, probe: HygieneProbe) -> CheckReport:
        check = probe.check
        core = client.CoreV1Api(self._api())
        apps = client.AppsV1Api(self._api())
        target = f"namespace {check.namespace}"
        configmaps = [
            configmap
            for configmap in core.list_namespaced_config_map(check.namespace).items
            if _name(configmap) not in SKIPPED_CONFIGMAPS
        ]
        deployments = apps.list_namespaced_deployment(check.namespace).items

        flagged = []
        scanned = 0
        for literal in _literals(configmaps, deployments):
            scanned += 1
            if literal.place in check.allow:
                continue
            reason = credential_reason(literal.name, literal.value, check)
            if reason is not None:
                flagged.append(f"{literal.place} ({reason})")
        evidence = (
            f"{len(flagged)} of {scanned} literal(s) look like credentials: " + "; ".join(flagged)
            if flagged
            else f"none of {scanned} literal(s) in {len(configmaps)} ConfigMap(s) and "
            f"{len(deployments)} Deployment(s) looks like a credential"
        )
        findings = [finding(check, "literals", target, not flagged, evidence)]

        wanted = {name: "the plan" for name in check.required_secrets}
        for deployment in deployments:
            for name in _secret_references(deployment):
                wanted.setdefault(name, f"Deployment/{_name(deployment)}")
        existing = {_name(s) for s in core.list_namespaced_secret(check.namespace).items}
        missing = [
            f"{name} (wanted by {by})"
            for name, by in sorted(wanted.items())
            if name not in existing
        ]
        evidence = (
            f"missing Secret(s): {', '.join(missing)}"
            if missing
            else f"all {len(wanted)} referenced Secret(s) exist: {', '.join(sorted(wanted)) or 'none referenced'}"
        )
        findings.append(finding(check, "secrets-exist", target, not missing, evidence))
        return CheckReport(findings=findings)


def _name(item: client.V1ConfigMap | client.V1Deployment | client.V1Secret) -> str:
    return str(item.metadata.name) if item.metadata is not None else ""


def _pod_spec(deployment: client.V1Deployment) -> client.V1PodSpec:
    spec = deployment.spec.template.spec if deployment.spec is not None else None
    return spec if spec is not None else client.V1PodSpec(containers=[])


def _describe(rule: AccessRule) -> str:
    resource = f"{rule.resource}.{rule.group}" if rule.group else rule.resource
    if rule.subresource:
        resource += f"/{rule.subresource}"
    where = f"in namespace {rule.namespace}" if rule.namespace else "cluster-wide"
    return f"{rule.verb} {resource} {where}"


def _literals(
    configmaps: list[client.V1ConfigMap], deployments: list[client.V1Deployment]
) -> Iterator[PlainValue]:
    for configmap in configmaps:
        for key, value in (configmap.data or {}).items():
            yield PlainValue(f"ConfigMap/{_name(configmap)}/{key}", key, value)
    for deployment in deployments:
        spec = _pod_spec(deployment)
        for container in [*(spec.init_containers or []), *(spec.containers or [])]:
            for env in container.env or []:
                if env.value is not None:
                    place = f"Deployment/{_name(deployment)}/{container.name}/{env.name}"
                    yield PlainValue(place, env.name, env.value)


def _secret_references(deployment: client.V1Deployment) -> Iterator[str]:
    """Secrets a Deployment's pods need: env, envFrom and volumes, unless marked optional."""
    spec = _pod_spec(deployment)
    for container in [*(spec.init_containers or []), *(spec.containers or [])]:
        for env in container.env or []:
            ref = env.value_from.secret_key_ref if env.value_from else None
            if ref is not None and ref.name and not ref.optional:
                yield ref.name
        for source in container.env_from or []:
            secret = source.secret_ref
            if secret is not None and secret.name and not secret.optional:
                yield secret.name
    for volume in spec.volumes or []:
        if volume.secret is not None and volume.secret.secret_name and not volume.secret.optional:
            yield volume.secret.secret_name
