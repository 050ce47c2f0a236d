"""Probes of a deployed service: TLS, security headers, authentication, rate limiting (the
security validation phase) and plain endpoint checks (status, latency, certificate expiry; the
scheduled health validation).

Each probe judges one check of the plan and returns its findings with the evidence. A target
that cannot be reached is a failed finding, not an error: the phase's severity policy decides
what it means. Only a plan that cannot work (a secret or CA file that does not exist) raises.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
import time
import warnings
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from cryptography import x509
from temporalio import activity, workflow

from activities.errors import ConfigurationError
from activities.limits import WorkerLimits, guarded_transport
from activities.options import MINUTE, SECOND, activity_options
from activities.redaction import HTTP_CLIENT_LOGGERS, keep_out_of_logs, redact
from activities.secrets import resolve_secret
from schemas.basics import SecretRef
from schemas.health_messages import HttpProbe, HttpProbeResult
from schemas.probe_messages import (
    AuthProbe,
    CheckReport,
    Finding,
    HeaderProbe,
    ProbeRequest,
    ProbeResponse,
    RateLimitProbe,
    TlsProbe,
)
from schemas.security_validation_spec import RateLimitCheck, SecurityCheck, TlsCheck

PROBE_OPTIONS = activity_options(2 * MINUTE, attempts=3)


def burst_options(check: RateLimitCheck) -> workflow.ActivityConfig:
    """A burst runs for at most `max_duration`; a retry would start a second burst, so none."""
    return activity_options(check.max_duration + 30 * SECOND, attempts=1)


REQUEST_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0
INVALID_TOKEN = "phasegate-deliberately-invalid-token"
_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
_HSTS_MAX_AGE = re.compile(r"max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)


def finding(check: SecurityCheck, aspect: str, target: str, passed: bool, evidence: str) -> Finding:
    return Finding(
        id=f"{check.id}.{aspect}",
        check=check.id,
        target=target,
        severity="warning" if aspect in check.warning_aspects() else "critical",
        passed=passed,
        evidence=evidence[:500],
    )


# --- TLS -------------------------------------------------------------------------------


@dataclass
class _Handshake:
    version: str
    der: bytes | None


def _any_version_context() -> ssl.SSLContext:
    """A client that offers every protocol version OpenSSL can still speak, verifying nothing.

    Debian's OpenSSL refuses TLS 1.0/1.1 at its default security level, so the level is
    lowered for this context only: we must be able to ask an old server what it accepts.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    return context


def _pinned_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    context = _any_version_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    return context


