"""Proofs for the CLI from the real approval service, for ID tokens from the real identity
provider: what the workers' check accepts, and one-line errors that never carry a token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from approvals.proofs import Act, Binding, IdentityRule, check_proof, plan_digest
from devstack.approval_service import LocalApprovalService
from devstack.identity_provider import IdentityProvider
from devstack.processes import free_port
from starters import proof_client
from starters.proof_client import (
    ApprovalServiceUnreachable,
    ProofUnavailable,
    SignInAgain,
    request_proof,
)
from tests.support import identity
from tests.support.plans import make_plan
from workers.settings import Settings

pytestmark = pytest.mark.integration

LAUNCH = "checkout-2.0.0-1a2b3c4d"
RUN = "first-run-of-the-launch"
GATE = "soft-launch.before"


@pytest.fixture(scope="module")
def alice_token(identity_provider: IdentityProvider) -> str:
    return identity.sign_in(identity_provider, "alice").id_token


def rule(provider: IdentityProvider) -> IdentityRule:
    return IdentityRule(issuer=provider.issuer, name_claim="email", groups_claim="groups")


async def refused(
    error: type[Exception],
    url: str,
    token: str,
    *,
    run: str = RUN,
    act: Act = "abort",
    target: str = "",
) -> str:
    """What `request_proof` says, raising `error`, when the service at `url` gives no proof."""
    with pytest.raises(error) as caught:
        await request_proof(url, token, launch=LAUNCH, run=run, act=act, target=target)
    return str(caught.value)


async def test_a_proof_for_an_approval_passes_the_workers_check(
    identity_provider: IdentityProvider, approval_service: LocalApprovalService, alice_token: str
) -> None:
    proof = await request_proof(
        approval_service.url,
        alice_token,
        launch=LAUNCH,
        run=RUN,
        act="approve",
        target=GATE,
        evidence="ev-3",
    )

    now = datetime.now(UTC)
    person = check_proof(
        proof,
        approval_service.authority(),
        rule(identity_provider),
        Binding(launch=LAUNCH, run=RUN, act="approve", target=GATE),
        now,
    )
    assert (person.name, person.groups, person.evidence) == (
        "alice@phasegate.test",
        ("release-managers",),
        "ev-3",
    )
    expires = proof_client.proof_expiry(proof)
    assert expires is not None
    assert now < expires <= now + timedelta(minutes=5, seconds=1)


async def test_a_start_proof_binds_the_plan_digest_and_no_run(
    identity_provider: IdentityProvider, approval_service: LocalApprovalService, alice_token: str
) -> None:
    digest = plan_digest(make_plan())

    proof = await request_proof(
        approval_service.url, alice_token, launch=LAUNCH, run="", act="start", target=digest
    )

    person = check_proof(
        proof,
        approval_service.authority(),
        rule(identity_provider),
        Binding(launch=LAUNCH, run="", act="start", target=digest),
        datetime.now(UTC),
    )
    assert person.name == "alice@phasegate.test"


async def test_a_token_for_another_client_says_sign_in_again_without_the_token(
    identity_provider: IdentityProvider, approval_service: LocalApprovalService
) -> None:
    web_token = identity.sign_in(identity_provider, "bob", client="web").id_token

    message = await refused(SignInAgain, approval_service.url, web_token)

    assert message == (
        "the approval service did not accept your sign-in (ID token: made for another client "
        "(aud)); sign in again: phasegate login"
    )


async def test_a_request_the_service_refuses_names_the_field(
    approval_service: LocalApprovalService, alice_token: str
) -> None:
    message = await refused(
        ProofUnavailable, approval_service.url, alice_token, run="", act="approve", target=GATE
    )

    assert message.startswith("the approval service gave no proof (HTTP 422): ")
    assert "run: " in message
    assert "\n" not in message
    assert alice_token not in message


async def test_a_service_that_does_not_answer_names_its_url_and_setting(alice_token: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    message = await refused(ApprovalServiceUnreachable, url, alice_token)

    assert message == (
        f"no approval service answers at {url} (ConnectError): start it, or set "
        "PHASEGATE_APPROVAL_SERVICE to its URL"
    )


async def test_a_url_that_is_not_an_approval_service_is_named(
    identity_provider: IdentityProvider, alice_token: str
) -> None:
    message = await refused(ApprovalServiceUnreachable, identity_provider.issuer, alice_token)

    assert message == (
        f"{identity_provider.issuer}/v1/proofs answered HTTP 404 and is not a Phasegate "
        "approval service; set PHASEGATE_APPROVAL_SERVICE to the approval service's URL"
    )


async def test_a_proof_through_the_sign_in_needs_the_service_setting(
    identity_provider: IdentityProvider, alice_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHASEGATE_ID_TOKEN", alice_token)

    with pytest.raises(ApprovalServiceUnreachable) as caught:
        await proof_client.proof_for(
            Settings(approval_service=None),
            identity_provider.issuer,
            launch=LAUNCH,
            run=RUN,
            act="abort",
            target="",
            show=lambda code: None,
        )

    assert str(caught.value) == (
        f"approvals of this launch are proven with a sign-in at {identity_provider.issuer}: "
        "set PHASEGATE_APPROVAL_SERVICE to the approval service's URL"
    )


async def test_a_proof_through_the_sign_in_names_the_person(
    identity_provider: IdentityProvider,
    approval_service: LocalApprovalService,
    alice_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PHASEGATE_ID_TOKEN", alice_token)

    granted = await proof_client.proof_for(
        Settings(approval_service=approval_service.url),
        identity_provider.issuer,
        launch=LAUNCH,
        run=RUN,
        act="retry_compensation",
        target="soft-launch.1",
        show=lambda code: None,
    )

    assert granted.person.name == "Alice Archer"
    assert granted.proof not in repr(granted)
    person = check_proof(
        granted.proof,
        approval_service.authority(),
        rule(identity_provider),
        Binding(launch=LAUNCH, run=RUN, act="retry_compensation", target="soft-launch.1"),
        datetime.now(UTC),
    )
    assert person.name == "alice@phasegate.test"
