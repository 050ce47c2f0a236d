"""The Phasegate approval service: it checks who a person is with their identity provider and
signs a short-lived proof that they ask for one act on one launch.

    GET  /.well-known/jwks.json   the public keys workers check proofs with
    GET  /healthz                 200 while the service runs
    POST /v1/proofs               `Authorization: Bearer <ID token>` + {launch, run, act, target,
                                  evidence?} -> {proof, expires_at, person}
    GET  /decide?launch=&run=&gate=&decision=approve|reject|abort|pause|resume[&evidence=]
                                  sign in at the provider, then...
    GET  /callback                ...a page with the Temporal UI signal that carries the proof

Tokens, codes and proofs are never logged; uvicorn's access log (which would log the
callback's code) is off, and each proof issued is logged by its id, act and person instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import httpx
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from approvals.idp import (
    OpenIDProvider,
    Pkce,
    ProviderUnreachable,
    SignInFailed,
    TokenRejected,
    TrustedProviders,
    VerifiedToken,
)
from approvals.issuing import EvidenceId, IssuedProof, ProofRequest, ProofSigner, ProofTooLong, Text
from approvals.keys import SigningKey, SigningKeyError, load_signing_key
from approvals.pages import (
    LAUNCH_DECISIONS,
    SignalRequest,
    error_page,
    page_headers,
    signal_page,
)
from approvals.settings import (
    CONFIG_ENV,
    ApprovalSettings,
    SettingsProblem,
    load_settings,
    resolve_secret,
)
from schemas.problems import describe_errors

MAX_BODY_BYTES = 16 * 1024
SIGN_IN_TTL_SECONDS = 600.0
MAX_PENDING_SIGN_INS = 1000
BROWSER_COOKIE = "phasegate_approvals_browser"
_BROWSER_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")
_HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)

logger = logging.getLogger("approvals")


class DecideQuery(BaseModel):
    """The query of a `/decide` link."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    launch: Annotated[Text, Field(min_length=1)]
    run: Annotated[Text, Field(min_length=1)]
    decision: Literal["approve", "reject", "abort", "pause", "resume"]
    # Checked even when left out: whether they may be empty depends on the decision.
    gate: Annotated[Text, Field(max_length=256)] = Field("", validate_default=True)
    evidence: EvidenceId = Field("", validate_default=True)
    idp: Annotated[str, Field(max_length=512)] | None = None

    @field_validator("gate")
    @classmethod
    def _gate_for_gate_decisions(cls, gate: str, info: ValidationInfo) -> str:
        decision = info.data.get("decision")
        if decision == "abort" and gate:
            raise ValueError("must be empty for abort, which stops the whole launch")
        if decision in ("pause", "resume") and gate:
            raise ValueError(f"must be empty for {decision}, which holds or frees the whole launch")
        if decision in ("approve", "reject") and not gate:
            raise ValueError(f"is required for {decision}")
        return gate

    @field_validator("evidence")
    @classmethod
    def _evidence_for_gate_decisions(cls, evidence: str, info: ValidationInfo) -> str:
        if info.data.get("decision") in LAUNCH_DECISIONS and evidence:
            raise ValueError("is for approve and reject only")
        return evidence


@dataclass(frozen=True)
class PendingSignIn:
    """A browser sent to the provider, waiting to come back to `/callback` with `state`."""

    issuer: str
    pkce: Pkce
    nonce: str
    browser: str
    request: SignalRequest
    started: float


class PendingSignIns:
    """Sign-ins under way, by state: at most `limit` (the oldest make way), each for `ttl`."""

    def __init__(self, limit: int = MAX_PENDING_SIGN_INS, ttl: float = SIGN_IN_TTL_SECONDS) -> None:
        self._limit = limit
        self._ttl = ttl
        self._pending: OrderedDict[str, PendingSignIn] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, state: str, pending: PendingSignIn) -> None:
        self._forget_expired()
        while len(self._pending) >= self._limit:
            self._pending.popitem(last=False)
        self._pending[state] = pending

    def take(self, state: str) -> PendingSignIn | None:
        """The sign-in started with `state`, once: a state cannot be used twice."""
        self._forget_expired()
        return self._pending.pop(state, None)

    def _forget_expired(self) -> None:
        now = time.monotonic()
        while self._pending:
            state, oldest = next(iter(self._pending.items()))
            if now - oldest.started <= self._ttl:
                return
            del self._pending[state]


