"""Webhook and Prometheus URLs: a plain URL without credentials, or a secret reference."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from schemas.basics import SecretRef
from schemas.plan import parse_plan
from schemas.targets import describe_url
from tests.support.plans import plan_dict, plan_problems

CREDENTIALS_PROBLEM = (
    "must not carry credentials (user:password@): it would be copied into the history of "
    "every phase; give the whole URL as a secret reference instead, `url: {env: NAME}` or "
    "`url: {file: PATH}`"
)


def with_urls(prometheus: Any, webhook: Any) -> dict[str, Any]:
    plan = plan_dict()
    plan["targets"]["prometheus"] = {"url": prometheus}
    plan["notifications"] = [{"name": "ops", "url": webhook}]
    return plan


def test_secret_references_and_plain_urls_are_both_accepted() -> None:
    plan = parse_plan(
        yaml.safe_dump(
            with_urls({"file": "/run/secrets/prometheus-url"}, {"env": "PHASEGATE_TEST_HOOK"})
        )
    )
    assert plan.targets.prometheus is not None
    assert plan.targets.prometheus.url == SecretRef(file="/run/secrets/prometheus-url")
    assert plan.notifications[0].url == SecretRef(env="PHASEGATE_TEST_HOOK")
    again = parse_plan(yaml.safe_dump(plan.model_dump(mode="json", exclude_none=True)))
    assert again == plan
    plain = parse_plan(
        yaml.safe_dump(with_urls("http://127.0.0.1:9090", "https://hooks.example/x"))
    )
    assert plain.notifications[0].url == "https://hooks.example/x"


def test_a_url_with_credentials_is_refused_without_repeating_them() -> None:
    problems = plan_problems(
        with_urls("http://admin:hunter2x@prometheus:9090", "https://ops:s3cr3tx@hooks.example/x")
    )
    assert problems == [
        f"targets.prometheus.url: {CREDENTIALS_PROBLEM}",
        f"notifications[0].url: {CREDENTIALS_PROBLEM}",
    ]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://hooks.example/x", "must start with http:// or https:// (or be a secret reference)"),
        ("https://hooks.example/a b", "must not contain spaces or control characters"),
        ("https://", "must name a host"),
        ("https://" + "x" * 2100, "must be at most 2048 characters"),
        (42, "must be an http(s):// URL or a secret reference `{env: NAME}`"),
        ({"env": "A", "file": "/b"}, "give exactly one of `env` or `file`"),
        (
            {"name": "A"},
            "name: is not a known field of a secret reference (give `env` or `file`)",
        ),
    ],
)
def test_a_bad_webhook_url_gets_one_line_naming_the_field(url: Any, problem: str) -> None:
    assert plan_problems(with_urls("http://127.0.0.1:9090", url)) == [
        f"notifications[0].url: {problem}"
    ]


def test_headers_and_events_are_bounded() -> None:
    plan = with_urls("http://127.0.0.1:9090", "https://hooks.example/x")
    plan["notifications"][0]["headers"] = {f"X-H{i}": {"env": "A"} for i in range(17)}
    plan["notifications"][0]["events"] = []
    assert plan_problems(plan) == [
        "notifications[0].headers: must have at most 16 item(s)",
        "notifications[0].events: must have at least 1 item(s)",
    ]


def test_a_secret_url_is_shown_by_where_it_lives() -> None:
    assert describe_url(SecretRef(env="HOOK")) == "<secret env:HOOK>"
    assert describe_url(SecretRef(file="/run/hook")) == "<secret file:/run/hook>"
    assert describe_url("https://hooks.example/x") == "https://hooks.example/x"
