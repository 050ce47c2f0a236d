"""The identity providers the approval service trusts, spoken to over OpenID Connect: discovery,
their signing keys (cached, fetched again for a key id not seen yet), ID-token verification and
the authorization-code exchange (with PKCE) behind the `/decide` page.

Errors, each with a one-line message fit to show the person:

    IdentityError
    ├── TokenRejected        the ID token is missing, forged, expired or someone else's
    ├── SignInFailed         the provider refused the sign-in or the code exchange
    └── ProviderUnreachable  discovery, keys or token endpoint did not answer usefully
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import jwt
from pydantic import SecretStr

from approvals.settings import IdentityProvider

# RS256 is what every OpenID provider must offer; ES256 is the common alternative.
ALGORITHMS = ("RS256", "ES256")
LEEWAY_SECONDS = 30
MAX_ID_TOKEN_LENGTH = 16 * 1024
METADATA_TTL_SECONDS = 3600.0
KEYS_TTL_SECONDS = 3600.0
# A token naming an unknown key fetches the keys again, at most this often: forged key ids
# must not turn the service into a load generator against the provider.
KEYS_REFETCH_INTERVAL_SECONDS = 10.0
_MAX_RESPONSE_BYTES = 512 * 1024
_REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "sub"]


class IdentityError(Exception):
    """A sign-in that cannot be used; the message is one line that says why."""


class TokenRejected(IdentityError):
    """An ID token that does not prove who presents it."""


class SignInFailed(IdentityError):
    """The provider refused the sign-in or did not exchange the code for an ID token."""


class ProviderUnreachable(IdentityError):
    """The provider's discovery document, keys or token endpoint did not answer usefully."""


