"""Signing in from the CLI against the real identity provider: the device flow approved through
the provider's own pages, the private cache, refresh when the ID token runs out, the automation
variables, signing out, and errors that never carry a token."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack.identity_provider import IdentityProvider
from starters import sign_in
from starters.sign_in import (
    CredentialsProblem,
    DeviceCode,
    SignedIn,
    SignInCache,
    SignInRefused,
)
from tests.support import identity
from tests.support.identity import approve_device_code, verify_id_token

pytestmark = pytest.mark.integration


class Recorder:
    """Every request the CLI's HTTP client sends, by path and form grant."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def paths(self) -> list[str]:
        return [request.url.path for request in self.requests]

    def grants(self) -> list[str]:
        return [
            dict(httpx.QueryParams(request.content.decode())).get("grant_type", "")
            for request in self.requests
            if request.url.path.endswith("/token")
        ]


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[httpx.AsyncClient, Recorder]]:
    recorder = Recorder()
    async with httpx.AsyncClient(
        timeout=10.0, trust_env=False, event_hooks={"request": [recorder]}
    ) as http:
        yield http, recorder


def approving(
    provider: IdentityProvider, username: str, shown: list[DeviceCode]
) -> sign_in.ShowCode:
    """What the person does when the CLI shows the code: sign in on the provider's device page
    and press Allow."""

    def show(code: DeviceCode) -> None:
        shown.append(code)
        approve_device_code(provider, username, code.user_code)

    return show


def never_shown(code: DeviceCode) -> None:
    raise AssertionError(f"a device sign-in was started ({code.verification_uri})")


async def cli_id_token(
    provider: IdentityProvider,
    cache: SignInCache,
    *,
    show: sign_in.ShowCode = never_shown,
    environ: Mapping[str, str] | None = None,
    http: httpx.AsyncClient | None = None,
    clock: sign_in.Clock = time.time,
    sleep: sign_in.Sleep = asyncio.sleep,
) -> SignedIn:
    """The CLI's sign-in at `provider` as its client, with no variables but `environ` set."""
    return await sign_in.id_token(
        provider.issuer,
        provider.cli_client_id,
        show=show,
        cache=cache,
        environ={} if environ is None else environ,
        http=http,
        clock=clock,
        sleep=sleep,
    )


async def device_sign_in(
    provider: IdentityProvider, cache: SignInCache, username: str = "alice"
) -> SignedIn:
    shown: list[DeviceCode] = []
    signed_in = await cli_id_token(provider, cache, show=approving(provider, username, shown))
    assert len(shown) == 1
    return signed_in