def trust(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context trusting the plan's CA bundle, or the system's CAs."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as err:
        raise ConfigurationError(
            f"ca_file: cannot load {ca_file} as PEM certificates: {err}"
        ) from None


def _verifying_context(ca_file: str | None) -> ssl.SSLContext:
    """Chain and validity verification against the plan's CA (or the system's), any version."""
    context = trust(ca_file)
    context.check_hostname = False  # judged separately, from the certificate's names
    context.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    return context


async def _handshake(host: str, port: int, context: ssl.SSLContext) -> _Handshake:
    async with asyncio.timeout(HANDSHAKE_TIMEOUT):
        _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    try:
        tls = writer.get_extra_info("ssl_object")
        return _Handshake(version=str(tls.version()), der=tls.getpeercert(binary_form=True))
    finally:
        writer.close()
        with suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _why(err: BaseException) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        return err.verify_message or str(err)
    if isinstance(err, ssl.SSLError):
        return err.reason or str(err)
    if isinstance(err, TimeoutError):
        return f"no handshake within {HANDSHAKE_TIMEOUT:g}s"
    return f"{type(err).__name__}: {err}"


def hostname_matches(host: str, certificate: x509.Certificate) -> bool:
    """RFC 6125 matching against the subjectAltName only (no CN fallback), one wildcard label."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return address in names.get_values_for_type(x509.IPAddress)
    host = host.lower().rstrip(".")
    for pattern in names.get_values_for_type(x509.DNSName):
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            label, _, rest = host.partition(".")
            if label and rest == pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def _san(certificate: x509.Certificate) -> str:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    return ", ".join(str(name.value) for name in names) or "empty subjectAltName"


async def probe_tls(check: TlsCheck, ca_file: str | None) -> list[Finding]:
    url = httpx.URL(check.url)
    host, port = url.host, url.port or 443
    target = f"{host}:{port}"
    minimum = _VERSIONS[check.min_version]

    try:
        seen = await _handshake(host, port, _any_version_context())
    except (OSError, ssl.SSLError, TimeoutError) as err:
        evidence = f"no TLS handshake with {target}: {_why(err)}"
        return [finding(check, aspect, target, False, evidence) for aspect in check.aspects()]

    accepted, refused = [], []
    for name, version in _VERSIONS.items():
        if version >= minimum:
            continue
        try:
            await _handshake(host, port, _pinned_context(version))
            accepted.append(name)
        except ssl.SSLError as err:
            if "NO_PROTOCOLS_AVAILABLE" in str(err).upper():
                accepted.append(f"{name} (untestable: this machine's OpenSSL cannot offer it)")
            else:
                refused.append(name)
        except (OSError, TimeoutError):
            refused.append(name)
    modern = _any_version_context()
    modern.minimum_version = minimum
    try:
        negotiated, modern_ok = (await _handshake(host, port, modern)).version, True
    except (OSError, ssl.SSLError, TimeoutError) as err:
        negotiated, modern_ok = f"nothing at {check.min_version} or later ({_why(err)})", False
    protocol_ok = modern_ok and not accepted
    evidence = f"negotiated {negotiated}; refused {', '.join(refused) or 'nothing'}" + (
        f"; ACCEPTED {', '.join(accepted)} (below {check.min_version})" if accepted else ""
    )
    findings = [finding(check, "protocol", target, protocol_ok, evidence)]

    if seen.der is None:
        evidence = "the server sent no certificate"
        findings += [finding(check, a, target, False, evidence) for a in check.aspects()[1:]]
        return findings
    certificate = x509.load_der_x509_certificate(seen.der)
    now = datetime.now(UTC)
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    window = f"valid {not_before:%Y-%m-%d %H:%M} to {not_after:%Y-%m-%d %H:%M} UTC"
    try:
        await _handshake(host, port, _verifying_context(ca_file))
        chain = f"chain trusted by {ca_file or 'the system CAs'}"
        trusted = True
    except (OSError, ssl.SSLError, TimeoutError) as err:
        chain, trusted = f"chain NOT trusted: {_why(err)}", False
    in_window = not_before <= now <= not_after
    findings.append(
        finding(
            check,
            "certificate",
            target,
            trusted and in_window,
            f"{chain}; {window}{'' if in_window else ' (NOT valid now)'}; "
            f"subject {certificate.subject.rfc4514_string()}, "
            f"issuer {certificate.issuer.rfc4514_string()}",
        )
    )
    matches = hostname_matches(host, certificate)
    findings.append(
        finding(
            check,
            "hostname",
            target,
            matches,
            f"{host} {'matches' if matches else 'does NOT match'} {_san(certificate)}",
        )
    )
    left = not_after - now
    enough = left >= check.expiry_warning
    findings.append(
        finding(
            check,
            "expiry",
            target,
            enough,
            f"expires {not_after:%Y-%m-%d} UTC, in {left.days} day(s); "
            f"{'at least' if enough else 'LESS than'} {check.expiry_warning.days} day(s) wanted",
        )
    )
    return findings


# --- HTTP ------------------------------------------------------------------------------


def _authorization(scheme: str, token: str) -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


def _secret(ref: SecretRef | None, where: str) -> str | None:
    return resolve_secret(ref, where=where) if ref is not None else None


class ProbeActivities:
    """HTTP(S) probes share one client per trust bundle: the injected one for the system CAs.
    With the worker's `limits`, the other clients and TLS handshakes reach only what they allow.
    """

    def __init__(self, http: httpx.AsyncClient, limits: WorkerLimits | None = None) -> None:
        self._http = http
        self._limits = limits
        self._by_ca: dict[str, httpx.AsyncClient] = {}

    def _client(self, ca_file: str | None) -> httpx.AsyncClient:
        if ca_file is None:
            return self._http
        if ca_file not in self._by_ca:
            verify = trust(ca_file)
            transport = (
                guarded_transport(self._limits.network, verify=verify) if self._limits else None
            )
            self._by_ca[ca_file] = httpx.AsyncClient(
                verify=verify, transport=transport, timeout=REQUEST_TIMEOUT
            )
        return self._by_ca[ca_file]

    async def aclose(self) -> None:
        for client in self._by_ca.values():
            await client.aclose()
        self._by_ca.clear()

    async def _status(
        self, ca_file: str | None, method: str, url: str, headers: dict[str, str]
    ) -> tuple[int | None, str]:
        keep_out_of_logs(headers.values(), HTTP_CLIENT_LOGGERS)
        try:
            response = await self._client(ca_file).request(
                method, url, headers=headers, timeout=REQUEST_TIMEOUT
            )
        except httpx.HTTPError as err:
            # h11 quotes a header value it refuses: a token must not come back that way.
            return None, redact(f"{type(err).__name__}: {err}", headers.values())
        return response.status_code, ""

    @activity.defn(name="probe_http")
    async def probe_http(self, probe: HttpProbe) -> HttpProbeResult:
        """One request: the status, how long it took and the certificate's expiry. A refused
        connection or a timeout is reported in the result: the health check judges it."""
        check = probe.check
        headers = {
            name: resolve_secret(ref, where=f"checks.{check.name}.headers.{name}")
            for name, ref in check.headers.items()
        }
        keep_out_of_logs(headers.values(), HTTP_CLIENT_LOGGERS)
        try:
            http = self._client(check.ca_file)
        except ConfigurationError as err:
            raise ConfigurationError(f"checks.{check.name}.{err}") from None
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
            error = redact(f"{type(err).__name__}: {err}", headers.values())
            activity.logger.info("probe %s: %s", check.name, error)
            return HttpProbeResult(latency_seconds=time.monotonic() - started, error=error[:300])
        return HttpProbeResult(
            status_code=response.status_code,
            latency_seconds=time.monotonic() - started,
            tls_expires_at=expires_at,
        )

    @activity.defn(name="check_tls")
    async def check_tls(self, probe: TlsProbe) -> CheckReport:
        if self._limits is not None:
            await self._limits.network.acheck_url(
                probe.check.url, where=f"tls.{probe.check.id}.url"
            )
        return CheckReport(findings=await probe_tls(probe.check, probe.ca_file))

    @activity.defn(name="check_headers")
    async def check_headers(self, probe: HeaderProbe) -> CheckReport:
        check = probe.check
        target = check.url
        try:
            response = await self._client(probe.ca_file).get(
                check.url, timeout=REQUEST_TIMEOUT, follow_redirects=False
            )
        except httpx.HTTPError as err:
            evidence = f"GET failed: {type(err).__name__}: {err}"
            return CheckReport(
                findings=[finding(check, a, target, False, evidence) for a in check.aspects()]
            )
        headers = response.headers
        csp = headers.get("content-security-policy", "")
        directives = {part.strip().split(" ")[0].lower() for part in csp.split(";") if part.strip()}
        findings = []
        if check.hsts_min_max_age is not None:
            wanted = int(check.hsts_min_max_age.total_seconds())
            hsts = headers.get("strict-transport-security")
            match = _HSTS_MAX_AGE.search(hsts or "")
            age = int(match.group(1)) if match else None
            findings.append(
                finding(
                    check,
                    "hsts",
                    target,
                    age is not None and age >= wanted,
                    f"Strict-Transport-Security: {hsts!r}; max-age >= {wanted} wanted"
                    if hsts is not None
                    else "no Strict-Transport-Security header",
                )
            )
        if check.content_type_options:
            value = headers.get("x-content-type-options")
            findings.append(
                finding(
                    check,
                    "content-type-options",
                    target,
                    (value or "").strip().lower() == "nosniff",
                    f"X-Content-Type-Options: {value!r}; nosniff wanted"
                    if value is not None
                    else "no X-Content-Type-Options header",
                )
            )
        if check.frame_protection:
            frame = headers.get("x-frame-options")
            protected = (frame or "").strip().upper() in ("DENY", "SAMEORIGIN")
            evidence = f"X-Frame-Options: {frame!r}" if frame is not None else "no X-Frame-Options"
            if "frame-ancestors" in directives:
                protected = True
                evidence += "; CSP has frame-ancestors"
            else:
                evidence += "; no CSP frame-ancestors"
            findings.append(finding(check, "frame-protection", target, protected, evidence))
        if check.csp_directives is not None:
            missing = [name for name in check.csp_directives if name not in directives]
            findings.append(
                finding(
                    check,
                    "csp",
                    target,
                    bool(csp) and not missing,
                    f"Content-Security-Policy: {csp!r}"
                    + (f"; missing {', '.join(missing)}" if missing else "")
                    if csp
                    else "no Content-Security-Policy header",
                )
            )
        return CheckReport(findings=findings)

    @activity.defn(name="check_authentication")
    async def check_authentication(self, probe: AuthProbe) -> CheckReport:
        check = probe.check
        token = _secret(check.token, f"authentication.{check.id}.token")
        assert token is not None
        target = f"{check.method} {check.url}"
        denied = ", ".join(str(status) for status in check.denied_status)
        findings = []
        for aspect, headers in (
            ("no-credentials", {}),
            ("bad-token", _authorization(check.scheme, INVALID_TOKEN)),
        ):
            status, error = await self._status(probe.ca_file, check.method, check.url, headers)
            findings.append(
                finding(
                    check,
                    aspect,
                    target,
                    status in check.denied_status,
                    f"answered {status}; {denied} wanted" if status else f"no answer: {error}",
                )
            )
        status, error = await self._status(
            probe.ca_file, check.method, check.url, _authorization(check.scheme, token)
        )
        findings.append(
            finding(
                check,
                "valid-token",
                target,
                status is not None and 200 <= status < 300,
                f"answered {status} to the token from {check.token.model_dump(exclude_none=True)}; 2xx wanted"
                if status
                else f"no answer: {error}",
            )
        )
        return CheckReport(findings=findings)

    @activity.defn(name="check_rate_limit")
    async def check_rate_limit(self, probe: RateLimitProbe) -> CheckReport:
        """Send at most `limit + margin + 1` requests within `max_duration`, one at a time."""
        check = probe.check
        token = _secret(check.token, f"rate_limits.{check.id}.token")
        headers = _authorization("Bearer", token) if token else {}
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + check.max_duration.total_seconds()
        statuses: Counter[str] = Counter()
        limited_at = None
        sent = 0
        while sent < check.burst and loop.time() < deadline:
            sent += 1
            status, error = await self._status(probe.ca_file, check.method, check.url, headers)
            activity.heartbeat(sent)
            statuses[str(status) if status else error.split(":")[0]] += 1
            if status == check.status:
                limited_at = sent
                break
        took = loop.time() - started
        seen = ", ".join(f"{key}×{count}" for key, count in statuses.most_common())
        allowed = f"limit {check.limit} + margin {check.margin}"
        if limited_at is not None:
            evidence = f"first {check.status} at request {limited_at} ({allowed}) after {took:.1f}s; answers {seen}"
        elif sent >= check.burst:
            evidence = (
                f"no {check.status} in {sent} requests ({allowed}) in {took:.1f}s; answers {seen}"
            )
        else:
            evidence = (
                f"no {check.status} in {sent} requests before the {check.max_duration} cap "
                f"({allowed}); answers {seen}"
            )
        target = f"{check.method} {check.url}"
        return CheckReport(
            findings=[finding(check, "limited", target, limited_at is not None, evidence)]
        )

    @activity.defn(name="send_request")
    async def send_request(self, request: ProbeRequest) -> ProbeResponse:
        token = _secret(request.token, f"{request.where}.token")
        headers = _authorization("Bearer", token) if token else {}
        status, error = await self._status(request.ca_file, request.method, request.url, headers)
        return ProbeResponse(status=status, error=error)


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
