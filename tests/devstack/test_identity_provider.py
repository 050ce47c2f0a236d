"""The local OpenID Connect provider: discovery and keys, signing in by code with PKCE and by
device code, the claims the approval service reads, refresh, and what it refuses."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from devstack.identity_provider import (
    SOURCES,
    ZITADEL_OIDC_VERSION,
    IdentityProvider,
    cached_binary,
    find_binary,
    start_identity_provider,
)
from devstack.processes import LOOPBACK, BinaryNotFoundError, free_port
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
    clients.write_text(
        json.dumps(
            [
                {
                    "client_id": "cli",
                    "application_type": "native",
                    "redirect_uris": [f"http://{LOOPBACK}/callback"],
                    "grant_types": ["authorization_code"],
                }
            ]
        )
    )
    ended = subprocess.run(
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


def _audience(claims: dict[str, Any]) -> list[str]:
    audience = claims["aud"]
    return [audience] if isinstance(audience, str) else [str(item) for item in audience]
