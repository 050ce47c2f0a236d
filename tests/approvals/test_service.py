"""The approval service against the real identity provider: its keys, proofs for the CLI's ID
tokens (and what it refuses), and the `/decide` page signed into through the provider's own
login form, all checked the way the workflow checks them."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from playwright.async_api import async_playwright, expect

from approvals.keys import load_signing_key
from approvals.proofs import (
    Act,
    Binding,
    IdentityRule,
    Person,
    ProofRefused,
    check_proof,
)
from approvals.service import create_app
from approvals.settings import ApprovalSettings, IdentityProvider
from devstack.approval_service import LocalApprovalService, start_approval_service_for
from devstack.identity_provider import IdentityProvider as LocalIdentityProvider
from tests.support.identity import sign_in, submit_login

pytestmark = pytest.mark.integration

LAUNCH = "checkout-2026-12-01"
RUN = "0b5e7c1e-run-1"
GATE = "soft_launch/step-2"
DIGEST = "9f" * 32


@pytest.fixture(scope="module")
def approval_service(
    identity_provider: LocalIdentityProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalApprovalService]:
    with start_approval_service_for(
        identity_provider, tmp_path_factory.mktemp("approvals")
    ) as service:
        yield service


@pytest.fixture(scope="module")
def alice_token(identity_provider: LocalIdentityProvider) -> str:
    """Alice's ID token for the CLI, as `phasegate login` holds it."""
    return sign_in(identity_provider, "alice").id_token


def rule(provider: LocalIdentityProvider) -> IdentityRule:
    return IdentityRule(issuer=provider.issuer, name_claim="name", groups_claim="groups")


