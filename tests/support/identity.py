"""The OpenID Connect provider for the tests, started once per session, and a person's side of
signing in at it, driven headless with httpx through the provider's own pages: the
authorization code flow with PKCE, the device flow's approval step, token refresh and ID
token verification against the published keys.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Literal
from urllib.parse import unquote_plus

import httpx
import jwt
import pytest

from devstack.identity_provider import (
    DEVICE_CODE_GRANT,
    TEMPORAL_MACHINE_CLIENTS,
    IdentityProvider,
    follow_within,
    redirect_target,
    start_identity_provider,
)
from devstack.processes import LOOPBACK, BinaryNotFoundError, LocalProcessError

ClientName = Literal["cli", "web"]
DEFAULT_SCOPE = "openid profile email groups offline_access"
_TIMEOUT_S = 10.0


@pytest.fixture(scope="session")
def identity_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityProvider]:
    """The provider with the test people (alice and carol release managers, bob an SRE) and
    the Temporal cluster's machine clients."""
    try:
        provider = start_identity_provider(
            tmp_path_factory.mktemp("identity"), machine_clients=TEMPORAL_MACHINE_CLIENTS
        )
    except BinaryNotFoundError as err:
        pytest.fail(str(err))
    except LocalProcessError as err:
        pytest.fail(f"the identity provider did not start: {err}")
    with provider:
        yield provider


class SignInRefused(Exception):
    """The provider refused a step; the message is what it said."""


@dataclass(frozen=True)
class Tokens:
    id_token: str
    access_token: str
    refresh_token: str | None


