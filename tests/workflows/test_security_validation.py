"""SecurityValidation logic on the time-skipping server, probes mocked by name; and its replay."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, TypeVar

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.probes import finding
from schemas import probe_messages
from schemas.decision_messages import Decision, DecisionRequest
from schemas.launch_messages import LaunchResult
from schemas.metrics_messages import MetricReading
from schemas.plan import LaunchPlan
from schemas.security_validation_spec import SecurityCheck
from tests.support.fakes import FakeWorld, running_launch
from tests.support.histories import HISTORIES, replay, save_history
from tests.support.histories import committed as committed_histories
from tests.support.launches import decide_gate, gate_open, wait_for
from tests.support.plans import make_plan
from workflows.launch import LaunchWorkflow

SECURITY_PHASE: dict[str, Any] = {
    "name": "security",
    "kind": "security_validation",
    "waivers": {"approvers": ["carol"]},
    "tls": [{"id": "api", "url": "https://checkout.example"}],
    "headers": [{"id": "home", "url": "https://checkout.example/"}],
    "authentication": [
        {"id": "orders", "url": "https://checkout.example/orders", "token": {"env": "T"}}
    ],
    "rate_limits": [{"id": "login", "url": "https://checkout.example/login", "limit": 5}],
    "authorization": [
        {
            "id": "checkout-sa",
            "service_account": "checkout",
            "namespace": "shop",
            "cannot": [{"verb": "list", "resource": "secrets"}],
        }
    ],
    "secret_hygiene": [{"id": "shop-secrets", "namespace": "shop"}],
    "audit": [
        {
            "id": "orders-audit",
            "url": "https://checkout.example/orders",
            "query": "sum(audit_records_total)",
            "within": "10s",
            "interval": "2s",
        }
    ],
}
WAIVER = "security.waive.api.expiry"
Check = TypeVar("Check", bound=SecurityCheck)


def security_plan(**changes: Any) -> LaunchPlan:
    return make_plan(
        phases=[
            {**SECURITY_PHASE, **changes},
            {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
        ]
    )


@dataclass
class ProbedWorld(FakeWorld):
    """The fake world plus probes: every finding passes except the ids in `failing`."""

    failing: set[str] = field(default_factory=set)
    audit_records: int = 0

    def __post_init__(self) -> None:
        # The audit query counts the records the audited request wrote, unless it should fail.
        self.readings = lambda query: MetricReading(value=float(self.audit_records))

    def _probe(
        self,
        name: str,
        probe_type: type[probe_messages.CheckProbe[Check]],
        target: Callable[[Check], str],
    ) -> Callable[..., Any]:
        """The fake of probe activity `name`: one finding per aspect of its check, passing
        unless the finding's id is in `failing`. The probe comes in as JSON and is read the way
        the real activity reads it, as a `probe_type`."""
        world = self

        @activity.defn(name=name)
        async def probe(payload: dict[str, Any]) -> probe_messages.CheckReport:
            check = probe_type.model_validate(payload).check
            world.calls.append(("probe", check.id))
            return probe_messages.CheckReport(
                findings=[
                    finding(
                        check, a, target(check), f"{check.id}.{a}" not in world.failing, f"fake {a}"
                    )
                    for a in check.aspects()
                ]
            )

        return probe

    def activities(self) -> list[Any]:
        url = attrgetter("url")
        return [
            *super().activities(),
            self._probe("check_tls", probe_messages.TlsProbe, url),
            self._probe("check_headers", probe_messages.HeaderProbe, url),
            self._probe("check_authentication", probe_messages.AuthProbe, url),
            self._probe("check_rate_limit", probe_messages.RateLimitProbe, url),
            self._probe(
                "check_authorization",
                probe_messages.AuthorizationProbe,
                attrgetter("service_account"),
            ),
            self._probe(
                "check_secret_hygiene", probe_messages.HygieneProbe, attrgetter("namespace")
            ),
        ]

    @activity.defn(name="send_request")
    async def send_request(
        self, request: probe_messages.ProbeRequest
    ) -> probe_messages.ProbeResponse:
        self.calls.append(("send_request", request.url))
        if "orders-audit.recorded" not in self.failing:
            self.audit_records += 1
        return probe_messages.ProbeResponse(status=200)


async def run_to_the_end(env: WorkflowEnvironment, world: ProbedWorld) -> LaunchResult:
    """The security plan's launch on `world`'s fakes, left alone until it ends."""
    async with running_launch(env.client, security_plan(), world) as handle:
        return await handle.result()


async def test_all_checks_passing_goes_straight_on(time_skipping_env: WorkflowEnvironment) -> None:
    world = ProbedWorld()
    result = await run_to_the_end(time_skipping_env, world)

    assert result.status == "completed", result.reason
    security = result.final.phases[0]
    assert (security.kind, security.status, security.step, security.steps) == (
        "security_validation",
        "completed",
        7,
        7,
    )
    # tls, headers, authentication, rate limit, audit, authorization, secret hygiene
    assert len(security.findings) == 4 + 3 + 3 + 1 + 1 + 1 + 2
    assert all(f.passed for f in security.findings)
    assert not result.final.decisions
    assert world.names()[-1] == "promote_exposure"


async def test_a_critical_finding_rolls_the_launch_back(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = ProbedWorld(failing={"orders.no-credentials"})
    result = await run_to_the_end(time_skipping_env, world)

    assert result.status == "rolled_back"
    assert "1 critical finding(s): orders.no-credentials" in result.reason
    assert result.final.phases[0].status == "failed"
    assert result.final.phases[1].status == "pending"
    failed = [f.id for f in result.final.phases[0].findings if not f.passed]
    assert failed == ["orders.no-credentials"]
    assert "set_exposure" not in world.names()


async def test_an_audited_endpoint_without_a_record_fails_after_its_window(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = ProbedWorld(failing={"orders-audit.recorded"})
    result = await run_to_the_end(time_skipping_env, world)

    assert result.status == "rolled_back"
    audit = next(f for f in result.final.phases[0].findings if f.id == "orders-audit.recorded")
    assert not audit.passed
    assert audit.evidence.startswith("GET answered 200; `sum(audit_records_total)` stayed at 0")
    assert world.names().count("query_metric") == 1 + 5  # before, then every 2s for 10s


async def test_a_warning_opens_a_waiver_gate_that_needs_a_reason(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = ProbedWorld(failing={"api.expiry"})
    async with running_launch(time_skipping_env.client, security_plan(), world) as handle:
        waiting = await gate_open(time_skipping_env, handle, WAIVER)
        assert waiting.open_gate is not None
        assert waiting.open_gate.needs_reason
        assert waiting.open_gate.approvers == ["carol"]
        assert "api.expiry" in waiting.open_gate.question
        assert "must give the reason" in waiting.waiting_for

        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                "decide",
                DecisionRequest(gate=WAIVER, approver="carol", decision="approve"),
                result_type=Decision,
            )
        assert "needs the reason for the decision" in str(refused.value.cause)
        await handle.signal(LaunchWorkflow.approve, {"gate": WAIVER, "approver": "alice"})
        await handle.signal(
            LaunchWorkflow.approve,
            {"gate": WAIVER, "approver": "carol", "comment": "renewal ticket SEC-12 lands Friday"},
        )
        result = await handle.result()

    assert result.status == "completed", result.reason
    expiry = next(f for f in result.final.phases[0].findings if f.id == "api.expiry")
    assert (expiry.passed, expiry.waived_by, expiry.waiver_reason) == (
        False,
        "carol",
        "renewal ticket SEC-12 lands Friday",
    )
    decisions = [(d.gate, d.outcome, d.by, d.comment) for d in result.final.decisions]
    assert decisions == [(WAIVER, "approved", "carol", "renewal ticket SEC-12 lands Friday")]
    refusals = [entry.note for entry in result.final.audit if not entry.accepted]
    assert any("'alice' may not decide" in note for note in refusals)
    accepted = [entry.payload for entry in result.final.audit if entry.accepted]
    assert accepted[-1]["comment"] == "renewal ticket SEC-12 lands Friday"


async def test_each_warning_is_waived_by_its_own_id_and_a_rejection_rolls_back(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = ProbedWorld(failing={"api.expiry", "login.limited"})
    plan = security_plan(rate_limits=[{**SECURITY_PHASE["rate_limits"][0], "severity": "warning"}])
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await decide_gate(time_skipping_env, handle, WAIVER, "approve", "carol", "known")
        await decide_gate(
            time_skipping_env, handle, "security.waive.login.limited", "reject", "carol", "no limit"
        )
        result = await handle.result()

    assert result.status == "rolled_back"
    assert "security.waive.login.limited rejected by carol: no limit" in result.reason


async def test_an_unanswered_waiver_is_rejected_even_if_other_gates_approve_on_timeout(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = ProbedWorld(failing={"api.expiry"})
    plan = security_plan(waivers={"approvers": ["carol"], "timeout": "10m"})
    approvals = {
        "identity": "none",
        "approvers": ["alice"],
        "timeout": "10m",
        "on_timeout": "approve",
    }
    plan = plan.model_copy(update={"approvals": plan.approvals.model_validate(approvals)})
    async with running_launch(time_skipping_env.client, plan, world) as handle:
        await gate_open(time_skipping_env, handle, WAIVER)
        await time_skipping_env.sleep(601)
        result = await handle.result()
    assert result.status == "rolled_back"
    assert "rejected by the gate's timeout" in result.reason


# --- replay ------------------------------------------------------------------------------


async def test_security_histories_replay(time_skipping_env: WorkflowEnvironment) -> None:
    """A waived warning and a critical failure replay; re-recorded with PHASEGATE_RECORD_HISTORIES=1."""
    histories: list[tuple[str, str]] = []
    for name, world in (
        ("security_waived", ProbedWorld(failing={"api.expiry"})),
        ("security_failed", ProbedWorld(failing={"api.certificate"})),
    ):
        async with running_launch(time_skipping_env.client, security_plan(), world) as handle:
            if name == "security_waived":
                await decide_gate(
                    time_skipping_env, handle, WAIVER, "approve", "carol", "renewal booked"
                )
            await handle.result()
            final = await wait_for(time_skipping_env, handle, lambda s: s.finished_at is not None)
        ids = {"launch": handle.id}
        ids.update({p.name: f"{handle.id}.{p.name}" for p in final.phases if p.status != "pending"})
        for kind, workflow_id in ids.items():
            history = await time_skipping_env.client.get_workflow_handle(
                workflow_id
            ).fetch_history()
            histories.append((workflow_id, history.to_json()))
            if os.environ.get("PHASEGATE_RECORD_HISTORIES"):
                save_history(HISTORIES / f"{name}.{kind}.json", workflow_id, history.to_json())
    await replay(histories)
    committed = sorted(HISTORIES.glob("security_*.json"))
    assert [path.name for path in committed] == [
        "security_failed.launch.json",
        "security_failed.security.json",
        "security_waived.full-launch.json",
        "security_waived.launch.json",
        "security_waived.security.json",
    ]
    await replay(committed_histories(committed))