def ask(service: LocalApprovalService, token: str | None, body: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(
        f"{service.url}/v1/proofs", json=body, headers=headers, timeout=10.0, trust_env=False
    )


def check(
    service: LocalApprovalService,
    provider: LocalIdentityProvider,
    proof: str,
    act: Act,
    target: str,
    run: str = RUN,
) -> Person:
    return check_proof(
        proof,
        service.authority(),
        rule(provider),
        Binding(launch=LAUNCH, run=run, act=act, target=target),
        datetime.now(UTC),
    )


def claims_of(proof: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(proof, options={"verify_signature": False})
    return claims


# --- keys -------------------------------------------------------------------------------


def test_the_service_publishes_its_signing_key(approval_service: LocalApprovalService) -> None:
    response = httpx.get(approval_service.jwks_url, timeout=10.0, trust_env=False)
    assert response.status_code == 200
    (key,) = response.json()["keys"]
    on_disk = load_signing_key(approval_service.key_file)
    assert key == on_disk.jwk()
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert key["kid"] == on_disk.kid
    assert approval_service.authority().issuer == approval_service.url


# --- proofs for ID tokens -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "name", "groups"),
    [
        ("alice", "Alice Archer", ("release-managers",)),
        ("bob", "Bob Baker", ("sre",)),
    ],
)
def test_a_person_gets_a_proof_the_workflow_accepts(
    approval_service: LocalApprovalService,
    identity_provider: LocalIdentityProvider,
    username: str,
    name: str,
    groups: tuple[str, ...],
) -> None:
    token = sign_in(identity_provider, username).id_token
    asked_at = time.time()
    response = ask(
        approval_service,
        token,
        {"launch": LAUNCH, "run": RUN, "act": "approve", "target": GATE, "evidence": "ev-3"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["person"] == {"name": name, "groups": list(groups)}
    person = check(approval_service, identity_provider, body["proof"], "approve", GATE)
    assert (person.name, person.groups, person.evidence) == (name, groups, "ev-3")
    expires = datetime.fromisoformat(body["expires_at"]).timestamp()
    assert asked_at + 299 <= expires <= time.time() + 301
    claims = claims_of(body["proof"])
    assert claims["idp"] == identity_provider.issuer
    assert claims["iss"] == approval_service.url
    # Only the configured claims, and nothing of the ID token's own bookkeeping.
    assert claims["claims"] == {
        "sub": claims["claims"]["sub"],
        "email": f"{username}@phasegate.test",
        "name": name,
        "preferred_username": username,
        "groups": list(groups),
    }
    assert claims_of(token)["sub"] == claims["claims"]["sub"]


def test_a_proof_holds_only_for_what_it_was_asked_for(
    approval_service: LocalApprovalService,
    identity_provider: LocalIdentityProvider,
    alice_token: str,
) -> None:
    body = {"launch": LAUNCH, "run": RUN, "act": "approve", "target": GATE}
    proof = ask(approval_service, alice_token, body).json()["proof"]
    with pytest.raises(ProofRefused, match="made for act 'approve', not 'reject'"):
        check(approval_service, identity_provider, proof, "reject", GATE)
    with pytest.raises(ProofRefused, match="made for target"):
        check(approval_service, identity_provider, proof, "approve", "full_launch/step-1")
    second = ask(approval_service, alice_token, body).json()["proof"]
    assert claims_of(second)["jti"] != claims_of(proof)["jti"]


def test_a_start_proof_binds_the_plan_digest_before_there_is_a_run(
    approval_service: LocalApprovalService,
    identity_provider: LocalIdentityProvider,
    alice_token: str,
) -> None:
    response = ask(
        approval_service, alice_token, {"launch": LAUNCH, "act": "start", "target": DIGEST}
    )
    assert response.status_code == 200, response.text
    person = check(
        approval_service, identity_provider, response.json()["proof"], "start", DIGEST, ""
    )
    assert person.name == "Alice Archer"


def test_a_missing_or_garbage_token_is_refused(approval_service: LocalApprovalService) -> None:
    body = {"launch": LAUNCH, "run": RUN, "act": "approve", "target": GATE}
    missing = ask(approval_service, None, body)
    assert (missing.status_code, missing.json()) == (
        401,
        {"error": "Authorization: Bearer <ID token> is missing"},
    )
    assert missing.headers["www-authenticate"].startswith("Bearer ")
    garbage = ask(approval_service, "not-a-token", body)
    assert (garbage.status_code, garbage.json()) == (401, {"error": "ID token: not a JWT"})


def test_a_token_for_another_client_is_refused(
    approval_service: LocalApprovalService, identity_provider: LocalIdentityProvider
) -> None:
    web_token = sign_in(
        identity_provider,
        "alice",
        client="web",
        redirect_uri=approval_service.callback_url,
    ).id_token
    response = ask(approval_service, web_token, {"launch": LAUNCH, "run": RUN, "act": "abort"})
    assert (response.status_code, response.json()) == (
        401,
        {"error": "ID token: made for another client (aud)"},
    )


def test_a_tampered_token_is_refused(
    approval_service: LocalApprovalService, identity_provider: LocalIdentityProvider
) -> None:
    header, _, signature = sign_in(identity_provider, "bob").id_token.split(".")
    carol = sign_in(identity_provider, "carol").id_token.split(".")[1]
    response = ask(
        approval_service,
        f"{header}.{carol}.{signature}",
        {"launch": LAUNCH, "run": RUN, "act": "approve", "target": GATE},
    )
    assert (response.status_code, response.json()) == (
        401,
        {"error": "ID token: the signature does not verify"},
    )


def test_a_token_from_an_untrusted_issuer_is_refused(
    approval_service: LocalApprovalService, identity_provider: LocalIdentityProvider
) -> None:
    now = int(time.time())
    claims = {
        "iss": "https://idp.elsewhere.test",
        "aud": identity_provider.cli_client_id,
        "sub": "mallory",
        "name": "Alice Archer",
        "groups": ["release-managers"],
        "iat": now,
        "exp": now + 600,
    }
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "elsewhere"})
    response = ask(approval_service, token, {"launch": LAUNCH, "run": RUN, "act": "abort"})
    assert (response.status_code, response.json()) == (
        401,
        {"error": "ID token: issued by 'https://idp.elsewhere.test', which is not trusted here"},
    )
    # The trusted issuer's name on a key it never published.
    token = jwt.encode(
        {**claims, "iss": identity_provider.issuer},
        private,
        algorithm="RS256",
        headers={"kid": "x"},
    )
    response = ask(approval_service, token, {"launch": LAUNCH, "run": RUN, "act": "abort"})
    assert response.status_code == 401
    assert response.json()["error"] == (
        f"ID token: signed with key 'x', which {identity_provider.issuer} does not publish"
    )


async def test_an_expired_token_is_refused(
    identity_provider: LocalIdentityProvider, alice_token: str, tmp_path: Path
) -> None:
    """The service's clock moved past the real token's expiry (and its leeway)."""
    expiry = claims_of(alice_token)["exp"]
    settings = ApprovalSettings(
        public_url="http://approvals.test",
        signing_key_file=tmp_path / "signing-key.pem",
        create_signing_key=True,
        identity_providers=[
            IdentityProvider(
                issuer=identity_provider.issuer, cli_client_id=identity_provider.cli_client_id
            )
        ],
    )
    app = create_app(settings, clock=lambda: expiry + 31.0)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://approvals.test") as client,
    ):
        response = await client.post(
            "/v1/proofs",
            headers={"Authorization": f"Bearer {alice_token}"},
            json={"launch": LAUNCH, "run": RUN, "act": "approve", "target": GATE},
        )
    assert (response.status_code, response.json()) == (
        401,
        {"error": "ID token: expired; sign in again"},
    )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"run": RUN, "act": "approve", "target": GATE}, "launch: is required"),
        (
            {"launch": LAUNCH, "run": RUN, "act": "deploy", "target": GATE},
            "act: Input should be 'start', 'approve', 'reject', 'abort', 'pause', 'resume', "
            "'retry_compensation', 'skip_compensation', 'keep_writes' or 'drop_writes'",
        ),
        (
            {"launch": LAUNCH, "act": "approve", "target": GATE},
            "run: is required for approve (the launch's first run id)",
        ),
        (
            {"launch": LAUNCH, "run": RUN, "act": "reject"},
            "target: is required for reject (gate id, compensation id or plan digest)",
        ),
        (
            {"launch": LAUNCH, "run": RUN, "act": "abort", "target": GATE},
            "target: must be empty for abort",
        ),
        (
            {"launch": "x" * 513, "run": RUN, "act": "abort"},
            "launch: must be at most 512 characters",
        ),
        (
            {"launch": LAUNCH, "run": RUN, "act": "approve", "target": "a\nb"},
            "target: must not contain control characters",
        ),
        (
            {"launch": LAUNCH, "run": RUN, "act": "abort", "approver": "alice"},
            "approver: is not a known field",
        ),
        ({"launch": 7, "run": RUN, "act": "abort"}, "launch: must be text"),
        (["launch", LAUNCH], "body: must be a JSON object {launch, run, act, target}"),
    ],
)
def test_a_bad_body_is_refused_naming_the_field(
    approval_service: LocalApprovalService, alice_token: str, body: object, problem: str
) -> None:
    response = ask(approval_service, alice_token, body)
    assert (response.status_code, response.json()) == (422, {"error": problem})


