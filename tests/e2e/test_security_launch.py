"""Security validation inside a real launch: dev server, worker, HTTPS target, Prometheus."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from rich.console import Console
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from devstack.kube_cluster import ControlPlane
from devstack.processes import ManagedProcess
from schemas.decision_messages import Decision, DecisionRequest
from schemas.launch_messages import LaunchResult, LaunchStatus
from schemas.plan import LaunchPlan
from starters.render import render_status
from tests.support.https_target import VALID_TOKEN, HttpsTarget
from tests.support.kube import create_config_map
from tests.support.launches import start_launch, wait_for
from tests.support.plans import plan_dict
from tests.support.security import Certificates, TargetFactory
from tests.support.servers import canary_share, running_worker
from workflows.launch import LaunchWorkflow

pytestmark = pytest.mark.integration

FULL_LAUNCH = {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]}


@dataclass
class SecurityLaunches:
    """Launches with a security phase over an HTTPS target, then a full launch, on the real
    worker; the audit check reads the target's records from a real Prometheus."""

    env: WorkflowEnvironment
    task_queue: str
    certificates: Certificates
    prometheus: ManagedProcess
    flag_file: Path

    def plan(self, target: HttpsTarget, *, audit_within: str = "30s") -> LaunchPlan:
        """The audit check ends as soon as the record is scraped, so `audit_within` only
        bounds how long a loaded machine may take."""
        base = target.url
        data = plan_dict(self.flag_file)
        data["targets"]["prometheus"] = {"url": self.prometheus.url}
        data["phases"] = [
            {
                "name": "security",
                "kind": "security_validation",
                "ca_file": self.certificates.ca_file,
                "waivers": {"approvers": ["carol"], "timeout": "5m"},
                "tls": [{"id": "api", "url": base}],
                "headers": [{"id": "home", "url": f"{base}/", "csp_directives": ["default-src"]}],
                "authentication": [
                    {"id": "orders", "url": f"{base}/orders", "token": {"env": "ORDERS_TOKEN"}}
                ],
                "rate_limits": [{"id": "login", "url": f"{base}/login", "limit": 5, "margin": 1}],
                "audit": [
                    {
                        "id": "orders-audit",
                        "url": f"{base}/orders",
                        "token": {"env": "ORDERS_TOKEN"},
                        "query": f'sum(audit_records_total{{target="{target.name}"}})',
                        "within": audit_within,
                        "interval": "1s",
                    }
                ],
            },
            FULL_LAUNCH,
        ]
        return LaunchPlan.model_validate(data)

    async def start(
        self, target: HttpsTarget, *, audit_within: str = "30s"
    ) -> WorkflowHandle[LaunchWorkflow, LaunchResult]:
        plan = self.plan(target, audit_within=audit_within)
        return await start_launch(self.env.client, plan, self.task_queue)


@pytest.fixture
def launches(
    dev_env: WorkflowEnvironment,
    worker: str,
    certificates: Certificates,
    audit_prometheus: ManagedProcess,
    tmp_path: Path,
) -> SecurityLaunches:
    return SecurityLaunches(
        dev_env, worker, certificates, audit_prometheus, tmp_path / "flags.json"
    )


async def waive(
    env: WorkflowEnvironment, handle: WorkflowHandle[LaunchWorkflow, Any], gate: str, reason: str
) -> str:
    """Wait for the launch to stop at the waiver gate `gate` and approve it as carol, giving
    `reason`; returns the question the gate asked."""
    waiting = await wait_for(
        env, handle, lambda s: s.open_gate is not None or s.finished_at is not None, timeout=60
    )
    assert waiting.open_gate is not None, waiting.reason
    assert waiting.open_gate.gate == gate
    decision: Decision = await handle.execute_update(
        "decide",
        DecisionRequest(gate=gate, approver="carol", decision="approve", comment=reason),
        result_type=Decision,
    )
    assert decision.outcome == "approved"
    return waiting.open_gate.question