async def test_the_device_flow_signs_alice_in_and_caches_it_privately(
    identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    cache = SignInCache(tmp_path / "sign-in")
    shown: list[DeviceCode] = []

    signed_in = await cli_id_token(
        identity_provider, cache, show=approving(identity_provider, "alice", shown)
    )

    [code] = shown
    assert code.verification_uri == f"{identity_provider.issuer}/device"
    assert code.verification_uri_complete.endswith(f"user_code={code.user_code}")
    assert signed_in.source == "device"
    claims = verify_id_token(identity_provider, signed_in.id_token)
    assert (claims["name"], claims["email"], claims["groups"]) == (
        "Alice Archer",
        "alice@phasegate.test",
        ["release-managers"],
    )
    assert signed_in.person == sign_in.Person(
        name="Alice Archer",
        email="alice@phasegate.test",
        groups=("release-managers",),
        subject="alice",
    )
    assert signed_in.refresh_token
    assert signed_in.expires_at == claims["exp"]
    path = cache.path(identity_provider.issuer, identity_provider.cli_client_id)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["id_token"] == signed_in.id_token


async def test_a_cached_sign_in_is_reused_without_a_request(
    identity_provider: IdentityProvider,
    tmp_path: Path,
    recorded: tuple[httpx.AsyncClient, Recorder],
) -> None:
    cache = SignInCache(tmp_path / "sign-in")
    first = await device_sign_in(identity_provider, cache)
    http, recorder = recorded

    again = await cli_id_token(identity_provider, cache, http=http)

    assert again.id_token == first.id_token
    assert again.source == "cache"
    assert recorder.requests == []


async def test_a_sign_in_about_to_expire_is_refreshed_and_the_new_tokens_kept(
    identity_provider: IdentityProvider,
    tmp_path: Path,
    recorded: tuple[httpx.AsyncClient, Recorder],
) -> None:
    cache = SignInCache(tmp_path / "sign-in")
    first = await device_sign_in(identity_provider, cache)
    http, recorder = recorded
    # 30 s before the ID token runs out: less than the minute a cached token must have left.
    shift = first.expires_at - time.time() - 30

    refreshed = await cli_id_token(
        identity_provider, cache, http=http, clock=lambda: time.time() + shift
    )

    assert refreshed.source == "refresh"
    assert refreshed.id_token != first.id_token
    assert verify_id_token(identity_provider, refreshed.id_token)["sub"] == "alice"
    assert recorder.grants() == ["refresh_token"]
    assert not any(path.endswith("/device_authorization") for path in recorder.paths())
    kept = cache.load(identity_provider.issuer, identity_provider.cli_client_id)
    assert kept is not None
    assert (kept.id_token, kept.refresh_token) == (refreshed.id_token, refreshed.refresh_token)
    # The provider rotates refresh tokens: the old one is spent, the cached one works.
    assert refreshed.refresh_token not in (None, first.refresh_token)
    with pytest.raises(identity.SignInRefused):
        identity.refresh(identity_provider, first.refresh_token or "")


async def test_a_refused_refresh_signs_in_again_with_the_device_flow(
    identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    cache = SignInCache(tmp_path / "sign-in")
    first = await device_sign_in(identity_provider, cache)
    identity.refresh(identity_provider, first.refresh_token or "")  # spends the cached one
    shift = first.expires_at - time.time() - 30
    shown: list[DeviceCode] = []

    again = await cli_id_token(
        identity_provider,
        cache,
        show=approving(identity_provider, "carol", shown),
        clock=lambda: time.time() + shift,
    )

    assert len(shown) == 1
    assert again.source == "device"
    assert again.person.name == "Carol Chen"


async def test_an_id_token_in_the_environment_is_used_as_is_and_not_cached(
    identity_provider: IdentityProvider,
    tmp_path: Path,
    recorded: tuple[httpx.AsyncClient, Recorder],
) -> None:
    token = identity.sign_in(identity_provider, "bob").id_token
    cache = SignInCache(tmp_path / "sign-in")
    http, recorder = recorded

    signed_in = await cli_id_token(
        identity_provider, cache, environ={sign_in.ID_TOKEN_ENV: token}, http=http
    )

    assert (signed_in.id_token, signed_in.source) == (token, sign_in.ID_TOKEN_ENV)
    assert signed_in.person.groups == ("sre",)
    assert recorder.requests == []
    assert cache.entries() == []


async def test_an_unusable_id_token_in_the_environment_is_one_line_without_it(
    identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    token = identity.sign_in(identity_provider, "bob").id_token
    cache = SignInCache(tmp_path / "sign-in")

    async def problem(issuer: str, offset: float = 0.0) -> str:
        with pytest.raises(CredentialsProblem) as caught:
            await sign_in.id_token(
                issuer,
                identity_provider.cli_client_id,
                show=never_shown,
                cache=cache,
                environ={sign_in.ID_TOKEN_ENV: token},
                clock=lambda: time.time() + offset,
            )
        message = str(caught.value)
        assert "\n" not in message
        assert token not in message
        return message

    assert await problem("http://127.0.0.1:1") == (
        f"PHASEGATE_ID_TOKEN: the ID token was issued by '{identity_provider.issuer}', "
        "not by http://127.0.0.1:1"
    )
    assert await problem(identity_provider.issuer, offset=2 * 3600) == (
        "PHASEGATE_ID_TOKEN: the ID token has expired; sign in again (`phasegate login`) or "
        "issue a fresh one"
    )


async def test_a_credentials_file_is_refreshed_written_back_and_then_reused(
    identity_provider: IdentityProvider,
    tmp_path: Path,
    recorded: tuple[httpx.AsyncClient, Recorder],
) -> None:
    tokens = identity.sign_in(identity_provider, "carol")
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"refresh_token": tokens.refresh_token}))
    credentials.chmod(0o600)
    http, recorder = recorded
    environ = {sign_in.CREDENTIALS_ENV: str(credentials)}
    cache = SignInCache(tmp_path / "sign-in")

    async def signed_in() -> SignedIn:
        return await cli_id_token(identity_provider, cache, environ=environ, http=http)

    first = await signed_in()
    assert first.source == sign_in.CREDENTIALS_ENV
    assert first.person.name == "Carol Chen"
    written = json.loads(credentials.read_text())
    assert written["id_token"] == first.id_token
    assert written["refresh_token"] not in (None, tokens.refresh_token)
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert recorder.grants() == ["refresh_token"]

    second = await signed_in()
    assert second.id_token == first.id_token
    assert recorder.grants() == ["refresh_token"]
    assert cache.entries() == []


