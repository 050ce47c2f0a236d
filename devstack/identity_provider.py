"""The OpenID Connect provider of the local stack: `phasegate-idp`, built from the Go sources in
devstack/identity_provider by `deploy/identity/build.sh`, started on a free loopback port with
people and clients written to JSON files.

It offers one public native client for the CLI (authorization code with PKCE on any loopback
port at `/callback`, the device authorization grant, refresh tokens) and one confidential web
client for the approval service (authorization code with PKCE, refresh tokens). ID tokens are
RS256, signed with the key published at the discovery document's `jwks_uri`. The `profile`
scope gives `name` and `preferred_username`, `email` gives `email`, `groups` gives `groups`,
in the ID token and from userinfo alike.

Machine clients (`MachineClient`) sign in no person: they take the client credentials grant
only, and their access tokens are RS256 JWTs signed with that same key, with `iss`, `sub` (the
client id), `aud`, `iat`, `nbf`, `exp`, `jti`, `client_id` and `permissions`, the claim
Temporal's default JWT claim mapper reads (`"<namespace>:<read|write|worker|admin>"`,
`temporal-system` for the cluster). Such a token has no `nonce`, `auth_time`, `email` or
`groups`, and its audience never names the CLI's or the web client, so it cannot pass for a
person's ID token. `machine_token` asks for one.

`sign_in_with_password` signs a test person in through the provider's own login form, for the
demo's headless approvals.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from devstack.processes import (
    LOOPBACK,
    READY_TIMEOUT_S,
    BinaryNotFoundError,
    ManagedProcess,
    free_port,
    wait_until_ready,
)

# One source for the version: deploy/identity/versions.env and the Go module's go.mod say the
# same (tests/devstack/test_identity_provider.py checks).
ZITADEL_OIDC_VERSION = "v3.52.0"
SOURCES = Path(__file__).with_name("identity_provider")
BINARY_NAME = "phasegate-idp"
_HTTP_TIMEOUT_S = 10.0
IDP_NOT_FOUND = (
    "the identity provider is not built: run `deploy/setup.sh test` (deploy/identity/build.sh "
    "builds it from Go modules into {path}) or set PHASEGATE_IDP_BIN"
)

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CLIENT_CREDENTIALS_GRANT = "client_credentials"
# The `aud` of the machine tokens meant for the Temporal server (its `authorization.audience`).
TEMPORAL_AUDIENCE = "temporal"
SIGN_IN_SCOPE = "openid profile email groups"
# The CLI's redirect: the provider takes it on any loopback port (RFC 8252, section 7.3).
CLI_REDIRECT_URI = f"http://{LOOPBACK}/callback"
# The web client's default redirect: `/callback` on any port of loopback, so a service started
# after the provider, on a free port, can sign people in.
ANY_LOOPBACK_CALLBACK = f"http://{LOOPBACK}:*/callback"


@dataclass(frozen=True)
class Person:
    """Someone who can sign in, with the claims the provider gives about them."""

    username: str
    password: str
    name: str
    email: str
    groups: tuple[str, ...]


# Two release managers, so a quorum of two can be met, and one person who is not one.
TEST_PEOPLE = (
    Person(
        "alice",
        "alice-test-password",
        "Alice Archer",
        "alice@phasegate.test",
        ("release-managers",),
    ),
    Person("bob", "bob-test-password", "Bob Baker", "bob@phasegate.test", ("sre",)),
    Person(
        "carol", "carol-test-password", "Carol Chen", "carol@phasegate.test", ("release-managers",)
    ),
)


@dataclass(frozen=True)
class MachineClient:
    """A program that signs in as itself with `secret` (the client credentials grant) and gets
    JWT access tokens for `audience`, carrying `permissions`, valid for `token_lifetime_s`."""

    client_id: str
    secret: str = field(repr=False)
    permissions: tuple[str, ...]
    token_lifetime_s: int = 3600
    audience: tuple[str, ...] = (TEMPORAL_AUDIENCE,)


# The Temporal cluster's callers, by what the server's default authorizer lets them do on the
# namespace `default`: a worker and the CLI write, an operator administers the cluster, a
# reader reads, `phasegate-other` has rights elsewhere only, `phasegate-short`'s tokens expire
# within two seconds. Test secrets, like the web client's.
TEMPORAL_MACHINE_CLIENTS = (
    MachineClient("phasegate-worker", "phasegate-worker-test-secret", ("default:write",)),
    MachineClient(
        "phasegate-admin",
        "phasegate-admin-test-secret",
        ("temporal-system:admin", "default:admin"),
    ),
    MachineClient("phasegate-reader", "phasegate-reader-test-secret", ("default:read",)),
    MachineClient("phasegate-other", "phasegate-other-test-secret", ("other:write",)),
    MachineClient(
        "phasegate-short", "phasegate-short-test-secret", ("default:write",), token_lifetime_s=2
    ),
)


class MachineTokenRefused(RuntimeError):
    """The provider gave a machine client no access token; the message says why."""


class IdentityProvider(ManagedProcess):
    """A running provider: `issuer` (also `url`), its clients and the people who can sign in.

    Stop it with `stop()` or by leaving its `with` block.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        workdir: Path,
        port: int,
        people: Sequence[Person],
        cli_client_id: str,
        web_client_id: str,
        web_client_secret: str,
        machine_clients: Sequence[MachineClient] = (),
    ) -> None:
        self.issuer = f"http://{LOOPBACK}:{port}"
        self.people = tuple(people)
        self.cli_client_id = cli_client_id
        self.web_client_id = web_client_id
        self.web_client_secret = web_client_secret
        self.machine_clients = tuple(machine_clients)
        super().__init__("identity-provider", argv, workdir=workdir, port=port, url=self.issuer)

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @cached_property
    def discovery(self) -> dict[str, Any]:
        """The provider's discovery document, read once."""
        response = httpx.get(self.discovery_url, timeout=_HTTP_TIMEOUT_S, trust_env=False)
        document: dict[str, Any] = response.raise_for_status().json()
        return document

    @property
    def jwks_uri(self) -> str:
        """Where the provider publishes the keys its ID tokens and machine tokens verify with."""
        return str(self.discovery["jwks_uri"])

    @property
    def token_endpoint(self) -> str:
        return str(self.discovery["token_endpoint"])

    def machine_client(self, client_id: str) -> MachineClient:
        """The machine client `client_id`; KeyError names the machine clients there are."""
        for client in self.machine_clients:
            if client.client_id == client_id:
                return client
        known = ", ".join(client.client_id for client in self.machine_clients) or "none"
        raise KeyError(
            f"no machine client {client_id!r} at {self.issuer} (machine clients: {known})"
        )

    def person(self, username: str) -> Person:
        """The person signing in as `username`; KeyError names the people there are."""
        for person in self.people:
            if person.username == username:
                return person
        known = ", ".join(person.username for person in self.people)
        raise KeyError(f"no person {username!r} at {self.issuer} (people: {known})")


