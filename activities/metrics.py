"""PromQL measurements against Prometheus, classified by the workflow's analysis loop.

`query_metric` never raises for an unreachable Prometheus or an empty answer: it reports the
error or the missing data in the reading, because an analysis counts those as inconclusive
measurements (pausing for a person) rather than failing or retrying forever. A metric with
`compare` reads the last window of samples for both variants and judges them with the
statistical judge (`activities/judge.py`); the others read one value per variant.
"""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_api_client import PrometheusConnect
from temporalio import activity, workflow
from urllib3.util.retry import Retry

from activities.judge import compare_samples
from activities.limits import WorkerLimits
from activities.options import SECOND, activity_options
from activities.redaction import keep_out_of_logs, kept_out, redact, resolve_url
from activities.secrets import resolve_secret
from schemas.analysis_spec import VARIANT_PLACEHOLDER, Comparison
from schemas.metrics_messages import MetricQuery, MetricReading, TargetsUp, TargetsUpRequest
from schemas.targets import PrometheusTarget

METRICS_OPTIONS = activity_options(20 * SECOND, attempts=2, first_retry=SECOND / 5)
# The loggers that write a request's path and query when the Prometheus client retries it.
URLLIB3_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry")


def targets_options(timeout: timedelta) -> workflow.ActivityConfig:
    """`check_targets_up` raises until every job is up; the retry policy polls, within `timeout`."""
    return activity_options(20 * SECOND, backoff=1.5, longest_retry=5 * SECOND, deadline=timeout)


class TargetsDown(Exception):
    """Retryable: some scrape job has no target up yet."""


def render_query(template: str, variant: str) -> str:
    return template.replace(VARIANT_PLACEHOLDER, variant)


class MetricsActivities:
    """Prometheus queries; one `PrometheusConnect` per server and token is kept and reused.
    The URL (when given as a secret) and the token stay out of every reading and failure."""

    def __init__(self, limits: WorkerLimits | None = None) -> None:
        # With the worker's limits, every query first checks where Prometheus resolves to now.
        self._limits = limits
        self._clients: dict[tuple[str, str | None], PrometheusConnect] = {}
        self._lock = threading.Lock()

    def _client(self, target: PrometheusTarget) -> tuple[PrometheusConnect, list[str]]:
        """The client for `target`, and the secret values its errors must not quote."""
        url, secrets = resolve_url(target.url, where="targets.prometheus.url")
        if self._limits is not None:
            shown = None if isinstance(target.url, str) else "the URL in this secret"
            self._limits.network.check_url(url, where="targets.prometheus.url", shown=shown)
        token = (
            resolve_secret(target.bearer_token, where="targets.prometheus.bearer_token")
            if target.bearer_token
            else None
        )
        if token:
            secrets.append(token)
        keep_out_of_logs(secrets, URLLIB3_LOGGERS)
        key = (url, token)
        with self._lock:
            if key not in self._clients:
                headers = {"Authorization": f"Bearer {token}"} if token else None
                self._clients[key] = PrometheusConnect(
                    url=url,
                    headers=headers,
                    # One quick retry at most: the analysis loop counts errors itself.
                    retry=Retry(total=1, backoff_factor=0.1, status_forcelist=[502, 503, 504]),
                    timeout=max(1, int(target.timeout.total_seconds())),
                )
            return self._clients[key], secrets

    def _scalar(self, client: PrometheusConnect, query: str) -> float | None:
        result = client.custom_query(query)
        if not result:
            return None
        if len(result) == 2 and not isinstance(result[0], dict):  # a scalar: [time, "value"]
            value = float(result[1])
            return None if math.isnan(value) else value
        if len(result) > 1:
            labels = ", ".join(str(series.get("metric", {})) for series in result[:3])
            raise ValueError(
                f"query returned {len(result)} series ({labels}); aggregate it to one, "
                "e.g. with sum(...)"
            )
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    def _samples(
        self, client: PrometheusConnect, query: str, spec: Comparison, end: datetime
    ) -> list[float]:
        """The query's samples over the `spec.window` before `end`, one per `spec.step`."""
        result: list[dict[str, Any]] = client.custom_query_range(
            query,
            start_time=end - spec.window,
            end_time=end,
            step=f"{spec.step.total_seconds():g}",
        )
        if not result:
            return []
        if len(result) > 1:
            labels = ", ".join(str(series.get("metric", {})) for series in result[:3])
            raise ValueError(
                f"query returned {len(result)} series ({labels}); aggregate it to one, "
                "e.g. with sum(...)"
            )
        # Prometheus answers at most one point per step; a longer answer is not what was asked.
        values = result[0].get("values", [])[: spec.points]
        return [float(value) for _, value in values]

    def _compare(
        self, client: PrometheusConnect, request: MetricQuery, spec: Comparison
    ) -> MetricReading:
        """Both variants' samples over the same window, judged by the statistical judge."""
        end = datetime.now(UTC)
        canary_query = render_query(request.spec.query, request.canary_variant)
        canary = self._samples(client, canary_query, spec, end)
        stable = self._samples(
            client, render_query(request.spec.query, request.stable_variant), spec, end
        )
        comparison = compare_samples(spec, canary, stable)
        return MetricReading(
            value=comparison.canary_median,
            baseline=comparison.stable_median,
            query=canary_query,
            comparison=comparison,
        )

    @activity.defn(name="query_metric")
    def query_metric(self, request: MetricQuery) -> MetricReading:
        client, secrets = self._client(request.prometheus)
        canary_query = render_query(request.spec.query, request.canary_variant)
        try:
            if request.spec.compare is not None:
                return self._compare(client, request, request.spec.compare)
            value = self._scalar(client, canary_query)
            baseline = (
                self._scalar(client, render_query(request.spec.query, request.stable_variant))
                if request.spec.baseline is not None
                else None
            )
        except Exception as err:
            error = redact(f"{type(err).__name__}: {err}", secrets)
            activity.logger.warning("metric %s: %s", request.metric, error)
            return MetricReading(error=error[:500], query=canary_query)
        return MetricReading(value=value, baseline=baseline, query=canary_query)

    @activity.defn(name="check_targets_up")
    def check_targets_up(self, request: TargetsUpRequest) -> TargetsUp:
        """How many targets of each job Prometheus scrapes successfully; raises while a job
        has none up (Prometheus unreachable included), so the retry policy polls."""
        client, secrets = self._client(request.prometheus)
        up: dict[str, int] = {}
        for job in request.jobs:
            escaped = job.replace("\\", "\\\\").replace('"', '\\"')
            with kept_out(secrets):
                series = client.custom_query(f'up{{job="{escaped}"}} == 1')
            up[job] = len(series)
        down = [job for job, count in up.items() if count == 0]
        if down:
            raise TargetsDown(f"no target up for Prometheus job(s): {', '.join(down)}")
        return TargetsUp(up=up)
