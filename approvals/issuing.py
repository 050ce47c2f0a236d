"""What a person may ask a proof for, and the proof the service signs for it: the binding from
the request, the person from their verified ID token (only the configured claims, only strings
and lists of strings), a random id and a short life."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from approvals.idp import VerifiedToken
from approvals.keys import SigningKey
from approvals.proofs import AUDIENCE, MAX_PROOF_LENGTH, Act, ClaimValue, ProofClaims, sign_proof

MAX_CLAIM_LENGTH = 512
MAX_CLAIM_ITEMS = 64
# Acts that name no target (`abort` stops the whole launch) and acts asked for before the
# launch has a run (`start`).
UNTARGETED_ACTS: tuple[Act, ...] = ("abort", "pause", "resume")
RUNLESS_ACTS: tuple[Act, ...] = ("start",)
# The claims that name a person, most readable first.
_NAME_CLAIMS = ("name", "preferred_username", "email", "sub")


def _printable(value: str) -> str:
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError("must not contain control characters")
    return value


Text = Annotated[str, Field(max_length=512), AfterValidator(_printable)]
EvidenceId = Annotated[str, Field(max_length=128), AfterValidator(_printable)]


class ProofRequest(BaseModel):
    """The body of `POST /v1/proofs`: the act a person asks to take, and on what."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    launch: Annotated[Text, Field(min_length=1)]
    act: Act
    # Checked even when left out: whether they may be empty depends on the act.
    run: Text = Field("", validate_default=True)
    target: Text = Field("", validate_default=True)
    evidence: EvidenceId = ""

    @field_validator("run")
    @classmethod
    def _run_for_a_running_launch(cls, run: str, info: ValidationInfo) -> str:
        act = info.data.get("act")
        if act is not None and act not in RUNLESS_ACTS and not run:
            raise ValueError(f"is required for {act} (the launch's first run id)")
        return run

    @field_validator("target")
    @classmethod
    def _target_unless_untargeted(cls, target: str, info: ValidationInfo) -> str:
        act = info.data.get("act")
        if act in UNTARGETED_ACTS and target:
            raise ValueError(f"must be empty for {act}")
        if act is not None and act not in UNTARGETED_ACTS and not target:
            raise ValueError(f"is required for {act} (gate id, compensation id or plan digest)")
        return target


@dataclass(frozen=True)
class IssuedProof:
    """A signed proof, when it expires and who it names."""

    proof: str
    expires_at: datetime
    name: str
    groups: tuple[str, ...]
    claims: Mapping[str, ClaimValue]
    jti: str


class ProofTooLong(ValueError):
    """The person's claims make the proof longer than the workers accept."""


class ProofSigner:
    """Signs proofs as `issuer` with `key`, each valid for `lifetime_seconds` from `clock()`."""

    def __init__(
        self,
        issuer: str,
        key: SigningKey,
        lifetime_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self._key = key
        self._lifetime = lifetime_seconds
        self._clock = clock

    def sign(
        self, person: VerifiedToken, claim_names: Sequence[str], request: ProofRequest
    ) -> IssuedProof:
        now = int(self._clock())
        copied = copy_claims(person.claims, claim_names)
        claims = ProofClaims(
            iss=self.issuer,
            aud=AUDIENCE,
            idp=person.issuer,
            claims=copied,
            launch=request.launch,
            run=request.run,
            act=request.act,
            target=request.target,
            evidence=request.evidence,
            iat=now,
            exp=now + self._lifetime,
            jti=secrets.token_urlsafe(16),
        )
        proof = sign_proof(claims, self._key.private, self._key.kid)
        if len(proof) > MAX_PROOF_LENGTH:
            raise ProofTooLong(
                f"the proof would be {len(proof)} characters, more than the {MAX_PROOF_LENGTH} "
                "the workers accept; copy fewer claims (identity_providers[].claims)"
            )
        return IssuedProof(
            proof=proof,
            expires_at=datetime.fromtimestamp(claims.exp, UTC),
            name=display_name(person.claims),
            groups=groups_of(person.claims),
            claims=copied,
            jti=claims.jti,
        )


def copy_claims(claims: Mapping[str, Any], names: Sequence[str]) -> dict[str, ClaimValue]:
    """The claims named in `names` that are a bounded string or a bounded list of bounded
    strings; any other value (numbers, objects, huge lists) is left out."""
    copied: dict[str, ClaimValue] = {}
    for name in names:
        value = claims.get(name)
        if isinstance(value, str) and len(value) <= MAX_CLAIM_LENGTH:
            copied[name] = value
        elif (
            isinstance(value, list)
            and len(value) <= MAX_CLAIM_ITEMS
            and all(isinstance(item, str) and len(item) <= MAX_CLAIM_LENGTH for item in value)
        ):
            copied[name] = list(value)
    return copied


def display_name(claims: Mapping[str, Any]) -> str:
    """How to address the person: their name, else user name, email or subject."""
    for claim in _NAME_CLAIMS:
        value = claims.get(claim)
        if isinstance(value, str) and value.strip():
            return value.strip()[:MAX_CLAIM_LENGTH]
    return "(unnamed)"


def groups_of(claims: Mapping[str, Any]) -> tuple[str, ...]:
    value = claims.get("groups", [])
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return tuple(sorted({item for item in values if isinstance(item, str)}))[:MAX_CLAIM_ITEMS]