def identity_cache() -> Path:
    return Path(
        os.environ.get("PHASEGATE_IDP_CACHE", Path.home() / ".cache" / "phasegate" / "identity")
    )


def source_hash(sources: Path = SOURCES) -> str:
    """The 12 hex digits naming a build of `sources`, as deploy/identity/build.sh computes
    them: the sha256 of `sha256sum go.mod go.sum *.go`, names in C order."""
    files = sorted(
        [sources / "go.mod", sources / "go.sum"]
        + [path for path in sources.glob("*.go") if not path.name.startswith(".")],
        key=lambda path: path.name,
    )
    listing = "".join(
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n" for path in files
    )
    return hashlib.sha256(listing.encode()).hexdigest()[:12]


def cached_binary() -> Path:
    """Where deploy/identity/build.sh puts the binary of the current sources."""
    build = f"zitadel-oidc-{ZITADEL_OIDC_VERSION}-{source_hash()}"
    return identity_cache() / build / BINARY_NAME


def find_binary() -> Path:
    """PHASEGATE_IDP_BIN if set, else the cached build of the current sources."""
    override = os.environ.get("PHASEGATE_IDP_BIN")
    path = Path(override) if override else cached_binary()
    if not os.access(path, os.X_OK):
        where = f"PHASEGATE_IDP_BIN={override}" if override else str(path)
        raise BinaryNotFoundError(IDP_NOT_FOUND.format(path=path.parent) + f" (missing: {where})")
    return path


