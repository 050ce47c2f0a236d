"""Approval proofs made in tests, as a trusted approval service would sign them."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio import activity

from approvals.proofs import Act, ApprovalAuthority, ProofClaims, public_key, sign_proof
from schemas.decision_messages import AuthorityRequest
from tests.support.fakes import FakeWorld

GROUPS = {"alice": ["release-managers"], "carol": ["release-managers"], "bob": ["sre"]}


@dataclass
class ProofMaker:
    """Signs proofs with a key of its own; `authority` is what workers would trust."""

    launch: str
    run: str
    idp: str
    issuer: str = "http://approvals.test"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    kid: str = field(default_factory=lambda: f"test-{secrets.token_hex(4)}")
    # When proofs are issued (unit tests check them at a fixed instant).
    clock: Callable[[], float] = time.time

    @property
    def authority(self) -> ApprovalAuthority:
        return ApprovalAuthority(issuer=self.issuer, keys=[public_key(self.key, self.kid)])

    def proof(
        self,
        person: str,
        act: Act,
        target: str,
        *,
        lifetime: timedelta = timedelta(minutes=5),
        age: timedelta = timedelta(0),
        **overrides: str,
    ) -> str:
        """A proof for `person` to take `act` on `target`, issued `age` ago; `overrides` change
        one claim (`launch`, `run`, `audience`, `idp`, `evidence`) to make it wrong on purpose."""
        claims = self._claims(person, act, target, lifetime, age, overrides)
        return sign_proof(claims, self.key, self.kid)

    def forged(self, person: str, act: Act, target: str) -> str:
        """A proof whose claims were changed after signing: its signature fails."""
        header, _, signature = self.proof("bob", act, target).split(".")
        _, claims, _ = self.proof(person, act, target).split(".")
        return f"{header}.{claims}.{signature}"

    def _claims(
        self,
        person: str,
        act: Act,
        target: str,
        lifetime: timedelta,
        age: timedelta,
        overrides: dict[str, str],
    ) -> ProofClaims:
        now = int(self.clock() - age.total_seconds())
        return ProofClaims(
            iss=self.issuer,
            aud=overrides.get("audience", "phasegate"),
            idp=overrides.get("idp", self.idp),
            claims={"email": person, "sub": f"sub-{person}", "groups": GROUPS.get(person, [])},
            launch=overrides.get("launch", self.launch),
            run=overrides.get("run", self.run) if act != "start" else "",
            act=act,
            target=target,
            evidence=overrides.get("evidence", ""),
            iat=now,
            exp=now + int(lifetime.total_seconds()),
            jti=secrets.token_hex(8),
        )


class TrustingWorld(FakeWorld):
    """Fakes whose worker trusts `maker`'s approval service."""

    def __init__(self, maker: ProofMaker, **fields: Any) -> None:
        super().__init__(**fields)
        self.maker = maker

    @activity.defn(name="approval_authority")
    async def approval_authority(self, request: AuthorityRequest) -> ApprovalAuthority:
        self.calls.append(("approval_authority", request.kid))
        return self.maker.authority
