"""Every probe passing and failing against a real HTTPS target on a loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.errors import ConfigurationError
from activities.probes import ProbeActivities
from schemas.probe_messages import (
    AuthProbe,
    CheckReport,
    Finding,
    HeaderProbe,
    ProbeRequest,
    RateLimitProbe,
    TlsProbe,
)
from schemas.security_validation_spec import AuthCheck, HeaderCheck, RateLimitCheck, TlsCheck
from tests.support.https_target import VALID_TOKEN
from tests.support.security import Certificates, TargetFactory

pytestmark = pytest.mark.integration


@pytest.fixture
async def probes() -> AsyncIterator[ProbeActivities]:
    async with httpx.AsyncClient() as http:
        activities = ProbeActivities(http)
        yield activities
        await activities.aclose()


async def run(activity: Any, probe: Any) -> dict[str, Finding]:
    report: CheckReport = await ActivityEnvironment().run(activity, probe)
    return {finding.id: finding for finding in report.findings}


def verdicts(findings: dict[str, Finding]) -> dict[str, bool]:
    return {name: finding.passed for name, finding in findings.items()}


# --- TLS -------------------------------------------------------------------------------


async def test_tls_passes_on_a_modern_server_with_a_good_certificate(
    probes: ProbeActivities, https_target: TargetFactory, certificates: Certificates
) -> None:
    target = https_target()
    check = TlsCheck(id="api", url=target.url)
    findings = await run(probes.check_tls, TlsProbe(check=check, ca_file=certificates.ca_file))

    assert verdicts(findings) == {
        "api.protocol": True,
        "api.certificate": True,
        "api.hostname": True,
        "api.expiry": True,
    }
    assert "refused TLSv1, TLSv1.1" in findings["api.protocol"].evidence
    assert "negotiated TLSv1.3" in findings["api.protocol"].evidence
    assert "chain trusted" in findings["api.certificate"].evidence
    assert findings["api.expiry"].severity == "warning"
    assert findings["api.protocol"].severity == "critical"


async def test_tls_fails_a_server_that_still_accepts_tls_1_0_and_1_1(
    probes: ProbeActivities, https_target: TargetFactory, certificates: Certificates
) -> None:
    target = https_target(old_tls=True)
    check = TlsCheck(id="api", url=target.url)
    findings = await run(probes.check_tls, TlsProbe(check=check, ca_file=certificates.ca_file))

    protocol = findings["api.protocol"]
    assert not protocol.passed
    assert "ACCEPTED TLSv1, TLSv1.1" in protocol.evidence
    assert findings["api.certificate"].passed  # the certificate itself is fine


async def test_tls_1_3_minimum_fails_a_server_that_offers_1_2(
    probes: ProbeActivities, https_target: TargetFactory, certificates: Certificates
) -> None:
    target = https_target()
    check = TlsCheck(id="api", url=target.url, min_version="TLSv1.3")
    findings = await run(probes.check_tls, TlsProbe(check=check, ca_file=certificates.ca_file))
    assert not findings["api.protocol"].passed
    assert "ACCEPTED TLSv1.2" in findings["api.protocol"].evidence


@pytest.mark.parametrize(
    ("cert", "failing", "evidence"),
    [
        ("expired", "api.certificate", "certificate has expired"),
        ("untrusted", "api.certificate", "chain NOT trusted"),
        ("wrong-host", "api.hostname", "127.0.0.1 does NOT match other.example"),
        ("expiring", "api.expiry", "LESS than 30 day(s)"),
    ],
)
async def test_tls_certificate_problems_are_findings_with_evidence(
    probes: ProbeActivities,
    https_target: TargetFactory,
    certificates: Certificates,
    cert: str,
    failing: str,
    evidence: str,
) -> None:
    target = https_target(cert=cert)
    check = TlsCheck(id="api", url=target.url)
    findings = await run(probes.check_tls, TlsProbe(check=check, ca_file=certificates.ca_file))

    failed = {name for name, finding in findings.items() if not finding.passed}
    if cert == "expired":  # an expired certificate has also run out of days
        assert failed == {"api.certificate", "api.expiry"}
    else:
        assert failed == {failing}
    assert evidence in findings[failing].evidence


async def test_tls_to_a_closed_port_fails_every_aspect(
    probes: ProbeActivities, https_target: TargetFactory, certificates: Certificates
) -> None:
    target = https_target()
    url = target.url
    target.shutdown()
    target.server_close()
    findings = await run(probes.check_tls, TlsProbe(check=TlsCheck(id="api", url=url)))
    assert not any(finding.passed for finding in findings.values())
    assert "no TLS handshake" in findings["api.protocol"].evidence


async def test_a_missing_ca_file_is_a_configuration_error(
    probes: ProbeActivities, https_target: TargetFactory
) -> None:
    target = https_target()
    check = TlsCheck(id="api", url=target.url)
    with pytest.raises(ConfigurationError, match=r"ca_file: cannot load /nonexistent/ca\.pem"):
        await run(probes.check_tls, TlsProbe(check=check, ca_file="/nonexistent/ca.pem"))


# --- headers ---------------------------------------------------------------------------


async def test_headers_pass_when_the_page_sends_them(
    probes: ProbeActivities, https_target: TargetFactory, certificates: Certificates
) -> None:
    target = https_target()
    check = HeaderCheck(
        id="home", url=f"{target.url}/", csp_directives=["default-src", "frame-ancestors"]
    )
    findings = await run(
        probes.check_headers, HeaderProbe(check=check, ca_file=certificates.ca_file)
    )
    assert verdicts(findings) == {
        "home.hsts": True,
        "home.content-type-options": True,
        "home.frame-protection": True,
        "home.csp": True,
    }


async def test_headers_fail_when_the_page_leaves_them_out(
    probes: ProbeActivities, https_target: TargetFactory, certificates: Certificates
) -> None:
    target = https_target(headers=False)
    check = HeaderCheck(id="home", url=f"{target.url}/", csp_directives=["default-src"])
    findings = await run(
        probes.check_headers, HeaderProbe(check=check, ca_file=certificates.ca_file)
    )
    assert not any(finding.passed for finding in findings.values())
    assert findings["home.hsts"].evidence == "no Strict-Transport-Security header"
    assert (
        "no X-Frame-Options; no CSP frame-ancestors" in findings["home.frame-protection"].evidence
    )


async def test_hsts_shorter_than_the_minimum_fails(
    probes: ProbeActivities, https_target: TargetFactory, certificates: Certificates
) -> None:
    target = https_target()
    check = HeaderCheck(
        id="home",
        url=f"{target.url}/",
        hsts_min_max_age=timedelta(days=730),
        frame_protection=False,
    )
    findings = await run(
        probes.check_headers, HeaderProbe(check=check, ca_file=certificates.ca_file)
    )
    assert verdicts(findings) == {"home.hsts": False, "home.content-type-options": True}
    assert "max-age >= 63072000 wanted" in findings["home.hsts"].evidence


# --- authentication --------------------------------------------------------------------


def auth_check(url: str, severity: str = "critical") -> AuthCheck:
    return AuthCheck.model_validate(
        {
            "id": "orders",
            "url": f"{url}/orders",
            "token": {"env": "ORDERS_TOKEN"},
            "severity": severity,
        }
    )


Authenticate = Callable[..., Awaitable[dict[str, Finding]]]


@pytest.fixture
def authenticate(
    probes: ProbeActivities,
    https_target: TargetFactory,
    certificates: Certificates,
    monkeypatch: pytest.MonkeyPatch,
) -> Authenticate:
    """Probe /orders of a new target (`behaviour` as for `https_target`), holding `token`."""

    async def probe(token: str, **behaviour: object) -> dict[str, Finding]:
        monkeypatch.setenv("ORDERS_TOKEN", token)
        target = https_target(**behaviour)
        return await run(
            probes.check_authentication,
            AuthProbe(check=auth_check(target.url), ca_file=certificates.ca_file),
        )

    return probe


async def test_authentication_passes_on_a_protected_endpoint(authenticate: Authenticate) -> None:
    findings = await authenticate(VALID_TOKEN)
    assert verdicts(findings) == {
        "orders.no-credentials": True,
        "orders.bad-token": True,
        "orders.valid-token": True,
    }
    assert findings["orders.no-credentials"].evidence.startswith("answered 401")
    assert findings["orders.bad-token"].evidence.startswith("answered 403")
    assert VALID_TOKEN not in str(findings)


async def test_authentication_fails_on_an_open_endpoint(authenticate: Authenticate) -> None:
    findings = await authenticate(VALID_TOKEN, protected=False)
    assert verdicts(findings) == {
        "orders.no-credentials": False,
        "orders.bad-token": False,
        "orders.valid-token": True,
    }
    assert findings["orders.no-credentials"].evidence == "answered 200; 401, 403 wanted"


async def test_authentication_fails_when_the_valid_token_is_refused(
    authenticate: Authenticate,
) -> None:
    findings = await authenticate("revoked-token")
    assert not findings["orders.valid-token"].passed
    assert "answered 403" in findings["orders.valid-token"].evidence


async def test_authentication_without_its_secret_is_a_configuration_error(
    probes: ProbeActivities, https_target: TargetFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORDERS_TOKEN", raising=False)
    target = https_target()
    with pytest.raises(
        ConfigurationError,
        match=r"authentication\.orders\.token: environment variable ORDERS_TOKEN is not set",
    ):
        await run(probes.check_authentication, AuthProbe(check=auth_check(target.url)))


# --- rate limiting ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_limit", "margin", "passed", "evidence", "requests"),
    [
        pytest.param(5, 1, True, "first 429 at request 6", 6, id="limited-in-time"),
        pytest.param(20, 2, False, "no 429 in 8 requests", 8, id="limit-too-loose"),
    ],
)
async def test_rate_limit_is_judged_on_a_burst_of_limit_plus_margin_plus_one(
    probes: ProbeActivities,
    https_target: TargetFactory,
    certificates: Certificates,
    server_limit: int,
    margin: int,
    passed: bool,
    evidence: str,
    requests: int,
) -> None:
    """The plan allows 5 requests; the server starts refusing after `server_limit`."""
    target = https_target(rate_limit=server_limit)
    check = RateLimitCheck(id="login", url=f"{target.url}/login", limit=5, margin=margin)
    findings = await run(
        probes.check_rate_limit, RateLimitProbe(check=check, ca_file=certificates.ca_file)
    )
    assert findings["login.limited"].passed is passed
    assert evidence in findings["login.limited"].evidence
    assert target.login_requests == requests  # the burst stops at the first 429 or at its end


async def test_rate_limit_fails_without_any_limit_and_the_burst_stays_capped(
    probes: ProbeActivities, https_target: TargetFactory, certificates: Certificates
) -> None:
    target = https_target(rate_limit=None)
    check = RateLimitCheck(
        id="login", url=f"{target.url}/login", limit=50, max_duration=timedelta(seconds=1)
    )
    findings = await run(
        probes.check_rate_limit, RateLimitProbe(check=check, ca_file=certificates.ca_file)
    )
    assert not findings["login.limited"].passed
    assert target.login_requests <= 51


async def test_send_request_reports_the_status(
    probes: ProbeActivities, https_target: TargetFactory, certificates: Certificates
) -> None:
    target = https_target()
    response = await ActivityEnvironment().run(
        probes.send_request, ProbeRequest(url=f"{target.url}/orders", ca_file=certificates.ca_file)
    )
    assert (response.status, response.error) == (401, "")