def test_a_body_that_is_not_json_or_too_large_is_refused(
    approval_service: LocalApprovalService, alice_token: str
) -> None:
    headers = {"Authorization": f"Bearer {alice_token}", "Content-Type": "application/json"}
    url = f"{approval_service.url}/v1/proofs"
    not_json = httpx.post(url, content=b"{launch", headers=headers, trust_env=False)
    assert (not_json.status_code, not_json.json()) == (422, {"error": "body: not JSON"})
    huge = httpx.post(url, content=b" " * (16 * 1024 + 1), headers=headers, trust_env=False)
    assert (huge.status_code, huge.json()) == (413, {"error": "body: larger than 16384 bytes"})


# --- the decide page ------------------------------------------------------------------------


class _Page(HTMLParser):
    """The text of a page's elements that have an id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self._open: list[str | None] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("input", "meta", "br"):
            element = {name: value or "" for name, value in attrs}.get("id")
            self._open.append(element)
            if element is not None:
                self.text[element] = ""

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag not in ("input", "meta", "br"):
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element in self._open:
            if element is not None:
                self.text[element] += data


def browser() -> httpx.Client:
    return httpx.Client(follow_redirects=True, timeout=10.0, trust_env=False)


def sign_in_and_decide(
    client: httpx.Client,
    service: LocalApprovalService,
    provider: LocalIdentityProvider,
    username: str,
    query: dict[str, str],
) -> httpx.Response:
    """Open the decide link, sign in at the provider's login form, land back on the service."""
    login = client.get(f"{service.url}/decide", params=query)
    assert login.status_code == 200, login.text
    assert str(login.url).startswith(provider.issuer)
    return submit_login(client, login, username, provider.person(username).password)