def start_identity_provider(
    workdir: Path,
    *,
    people: Sequence[Person] = TEST_PEOPLE,
    cli_client_id: str = "phasegate-cli",
    web_client_id: str = "phasegate-approvals",
    web_client_secret: str = "phasegate-approvals-test-secret",
    web_redirect_uris: Sequence[str] = (),
    web_redirect_uri_globs: Sequence[str] = (ANY_LOOPBACK_CALLBACK,),
    machine_clients: Sequence[MachineClient] = (),
    port: int | None = None,
) -> IdentityProvider:
    """The provider on `port` of loopback (default: a free one), ready once its discovery
    document names its issuer.

    `web_redirect_uris` are exact redirects for the web client, `web_redirect_uri_globs`
    patterns (`*` matches within one path segment, e.g. any port). `machine_clients` get
    access tokens by the client credentials grant (e.g. `TEMPORAL_MACHINE_CLIENTS`).
    """
    binary = find_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    users_file = workdir / "people.json"
    clients_file = workdir / "clients.json"
    # Passwords and client secrets: readable by this user only.
    _write_private(users_file, json.dumps([_person_entry(person) for person in people], indent=2))
    _write_private(
        clients_file,
        json.dumps(
            [
                {
                    "client_id": cli_client_id,
                    "application_type": "native",
                    "redirect_uris": [CLI_REDIRECT_URI],
                    "grant_types": ["authorization_code", "refresh_token", DEVICE_CODE_GRANT],
                },
                {
                    "client_id": web_client_id,
                    "client_secret": web_client_secret,
                    "application_type": "web",
                    "redirect_uris": list(web_redirect_uris),
                    "redirect_uri_globs": list(web_redirect_uri_globs),
                    "grant_types": ["authorization_code", "refresh_token"],
                },
                *(_machine_client_entry(client) for client in machine_clients),
            ],
            indent=2,
        ),
    )
    port = port or free_port()
    provider = IdentityProvider(
        [str(binary), "-port", str(port), "-users", str(users_file), "-clients", str(clients_file)],
        workdir=workdir,
        port=port,
        people=people,
        cli_client_id=cli_client_id,
        web_client_id=web_client_id,
        web_client_secret=web_client_secret,
        machine_clients=machine_clients,
    )
    wait_until_ready(provider, lambda: _serves_issuer(provider), READY_TIMEOUT_S)
    return provider


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)


def _person_entry(person: Person) -> dict[str, object]:
    return {
        "username": person.username,
        "password": person.password,
        "name": person.name,
        "email": person.email,
        "groups": list(person.groups),
    }


def _machine_client_entry(client: MachineClient) -> dict[str, object]:
    return {
        "client_id": client.client_id,
        "client_secret": client.secret,
        "application_type": "web",
        "grant_types": [CLIENT_CREDENTIALS_GRANT],
        "permissions": list(client.permissions),
        "audience": list(client.audience),
        "token_lifetime_s": client.token_lifetime_s,
    }


def machine_token(provider: IdentityProvider, client_id: str, *, secret: str | None = None) -> str:
    """A fresh JWT access token for the machine client `client_id`, by the client credentials
    grant with its secret (or `secret`) in HTTP Basic authentication.

    KeyError for a client id that is no machine client of `provider` (unless `secret` is
    given); `MachineTokenRefused`, saying why, when the provider refuses or does not answer.
    """
    if secret is None:
        secret = provider.machine_client(client_id).secret
    asked = f"{provider.issuer} gave {client_id!r} no access token by client credentials"
    try:
        response = httpx.post(
            provider.token_endpoint,
            data={"grant_type": CLIENT_CREDENTIALS_GRANT},
            auth=httpx.BasicAuth(quote(client_id, safe=""), quote(secret, safe="")),
            timeout=_HTTP_TIMEOUT_S,
            trust_env=False,
        )
        body: object = response.json()
    except (httpx.HTTPError, ValueError) as err:
        raise MachineTokenRefused(f"{asked}: {type(err).__name__}: {err}") from None
    if not isinstance(body, dict):
        raise MachineTokenRefused(f"{asked}: HTTP {response.status_code}, not a JSON object")
    token = body.get("access_token")
    if response.status_code != 200 or not isinstance(token, str) or not token:
        raise MachineTokenRefused(f"{asked}: {_refusal(response.status_code, body)}")
    return token


# What an OAuth error from the token endpoint means for a machine client.
_REFUSAL_HINTS = {
    "invalid_client": "wrong client id or secret",
    "unauthorized_client": "not a machine client; only machine clients use client credentials",
}


def _refusal(status_code: int, body: dict[str, Any]) -> str:
    error = body.get("error")
    if not isinstance(error, str):
        return f"HTTP {status_code} without an access token"
    description = body.get("error_description")
    said = f"{error}: {description}" if isinstance(description, str) and description else error
    hint = _REFUSAL_HINTS.get(error)
    return f"{said} ({hint})" if hint else said


def _serves_issuer(provider: IdentityProvider) -> bool:
    """Its discovery document answers and names this issuer (not another server's)."""
    try:
        response = httpx.get(provider.discovery_url, timeout=1.0, trust_env=False)
        issuer: object = response.json().get("issuer")
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
    return response.status_code == 200 and issuer == provider.issuer


class PasswordSignInFailed(RuntimeError):
    """A headless sign-in that gave no ID token; the message says where it stopped."""


