"""Who is at the keyboard: the person signs in once at the plan's identity provider (the OAuth
device authorization grant, RFC 8628) and the CLI keeps the ID token in a private cache, so
later commands ask nothing until the sign-in runs out.

An ID token comes from the first of these that applies:

    PHASEGATE_ID_TOKEN          an ID token, used as it is (automation)
    PHASEGATE_CREDENTIALS_FILE  JSON with `refresh_token` and/or `id_token` (automation); a
                                refresh writes the new tokens back to the file
    the cache                   `~/.cache/phasegate/sign-in/` (or `$PHASEGATE_SIGN_IN_CACHE`),
                                one file per provider and client: the ID token while it has more
                                than a minute left, else a refresh with the refresh token
    the device flow             the person opens a web page, enters a code and signs in

Tokens are secrets: nothing here prints or logs one, and no error message carries one.

Errors, each a line fit to show the person:

    SignInError
    ├── SignInRefused        the provider refused: sign-in denied, code expired, unknown client
    ├── ProviderUnreachable  the provider's discovery document or an endpoint did not answer
    ├── CredentialsProblem   PHASEGATE_ID_TOKEN or PHASEGATE_CREDENTIALS_FILE cannot be used
    └── CacheUnwritable      the sign-in cache's folder cannot be written
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from approvals.idp import json_object

SCOPE = "openid profile email groups offline_access"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
ID_TOKEN_ENV = "PHASEGATE_ID_TOKEN"
CREDENTIALS_ENV = "PHASEGATE_CREDENTIALS_FILE"
CACHE_ENV = "PHASEGATE_SIGN_IN_CACHE"
# A cached ID token is reused while it has more than this left; proofs are asked for with it.
REUSE_MARGIN_SECONDS = 60.0
# RFC 8628: poll every 5 s unless told otherwise; `slow_down` adds 5 s.
DEFAULT_INTERVAL_SECONDS = 5.0
SLOW_DOWN_SECONDS = 5.0
# Polls that may fail to reach the provider in a row before the sign-in gives up.
POLL_FAILURES = 3
MAX_FILE_BYTES = 64 * 1024
_MAX_RESPONSE_BYTES = 512 * 1024
_HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class SignInError(Exception):
    """A sign-in that did not give an ID token; the message is one line that says why."""


class SignInRefused(SignInError):
    """The provider refused the sign-in, the refresh or the client."""


class ProviderUnreachable(SignInError):
    """The provider's discovery document or one of its endpoints did not answer usefully."""


class CredentialsProblem(SignInError):
    """The automation variables name an ID token or credentials that cannot be used."""


class CacheUnwritable(SignInError):
    """The sign-in cache's folder cannot be created or written."""


@dataclass(frozen=True)
class DeviceCode:
    """What the person needs to approve this device: the page to open and the code to enter."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: float
    interval: float


@dataclass(frozen=True)
class Person:
    """Who an ID token says signed in, read from its claims (it is not verified here)."""

    name: str
    email: str
    groups: tuple[str, ...]
    subject: str


@dataclass(frozen=True)
class SignedIn:
    """A person's sign-in at `issuer` for `client_id`. `source` says where it came from:
    `device` (signed in just now), `cache`, `refresh`, or an automation variable's name."""

    issuer: str
    client_id: str
    id_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: float
    source: str = "device"

    @property
    def person(self) -> Person:
        return person_of(self.id_token)

    def usable(self, now: float, margin: float = REUSE_MARGIN_SECONDS) -> bool:
        return self.expires_at - now > margin


ShowCode = Callable[[DeviceCode], None]


# --- the ID token for a command --------------------------------------------------------


async def id_token(
    issuer: str,
    client_id: str,
    *,
    show: ShowCode,
    fresh: bool = False,
    cache: SignInCache | None = None,
    environ: Mapping[str, str] | None = None,
    http: httpx.AsyncClient | None = None,
    clock: Clock = time.time,
    sleep: Sleep = asyncio.sleep,
) -> SignedIn:
    """The person's sign-in at `issuer`: from the automation variables, else the cache (refreshed
    when it runs out), else a device-flow sign-in, which `show` tells the person how to approve.
    `fresh` skips the cache: the person signs in again and the new sign-in replaces the old."""
    environ = os.environ if environ is None else environ
    cache = cache or SignInCache.default(environ)
    async with _client(http) as client:
        provider = OpenIDProvider(issuer, client_id, client)
        automated = await _automation(provider, environ, clock)
        if automated is not None:
            return automated
        cached = None if fresh else cache.load(issuer, client_id)
        if cached is not None and cached.usable(clock()):
            return replace(cached, source="cache")
        if cached is not None and cached.refresh_token:
            try:
                refreshed = await provider.refresh(cached.refresh_token, clock)
            except SignInRefused:
                refreshed = None  # the refresh token ran out or was revoked: sign in again
            if refreshed is not None:
                cache.save(refreshed)
                return refreshed
        signed_in = await provider.device_sign_in(show, clock, sleep)
        cache.save(signed_in)
        return signed_in