class ApprovalService:
    """The service's state and its endpoints."""

    def __init__(
        self,
        settings: ApprovalSettings,
        key: SigningKey,
        providers: TrustedProviders,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.key = key
        self.providers = providers
        self.http = http
        self.signer = ProofSigner(settings.public_url, key, settings.proof_lifetime_seconds, clock)
        self.pending = PendingSignIns()
        base = settings.public_url.rstrip("/")
        self.redirect_uri = f"{base}/callback"
        self._cookie_path = urlsplit(base).path or "/"
        self._secure_cookie = base.startswith("https://")

    # --- keys and health ------------------------------------------------------------------

    async def jwks(self, request: Request) -> Response:
        return JSONResponse(
            {"keys": [self.key.jwk()]}, headers={"Cache-Control": "public, max-age=300"}
        )

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "issuer": self.settings.public_url})

    # --- proofs for the CLI ---------------------------------------------------------------

    async def proofs(self, request: Request) -> Response:
        token = _bearer_token(request)
        if token is None:
            return _unauthorized("Authorization: Bearer <ID token> is missing")
        body = await read_body(request, MAX_BODY_BYTES)
        if body is None:
            return _json_error(413, f"body: larger than {MAX_BODY_BYTES} bytes")
        try:
            provider = self.providers.for_token(token)
            person = await provider.verify_id_token(token, audience=provider.config.cli_client_id)
        except TokenRejected as err:
            logger.info("proof refused: %s", err)
            return _unauthorized(str(err))
        except ProviderUnreachable as err:
            logger.warning("proof refused: %s", err)
            return _json_error(502, str(err))
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _json_error(422, "body: not JSON")
        if not isinstance(document, dict):
            return _json_error(422, "body: must be a JSON object {launch, run, act, target}")
        try:
            asked = ProofRequest.model_validate(document)
        except ValidationError as err:
            return _json_error(422, "; ".join(describe_errors(err, document="body")))
        issued = self._issue(provider, person, asked)
        if isinstance(issued, str):
            return _json_error(400, issued)
        return JSONResponse(
            {
                "proof": issued.proof,
                "expires_at": issued.expires_at.isoformat().replace("+00:00", "Z"),
                "person": {"name": issued.name, "groups": list(issued.groups)},
            },
            headers={"Cache-Control": "no-store"},
        )

    # --- the decide page for the Temporal UI ----------------------------------------------

    async def decide(self, request: Request) -> Response:
        query = _single_values(request)
        if isinstance(query, str):
            return error_page(query)
        try:
            asked = DecideQuery.model_validate(query)
        except ValidationError as err:
            return error_page("; ".join(describe_errors(err, document="query")))
        provider = self.providers.for_web(asked.idp)
        if provider is None:
            which = f"{asked.idp} is not" if asked.idp else "no identity provider is"
            return error_page(f"idp: {which} set up for web sign-in here")
        browser = request.cookies.get(BROWSER_COOKIE, "")
        if not _BROWSER_ID.match(browser):
            browser = secrets.token_urlsafe(32)
        state, nonce, pkce = secrets.token_urlsafe(32), secrets.token_urlsafe(32), Pkce.new()
        try:
            url = await provider.authorization_url(
                redirect_uri=self.redirect_uri, state=state, nonce=nonce, pkce=pkce
            )
        except SignInFailed as err:
            return error_page(str(err))
        except ProviderUnreachable as err:
            logger.warning("sign-in not started: %s", err)
            return error_page(str(err), 502)
        self.pending.add(
            state,
            PendingSignIn(
                issuer=provider.issuer,
                pkce=pkce,
                nonce=nonce,
                browser=browser,
                request=SignalRequest(
                    launch=asked.launch,
                    run=asked.run,
                    decision=asked.decision,
                    gate=asked.gate,
                    evidence=asked.evidence,
                ),
                started=time.monotonic(),
            ),
        )
        response = RedirectResponse(url, status_code=302, headers=page_headers())
        response.set_cookie(
            BROWSER_COOKIE,
            browser,
            max_age=int(SIGN_IN_TTL_SECONDS),
            path=self._cookie_path,
            secure=self._secure_cookie,
            httponly=True,
            samesite="lax",
        )
        return response

    async def callback(self, request: Request) -> Response:
        query = _single_values(request)
        if isinstance(query, str):
            return error_page(query)
        state = query.get("state", "")
        pending = self.pending.take(state) if state else None
        if pending is None:
            return error_page(
                "This sign-in is unknown, already used or older than 10 minutes; "
                "open the approval link again."
            )
        if request.cookies.get(BROWSER_COOKIE) != pending.browser:
            return error_page(
                "This sign-in was started in another browser; open the approval link here."
            )
        if "error" in query:
            reason = " ".join(
                " ".join(query[key].split())[:200]
                for key in ("error", "error_description")
                if query.get(key)
            )
            return error_page(f"The identity provider did not sign you in: {reason}.")
        if query.get("iss", pending.issuer) != pending.issuer:
            return error_page("The sign-in came back from another identity provider.")
        code = query.get("code", "")
        if not code or len(code) > 4096:
            return error_page("The identity provider sent no sign-in code back.")
        provider = self.providers.get(pending.issuer)
        if provider is None or provider.config.web_client_id is None:
            return error_page("The identity provider is no longer set up for web sign-in.")
        try:
            id_token = await provider.exchange_code(
                code, redirect_uri=self.redirect_uri, code_verifier=pending.pkce.verifier
            )
            person = await provider.verify_id_token(
                id_token, audience=provider.config.web_client_id, nonce=pending.nonce
            )
        except (TokenRejected, SignInFailed) as err:
            logger.info("sign-in failed: %s", err)
            return error_page(f"Sign-in failed: {err}")
        except ProviderUnreachable as err:
            logger.warning("sign-in failed: %s", err)
            return error_page(f"Sign-in failed: {err}", 502)
        asked = pending.request
        issued = self._issue(
            provider,
            person,
            ProofRequest(
                launch=asked.launch,
                run=asked.run,
                act=asked.decision,
                target=asked.gate,
                evidence=asked.evidence,
            ),
        )
        if isinstance(issued, str):
            return error_page(issued)
        email = person.claims.get("email")
        return signal_page(asked, issued, provider.issuer, email if isinstance(email, str) else "")

    def _issue(
        self, provider: OpenIDProvider, person: VerifiedToken, asked: ProofRequest
    ) -> IssuedProof | str:
        """The proof, or why there is none."""
        try:
            issued = self.signer.sign(person, provider.config.claims, asked)
        except ProofTooLong as err:
            return str(err)
        logger.info(
            "proof %s issued: %s %r on launch %r (run %r) for %r (sub %r at %s)",
            issued.jti,
            asked.act,
            asked.target,
            asked.launch,
            asked.run,
            issued.name,
            person.claims.get("sub"),
            provider.issuer,
        )
        return issued


