"""HTTP endpoint probes: the status an endpoint answers with, how fast, and its certificate's expiry.

`probe_http` reports a refused connection or a timeout in its result instead of raising: the
workflow classifies an unreachable endpoint as a failing check, which is what it is.
"""

from __future__ import annotations

import ssl
import time
from datetime import UTC, datetime, timedelta

import httpx
from temporalio import activity, workflow
from temporalio.common import RetryPolicy

from phasegate.activities.errors import ConfigurationError
from phasegate.activities.secrets import resolve_secret
from phasegate.workflows.health_messages import HttpProbe, HttpProbeResult

PROBE_OPTIONS = workflow.ActivityConfig(
    start_to_close_timeout=timedelta(seconds=60),
    retry_policy=RetryPolicy(
        maximum_attempts=2,
        initial_interval=timedelta(milliseconds=500),
        non_retryable_error_types=[ConfigurationError.__name__],
    ),
)


class ProbeActivities:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    @activity.defn
    async def probe_http(self, probe: HttpProbe) -> HttpProbeResult:
        check = probe.check
        headers = {
            name: resolve_secret(ref, where=f"checks.{check.name}.headers.{name}")
            for name, ref in check.headers.items()
        }
        if check.ca_file is None:
            return await self._probe(self._http, probe, headers)
        try:
            context = ssl.create_default_context(cafile=check.ca_file)
        except (OSError, ssl.SSLError) as err:
            raise ConfigurationError(
                f"checks.{check.name}.ca_file: cannot load {check.ca_file}: {err}"
            ) from None
        async with httpx.AsyncClient(verify=context) as private:
            return await self._probe(private, probe, headers)

    async def _probe(
        self, http: httpx.AsyncClient, probe: HttpProbe, headers: dict[str, str]
    ) -> HttpProbeResult:
        check = probe.check
        started = time.monotonic()
        try:
            async with http.stream(
                check.method,
                check.url,
                headers=headers,
                timeout=check.timeout.total_seconds(),
                follow_redirects=False,
            ) as response:
                expires_at = _certificate_expiry(response)
                await response.aread()
        except httpx.HTTPError as err:
            activity.logger.info("probe %s: %s", check.name, err)
            return HttpProbeResult(
                latency_seconds=time.monotonic() - started,
                error=f"{type(err).__name__}: {err}"[:300],
            )
        return HttpProbeResult(
            status_code=response.status_code,
            latency_seconds=time.monotonic() - started,
            tls_expires_at=expires_at,
        )


def _certificate_expiry(response: httpx.Response) -> datetime | None:
    """The `notAfter` of the certificate the server presented (None over plain HTTP)."""
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    if ssl_object is None:
        return None
    certificate = ssl_object.getpeercert()
    if not certificate or "notAfter" not in certificate:
        return None
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(certificate["notAfter"]), tz=UTC)