async def sign_in_now(
    issuer: str,
    client_id: str,
    *,
    show: ShowCode,
    cache: SignInCache | None = None,
    environ: Mapping[str, str] | None = None,
    http: httpx.AsyncClient | None = None,
) -> SignedIn:
    """Sign in again now (the device flow, unless an automation variable is set) and cache it,
    replacing any earlier sign-in: `phasegate login`."""
    return await id_token(
        issuer, client_id, show=show, fresh=True, cache=cache, environ=environ, http=http
    )


async def sign_out(
    signed_in: SignedIn, cache: SignInCache, *, http: httpx.AsyncClient | None = None
) -> bool:
    """Forget a cached sign-in and revoke its refresh token at the provider; whether the
    provider confirmed the revocation (the local copy is gone either way)."""
    cache.forget(signed_in.issuer, signed_in.client_id)
    if not signed_in.refresh_token:
        return True
    async with _client(http) as client:
        provider = OpenIDProvider(signed_in.issuer, signed_in.client_id, client)
        try:
            return await provider.revoke(signed_in.refresh_token)
        except SignInError:
            return False


def person_of(token: str) -> Person:
    """The person an ID token names, from its claims; nothing is verified here (the approval
    service verifies the token when it signs a proof)."""
    claims = _claims(token)
    if claims is None:
        return Person(name="(unreadable ID token)", email="", groups=(), subject="")
    groups = claims.get("groups", [])
    listed = [groups] if isinstance(groups, str) else groups if isinstance(groups, list) else []
    texts = {
        name: value.strip()
        for name in ("name", "preferred_username", "email", "sub")
        if isinstance(value := claims.get(name), str)
    }
    return Person(
        name=next((value for value in texts.values() if value), "(unnamed)"),
        email=texts.get("email", ""),
        groups=tuple(sorted({group for group in listed if isinstance(group, str)})),
        subject=texts.get("sub", ""),
    )


# --- the provider, as the CLI (a public client) speaks to it ---------------------------


@dataclass(frozen=True)
class Endpoints:
    device_authorization: str
    token: str
    revocation: str | None


