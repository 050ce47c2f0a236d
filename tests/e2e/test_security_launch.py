"""Security validation inside a real launch: dev server, worker, HTTPS target, Prometheus."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from rich.console import Console
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from devstack.kube_cluster import ControlPlane
from devstack.processes import ManagedProcess
from schemas.decision_messages import Decision, DecisionRequest
from schemas.launch_messages import LaunchInput, LaunchResult, LaunchStatus
from schemas.plan import LaunchPlan
from starters.render import render_status
from tests.support.https_target import VALID_TOKEN, HttpsTarget
from tests.support.plans import plan_dict
from tests.support.security import Certificates, TargetFactory
from tests.support.servers import canary_share
from workers.main import build_worker
from workflows.launch import LaunchWorkflow

pytestmark = pytest.mark.integration


def launch_plan(
    target: HttpsTarget,
    certificates: Certificates,
    prometheus: ManagedProcess,
    flag_file: Path,
    *,
    audit_within: str = "30s",
) -> LaunchPlan:
    """A security phase over `target`, then a full launch. The audit check ends as soon as the
    record is scraped, so `audit_within` only bounds how long a loaded machine may take."""
    base = target.url
    data = plan_dict(flag_file)
    data["targets"]["prometheus"] = {"url": prometheus.url}
    data["phases"] = [
        {
            "name": "security",
            "kind": "security_validation",
            "ca_file": certificates.ca_file,
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
        {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
    ]
    return LaunchPlan.model_validate(data)


async def start(
    env: WorkflowEnvironment, plan: LaunchPlan, task_queue: str
) -> WorkflowHandle[LaunchWorkflow, LaunchResult]:
    launch_id = f"security-{uuid.uuid4().hex[:8]}"
    return await env.client.start_workflow(
        LaunchWorkflow.run,
        LaunchInput(launch_id=launch_id, plan=plan),
        id=launch_id,
        task_queue=task_queue,
    )


async def status_until(
    handle: WorkflowHandle[LaunchWorkflow, Any],
    predicate: Callable[[LaunchStatus], bool],
    timeout: float = 60,
) -> LaunchStatus:
    """Poll the launch's `status` query until `predicate` holds; fail with the last status."""
    deadline = time.monotonic() + timeout
    while True:
        current = await handle.query(LaunchWorkflow.status)
        if predicate(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s; last status: {current.model_dump_json(indent=1)}"
            )
        await asyncio.sleep(0.2)


def rendered(status: LaunchStatus) -> str:
    console = Console(width=250, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(render_status(status))
    return console.export_text()


@pytest.fixture(autouse=True)
def orders_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_TOKEN", VALID_TOKEN)


async def test_a_critical_finding_rolls_the_launch_back(
    dev_env: WorkflowEnvironment,
    worker: str,
    https_target: TargetFactory,
    certificates: Certificates,
    audit_prometheus: ManagedProcess,
    tmp_path: Path,
) -> None:
    target = https_target(protected=False)
    flag_file = tmp_path / "flags.json"
    plan = launch_plan(target, certificates, audit_prometheus, flag_file)
    result = await (await start(dev_env, plan, worker)).result()

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
    assert not flag_file.exists()  # the launch never reached exposure
    text = rendered(result.final)
    assert "Security findings" in text
    assert "orders.no-credentials" in text
    assert "FAILED" in text


async def test_a_waived_warning_lets_the_launch_proceed(
    dev_env: WorkflowEnvironment,
    worker: str,
    https_target: TargetFactory,
    certificates: Certificates,
    audit_prometheus: ManagedProcess,
    tmp_path: Path,
) -> None:
    target = https_target(cert="expiring")
    flag_file = tmp_path / "flags.json"
    plan = launch_plan(target, certificates, audit_prometheus, flag_file)
    handle = await start(dev_env, plan, worker)
    gate = "security.waive.api.expiry"
    waiting = await status_until(
        handle, lambda s: s.open_gate is not None or s.finished_at is not None
    )
    assert waiting.open_gate is not None, waiting.reason
    assert waiting.open_gate.gate == gate
    assert "expires" in waiting.open_gate.question

    decision: Decision = await handle.execute_update(
        "decide",
        DecisionRequest(
            gate=gate, approver="carol", decision="approve", comment="renewal is booked for Friday"
        ),
        result_type=Decision,
    )
    assert decision.outcome == "approved"
    result = await handle.result()

    assert result.status == "completed", result.reason
    assert canary_share(flag_file, "checkout-v2") == 100.0
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
    dev_env: WorkflowEnvironment,
    worker: str,
    https_target: TargetFactory,
    certificates: Certificates,
    audit_prometheus: ManagedProcess,
    tmp_path: Path,
) -> None:
    target = https_target(audit=False)
    plan = launch_plan(
        target, certificates, audit_prometheus, tmp_path / "flags.json", audit_within="8s"
    )
    result = await (await start(dev_env, plan, worker)).result()

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
    task_queue = f"security-kube-{uuid.uuid4()}"
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as executor:
        async with (
            httpx.AsyncClient() as http,
            build_worker(dev_env.client, http, executor, task_queue=task_queue),
        ):
            yield task_queue


async def test_kubernetes_checks_in_a_launch_a_waived_hygiene_warning(
    dev_env: WorkflowEnvironment,
    kube_worker: str,
    kube_api: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    client.CoreV1Api(kube_api).create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="checkout-config"),
            data={"SMTP_PASSWORD": "pQ7#vR2!kL9$wX4z"},
        ),
    )
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
        {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
    ]
    handle = await start(dev_env, LaunchPlan.model_validate(data), kube_worker)
    waiting = await status_until(
        handle, lambda s: s.open_gate is not None or s.finished_at is not None
    )
    assert waiting.open_gate is not None, waiting.reason
    assert waiting.open_gate.gate == "security.waive.shop.literals"
    assert "ConfigMap/checkout-config/SMTP_PASSWORD" in waiting.open_gate.question
    decision: Decision = await handle.execute_update(
        "decide",
        DecisionRequest(
            gate="security.waive.shop.literals",
            approver="carol",
            decision="approve",
            comment="test fixture value, moved to a Secret in SEC-7",
        ),
        result_type=Decision,
    )
    assert decision.outcome == "approved"
    result = await handle.result()

    assert result.status == "completed", result.reason
    findings = {f.id: f for f in result.final.phases[0].findings}
    assert findings["checkout-sa.cannot-list-secrets-cluster-wide"].passed
    assert findings["checkout-sa.cannot-create-pods-in-kube-system"].passed
    assert findings["shop.secrets-exist"].passed
    assert findings["shop.literals"].waived_by == "carol"
