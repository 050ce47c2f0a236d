"""Proofs for the CLI: the approval service's signed statement that the signed-in person asks
for one act on one launch (`approvals/proofs.py`), fetched fresh for every act.

    POST <service>/v1/proofs   Authorization: Bearer <ID token>
                               {launch, run, act, target, evidence} -> {proof, expires_at, person}

Errors, each a line fit to show the person (never with a token or a proof in it):

    ProofUnavailable
    ├── SignInAgain                 401: the service did not accept the sign-in
    └── ApprovalServiceUnreachable  no URL set, or nothing useful answers at it
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from approvals.idp import json_object
from approvals.proofs import Act
from starters import sign_in
from workers.settings import Settings

SERVICE_ENV = "PHASEGATE_APPROVAL_SERVICE"
_HTTP_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
_MAX_RESPONSE_BYTES = 64 * 1024


class ProofUnavailable(Exception):
    """The approval service gave no proof; the message says why and what to do."""


class SignInAgain(ProofUnavailable):
    """The approval service refused the ID token (expired, for another client, untrusted)."""


class ApprovalServiceUnreachable(ProofUnavailable):
    """No approval service is configured, or none answers where it is said to be."""


async def request_proof(
    service_url: str,
    id_token: str,
    *,
    launch: str,
    run: str,
    act: Act,
    target: str,
    evidence: str = "",
    http: httpx.AsyncClient | None = None,
) -> str:
    """A fresh proof that the person `id_token` names asks for `act` on `target` of run `run`
    of `launch` (having seen `evidence`); `ProofUnavailable` saying why not."""
    url = f"{service_url.rstrip('/')}/v1/proofs"
    body = {"launch": launch, "run": run, "act": act, "target": target, "evidence": evidence}
    headers = {"Authorization": f"Bearer {id_token}", "Accept": "application/json"}
    try:
        if http is None:
            async with httpx.AsyncClient(timeout=_HTTP_TIMEOUT, follow_redirects=False) as client:
                response = await client.post(url, json=body, headers=headers)
        else:
            response = await http.post(url, json=body, headers=headers)
    except httpx.HTTPError as err:
        raise ApprovalServiceUnreachable(
            f"no approval service answers at {service_url} ({type(err).__name__}): start it, or "
            f"set {SERVICE_ENV} to its URL"
        ) from None
    document = json_object(response.content[:_MAX_RESPONSE_BYTES])
    reason = _reason(document, id_token)
    if response.status_code == 401:
        raise SignInAgain(
            f"the approval service did not accept your sign-in ({reason or 'HTTP 401'}); "
            "sign in again: phasegate login"
        )
    if response.status_code != 200:
        if document is None:
            raise ApprovalServiceUnreachable(
                f"{url} answered HTTP {response.status_code} and is not a Phasegate approval "
                f"service; set {SERVICE_ENV} to the approval service's URL"
            )
        raise ProofUnavailable(
            f"the approval service gave no proof (HTTP {response.status_code}): "
            f"{reason or 'no reason given'}"
        )
    proof = document.get("proof") if document is not None else None
    if not isinstance(proof, str) or not proof:
        raise ApprovalServiceUnreachable(
            f"{url} answered without a proof; set {SERVICE_ENV} to the approval service's URL"
        )
    return proof


@dataclass(frozen=True)
class GrantedProof:
    """A proof, who signed in for it and when it runs out."""

    proof: str = field(repr=False)
    person: sign_in.Person
    expires_at: datetime | None


async def proof_for(
    settings: Settings,
    issuer: str,
    *,
    launch: str,
    run: str,
    act: Act,
    target: str,
    evidence: str = "",
    show: sign_in.ShowCode,
) -> GrantedProof:
    """A proof for `act` on `target` of `launch`: the person signs in at `issuer` (from the
    cache when they can, with the device flow shown by `show` when they must), then the approval
    service in the settings signs it."""
    service = service_url(settings, issuer)
    signed_in = await sign_in.id_token(issuer, settings.oidc_client_id, show=show)
    proof = await request_proof(
        service,
        signed_in.id_token,
        launch=launch,
        run=run,
        act=act,
        target=target,
        evidence=evidence,
    )
    return GrantedProof(proof, signed_in.person, proof_expiry(proof))


def service_url(settings: Settings, issuer: str) -> str:
    """The approval service's URL, or `ApprovalServiceUnreachable` saying how to set it."""
    if not settings.approval_service:
        raise ApprovalServiceUnreachable(
            f"approvals of this launch are proven with a sign-in at {issuer}: set {SERVICE_ENV} "
            "to the approval service's URL"
        )
    return settings.approval_service


def proof_expiry(proof: str) -> datetime | None:
    """When a proof runs out, read from its claims (which are not secret); None if unreadable."""
    parts = proof.split(".")
    if len(parts) != 3:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
    except (binascii.Error, ValueError):
        return None
    claims = json_object(raw)
    expires = claims.get("exp") if claims is not None else None
    if not isinstance(expires, int) or isinstance(expires, bool):
        return None
    return datetime.fromtimestamp(expires, UTC)


def _reason(document: dict[str, Any] | None, id_token: str) -> str:
    """The service's one-line `error`, bounded, with the ID token never in it."""
    error = document.get("error") if document is not None else None
    if not isinstance(error, str):
        return ""
    text = " ".join(error.split())
    if id_token:
        text = text.replace(id_token, "[redacted]")
    return text if len(text) <= 300 else text[:300] + "..."
