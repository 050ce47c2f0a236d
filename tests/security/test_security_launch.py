"""Security validation inside a real launch: dev server, worker, HTTPS target, Prometheus."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from phasegate.starters.local import ManagedProcess
from phasegate.starters.render import render_status
from phasegate.workflows.launch import LaunchWorkflow
from phasegate.workflows.messages import DecideRequest, LaunchInput, LaunchResult, LaunchStatus
from phasegate.workflows.plan import LaunchPlan
from tests.conftest import canary_share
from tests.plans import plan_dict
from tests.security.conftest import Certificates, TargetFactory
from tests.security.target import VALID_TOKEN, HttpsTarget

pytestmark = pytest.mark.integration


def launch_plan(
    target: HttpsTarget, certificates: Certificates, prometheus: ManagedProcess, flag_file: Path
) -> LaunchPlan:
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
                    "within": "8s",
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
    handle: WorkflowHandle[LaunchWorkflow, Any], predicate: Any, timeout: float = 60
) -> LaunchStatus:
    async with asyncio.timeout(timeout):
        while True:
            current = await handle.query(LaunchWorkflow.status)
            if predicate(current):
                return current
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

    decision = await handle.execute_update(
        LaunchWorkflow.decide,
        DecideRequest(
            gate=gate, approver="carol", decision="approve", comment="renewal is booked for Friday"
        ),
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
    plan = launch_plan(target, certificates, audit_prometheus, tmp_path / "flags.json")
    result = await (await start(dev_env, plan, worker)).result()

    assert result.status == "rolled_back"
    assert "critical finding(s): orders-audit.recorded" in result.reason
    audit = next(f for f in result.final.phases[0].findings if f.id == "orders-audit.recorded")
    assert "GET answered 200" in audit.evidence
    assert "stayed at no data" in audit.evidence