async def test_a_refused_refresh_token_in_a_credentials_file_is_one_line_without_it(
    identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials.json"
    secret = "not-a-refresh-token-" + "x" * 40
    credentials.write_text(json.dumps({"refresh_token": secret}))

    with pytest.raises(CredentialsProblem) as caught:
        await cli_id_token(
            identity_provider,
            SignInCache(tmp_path / "sign-in"),
            environ={sign_in.CREDENTIALS_ENV: str(credentials)},
        )

    message = str(caught.value)
    assert message.startswith(
        f"PHASEGATE_CREDENTIALS_FILE={credentials}: {identity_provider.issuer} refused the refresh"
    )
    assert message.endswith("; issue new credentials")
    assert "\n" not in message
    assert secret not in message


async def test_a_credentials_file_that_is_not_json_is_named(
    identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials.json"
    credentials.write_text("refresh_token=abc")

    with pytest.raises(CredentialsProblem) as caught:
        await cli_id_token(
            identity_provider,
            SignInCache(tmp_path / "sign-in"),
            environ={sign_in.CREDENTIALS_ENV: str(credentials)},
        )

    assert str(caught.value) == (
        f"PHASEGATE_CREDENTIALS_FILE={credentials}: not a JSON object of at most 65536 bytes"
    )


async def test_signing_out_forgets_the_sign_in_and_revokes_its_refresh_token(
    identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    cache = SignInCache(tmp_path / "sign-in")
    signed_in = await device_sign_in(identity_provider, cache, "bob")

    revoked = await sign_in.sign_out(signed_in, cache)

    assert revoked
    assert cache.entries() == []
    with pytest.raises(identity.SignInRefused):
        identity.refresh(identity_provider, signed_in.refresh_token or "")


async def test_a_device_code_not_approved_in_time_is_one_line(
    identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    shown: list[DeviceCode] = []
    # Time passes only while the CLI waits between polls; nobody approves the code meanwhile.
    now = [time.time()]
    waits: list[float] = []

    async def wait(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    with pytest.raises(SignInRefused) as caught:
        await cli_id_token(
            identity_provider,
            SignInCache(tmp_path / "sign-in"),
            show=shown.append,
            clock=lambda: now[0],
            sleep=wait,
        )

    [code] = shown
    assert waits == [code.interval] * round(code.expires_in / code.interval)
    assert str(caught.value) == (
        f"the code {shown[0].user_code} expired before the sign-in was approved; "
        "run the command again for a new one"
    )


async def test_an_unknown_client_is_named_with_its_setting(
    identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    with pytest.raises(SignInRefused) as caught:
        await sign_in.id_token(
            identity_provider.issuer,
            "no-such-client",
            show=never_shown,
            cache=SignInCache(tmp_path / "sign-in"),
            environ={},
        )

    message = str(caught.value)
    assert message.startswith(
        f"{identity_provider.issuer} refused to start a sign-in for client 'no-such-client'"
    )
    assert message.endswith("check PHASEGATE_OIDC_CLIENT_ID")


async def test_a_provider_that_does_not_answer_is_named(tmp_path: Path) -> None:
    issuer = "http://127.0.0.1:9"  # discard: nothing answers

    with pytest.raises(sign_in.ProviderUnreachable) as caught:
        await sign_in.id_token(
            issuer,
            "phasegate-cli",
            show=never_shown,
            cache=SignInCache(tmp_path / "sign-in"),
            environ={},
        )

    assert str(caught.value) == (
        f"the identity provider {issuer} did not answer (ConnectError); is it running, and is "
        "this the plan's approvals.identity.issuer?"
    )


# --- slow_down, which the local provider never sends -------------------------------------


def slowing_provider(issuer: str, id_token: str) -> Starlette:
    """A provider that asks the CLI to slow down twice before it hands out tokens."""
    polls: list[str] = []

    async def discovery(request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": issuer,
                "token_endpoint": f"{issuer}/token",
                "device_authorization_endpoint": f"{issuer}/device_authorization",
            }
        )

    async def device(request: Request) -> Response:
        return JSONResponse(
            {
                "device_code": "device-1",
                "user_code": "ABCD-EFGH",
                "verification_uri": f"{issuer}/device",
                "expires_in": 600,
                "interval": 2,
            }
        )

    async def token(request: Request) -> Response:
        polls.append(dict(httpx.QueryParams((await request.body()).decode())).get("grant_type", ""))
        if len(polls) <= 2:
            return JSONResponse({"error": "slow_down"}, status_code=400)
        return JSONResponse({"id_token": id_token, "access_token": "a", "token_type": "Bearer"})

    return Starlette(
        routes=[
            Route("/.well-known/openid-configuration", discovery),
            Route("/device_authorization", device, methods=["POST"]),
            Route("/token", token, methods=["POST"]),
        ]
    )


async def test_slow_down_adds_five_seconds_to_the_polling_interval(
    identity_provider: IdentityProvider, tmp_path: Path
) -> None:
    # A real ID token (the provider's), so the claims check passes for its issuer.
    token = identity.sign_in(identity_provider, "alice").id_token
    app = slowing_provider(identity_provider.issuer, token)
    waits: list[float] = []

    async def waited(seconds: float) -> None:
        waits.append(seconds)

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=identity_provider.issuer
    ) as http:
        signed_in = await cli_id_token(
            identity_provider,
            SignInCache(tmp_path / "sign-in"),
            show=lambda code: None,
            http=http,
            sleep=waited,
        )

    assert waits == [2.0, 7.0, 12.0]
    assert signed_in.id_token == token
    assert signed_in.refresh_token is None


def test_a_cache_folder_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    cache = SignInCache(blocker / "sign-in")
    signed_in = SignedIn("https://idp.example.com", "phasegate-cli", "a.b.c", "r", 0.0)

    with pytest.raises(sign_in.CacheUnwritable) as caught:
        cache.save(signed_in)

    assert str(caught.value) == (
        f"cannot keep the sign-in in {blocker / 'sign-in'} (Not a directory): set "
        "PHASEGATE_SIGN_IN_CACHE to a folder only you can write"
    )
