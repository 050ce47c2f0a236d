"""The local OpenID Connect provider: discovery and keys, signing in by code with PKCE and by
device code, the claims the approval service reads, refresh, machine clients' JWT access
tokens for Temporal, and what it refuses."""

from __future__ import annotations

import json
import re
import secrets
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from devstack.approval_service import LocalApprovalService
from devstack.identity_provider import (
    SOURCES,
    TEMPORAL_AUDIENCE,
    TEMPORAL_MACHINE_CLIENTS,
    ZITADEL_OIDC_VERSION,
    IdentityProvider,
    MachineClient,
    MachineTokenRefused,
    cached_binary,
    find_binary,
    machine_token,
    start_identity_provider,
)
from devstack.processes import LOOPBACK, BinaryNotFoundError, free_port
from starters.proof_client import SignInAgain, request_proof
from starters.sign_in import ID_TOKEN_ENV, CredentialsProblem, SignInCache, id_token
from tests.support.identity import (
    SignInRefused,
    approve_device_code,
    discovery,
    poll_device_token,
    refresh,
    sign_in,
    start_device_flow,
    verify_id_token,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_pinned_version_matches_versions_env_and_go_mod() -> None:
    pinned = dict(
        line.split("=", 1)
        for line in (REPO / "deploy" / "identity" / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pinned == {"ZITADEL_OIDC_VERSION": ZITADEL_OIDC_VERSION}
    requires = (SOURCES / "go.mod").read_text().split()
    oidc = requires.index("github.com/zitadel/oidc/v3")
    assert requires[oidc + 1] == ZITADEL_OIDC_VERSION


def test_build_script_and_python_name_the_same_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHASEGATE_IDP_CACHE", str(tmp_path))
    printed = subprocess.run(
        ["bash", str(REPO / "deploy" / "identity" / "build.sh"), "--print-path"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert Path(printed) == cached_binary()
    assert Path(printed).parent.parent == tmp_path


def test_a_missing_binary_names_the_setup_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHASEGATE_IDP_BIN", str(tmp_path / "absent"))
    with pytest.raises(BinaryNotFoundError, match=r"deploy/setup\.sh test"):
        start_identity_provider(tmp_path)


def test_a_bad_people_file_stops_it_with_the_field_named(tmp_path: Path) -> None:
    people = tmp_path / "people.json"
    people.write_text(
        json.dumps([{"username": "dave", "password": "x", "name": "Dave", "groups": []}])
    )
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps([_cli_client_entry()]))
    ended = _run_provider(people, clients)
    assert ended.returncode == 1
    assert 'person 1: field "email" is missing or empty' in ended.stderr


def test_discovery_publishes_the_endpoints_and_rs256_keys(
    identity_provider: IdentityProvider,
) -> None:
    document = discovery(identity_provider)
    assert document["issuer"] == identity_provider.issuer
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert "S256" in document["code_challenge_methods_supported"]
    for endpoint in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
        assert document[endpoint].startswith(f"{identity_provider.issuer}/")
    assert document["device_authorization_endpoint"].startswith(identity_provider.issuer)
    keys = httpx.get(document["jwks_uri"], trust_env=False).json()["keys"]
    assert [(key["kty"], key["alg"], key["use"]) for key in keys] == [("RSA", "RS256", "sig")]


def test_alice_signs_in_and_her_id_token_verifies_with_her_claims(
    identity_provider: IdentityProvider,
) -> None:
    nonce = secrets.token_urlsafe(16)
    tokens = sign_in(identity_provider, "alice", nonce=nonce)

    claims = verify_id_token(identity_provider, tokens.id_token)
    assert claims["iss"] == identity_provider.issuer
    assert identity_provider.cli_client_id in _audience(claims)
    assert claims["nonce"] == nonce
    assert claims["sub"] == "alice"
    assert claims["preferred_username"] == "alice"
    assert claims["name"] == "Alice Archer"
    assert claims["email"] == "alice@phasegate.test"
    assert claims["groups"] == ["release-managers"]
    assert tokens.refresh_token

    userinfo = httpx.get(
        discovery(identity_provider)["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {tokens.access_token}"},
        trust_env=False,
    ).json()
    assert {key: userinfo[key] for key in ("sub", "name", "email", "groups")} == {
        "sub": "alice",
        "name": "Alice Archer",
        "email": "alice@phasegate.test",
        "groups": ["release-managers"],
    }


def test_the_web_client_signs_carol_in_with_its_secret(
    identity_provider: IdentityProvider,
) -> None:
    redirect_uri = f"http://{LOOPBACK}:{free_port()}/callback"
    tokens = sign_in(identity_provider, "carol", client="web", redirect_uri=redirect_uri)

    claims = verify_id_token(identity_provider, tokens.id_token, client="web")
    assert identity_provider.web_client_id in _audience(claims)
    assert (claims["sub"], claims["groups"]) == ("carol", ["release-managers"])
    with pytest.raises(jwt.InvalidAudienceError):
        verify_id_token(identity_provider, tokens.id_token, client="cli")


def test_groups_come_only_with_the_groups_scope(identity_provider: IdentityProvider) -> None:
    tokens = sign_in(identity_provider, "bob", scope="openid profile email")

    claims = verify_id_token(identity_provider, tokens.id_token)
    assert claims["email"] == "bob@phasegate.test"
    assert "groups" not in claims
    assert tokens.refresh_token is None  # no offline_access asked for


def test_a_wrong_password_is_refused(identity_provider: IdentityProvider) -> None:
    with pytest.raises(SignInRefused, match="username or password wrong"):
        sign_in(identity_provider, "alice", password="not-alices-password")


def test_an_authorization_request_without_pkce_is_refused(
    identity_provider: IdentityProvider,
) -> None:
    redirect_uri = f"http://{LOOPBACK}:{free_port()}/callback"
    response = httpx.get(
        discovery(identity_provider)["authorization_endpoint"],
        params={
            "response_type": "code",
            "client_id": identity_provider.web_client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid",
            "state": "s",
        },
        trust_env=False,
    )
    assert response.is_redirect
    query = httpx.URL(response.headers["location"]).params
    assert query["error"] == "invalid_request"
    assert "code_challenge is required" in query["error_description"]


def test_a_web_redirect_off_the_registered_pattern_is_refused(
    identity_provider: IdentityProvider,
) -> None:
    with pytest.raises(SignInRefused, match="redirect_uri"):
        sign_in(
            identity_provider,
            "alice",
            client="web",
            redirect_uri=f"http://{LOOPBACK}:{free_port()}/elsewhere",
        )


def test_the_device_flow_yields_tokens_for_bob_that_refresh(
    identity_provider: IdentityProvider,
) -> None:
    device = start_device_flow(identity_provider)
    assert device.verification_uri_complete.startswith(f"{identity_provider.issuer}/device")
    with pytest.raises(SignInRefused, match="authorization_pending"):
        poll_device_token(identity_provider, device.device_code)

    approve_device_code(identity_provider, "bob", device.user_code)
    tokens = poll_device_token(identity_provider, device.device_code)

    claims = verify_id_token(identity_provider, tokens.id_token)
    assert (claims["sub"], claims["name"], claims["groups"]) == ("bob", "Bob Baker", ["sre"])
    assert identity_provider.cli_client_id in _audience(claims)
    assert tokens.refresh_token is not None
    renewed = refresh(identity_provider, tokens.refresh_token)
    assert verify_id_token(identity_provider, renewed.id_token)["groups"] == ["sre"]


def test_a_device_code_refuses_a_wrong_password(identity_provider: IdentityProvider) -> None:
    device = start_device_flow(identity_provider)
    with pytest.raises(SignInRefused, match="username or password wrong"):
        approve_device_code(identity_provider, "bob", device.user_code, password="guess")
    with pytest.raises(SignInRefused, match="authorization_pending"):
        poll_device_token(identity_provider, device.device_code)


def test_refresh_gives_new_tokens_and_retires_the_old_refresh_token(
    identity_provider: IdentityProvider,
) -> None:
    first = sign_in(identity_provider, "alice")
    assert first.refresh_token is not None

    second = refresh(identity_provider, first.refresh_token)
    assert second.access_token != first.access_token
    assert second.refresh_token not in (None, first.refresh_token)
    claims = verify_id_token(identity_provider, second.id_token)
    assert (claims["sub"], claims["groups"]) == ("alice", ["release-managers"])
    with pytest.raises(SignInRefused, match="invalid_grant"):
        refresh(identity_provider, first.refresh_token)


# The permission strings Temporal's default JWT claim mapper reads: "<namespace>:<role>", the
# namespace `temporal-system` meaning the whole cluster.
TEMPORAL_PERMISSION = re.compile(r"[^:]+:(read|write|worker|admin)")
# Claims that make an ID token a person's sign-in; a machine token has none of them.
PERSON_CLAIMS = ("nonce", "auth_time", "azp", "name", "email", "preferred_username", "groups")


def test_temporal_machine_clients_hold_permissions_temporal_reads() -> None:
    assert [client.client_id for client in TEMPORAL_MACHINE_CLIENTS] == [
        "phasegate-worker",
        "phasegate-admin",
        "phasegate-reader",
        "phasegate-other",
        "phasegate-short",
    ]
    for client in TEMPORAL_MACHINE_CLIENTS:
        assert all(TEMPORAL_PERMISSION.fullmatch(p) for p in client.permissions), client


@pytest.mark.parametrize("client", TEMPORAL_MACHINE_CLIENTS, ids=lambda client: client.client_id)
def test_a_machine_client_gets_a_jwt_that_verifies_with_its_permissions_and_lifetime(
    identity_provider: IdentityProvider, client: MachineClient
) -> None:
    before = int(time.time())
    token = machine_token(identity_provider, client.client_id)

    header = jwt.get_unverified_header(token)
    keys = httpx.get(identity_provider.jwks_uri, trust_env=False).json()["keys"]
    assert (header["alg"], header["kid"]) in [(key["alg"], key["kid"]) for key in keys]
    claims = _verify_machine_token(identity_provider, token)
    assert claims["iss"] == identity_provider.issuer
    assert claims["sub"] == client.client_id
    assert _audience(claims) == [TEMPORAL_AUDIENCE]
    assert claims["permissions"] == list(client.permissions)
    assert before - 1 <= claims["iat"] <= int(time.time())
    assert client.token_lifetime_s - 1 <= claims["exp"] - claims["iat"] <= client.token_lifetime_s
    assert not set(PERSON_CLAIMS) & set(claims)


def test_a_machine_client_may_send_its_secret_in_the_form(
    identity_provider: IdentityProvider,
) -> None:
    worker = identity_provider.machine_client("phasegate-worker")
    answer = httpx.post(
        identity_provider.token_endpoint,
        data={
            "grant_type": "client_credentials",
            "client_id": worker.client_id,
            "client_secret": worker.secret,
        },
        trust_env=False,
    ).json()

    assert answer["token_type"] == "Bearer"
    assert 3590 <= answer["expires_in"] <= 3600
    claims = _verify_machine_token(identity_provider, answer["access_token"])
    assert (claims["sub"], claims["permissions"]) == ("phasegate-worker", ["default:write"])


def test_a_short_lived_machine_token_expires(identity_provider: IdentityProvider) -> None:
    token = machine_token(identity_provider, "phasegate-short")
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    while time.time() < expires:  # the token says when it runs out; wait for that instant
        time.sleep(expires - time.time())

    with pytest.raises(jwt.ExpiredSignatureError):
        _verify_machine_token(identity_provider, token)


def test_the_files_holding_passwords_and_secrets_are_private(
    identity_provider: IdentityProvider,
) -> None:
    workdir = identity_provider.log_path.parent
    for name in ("people.json", "clients.json"):
        assert stat.S_IMODE((workdir / name).stat().st_mode) == 0o600, name
    assert "phasegate-worker-test-secret" in (workdir / "clients.json").read_text()


def test_a_wrong_machine_secret_is_refused(identity_provider: IdentityProvider) -> None:
    with pytest.raises(MachineTokenRefused) as refused:
        machine_token(identity_provider, "phasegate-worker", secret="not-the-worker-secret")

    assert str(refused.value) == (
        f"{identity_provider.issuer} gave 'phasegate-worker' no access token by client "
        "credentials: invalid_client (wrong client id or secret)"
    )
    assert "not-the-worker-secret" not in str(refused.value)


def test_an_unknown_machine_client_names_the_ones_there_are(
    identity_provider: IdentityProvider,
) -> None:
    with pytest.raises(KeyError, match="machine clients: phasegate-worker, phasegate-admin"):
        machine_token(identity_provider, "phasegate-nobody")


def test_the_web_client_cannot_use_client_credentials_even_with_its_secret(
    identity_provider: IdentityProvider,
) -> None:
    with pytest.raises(MachineTokenRefused, match=r"unauthorized_client \(not a machine client"):
        machine_token(
            identity_provider,
            identity_provider.web_client_id,
            secret=identity_provider.web_client_secret,
        )


def test_the_cli_client_cannot_use_client_credentials(
    identity_provider: IdentityProvider,
) -> None:
    response = httpx.post(
        identity_provider.token_endpoint,
        data={"grant_type": "client_credentials", "client_id": identity_provider.cli_client_id},
        trust_env=False,
    )

    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
    assert "access_token" not in response.json()


def test_a_machine_token_gets_nothing_from_userinfo(identity_provider: IdentityProvider) -> None:
    token = machine_token(identity_provider, "phasegate-admin")
    response = httpx.get(
        discovery(identity_provider)["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {token}"},
        trust_env=False,
    )

    assert (response.status_code, response.json()) == (403, {})


async def test_the_approval_service_refuses_a_machine_token_as_a_sign_in(
    identity_provider: IdentityProvider, approval_service: LocalApprovalService
) -> None:
    token = machine_token(identity_provider, "phasegate-admin")

    with pytest.raises(SignInAgain) as refused:
        await request_proof(
            approval_service.url,
            token,
            launch="checkout-2.0.0-1a2b3c4d",
            run="first-run-of-the-launch",
            act="abort",
            target="",
        )

    assert "ID token: made for another client (aud)" in str(refused.value)


async def test_the_cli_refuses_a_machine_token_as_a_sign_in(
    identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    token = machine_token(identity_provider, "phasegate-worker")

    with pytest.raises(CredentialsProblem, match=r"made for another client than 'phasegate-cli'"):
        await id_token(
            identity_provider.issuer,
            identity_provider.cli_client_id,
            show=lambda code: pytest.fail(f"asked a person to sign in: {code}"),
            cache=SignInCache(tmp_path / "sign-in"),
            environ={ID_TOKEN_ENV: token},
        )


@pytest.mark.parametrize(
    ("machine", "said"),
    [
        (
            {"grant_types": ["client_credentials", "authorization_code"]},
            '"client_credentials" signs in no person, so a machine client has no other grant',
        ),
        (
            {"audience": ["cli"]},
            '"audience": "cli" is a client people sign in to',
        ),
        ({"permissions": None}, 'field "permissions" is missing'),
        ({"token_lifetime_s": -5}, '"token_lifetime_s": -5 is not between 1 and 86400 seconds'),
    ],
)
def test_a_bad_machine_client_stops_it_with_the_field_named(
    tmp_path: Path, machine: dict[str, Any], said: str
) -> None:
    entry = {
        "client_id": "robot",
        "client_secret": "robot-secret",
        "application_type": "web",
        "grant_types": ["client_credentials"],
        "permissions": ["default:write"],
        **machine,
    }
    if entry["permissions"] is None:
        del entry["permissions"]
    people = tmp_path / "people.json"
    people.write_text(
        json.dumps(
            [{"username": "dave", "password": "x", "name": "D", "email": "d@x", "groups": []}]
        )
    )
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps([_cli_client_entry(), entry]))

    ended = _run_provider(people, clients)

    assert ended.returncode == 1
    assert "client 2 (robot)" in ended.stderr
    assert said in ended.stderr


def _cli_client_entry() -> dict[str, Any]:
    return {
        "client_id": "cli",
        "application_type": "native",
        "redirect_uris": [f"http://{LOOPBACK}/callback"],
        "grant_types": ["authorization_code"],
    }


def _run_provider(people: Path, clients: Path) -> subprocess.CompletedProcess[str]:
    """The provider run on these files, expected to stop at once."""
    return subprocess.run(
        [
            str(find_binary()),
            "-port",
            str(free_port()),
            "-users",
            str(people),
            "-clients",
            str(clients),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _verify_machine_token(provider: IdentityProvider, token: str) -> dict[str, Any]:
    """The token's claims once its RS256 signature checks out against the published keys, for
    Temporal's audience, from this issuer, unexpired."""
    keys = jwt.PyJWKClient(provider.jwks_uri, cache_keys=False)
    claims: dict[str, Any] = jwt.decode(
        token,
        keys.get_signing_key_from_jwt(token).key,
        algorithms=["RS256"],
        audience=TEMPORAL_AUDIENCE,
        issuer=provider.issuer,
        options={"require": ["iss", "sub", "aud", "exp", "iat"]},
    )
    return claims


def _audience(claims: dict[str, Any]) -> list[str]:
    audience = claims["aud"]
    return [audience] if isinstance(audience, str) else [str(item) for item in audience]
