"""PromQL measurements against a real Prometheus scraping the demo service."""

from __future__ import annotations

import logging

import pytest

from activities.errors import ConfigurationError
from activities.metrics import MetricsActivities
from devstack.demo import DemoStack
from devstack.processes import free_port
from schemas.analysis_spec import MetricSpec
from schemas.basics import SecretRef
from schemas.metrics_messages import MetricQuery
from schemas.targets import PrometheusTarget

pytestmark = pytest.mark.integration


def query(url: str, promql: str, **spec: object) -> MetricQuery:
    return MetricQuery(
        prometheus=PrometheusTarget(url=url),
        metric="m",
        spec=MetricSpec.model_validate({"query": promql, "max": 1.0, **spec}),
        canary_variant="canary",
        stable_variant="stable",
    )


def test_a_value_and_its_baseline_are_read_per_variant(stack: DemoStack) -> None:
    promql = 'sum(demo_requests_total{variant="{{variant}}"})'
    reading = MetricsActivities().query_metric(
        query(stack.prometheus.url, promql, baseline={"max_ratio": 2})
    )
    assert reading.error == ""
    assert reading.query == 'sum(demo_requests_total{variant="canary"})'
    assert reading.value is not None
    assert reading.value >= 0
    assert reading.baseline is not None
    assert reading.baseline > 0


def test_no_data_is_none_not_zero(stack: DemoStack) -> None:
    activities = MetricsActivities()
    missing = activities.query_metric(
        query(stack.prometheus.url, 'sum(demo_requests_total{variant="nobody"})')
    )
    assert (missing.value, missing.error) == (None, "")
    nan = activities.query_metric(query(stack.prometheus.url, "0/0"))
    assert (nan.value, nan.error) == (None, "")


def test_several_series_is_an_error_that_says_how_to_fix_it(stack: DemoStack) -> None:
    reading = MetricsActivities().query_metric(query(stack.prometheus.url, "demo_requests_total"))
    assert reading.value is None
    assert "aggregate it to one" in reading.error


def test_bad_promql_is_an_error_reading(stack: DemoStack) -> None:
    reading = MetricsActivities().query_metric(query(stack.prometheus.url, "sum(("))
    assert reading.value is None
    assert "parse error" in reading.error


def test_unreachable_prometheus_is_an_error_reading() -> None:
    reading = MetricsActivities().query_metric(query(f"http://127.0.0.1:{free_port()}", "up"))
    assert reading.value is None
    assert "Connection" in reading.error


def test_bearer_token_comes_from_the_environment(
    stack: DemoStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = query(stack.prometheus.url, "sum(up)")
    target = PrometheusTarget(url=stack.prometheus.url, bearer_token=SecretRef(env="PROM_TOKEN"))
    request = request.model_copy(update={"prometheus": target})
    monkeypatch.setenv("PROM_TOKEN", "s3cret")
    assert MetricsActivities().query_metric(request).value is not None
    monkeypatch.delenv("PROM_TOKEN")
    with pytest.raises(ConfigurationError, match="PROM_TOKEN is not set"):
        MetricsActivities().query_metric(request)


def test_a_secret_url_is_resolved_in_the_activity(
    stack: DemoStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHASEGATE_TEST_PROM_URL", stack.prometheus.url)
    target = PrometheusTarget(url=SecretRef(env="PHASEGATE_TEST_PROM_URL"))
    request = query(stack.prometheus.url, "sum(up)").model_copy(update={"prometheus": target})
    reading = MetricsActivities().query_metric(request)
    assert (reading.error, reading.value is not None) == ("", True)


def test_an_unreachable_secret_url_is_kept_out_of_the_reading_and_the_logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}/tok-0d93be"
    monkeypatch.setenv("PHASEGATE_TEST_PROM_URL", url)
    monkeypatch.setenv("PHASEGATE_TEST_PROM_TOKEN", "tok-6a1f27")
    target = PrometheusTarget(
        url=SecretRef(env="PHASEGATE_TEST_PROM_URL"),
        bearer_token=SecretRef(env="PHASEGATE_TEST_PROM_TOKEN"),
    )
    request = query(url, "up").model_copy(update={"prometheus": target})
    with caplog.at_level(logging.DEBUG):
        reading = MetricsActivities().query_metric(request)
    assert reading.value is None
    assert "Connection" in reading.error
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Retrying" in logged  # urllib3 names the request's path when it retries
    assert "tok-" not in reading.error + logged