@dataclass(frozen=True)
class ProviderMetadata:
    """What the provider's `/.well-known/openid-configuration` says, as far as used here."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    token_endpoint_auth_methods: tuple[str, ...]


@dataclass(frozen=True)
class VerifiedToken:
    """An ID token whose signature, issuer, audience, times and nonce checked out."""

    issuer: str
    claims: Mapping[str, Any]


@dataclass(frozen=True)
class Pkce:
    """An RFC 7636 code verifier and its S256 challenge."""

    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        return cls(verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode())


class OpenIDProvider:
    """One trusted provider: its settings, and what the service learned from it."""

    def __init__(
        self,
        config: IdentityProvider,
        http: httpx.AsyncClient,
        *,
        web_client_secret: SecretStr | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self.issuer = config.issuer
        self._http = http
        self._web_client_secret = web_client_secret
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_at: float | None = None
        self._lock = asyncio.Lock()

    @property
    def has_web_client(self) -> bool:
        return self.config.web_client_id is not None

    async def metadata(self) -> ProviderMetadata:
        async with self._lock:
            if self._metadata is None or _age(self._metadata_at) > METADATA_TTL_SECONDS:
                self._metadata = await self._discover()
                self._metadata_at = time.monotonic()
            return self._metadata

    async def verify_id_token(
        self, token: str, *, audience: str, nonce: str | None = None
    ) -> VerifiedToken:
        """The token's claims if this provider signed it for `audience` (and, when given,
        with `nonce`) and it has not expired; `TokenRejected` saying why otherwise."""
        if not token or len(token) > MAX_ID_TOKEN_LENGTH:
            raise TokenRejected("ID token: missing or too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("ID token: not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise TokenRejected(
                f"ID token: signed with {_short(algorithm)}; accepted: {', '.join(ALGORITHMS)}"
            )
        kid = header.get("kid")
        key = await self._key(kid if isinstance(kid, str) else None, str(algorithm))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[str(algorithm)],
                audience=audience,
                issuer=self.issuer,
                # Times are checked below, against this service's clock.
                options={
                    "require": _REQUIRED_CLAIMS,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise TokenRejected("ID token: made for another client (aud)") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected(f"ID token: not issued by {self.issuer}") from None
        except jwt.MissingRequiredClaimError as err:
            raise TokenRejected(f"ID token: has no {err.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("ID token: the signature does not verify") from None
        except jwt.PyJWTError as err:
            raise TokenRejected(f"ID token: not valid ({_short(str(err))})") from None
        self._check_times(claims)
        authorized_party = claims.get("azp")
        if authorized_party is not None and authorized_party != audience:
            raise TokenRejected("ID token: made for another client (azp)")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got, nonce):
                raise TokenRejected("ID token: its nonce is not this sign-in's")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise TokenRejected("ID token: its sub claim is not a string")
        return VerifiedToken(self.issuer, claims)

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        expires, issued, not_before = (_time(claims, name) for name in ("exp", "iat", "nbf"))
        if expires is None or issued is None:
            raise TokenRejected("ID token: its exp and iat claims must be numbers")
        if expires <= now - LEEWAY_SECONDS:
            raise TokenRejected("ID token: expired; sign in again")
        if issued > now + LEEWAY_SECONDS:
            raise TokenRejected("ID token: issued in the future; check the clocks")
        if not_before is not None and not_before > now + LEEWAY_SECONDS:
            raise TokenRejected("ID token: not valid yet (nbf); check the clocks")

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, pkce: Pkce
    ) -> str:
        """Where to send a browser to sign in with the web client (authorization code flow)."""
        if self.config.web_client_id is None:
            raise SignInFailed(f"{self.issuer} has no web client configured for sign-in")
        metadata = await self.metadata()
        url = httpx.URL(metadata.authorization_endpoint).copy_merge_params(
            {
                "response_type": "code",
                "client_id": self.config.web_client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(self.config.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": pkce.challenge,
                "code_challenge_method": "S256",
            }
        )
        return str(url)

    async def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str) -> str:
        """The ID token the provider gives for an authorization code (not yet verified)."""
        client_id = self.config.web_client_id
        if client_id is None:
            raise SignInFailed(f"{self.issuer} has no web client configured for sign-in")
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
            "client_id": client_id,
        }
        headers = {"Accept": "application/json"}
        secret = self._web_client_secret
        if secret is not None:
            methods = metadata.token_endpoint_auth_methods
            if "client_secret_basic" not in methods and "client_secret_post" in methods:
                form["client_secret"] = secret.get_secret_value()
            else:  # RFC 6749 2.3.1: both parts form-encoded, then Basic
                pair = f"{quote(client_id, safe='')}:{quote(secret.get_secret_value(), safe='')}"
                headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            response = await self._http.post(metadata.token_endpoint, data=form, headers=headers)
        except httpx.HTTPError as err:
            raise ProviderUnreachable(
                f"{self.issuer}: token endpoint did not answer ({type(err).__name__})"
            ) from None
        body = json_object(response.content[:_MAX_RESPONSE_BYTES])
        if response.status_code != 200:
            error = body.get("error") if body else None
            description = body.get("error_description") if body else None
            reason = ": ".join(_short(part) for part in (error, description) if part)
            raise SignInFailed(
                f"{self.issuer} refused the sign-in code (HTTP {response.status_code}"
                f"{': ' + reason if reason else ''})"
            )
        id_token = body.get("id_token") if body else None
        if not isinstance(id_token, str):
            raise SignInFailed(f"{self.issuer} answered the code exchange without an ID token")
        return id_token

    async def _discover(self) -> ProviderMetadata:
        url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
        document = await self._get_json(url, "discovery document")
        if document.get("issuer") != self.issuer:
            raise ProviderUnreachable(
                f"{url} names issuer {_short(document.get('issuer'))}, not {self.issuer}"
            )
        endpoints: dict[str, str] = {}
        for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(field)
            if not isinstance(value, str) or not value.startswith(("https://", "http://")):
                raise ProviderUnreachable(f"{url}: {field} is missing or not an http(s) URL")
            endpoints[field] = value
        methods = document.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
        return ProviderMetadata(
            issuer=self.issuer,
            authorization_endpoint=endpoints["authorization_endpoint"],
            token_endpoint=endpoints["token_endpoint"],
            jwks_uri=endpoints["jwks_uri"],
            token_endpoint_auth_methods=tuple(
                method for method in methods if isinstance(method, str)
            )
            if isinstance(methods, list)
            else ("client_secret_basic",),
        )

    async def _key(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        metadata = await self.metadata()
        async with self._lock:
            stale = self._keys_at is None or _age(self._keys_at) > KEYS_TTL_SECONDS
            unknown = _pick(self._keys, kid, algorithm) is None
            if stale or (unknown and _age(self._keys_at or 0.0) > KEYS_REFETCH_INTERVAL_SECONDS):
                self._keys = await self._fetch_keys(metadata.jwks_uri)
                self._keys_at = time.monotonic()
            key = _pick(self._keys, kid, algorithm)
        if key is None and kid is None:
            raise TokenRejected(
                f"ID token: names no key (kid), and {self.issuer} has no single {algorithm} key"
            )
        if key is None:
            raise TokenRejected(
                f"ID token: signed with key {_short(kid)}, which {self.issuer} does not publish"
            )
        return key

    async def _fetch_keys(self, url: str) -> dict[str, jwt.PyJWK]:
        document = await self._get_json(url, "signing keys")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ProviderUnreachable(f"{url}: not a JWKS (no keys list)")
        keys: dict[str, jwt.PyJWK] = {}
        for entry in entries[:64]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type this service does not use
            if key.algorithm_name in ALGORITHMS:
                kid = entry.get("kid")
                keys[kid if isinstance(kid, str) else ""] = key
        return keys

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            async with self._http.stream(
                "GET", url, headers={"Accept": "application/json"}
            ) as response:
                if response.status_code != 200:
                    raise ProviderUnreachable(
                        f"{self.issuer}: {what} at {url} answered HTTP {response.status_code}"
                    )
                content = bytearray()
                async for chunk in response.aiter_bytes():
                    content += chunk
                    if len(content) > _MAX_RESPONSE_BYTES:
                        raise ProviderUnreachable(f"{self.issuer}: {what} at {url} is too large")
        except httpx.HTTPError as err:
            raise ProviderUnreachable(
                f"{self.issuer}: {what} at {url} did not answer ({type(err).__name__})"
            ) from None
        document = json_object(bytes(content))
        if document is None:
            raise ProviderUnreachable(f"{self.issuer}: {what} at {url} is not a JSON object")
        return document


class TrustedProviders:
    """The providers in the settings, found by the issuer a token names."""

    def __init__(self, providers: Sequence[OpenIDProvider]) -> None:
        self._by_issuer = {provider.issuer: provider for provider in providers}

    def __iter__(self) -> Iterator[OpenIDProvider]:
        return iter(self._by_issuer.values())

    def get(self, issuer: str) -> OpenIDProvider | None:
        return self._by_issuer.get(issuer)

    def for_token(self, token: str) -> OpenIDProvider:
        """The trusted provider a token says issued it (checked when it is verified)."""
        if not token or len(token) > MAX_ID_TOKEN_LENGTH:
            raise TokenRejected("ID token: missing or too long")
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenRejected("ID token: not a JWT") from None
        issuer = unverified.get("iss")
        provider = self._by_issuer.get(issuer) if isinstance(issuer, str) else None
        if provider is None:
            raise TokenRejected(f"ID token: issued by {_short(issuer)}, which is not trusted here")
        return provider

    def for_web(self, issuer: str | None) -> OpenIDProvider | None:
        """The provider the `/decide` page signs people in at: `issuer`, or the first with a
        web client."""
        if issuer is not None:
            provider = self._by_issuer.get(issuer)
            return provider if provider is not None and provider.has_web_client else None
        return next((p for p in self._by_issuer.values() if p.has_web_client), None)


def _pick(keys: Mapping[str, jwt.PyJWK], kid: str | None, algorithm: str) -> jwt.PyJWK | None:
    if kid is not None:
        key = keys.get(kid)
    else:  # no key id: only unambiguous when one key fits the algorithm
        fitting = [key for key in keys.values() if key.algorithm_name == algorithm]
        key = fitting[0] if len(fitting) == 1 else None
    return key if key is not None and key.algorithm_name == algorithm else None


def _time(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim; a present one that is not a number is refused."""
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TokenRejected(f"ID token: its {name} claim is not a number")
    return float(value)


def json_object(content: bytes) -> dict[str, Any] | None:
    """`content` read as a JSON object; None for anything else (not UTF-8, not JSON, not an
    object)."""
    try:
        value = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _age(since: float) -> float:
    return time.monotonic() - since


def _short(value: object, limit: int = 120) -> str:
    """A value from outside, fit for a one-line message: quoted, on one line, bounded."""
    text = " ".join(str(value).split()) if value is not None else "none"
    return repr(text if len(text) <= limit else text[:limit] + "...")