@dataclass(frozen=True)
class DeviceAuthorization:
    """What the device authorization endpoint gives the CLI to show the person."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str


def discovery(provider: IdentityProvider) -> dict[str, Any]:
    """The provider's discovery document."""
    response = httpx.get(provider.discovery_url, timeout=_TIMEOUT_S, trust_env=False)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def sign_in(
    provider: IdentityProvider,
    username: str,
    *,
    client: ClientName = "cli",
    redirect_uri: str | None = None,
    nonce: str | None = None,
    scope: str = DEFAULT_SCOPE,
    password: str | None = None,
) -> Tokens:
    """`username` signs in through the provider's login form (with their own password unless
    `password` is given) and `client` exchanges the code, with PKCE, for tokens.

    `redirect_uri` defaults to `/callback` on a free loopback port; nothing listens there, the
    redirect carrying the code is read instead of followed. Raises SignInRefused with the
    provider's words when it refuses the request or the password.
    """
    endpoints = discovery(provider)
    redirect_uri = redirect_uri or f"http://{LOOPBACK}:{_any_port()}/callback"
    verifier = secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(16)
    params = {
        "response_type": "code",
        "client_id": _client_id(provider, client),
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "code_challenge": _s256(verifier),
        "code_challenge_method": "S256",
    }
    if nonce is not None:
        params["nonce"] = nonce
    password = provider.person(username).password if password is None else password
    with _browser() as browser:
        response = browser.get(endpoints["authorization_endpoint"], params=params)
        response = follow_within(browser, response, provider.issuer)
        if redirect_target(response).startswith(redirect_uri):
            raise SignInRefused(_error_from_redirect(redirect_target(response)))
        if response.status_code != 200:
            raise SignInRefused(
                f"{response.status_code} from {response.url}: {response.text.strip()}"
            )
        response = submit_login(browser, response, username, password)
        response = follow_within(browser, response, provider.issuer)
        target = redirect_target(response)
        if not target.startswith(redirect_uri):
            raise SignInRefused(_page(response).error or f"no redirect to the client ({response})")
    query = httpx.URL(target).params
    if "error" in query:
        raise SignInRefused(_error_from_redirect(target))
    if query.get("state") != state:
        raise SignInRefused(f"the redirect carried state {query.get('state')!r}, not {state!r}")
    return _token_request(
        provider,
        client,
        {
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
    )


def refresh(
    provider: IdentityProvider, refresh_token: str, *, client: ClientName = "cli"
) -> Tokens:
    """New tokens for `refresh_token` (which the provider then no longer accepts)."""
    return _token_request(
        provider, client, {"grant_type": "refresh_token", "refresh_token": refresh_token}
    )


def start_device_flow(
    provider: IdentityProvider, *, scope: str = DEFAULT_SCOPE
) -> DeviceAuthorization:
    """The CLI's first step of the device flow: a device code and the user code to show."""
    body = _post_form(
        discovery(provider)["device_authorization_endpoint"],
        {"client_id": provider.cli_client_id, "scope": scope},
    )
    return DeviceAuthorization(
        device_code=body["device_code"],
        user_code=body["user_code"],
        verification_uri=body["verification_uri"],
        verification_uri_complete=body["verification_uri_complete"],
    )


def poll_device_token(provider: IdentityProvider, device_code: str) -> Tokens:
    """One poll of the token endpoint for `device_code`; SignInRefused says
    `authorization_pending` until the person approves."""
    return _token_request(
        provider, "cli", {"grant_type": DEVICE_CODE_GRANT, "device_code": device_code}
    )


def approve_device_code(
    provider: IdentityProvider, username: str, user_code: str, *, password: str | None = None
) -> None:
    """`username` enters `user_code` on the provider's device page, signs in and presses
    Allow. Raises SignInRefused with the provider's words when it refuses a step."""
    password = provider.person(username).password if password is None else password
    with _browser() as browser:
        response = browser.get(f"{provider.issuer}/device", params={"user_code": user_code})
        response.raise_for_status()
        response = submit_login(browser, response, username, password)
        if response.is_redirect:  # back to the code page, the reason escaped twice as `prompt`
            prompt = httpx.URL(redirect_target(response)).params.get("prompt", "")
            raise SignInRefused(unquote_plus(prompt))
        response.raise_for_status()
        allow = _page(response).button_target("Allow")
        response = browser.get(str(response.url.join(allow)))
        if response.is_redirect or "allowed" not in response.text:
            raise SignInRefused(f"the provider did not confirm the approval: {response.text!r}")


def submit_login(
    browser: httpx.Client, page: httpx.Response, username: str, password: str
) -> httpx.Response:
    """`username` fills in the login form on the provider's `page` and submits it. Raises
    SignInRefused, with the page's error, when the page has no login form."""
    form = _page(page).form_with_field("password")
    return browser.post(
        str(page.url.join(form.action)),
        data={**form.fields, "username": username, "password": password},
    )


def verify_id_token(
    provider: IdentityProvider, id_token: str, *, client: ClientName = "cli"
) -> dict[str, Any]:
    """The ID token's claims once its RS256 signature checks out against the keys at the
    discovery document's `jwks_uri`, its issuer is the provider and its audience `client`."""
    keys = jwt.PyJWKClient(discovery(provider)["jwks_uri"], cache_keys=False)
    claims: dict[str, Any] = jwt.decode(
        id_token,
        keys.get_signing_key_from_jwt(id_token).key,
        algorithms=["RS256"],
        audience=_client_id(provider, client),
        issuer=provider.issuer,
    )
    return claims


def _client_id(provider: IdentityProvider, client: ClientName) -> str:
    return provider.cli_client_id if client == "cli" else provider.web_client_id


def _token_request(
    provider: IdentityProvider, client: ClientName, form: Mapping[str, str]
) -> Tokens:
    auth: httpx.BasicAuth | None = None
    data = dict(form)
    if client == "web":
        auth = httpx.BasicAuth(provider.web_client_id, provider.web_client_secret)
    else:
        data["client_id"] = provider.cli_client_id
    body = _post_form(discovery(provider)["token_endpoint"], data, auth)
    return Tokens(
        id_token=body["id_token"],
        access_token=body["access_token"],
        refresh_token=body.get("refresh_token"),
    )


def _post_form(
    url: str, form: Mapping[str, str], auth: httpx.BasicAuth | None = None
) -> dict[str, Any]:
    """The JSON answer to `form` posted to one of the provider's endpoints; SignInRefused with
    the provider's words unless it answers 200."""
    response = httpx.post(url, data=form, auth=auth, timeout=_TIMEOUT_S, trust_env=False)
    body: dict[str, Any] = response.json()
    if response.status_code != 200:
        raise SignInRefused(_oauth_error(body))
    return body


def _oauth_error(body: Mapping[str, Any]) -> str:
    """`error: error_description` from an OAuth error response."""
    description = body.get("error_description")
    return f"{body.get('error')}: {description}" if description else str(body.get("error"))


def _error_from_redirect(target: str) -> str:
    return _oauth_error(dict(httpx.URL(target).params))


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _any_port() -> int:
    return 1024 + secrets.randbelow(64_000)


def _browser() -> httpx.Client:
    """A cookie-keeping client that follows no redirect by itself."""
    return httpx.Client(follow_redirects=False, timeout=_TIMEOUT_S, trust_env=False)


@dataclass
class _Form:
    action: str
    fields: dict[str, str] = field(default_factory=dict)


class _Page(HTMLParser):
    """The forms, buttons and red error text of one of the provider's pages."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self.buttons: dict[str, str] = {}  # label -> onclick
        self.error = ""
        self._in: str | None = None  # "error" or the onclick of the open <button>
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(_Form(action=attributes.get("action", "")))
        elif tag == "input" and self.forms and attributes.get("name"):
            self.forms[-1].fields[attributes["name"]] = attributes.get("value", "")
        elif tag == "button":
            self._in, self._text = attributes.get("onclick", ""), ""
        elif tag == "p" and "color:red" in attributes.get("style", "").replace(" ", ""):
            self._in, self._text = "error", ""

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if self._in is None or tag not in ("p", "button"):
            return
        if tag == "p" and self._in == "error":
            self.error = self._text.strip()
        elif tag == "button":
            self.buttons[self._text.strip()] = self._in
        self._in = None

    def form_with_field(self, name: str) -> _Form:
        for form in self.forms:
            if name in form.fields:
                return form
        raise SignInRefused(
            f"no form with a {name!r} field on the page ({self.error or 'no error shown'})"
        )

    def button_target(self, label: str) -> str:
        """Where the button labelled `label` sends the browser (`location.href='...'`)."""
        match = re.search(r"location\.href\s*=\s*'([^']*)'", self.buttons.get(label, ""))
        if match is None:
            raise SignInRefused(f"no {label!r} button on the page (buttons: {list(self.buttons)})")
        return match.group(1)


def _page(response: httpx.Response) -> _Page:
    page = _Page()
    page.feed(response.text)
    page.close()
    return page