def sign_in_with_password(
    provider: IdentityProvider, username: str, *, scope: str = SIGN_IN_SCOPE
) -> str:
    """The ID token `username` gets by signing in with their password through the provider's
    login form, for the CLI's client: the authorization code flow with PKCE, redirected to a
    loopback port nothing listens on (the redirect carrying the code is read, not followed).

    KeyError for a username the provider does not know; `PasswordSignInFailed` otherwise.
    """
    person = provider.person(username)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    state = secrets.token_urlsafe(16)
    redirect_uri = f"http://{LOOPBACK}:{free_port()}/callback"
    try:
        with httpx.Client(follow_redirects=False, timeout=10.0, trust_env=False) as browser:
            endpoints = browser.get(provider.discovery_url).raise_for_status().json()
            response = browser.get(
                endpoints["authorization_endpoint"],
                params={
                    "response_type": "code",
                    "client_id": provider.cli_client_id,
                    "redirect_uri": redirect_uri,
                    "scope": scope,
                    "state": state,
                    "code_challenge": challenge.rstrip(b"=").decode(),
                    "code_challenge_method": "S256",
                },
            )
            page = follow_within(browser, response, provider.issuer)
            action, fields = _LoginPage.read(page).login_form(page)
            response = browser.post(
                str(page.url.join(action)),
                data={**fields, "username": username, "password": person.password},
            )
            response = follow_within(browser, response, provider.issuer)
            code = _code_from(
                response, redirect_uri, state, f"{provider.issuer} did not sign {username} in"
            )
            tokens = browser.post(
                endpoints["token_endpoint"],
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "code_verifier": verifier,
                    "client_id": provider.cli_client_id,
                },
            )
            id_token = tokens.json().get("id_token") if tokens.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, AttributeError) as err:
        raise PasswordSignInFailed(
            f"signing {username} in at {provider.issuer} failed: {type(err).__name__}: {err}"
        ) from None
    if not isinstance(id_token, str) or not id_token:
        raise PasswordSignInFailed(
            f"{provider.issuer} gave {username} no ID token (HTTP {tokens.status_code})"
        )
    return id_token


def _code_from(response: httpx.Response, redirect_uri: str, state: str, failed: str) -> str:
    """The authorization code the provider's redirect to the client carries, or why not."""
    target = redirect_target(response)
    if not target.startswith(redirect_uri):
        said = _LoginPage.read(response).error if response.status_code == 200 else ""
        raise PasswordSignInFailed(f"{failed}: {said or f'HTTP {response.status_code}'}")
    query = httpx.URL(target).params
    if "error" in query:
        raise PasswordSignInFailed(
            f"{failed}: {query['error']} {query.get('error_description', '')}".strip()
        )
    if query.get("state") != state or not query.get("code"):
        raise PasswordSignInFailed(f"{failed}: the redirect carried no code for this sign-in")
    return query["code"]


def redirect_target(response: httpx.Response) -> str:
    """Where `response` redirects to, absolute; empty if it is not a redirect."""
    return str(response.url.join(response.headers["location"])) if response.is_redirect else ""


def follow_within(browser: httpx.Client, response: httpx.Response, origin: str) -> httpx.Response:
    """Follow redirects while they stay at `origin`; the first response that leaves it (or is
    not a redirect) is returned. `httpx.TooManyRedirects` after ten."""
    for _ in range(10):
        target = redirect_target(response)
        if not target.startswith(f"{origin}/"):
            return response
        response = browser.get(target)
    raise httpx.TooManyRedirects(f"more than 10 redirects at {origin}", request=response.request)


class _LoginPage(HTMLParser):
    """The forms (action and fields) of one of the provider's pages, and its red error line."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self.error = ""
        self._in_error = False

    @classmethod
    def read(cls, response: httpx.Response) -> _LoginPage:
        page = cls()
        page.feed(response.text)
        page.close()
        return page

    def login_form(self, response: httpx.Response) -> tuple[str, dict[str, str]]:
        """The action and fields of the first form asking for a password."""
        for action, fields in self.forms:
            if "password" in fields:
                return action, fields
        said = f": {self.error}" if self.error else ""
        raise PasswordSignInFailed(
            f"no login form at {response.url} (HTTP {response.status_code}){said}"
        )

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append((attributes.get("action", ""), {}))
        elif tag == "input" and self.forms and attributes.get("name"):
            self.forms[-1][1][attributes["name"]] = attributes.get("value", "")
        elif tag == "p" and "color:red" in attributes.get("style", "").replace(" ", ""):
            self._in_error = True

    def handle_data(self, data: str) -> None:
        if self._in_error:
            self.error += data.strip()

    def handle_endtag(self, tag: str) -> None:
        if tag == "p":
            self._in_error = False