def test_the_decide_page_hands_out_the_signal_with_a_proof(
    approval_service: LocalApprovalService, identity_provider: LocalIdentityProvider
) -> None:
    launch = 'checkout<script>&"'
    query = {"launch": launch, "run": RUN, "gate": GATE, "decision": "approve", "evidence": "ev-9"}
    with browser() as client:
        page = sign_in_and_decide(client, approval_service, identity_provider, "carol", query)
    assert page.status_code == 200, page.text
    assert str(page.url).startswith(approval_service.callback_url)
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script>&" not in page.text  # the launch id is shown escaped
    parsed = _Page(page.text)
    assert parsed.text["signal-name"] == "approve"
    assert "comment" in parsed.text
    signal = json.loads(parsed.text["signal-input"])
    assert list(signal) == ["gate", "comment", "proof", "evidence"]
    assert (signal["gate"], signal["comment"], signal["evidence"]) == (GATE, "", "ev-9")
    person = check_proof(
        signal["proof"],
        approval_service.authority(),
        rule(identity_provider),
        Binding(launch=launch, run=RUN, act="approve", target=GATE),
        datetime.now(UTC),
    )
    assert (person.name, person.groups, person.evidence) == (
        "Carol Chen",
        ("release-managers",),
        "ev-9",
    )
    assert "Carol Chen" in page.text


@pytest.mark.parametrize(
    ("act", "title", "reason"),
    [
        ("abort", "Abort launch", "Reason (required;"),
        ("pause", "Pause launch", "Reason (required;"),
        ("resume", "Resume launch", "Reason (optional;"),
    ],
)
def test_the_decide_page_hands_out_an_act_on_the_whole_launch(
    approval_service: LocalApprovalService,
    identity_provider: LocalIdentityProvider,
    act: Act,
    title: str,
    reason: str,
) -> None:
    query = {"launch": LAUNCH, "run": RUN, "decision": act}
    with browser() as client:
        page = sign_in_and_decide(client, approval_service, identity_provider, "bob", query)
        assert page.status_code == 200, page.text
        parsed = _Page(page.text)
        assert parsed.text["signal-name"] == act
        assert f"<h1>{title} {LAUNCH}</h1>" in page.text
        assert reason in page.text
        signal = json.loads(parsed.text["signal-input"])
        assert list(signal) == ["reason", "proof"]
        person = check(approval_service, identity_provider, signal["proof"], act, "")
        assert (person.name, person.groups) == ("Bob Baker", ("sre",))
        # The callback, opened again, signs nothing more.
        again = client.get(str(page.url))
    assert again.status_code == 400
    assert _Page(again.text).text["error"] == (
        "This sign-in is unknown, already used or older than 10 minutes; "
        "open the approval link again."
    )


def test_a_sign_in_finished_in_another_browser_is_refused(
    approval_service: LocalApprovalService, identity_provider: LocalIdentityProvider
) -> None:
    query = {"launch": LAUNCH, "run": RUN, "gate": GATE, "decision": "reject"}
    with httpx.Client(follow_redirects=False, timeout=10.0, trust_env=False) as first:
        response = first.get(f"{approval_service.url}/decide", params=query)
        while not response.headers.get("location", "").startswith(approval_service.callback_url):
            if response.is_redirect:
                response = first.get(str(response.url.join(response.headers["location"])))
                continue
            password = identity_provider.person("alice").password
            response = submit_login(first, response, "alice", password)
        callback = response.headers["location"]
    with browser() as second:
        page = second.get(callback)
    assert page.status_code == 400
    assert _Page(page.text).text["error"] == (
        "This sign-in was started in another browser; open the approval link here."
    )