def create_app(settings: ApprovalSettings, clock: Callable[[], float] = time.time) -> Starlette:
    """The service as an ASGI app. Reads (or creates) the signing key and the web clients'
    secrets now, so a bad setting stops it before it serves: `SigningKeyError`,
    `SettingsProblem`. `clock` (Unix seconds) is what ID tokens are checked and proofs
    dated by."""
    key = load_signing_key(settings.signing_key_file, create=settings.create_signing_key)
    http = httpx.AsyncClient(timeout=_HTTP_TIMEOUT, follow_redirects=False)
    providers = TrustedProviders(
        [
            OpenIDProvider(
                config,
                http,
                web_client_secret=resolve_secret(
                    config.web_client_secret, f"identity_providers[{index}].web_client_secret"
                )
                if config.web_client_secret is not None
                else None,
                clock=clock,
            )
            for index, config in enumerate(settings.identity_providers)
        ]
    )
    service = ApprovalService(settings, key, providers, http, clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        logger.info(
            "approval service for %s: key %s, trusting %s",
            settings.public_url,
            key.kid,
            ", ".join(provider.issuer for provider in providers),
        )
        try:
            yield
        finally:
            await http.aclose()

    app = Starlette(
        routes=[
            Route("/.well-known/jwks.json", service.jwks, methods=["GET"]),
            Route("/healthz", service.healthz, methods=["GET"]),
            Route("/v1/proofs", service.proofs, methods=["POST"]),
            Route("/decide", service.decide, methods=["GET"]),
            Route("/callback", service.callback, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.service = service
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """`phasegate-approvals [--config FILE]`: serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="phasegate-approvals",
        description="Phasegate approval service: signs proofs for people who sign in at a "
        "trusted OpenID Connect provider. Settings come from the YAML/JSON file and from "
        "PHASEGATE_APPROVALS_* variables, which override it.",
    )
    parser.add_argument(
        "--config", type=Path, help=f"settings file (YAML or JSON; default: ${CONFIG_ENV})"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per call to the provider
    try:
        settings = load_settings(args.config)
        app = create_app(settings)
    except (SettingsProblem, SigningKeyError) as err:
        print(f"phasegate-approvals: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,
        server_header=False,
        log_level="info",
    )


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is larger than `limit` bytes: refused from its
    declared length before reading, and while reading when it declares none or lies."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _single_values(request: Request) -> dict[str, str] | str:
    """The query as one value per name, or why it is not one."""
    values: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in values:
            return f"{name}: given more than once"
        values[name] = value
    return values


def _unauthorized(reason: str) -> Response:
    return JSONResponse(
        {"error": reason},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="phasegate-approvals", error="invalid_token"'},
    )


def _json_error(status_code: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status_code)


if __name__ == "__main__":
    main()
