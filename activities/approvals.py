"""The approval service the workers trust: its issuer and public keys, read from its JWKS.

The launch asks for them once when it starts (and again when a proof names a key it has not
seen, as after a key rotation); they are public, so they may sit in history.
"""

from __future__ import annotations

import httpx
from pydantic import ValidationError
from temporalio import activity

from activities.errors import ConfigurationError
from approvals.proofs import ApprovalAuthority, TrustedKey
from schemas.decision_messages import AuthorityRequest

MAX_JWKS_BYTES = 64 * 1024


class ApprovalActivities:
    def __init__(self, http: httpx.AsyncClient, service: str | None) -> None:
        self._http = http
        self._service = service.rstrip("/") if service else None

    @activity.defn(name="approval_authority")
    async def approval_authority(self, request: AuthorityRequest) -> ApprovalAuthority:
        if self._service is None:
            raise ConfigurationError(
                "this worker trusts no approval service: set PHASEGATE_APPROVAL_SERVICE to its URL "
                "(or use `identity: none` in the plan's approvals for unauthenticated approvals)"
            )
        url = f"{self._service}/.well-known/jwks.json"
        response = await self._http.get(url, timeout=10.0)
        if response.status_code != 200:
            raise RuntimeError(f"approval service keys: {url} answered {response.status_code}")
        if len(response.content) > MAX_JWKS_BYTES:
            raise ConfigurationError(f"approval service keys: {url} sent more than 64 KiB")
        try:
            keys = [
                TrustedKey.model_validate(key)
                for key in response.json().get("keys", [])
                if isinstance(key, dict) and key.get("kty") == "OKP" and key.get("crv") == "Ed25519"
            ]
            return ApprovalAuthority(issuer=self._service, keys=keys[:16])
        except (ValueError, ValidationError, AttributeError) as err:
            raise ConfigurationError(f"approval service keys: {url} is not a JWKS: {err}") from None