def test_the_providers_refusal_is_shown(approval_service: LocalApprovalService) -> None:
    query = {"launch": LAUNCH, "run": RUN, "gate": GATE, "decision": "approve"}
    with httpx.Client(follow_redirects=False, timeout=10.0, trust_env=False) as client:
        to_provider = client.get(f"{approval_service.url}/decide", params=query)
        assert to_provider.status_code == 302
        state = httpx.URL(to_provider.headers["location"]).params["state"]
        page = client.get(
            approval_service.callback_url,
            params={"state": state, "error": "access_denied", "error_description": "<no>"},
        )
    assert page.status_code == 400
    assert _Page(page.text).text["error"] == (
        "The identity provider did not sign you in: access_denied <no>."
    )
    assert "<no>" not in page.text


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        (
            {"launch": LAUNCH, "run": RUN, "gate": GATE, "decision": "merge"},
            "decision: Input should be 'approve', 'reject', 'abort', 'pause' or 'resume'",
        ),
        (
            {"launch": LAUNCH, "run": RUN, "gate": GATE, "decision": "pause"},
            "gate: must be empty for pause, which holds or frees the whole launch",
        ),
        (
            {"launch": LAUNCH, "run": RUN, "decision": "resume", "evidence": "ev-3"},
            "evidence: is for approve and reject only",
        ),
        ({"launch": LAUNCH, "run": RUN, "decision": "approve"}, "gate: is required for approve"),
        (
            {"launch": LAUNCH, "run": RUN, "gate": GATE, "decision": "abort"},
            "gate: must be empty for abort, which stops the whole launch",
        ),
        ({"launch": LAUNCH, "gate": GATE, "decision": "reject"}, "run: is required"),
        (
            {"launch": LAUNCH, "run": RUN, "gate": GATE, "decision": "reject", "as": "alice"},
            "as: is not a known field",
        ),
    ],
)
def test_a_bad_decide_link_is_explained(
    approval_service: LocalApprovalService, query: dict[str, str], problem: str
) -> None:
    page = httpx.get(f"{approval_service.url}/decide", params=query, trust_env=False)
    assert page.status_code == 400
    assert _Page(page.text).text["error"] == problem


def test_an_unknown_sign_in_is_explained(approval_service: LocalApprovalService) -> None:
    page = httpx.get(
        approval_service.callback_url, params={"state": "forged", "code": "x"}, trust_env=False
    )
    assert page.status_code == 400
    assert "unknown, already used or older than 10 minutes" in _Page(page.text).text["error"]


CHROMIUM = Path(os.environ.get("PHASEGATE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_the_comment_box_fills_the_signal_input_in_a_browser(
    approval_service: LocalApprovalService, identity_provider: LocalIdentityProvider
) -> None:
    """The page's script runs under its content security policy: typing a comment rewrites
    the input, and the copy button puts exactly that input on the clipboard."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it or set PHASEGATE_CHROMIUM")
    query = httpx.QueryParams(
        {"launch": LAUNCH, "run": RUN, "gate": GATE, "decision": "reject", "evidence": "ev-2"}
    )
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        context = await chromium.new_context()
        await context.grant_permissions(
            ["clipboard-read", "clipboard-write"], origin=approval_service.url
        )
        page = await context.new_page()
        page.set_default_timeout(30_000)
        await page.goto(f"{approval_service.url}/decide?{query}")
        await page.fill("#username", "alice")
        await page.fill("#password", identity_provider.person("alice").password)
        await page.click("button[type=submit]")
        await expect(page.locator("#signal-name")).to_have_text("reject")
        comment = 'metrics look wrong: p99 > 2s, "cart" fails'
        await page.fill("#comment", comment)
        signal = json.loads(await page.locator("#signal-input").inner_text())
        await page.click("#copy")
        await expect(page.locator("#copy-status")).to_have_text("Copied.")
        copied = await page.evaluate("navigator.clipboard.readText()")
        await chromium.close()
    assert list(signal) == ["gate", "comment", "proof", "evidence"]
    assert (signal["gate"], signal["comment"], signal["evidence"]) == (GATE, comment, "ev-2")
    assert json.loads(copied) == signal
    person = check(approval_service, identity_provider, signal["proof"], "reject", GATE)
    assert person.name == "Alice Archer"
