"""The security_validation phase in the plan schema: checks, waiver gates, paths in errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from schemas.plan import load_plan, parse_plan
from schemas.security_validation_spec import SecurityValidationPhase
from tests.support.plans import plan_dict, plan_problems


def with_security(**phase: Any) -> dict[str, Any]:
    security = {"name": "security", "kind": "security_validation", **phase}
    return plan_dict(phases=[security, plan_dict()["phases"][1]])


def test_a_security_phase_parses_with_defaults_and_lists_its_waiver_gates() -> None:
    plan = parse_plan(
        yaml.safe_dump(
            with_security(
                gates={"before": True},
                tls=[{"id": "api", "url": "https://checkout.example"}],
                headers=[{"id": "home", "url": "https://checkout.example/"}],
                rate_limits=[
                    {
                        "id": "login",
                        "url": "https://x.example/login",
                        "limit": 5,
                        "severity": "warning",
                    }
                ],
            )
        )
    )
    phase = plan.phases[0]
    assert isinstance(phase, SecurityValidationPhase)
    assert phase.tls[0].min_version == "TLSv1.2"
    assert phase.tls[0].expiry_warning == timedelta(days=30)
    assert phase.headers[0].aspects() == ["hsts", "content-type-options", "frame-protection"]
    assert phase.rate_limits[0].burst == 6
    assert phase.gate_ids() == [
        "security.before",
        "security.waive.api.expiry",
        "security.waive.login.limited",
    ]


def test_security_problems_are_reported_with_their_paths() -> None:
    data = with_security(
        tls=[{"id": "api", "url": "http://plain.example", "min_version": "TLSv1.1"}],
        rate_limits=[{"id": "api", "url": "https://x.example", "limit": 1000}],
        authentication=[{"id": "orders", "url": "https://x.example/orders", "token": "hunter2"}],
    )
    assert plan_problems(data) == [
        "phases[0].tls[0].url: must be an https:// URL without spaces",
        "phases[0].tls[0].min_version: Input should be 'TLSv1.2' or 'TLSv1.3'",
        "phases[0].authentication[0].token: must be a secret reference, {env: NAME} or "
        "{file: PATH}; never the secret itself",
        "phases[0].rate_limits[0]: limit + margin + 1 = 1001 requests; a burst is capped at 500",
    ]


def test_a_security_phase_needs_a_check_and_unique_ids() -> None:
    assert plan_problems(with_security()) == [
        "phases[0]: give at least one check: tls, headers, authentication, rate_limits, audit, "
        "authorization or secret_hygiene"
    ]
    twice = with_security(
        tls=[{"id": "api", "url": "https://a.example"}],
        headers=[{"id": "api", "url": "https://a.example/"}],
    )
    assert plan_problems(twice) == ["phases[0]: check ids must be unique in a phase: api"]


def test_audit_needs_prometheus_and_a_header_check_must_judge_something() -> None:
    data = with_security(
        audit=[{"id": "orders", "url": "https://a.example/orders", "query": "sum(audit_total)"}],
    )
    data["targets"].pop("prometheus")
    data["phases"][1]["steps"] = [{"weight": 100}]
    assert plan_problems(data) == [
        "phases[0].audit: needs targets.prometheus to query for audit records"
    ]
    off = with_security(
        headers=[
            {
                "id": "home",
                "url": "https://a.example/",
                "hsts_min_max_age": None,
                "content_type_options": False,
                "frame_protection": False,
            }
        ]
    )
    assert plan_problems(off) == [
        "phases[0].headers[0]: every header check is switched off; enable at least one"
    ]


def test_a_relative_ca_file_is_resolved_against_the_plan(tmp_path: Path) -> None:
    data = with_security(ca_file="pki/ca.pem", tls=[{"id": "api", "url": "https://a.example"}])
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    phase = load_plan(path).phases[0]
    assert isinstance(phase, SecurityValidationPhase)
    assert phase.ca_file == str(tmp_path / "pki" / "ca.pem")


def test_a_waiver_is_never_given_by_a_timeout() -> None:
    data = with_security(
        tls=[{"id": "api", "url": "https://a.example"}], waivers={"on_timeout": "approve"}
    )
    assert plan_problems(data) == [
        "phases[0].waivers.on_timeout: a finding is waived only by a person; use reject"
    ]
    lenient = with_security(tls=[{"id": "api", "url": "https://a.example"}])
    lenient["approvals"]["on_timeout"] = "approve"
    phase = parse_plan(yaml.safe_dump(lenient)).phases[0]
    assert isinstance(phase, SecurityValidationPhase)
    assert phase.waiver_spec().on_timeout == "reject"


def test_kubernetes_checks_name_each_rule_as_a_finding() -> None:
    plan = parse_plan(
        yaml.safe_dump(
            with_security(
                authorization=[
                    {
                        "id": "sa",
                        "service_account": "checkout",
                        "namespace": "shop",
                        "severity": "warning",
                        "can": [{"verb": "get", "resource": "configmaps", "namespace": "shop"}],
                        "cannot": [
                            {"verb": "*", "resource": "secrets"},
                            {"verb": "create", "resource": "pods", "namespace": "kube-system"},
                        ],
                    }
                ],
                secret_hygiene=[{"id": "hygiene", "namespace": "shop"}],
            )
        )
    )
    phase = plan.phases[0]
    assert isinstance(phase, SecurityValidationPhase)
    assert phase.gate_ids() == [
        "security.waive.sa.can-get-configmaps-in-shop",
        "security.waive.sa.cannot-all-secrets-cluster-wide",
        "security.waive.sa.cannot-create-pods-in-kube-system",
    ]
    assert phase.secret_hygiene[0].aspects() == ["literals", "secrets-exist"]


def test_an_authorization_check_needs_distinct_rules() -> None:
    rule = {"verb": "list", "resource": "secrets"}
    data = with_security(
        authorization=[
            {"id": "sa", "service_account": "a", "namespace": "b", "cannot": [rule, rule]},
            {"id": "none", "service_account": "a", "namespace": "b"},
        ]
    )
    assert plan_problems(data) == [
        "phases[0].authorization[0]: rules given twice: cannot-list-secrets-cluster-wide",
        "phases[0].authorization[1]: give at least one rule in `can` or `cannot`",
    ]