class OpenIDProvider:
    """One identity provider and the CLI's client id there."""

    def __init__(self, issuer: str, client_id: str, http: httpx.AsyncClient) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._http = http
        self._endpoints: Endpoints | None = None

    async def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            self._endpoints = await self._discover()
        return self._endpoints

    async def device_sign_in(self, show: ShowCode, clock: Clock, sleep: Sleep) -> SignedIn:
        """Start the device flow, let `show` tell the person the code, and poll the token
        endpoint (every `interval`, slower when told to) until they approve or it expires."""
        endpoints = await self.endpoints()
        body = await self._post(
            endpoints.device_authorization,
            {"client_id": self.client_id, "scope": SCOPE},
            "device authorization endpoint",
        )
        if body.status_code != 200:
            raise SignInRefused(
                f"{self.issuer} refused to start a sign-in for client {self.client_id!r} "
                f"({_oauth_error(body)}); check PHASEGATE_OIDC_CLIENT_ID"
            )
        device_code = _string(body.document, "device_code")
        code = DeviceCode(
            user_code=_string(body.document, "user_code"),
            verification_uri=_string(body.document, "verification_uri"),
            verification_uri_complete=_string(body.document, "verification_uri_complete"),
            expires_in=_seconds(body.document.get("expires_in"), 600.0),
            interval=_seconds(body.document.get("interval"), DEFAULT_INTERVAL_SECONDS),
        )
        if not device_code or not code.user_code or not code.verification_uri:
            raise ProviderUnreachable(
                f"{self.issuer}: the device authorization answer lacks device_code, user_code "
                "or verification_uri"
            )
        deadline = clock() + code.expires_in
        show(code)
        interval = code.interval
        failures = 0
        while True:
            await sleep(interval)
            if clock() >= deadline:
                raise SignInRefused(
                    f"the code {code.user_code} expired before the sign-in was approved; "
                    "run the command again for a new one"
                )
            form = {
                "grant_type": DEVICE_CODE_GRANT,
                "device_code": device_code,
                "client_id": self.client_id,
            }
            try:
                answer = await self._post(endpoints.token, form, "token endpoint")
            except ProviderUnreachable:
                failures += 1
                if failures >= POLL_FAILURES:
                    raise
                continue
            failures = 0
            if answer.status_code == 200:
                return self._signed_in(answer.document, None, clock, "device")
            error = answer.document.get("error")
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += SLOW_DOWN_SECONDS
                continue
            if error == "access_denied":
                raise SignInRefused(f"the sign-in with code {code.user_code} was denied")
            if error == "expired_token":
                raise SignInRefused(
                    f"the code {code.user_code} expired before the sign-in was approved; "
                    "run the command again for a new one"
                )
            raise SignInRefused(f"{self.issuer} refused the sign-in ({_oauth_error(answer)})")

    async def refresh(self, refresh_token: str, clock: Clock) -> SignedIn:
        """New tokens for `refresh_token`; `SignInRefused` when the provider no longer takes it
        (or gives no ID token for it)."""
        endpoints = await self.endpoints()
        answer = await self._post(
            endpoints.token,
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": self.client_id,
            },
            "token endpoint",
            secrets=(refresh_token,),
        )
        if answer.status_code != 200:
            raise SignInRefused(f"{self.issuer} refused the refresh ({_oauth_error(answer)})")
        if not isinstance(answer.document.get("id_token"), str):
            raise SignInRefused(f"{self.issuer} gave no ID token for the refresh")
        return self._signed_in(answer.document, refresh_token, clock, "refresh")

    async def revoke(self, refresh_token: str) -> bool:
        """Revoke a refresh token (RFC 7009); False when the provider offers no revocation."""
        endpoints = await self.endpoints()
        if endpoints.revocation is None:
            return False
        answer = await self._post(
            endpoints.revocation,
            {
                "token": refresh_token,
                "token_type_hint": "refresh_token",
                "client_id": self.client_id,
            },
            "revocation endpoint",
            secrets=(refresh_token,),
        )
        return answer.status_code == 200

    def _signed_in(
        self, document: Mapping[str, Any], old_refresh: str | None, clock: Clock, source: str
    ) -> SignedIn:
        token = document.get("id_token")
        if not isinstance(token, str) or not token:
            raise ProviderUnreachable(f"{self.issuer}: the token endpoint gave no ID token")
        claims = _claims(token)
        if claims is None:
            raise ProviderUnreachable(f"{self.issuer}: the ID token it gave is not a JWT")
        problem = _claims_problem(claims, self.issuer, self.client_id, clock())
        if problem:
            raise ProviderUnreachable(f"{self.issuer}: the ID token it gave {problem}")
        refresh = document.get("refresh_token")
        return SignedIn(
            issuer=self.issuer,
            client_id=self.client_id,
            id_token=token,
            refresh_token=refresh if isinstance(refresh, str) and refresh else old_refresh,
            expires_at=float(claims["exp"]),
            source=source,
        )

    async def _discover(self) -> Endpoints:
        url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as err:
            raise ProviderUnreachable(
                f"the identity provider {self.issuer} did not answer ({type(err).__name__}); "
                "is it running, and is this the plan's approvals.identity.issuer?"
            ) from None
        document = json_object(response.content[:_MAX_RESPONSE_BYTES])
        if response.status_code != 200 or document is None:
            raise ProviderUnreachable(
                f"{url} answered HTTP {response.status_code} without a discovery document"
            )
        if document.get("issuer") != self.issuer:
            raise ProviderUnreachable(
                f"{url} names issuer {_short(document.get('issuer'))}, not {self.issuer}"
            )
        device = document.get("device_authorization_endpoint")
        token = document.get("token_endpoint")
        revocation = document.get("revocation_endpoint")
        if not _is_http_url(token):
            raise ProviderUnreachable(f"{url}: token_endpoint is missing or not an http(s) URL")
        if not _is_http_url(device):
            raise ProviderUnreachable(
                f"{self.issuer} offers no device sign-in (no device_authorization_endpoint); "
                f"set {ID_TOKEN_ENV} or {CREDENTIALS_ENV} instead"
            )
        return Endpoints(
            device_authorization=str(device),
            token=str(token),
            revocation=str(revocation) if _is_http_url(revocation) else None,
        )

    async def _post(
        self, url: str, form: Mapping[str, str], what: str, secrets: tuple[str, ...] = ()
    ) -> _Answer:
        try:
            response = await self._http.post(url, data=dict(form), headers=_ACCEPT_JSON)
        except httpx.HTTPError as err:
            raise ProviderUnreachable(
                f"{self.issuer}: the {what} did not answer ({type(err).__name__})"
            ) from None
        document = json_object(response.content[:_MAX_RESPONSE_BYTES]) or {}
        return _Answer(response.status_code, document, secrets)