def rendered(status: LaunchStatus) -> str:
    console = Console(width=250, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(render_status(status))
    return console.export_text()


@pytest.fixture(autouse=True)
def orders_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_TOKEN", VALID_TOKEN)


async def test_a_critical_finding_rolls_the_launch_back(
    launches: SecurityLaunches, https_target: TargetFactory
) -> None:
    result = await (await launches.start(https_target(protected=False))).result()

    assert result.status == "rolled_back"
    assert "critical finding(s): orders.no-credentials" in result.reason
    assert "orders.bad-token" in result.reason
    findings = {f.id: f for f in result.final.phases[0].findings}
    failed = sorted(name for name, f in findings.items() if not f.passed)
    assert failed == ["orders.bad-token", "orders.no-credentials"]
    assert findings["orders-audit.recorded"].passed  # the audit record showed up in Prometheus
    assert re.search(r"went \d+ → \d+ within", findings["orders-audit.recorded"].evidence)
    assert "first 429 at request 6" in findings["login.limited"].evidence
    assert result.final.phases[1].status == "pending"
    assert not launches.flag_file.exists()  # the launch never reached exposure
    text = rendered(result.final)
    assert "Security findings" in text
    assert "orders.no-credentials" in text
    assert "FAILED" in text


async def test_a_waived_warning_lets_the_launch_proceed(
    launches: SecurityLaunches, https_target: TargetFactory
) -> None:
    handle = await launches.start(https_target(cert="expiring"))
    question = await waive(
        launches.env, handle, "security.waive.api.expiry", "renewal is booked for Friday"
    )
    assert "expires" in question
    result = await handle.result()

    assert result.status == "completed", result.reason
    assert canary_share(launches.flag_file, "checkout-v2") == 100.0
    findings = result.final.phases[0].findings
    assert [f.id for f in findings if not f.passed] == ["api.expiry"]
    expiry = next(f for f in findings if f.id == "api.expiry")
    assert (expiry.severity, expiry.waived_by, expiry.waiver_reason) == (
        "warning",
        "carol",
        "renewal is booked for Friday",
    )
    assert any(entry.handler == "decide:approve" for entry in result.final.audit)
    assert "waived by carol: renewal is booked for Friday" in rendered(result.final)


async def test_a_missing_audit_record_fails_the_phase(
    launches: SecurityLaunches, https_target: TargetFactory
) -> None:
    handle = await launches.start(https_target(audit=False), audit_within="8s")
    result = await handle.result()

    assert result.status == "rolled_back"
    assert "critical finding(s): orders-audit.recorded" in result.reason
    audit = next(f for f in result.final.phases[0].findings if f.id == "orders-audit.recorded")
    assert "GET answered 200" in audit.evidence
    assert "stayed at no data" in audit.evidence


@pytest.fixture
async def kube_worker(
    dev_env: WorkflowEnvironment, kube: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """A real worker whose Kubernetes checks talk to the local control plane."""
    monkeypatch.setenv("PHASEGATE_KUBECONFIG", str(kube.kubeconfig))
    async with running_worker(dev_env.client) as task_queue:
        yield task_queue


async def test_kubernetes_checks_in_a_launch_a_waived_hygiene_warning(
    dev_env: WorkflowEnvironment,
    kube_worker: str,
    kube_api: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    create_config_map(kube_api, namespace, "checkout-config", {"SMTP_PASSWORD": "pQ7#vR2!kL9$wX4z"})
    data = plan_dict(tmp_path / "flags.json")
    data["phases"] = [
        {
            "name": "security",
            "kind": "security_validation",
            "waivers": {"approvers": ["carol"], "timeout": "5m"},
            "authorization": [
                {
                    "id": "checkout-sa",
                    "service_account": "checkout",
                    "namespace": namespace,
                    "cannot": [
                        {"verb": "list", "resource": "secrets"},
                        {"verb": "create", "resource": "pods", "namespace": "kube-system"},
                    ],
                }
            ],
            "secret_hygiene": [{"id": "shop", "namespace": namespace, "severity": "warning"}],
        },
        FULL_LAUNCH,
    ]
    handle = await start_launch(dev_env.client, LaunchPlan.model_validate(data), kube_worker)
    question = await waive(
        dev_env,
        handle,
        "security.waive.shop.literals",
        "test fixture value, moved to a Secret in SEC-7",
    )
    assert "ConfigMap/checkout-config/SMTP_PASSWORD" in question
    result = await handle.result()

    assert result.status == "completed", result.reason
    findings = {f.id: f for f in result.final.phases[0].findings}
    assert findings["checkout-sa.cannot-list-secrets-cluster-wide"].passed
    assert findings["checkout-sa.cannot-create-pods-in-kube-system"].passed
    assert findings["shop.secrets-exist"].passed
    assert findings["shop.literals"].waived_by == "carol"