@dataclass(frozen=True)
class _Answer:
    status_code: int
    document: Mapping[str, Any]
    # Values the provider must not see echoed into a message (its error text is shown).
    secrets: tuple[str, ...] = ()


_ACCEPT_JSON = {"Accept": "application/json"}


# --- automation ------------------------------------------------------------------------


async def _automation(
    provider: OpenIDProvider, environ: Mapping[str, str], clock: Clock
) -> SignedIn | None:
    """The sign-in the automation variables give, or None when neither is set."""
    token = environ.get(ID_TOKEN_ENV, "").strip()
    if token:
        return _given_token(token, provider, ID_TOKEN_ENV, clock)
    path = environ.get(CREDENTIALS_ENV, "").strip()
    if path:
        return await _credentials_file(Path(path), provider, clock)
    return None


def _given_token(token: str, provider: OpenIDProvider, where: str, clock: Clock) -> SignedIn:
    """An ID token handed over as is: it must be the provider's, for this client, unexpired."""
    claims = _claims(token)
    if claims is None:
        raise CredentialsProblem(f"{where}: not an ID token (a JWT of three dot-separated parts)")
    problem = _claims_problem(claims, provider.issuer, provider.client_id, clock())
    if problem:
        raise CredentialsProblem(f"{where}: the ID token {problem}")
    return SignedIn(
        issuer=provider.issuer,
        client_id=provider.client_id,
        id_token=token,
        refresh_token=None,
        expires_at=float(claims["exp"]),
        source=where,
    )


async def _credentials_file(path: Path, provider: OpenIDProvider, clock: Clock) -> SignedIn:
    where = f"{CREDENTIALS_ENV}={path}"
    document = _read_json_file(path, where)
    if document is None:
        raise CredentialsProblem(f"{where}: not a JSON object with refresh_token or id_token")
    token, refresh = document.get("id_token"), document.get("refresh_token")
    if not isinstance(token, str | None) or not isinstance(refresh, str | None):
        raise CredentialsProblem(f"{where}: id_token and refresh_token must be strings")
    if not token and not refresh:
        raise CredentialsProblem(f"{where}: has neither refresh_token nor id_token")
    if token and (not refresh or _still_good(token, provider, clock)):
        return _given_token(token, provider, where, clock)
    assert refresh is not None
    try:
        refreshed = await provider.refresh(refresh, clock)
    except SignInRefused as err:
        raise CredentialsProblem(f"{where}: {err}; issue new credentials") from None
    try:
        _write_private_json(
            path,
            {**document, "id_token": refreshed.id_token, "refresh_token": refreshed.refresh_token},
        )
    except OSError as err:
        raise CredentialsProblem(
            f"{where}: cannot write the refreshed tokens back ({err.strerror}); the provider "
            "may no longer take the old refresh token"
        ) from None
    return replace(refreshed, source=CREDENTIALS_ENV)


def _still_good(token: str, provider: OpenIDProvider, clock: Clock) -> bool:
    claims = _claims(token)
    return claims is not None and not _claims_problem(
        claims, provider.issuer, provider.client_id, clock() + REUSE_MARGIN_SECONDS
    )


# --- the cache -------------------------------------------------------------------------


class SignInCache:
    """Sign-ins kept between commands: one JSON file per provider and client id, in a folder
    only its owner may enter (0700), each file only its owner may read (0600)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def default(cls, environ: Mapping[str, str] | None = None) -> SignInCache:
        environ = os.environ if environ is None else environ
        override = environ.get(CACHE_ENV, "").strip()
        if override:
            return cls(Path(override))
        return cls(Path.home() / ".cache" / "phasegate" / "sign-in")

    def path(self, issuer: str, client_id: str) -> Path:
        key = hashlib.sha256(f"{issuer}\n{client_id}".encode()).hexdigest()[:32]
        return self.directory / f"{key}.json"

    def load(self, issuer: str, client_id: str) -> SignedIn | None:
        """The cached sign-in, or None when there is none (or it cannot be read)."""
        found = self._read(self.path(issuer, client_id))
        if found is None or found.issuer != issuer or found.client_id != client_id:
            return None
        return found

    def save(self, signed_in: SignedIn) -> None:
        try:
            self._private_directory()
            _write_private_json(
                self.path(signed_in.issuer, signed_in.client_id),
                {
                    "issuer": signed_in.issuer,
                    "client_id": signed_in.client_id,
                    "id_token": signed_in.id_token,
                    "refresh_token": signed_in.refresh_token,
                    "expires_at": signed_in.expires_at,
                },
            )
        except OSError as err:
            raise CacheUnwritable(
                f"cannot keep the sign-in in {self.directory} ({err.strerror}): set {CACHE_ENV} "
                "to a folder only you can write"
            ) from None

    def forget(self, issuer: str, client_id: str) -> bool:
        try:
            self.path(issuer, client_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def entries(self) -> list[SignedIn]:
        """Every readable sign-in in the cache, by issuer."""
        if not self.directory.is_dir():
            return []
        found = [self._read(path) for path in sorted(self.directory.glob("*.json"))]
        return sorted((entry for entry in found if entry is not None), key=lambda e: e.issuer)

    def _private_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.directory.stat().st_mode & 0o077:
            self.directory.chmod(0o700)

    @staticmethod
    def _read(path: Path) -> SignedIn | None:
        document = _read_json_file(path, str(path), missing_ok=True, quiet=True)
        if document is None:
            return None
        issuer, client_id = document.get("issuer"), document.get("client_id")
        token, refresh = document.get("id_token"), document.get("refresh_token")
        expires_at = document.get("expires_at")
        if (
            not isinstance(issuer, str)
            or not isinstance(client_id, str)
            or not isinstance(token, str)
            or not isinstance(refresh, str | None)
            or not isinstance(expires_at, int | float)
            or isinstance(expires_at, bool)
        ):
            return None
        return SignedIn(issuer, client_id, token, refresh, float(expires_at), source="cache")


def _read_json_file(
    path: Path, where: str, *, missing_ok: bool = False, quiet: bool = False
) -> dict[str, Any] | None:
    """The JSON object in `path`; None for a missing file (when `missing_ok`) or, when `quiet`,
    any file that cannot be read as one; otherwise `CredentialsProblem` saying why."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        if missing_ok or quiet:
            return None
        raise CredentialsProblem(f"{where}: no such file") from None
    except OSError as err:
        if quiet:
            return None
        raise CredentialsProblem(f"{where}: cannot read it ({err.strerror})") from None
    document = json_object(data) if len(data) <= MAX_FILE_BYTES else None
    if document is None and not quiet:
        raise CredentialsProblem(f"{where}: not a JSON object of at most {MAX_FILE_BYTES} bytes")
    return document


def _write_private_json(path: Path, document: Mapping[str, Any]) -> None:
    """Replace `path` with `document`, readable by its owner only, in one rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(document, file)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


# --- small private helpers -------------------------------------------------------------


@contextlib.asynccontextmanager
async def _client(http: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    if http is not None:
        yield http
        return
    async with httpx.AsyncClient(timeout=_HTTP_TIMEOUT, follow_redirects=False) as client:
        yield client


def _claims(token: str) -> dict[str, Any] | None:
    """A JWT's claims, unverified; None when it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 16 * 1024:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
    except (binascii.Error, ValueError):
        return None
    return json_object(raw)


def _claims_problem(claims: Mapping[str, Any], issuer: str, client_id: str, now: float) -> str:
    """What makes these claims unfit for `client_id` at `issuer` at `now`, or ""."""
    if claims.get("iss") != issuer:
        return f"was issued by {_short(claims.get('iss'))}, not by {issuer}"
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or client_id not in audiences:
        return (
            f"was made for another client than {client_id!r} (aud); check PHASEGATE_OIDC_CLIENT_ID"
        )
    expires = claims.get("exp")
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        return "has no exp claim"
    if expires <= now:
        return "has expired; sign in again (`phasegate login`) or issue a fresh one"
    return ""


def _oauth_error(answer: _Answer) -> str:
    """`error: error_description` from an OAuth error answer, one line, no secret in it."""
    parts = [
        _short(answer.document.get(key), quote=False)
        for key in ("error", "error_description")
        if isinstance(answer.document.get(key), str)
    ]
    text = ": ".join(parts) or f"HTTP {answer.status_code}"
    for secret in answer.secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def _string(document: Mapping[str, Any], key: str) -> str:
    value = document.get(key)
    return value if isinstance(value, str) else ""


def _seconds(value: object, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return default


def _is_http_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://"))


def _short(value: object, limit: int = 160, *, quote: bool = True) -> str:
    """A value from outside, fit for a one-line message: on one line and bounded."""
    text = " ".join(str(value).split()) if value is not None else "none"
    text = text if len(text) <= limit else text[:limit] + "..."
    return repr(text) if quote else text
