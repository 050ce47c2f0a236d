"""Approval proofs: short statements, signed by a Phasegate approval service, that a person who
signed in at an identity provider asks for one act on one launch.

A proof is a compact JWS (EdDSA, Ed25519) whose claims bind it to a launch (its id and first
run id), an act (`approve`, `reject`, `abort`, ...), the act's target (a gate id, a compensation
id, the plan's digest for `start`) and a short expiry. Proofs end up in workflow history, where
anyone who can read it may copy them; the binding makes a copy worthless anywhere else and
after it expires. Checking a proof is deterministic: the caller passes the time (workflow time
in a workflow) and the keys it trusts, and nothing here reads a clock, the network or files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Act = Literal[
    "start",
    "approve",
    "reject",
    "abort",
    "pause",
    "resume",
    "retry_compensation",
    "skip_compensation",
    "keep_writes",
    "drop_writes",
]
ACTS: tuple[Act, ...] = (
    "start",
    "approve",
    "reject",
    "abort",
    "pause",
    "resume",
    "retry_compensation",
    "skip_compensation",
    "keep_writes",
    "drop_writes",
)
AUDIENCE = "phasegate"
TOKEN_TYPE = "phasegate-proof+jwt"
# Longest a proof may live, and how far its issue time may run ahead of the checker's clock.
LONGEST_LIFETIME_SECONDS = 900
CLOCK_SKEW_SECONDS = 60
MAX_PROOF_LENGTH = 8192
MAX_NAME_LENGTH = 256
ClaimValue = str | list[str]

_Short = Annotated[str, Field(max_length=512)]


class TrustedKey(BaseModel):
    """An approval service's public Ed25519 key, as its JWKS publishes it (`kty: OKP`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kid: Annotated[str, Field(min_length=1, max_length=128)]
    kty: Literal["OKP"] = "OKP"
    crv: Literal["Ed25519"] = "Ed25519"
    x: Annotated[str, Field(min_length=43, max_length=44)]


class ApprovalAuthority(BaseModel):
    """Who the workers trust to sign proofs: an approval service's issuer and public keys."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    issuer: Annotated[str, Field(min_length=1, max_length=512)]
    keys: Annotated[list[TrustedKey], Field(max_length=16)] = Field(default_factory=list)

    def key(self, kid: str) -> TrustedKey | None:
        return next((key for key in self.keys if key.kid == kid), None)


class ProofClaims(BaseModel):
    """What a proof says. `claims` are the person's ID-token claims the service copied
    (`sub`, `email`, `name`, `preferred_username`, `groups`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    iss: _Short
    aud: _Short
    idp: _Short
    claims: Annotated[dict[_Short, ClaimValue], Field(max_length=16)]
    launch: _Short
    run: _Short = ""
    act: Act
    target: _Short = ""
    evidence: _Short = ""
    iat: int
    exp: int
    jti: Annotated[str, Field(min_length=8, max_length=128)]


@dataclass(frozen=True)
class Person:
    """Who a checked proof names, read from the claims the plan says carry name and groups."""

    name: str
    groups: tuple[str, ...]
    proof_id: str
    evidence: str


class ProofRefused(ValueError):
    """A proof that does not prove what it is offered for; the message says why."""


def plan_digest(plan: BaseModel) -> str:
    """The digest a `start` proof binds: the plan as canonical JSON, hashed.

    A field a model lists in `DIGEST_SKIPS_DEFAULTS` counts only when it is not at its default,
    so a plan section added in a later release leaves the digest of every plan that does not
    use it as it was: proofs of launches in flight still hold when their history is replayed.
    """
    dumped = _without_new_defaults(plan, plan.model_dump(mode="json"))
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _without_new_defaults(value: Any, dumped: Any) -> Any:
    """`dumped` (the JSON dump of `value`) without the fields its models skip at default."""
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        skips: frozenset[str] = getattr(type(value), "DIGEST_SKIPS_DEFAULTS", frozenset())
        kept: dict[str, Any] = {}
        for name, item in dumped.items():
            field = type(value).model_fields.get(name)
            if field is not None and name in skips:
                default = field.get_default(call_default_factory=True)
                if getattr(value, name) == default:
                    continue
            kept[name] = _without_new_defaults(getattr(value, name, None), item)
        return kept
    if isinstance(value, list | tuple) and isinstance(dumped, list):
        return [_without_new_defaults(v, d) for v, d in zip(value, dumped, strict=False)]
    if isinstance(value, dict) and isinstance(dumped, dict):
        return {key: _without_new_defaults(value.get(key), item) for key, item in dumped.items()}
    return dumped


def public_key(private: Ed25519PrivateKey, kid: str) -> TrustedKey:
    raw = private.public_key().public_bytes_raw()
    return TrustedKey(kid=kid, x=_b64encode(raw))


def sign_proof(claims: ProofClaims, private: Ed25519PrivateKey, kid: str) -> str:
    """The compact JWS an approval service hands out (and tests make)."""
    header = {"alg": "EdDSA", "typ": TOKEN_TYPE, "kid": kid}
    signing_input = ".".join(
        _b64encode(json.dumps(part, separators=(",", ":")).encode())
        for part in (header, claims.model_dump(mode="json"))
    )
    signature = private.sign(signing_input.encode())
    return f"{signing_input}.{_b64encode(signature)}"


@dataclass(frozen=True)
class Binding:
    """What a proof must be for: this launch and run, this act on this target."""

    launch: str
    run: str
    act: Act
    target: str


@dataclass(frozen=True)
class IdentityRule:
    """The plan's `approvals.identity`: the issuer people sign in at and the claims that carry
    their name and groups."""

    issuer: str
    name_claim: str
    groups_claim: str


def check_proof(
    token: str,
    authority: ApprovalAuthority,
    identity: IdentityRule,
    binding: Binding,
    now: datetime,
) -> Person:
    """The person a proof names, if it is signed by a trusted key, unexpired at `now` and
    bound to exactly `binding`; otherwise `ProofRefused` saying why."""
    claims, kid = _verified_claims(token, authority)
    if claims.iss != authority.issuer:
        raise ProofRefused(f"proof: issued by {claims.iss!r}, not the trusted {authority.issuer!r}")
    if claims.aud != AUDIENCE:
        raise ProofRefused(f"proof: made for audience {claims.aud!r}, not {AUDIENCE!r}")
    if claims.idp != identity.issuer:
        raise ProofRefused(
            f"proof: the person signed in at {claims.idp!r}; this plan trusts {identity.issuer!r}"
        )
    seconds = now.timestamp()
    if claims.exp <= seconds:
        raise ProofRefused("proof: expired; ask for a fresh one")
    if (
        claims.iat > seconds + CLOCK_SKEW_SECONDS
        or claims.exp - claims.iat > LONGEST_LIFETIME_SECONDS
    ):
        raise ProofRefused("proof: its lifetime is not one the workers accept")
    for field in ("launch", "run", "act", "target"):
        wanted, got = getattr(binding, field), getattr(claims, field)
        if wanted != got:
            raise ProofRefused(f"proof: made for {field} {got!r}, not {wanted!r}")
    return Person(
        name=_name(claims.claims, identity.name_claim),
        groups=_groups(claims.claims, identity.groups_claim),
        proof_id=f"{kid}:{claims.jti}",
        evidence=claims.evidence,
    )


def proof_key_id(token: str) -> str:
    """The key id a proof's header names, or "" if it names none that can be read."""
    try:
        header = _json_part(token.split(".", 1)[0], "header")
    except ProofRefused:
        return ""
    kid = header.get("kid")
    return kid[:128] if isinstance(kid, str) else ""


def _verified_claims(token: str, authority: ApprovalAuthority) -> tuple[ProofClaims, str]:
    if not isinstance(token, str) or not token or len(token) > MAX_PROOF_LENGTH:
        raise ProofRefused("proof: missing or too long; ask the approval service for one")
    parts = token.split(".")
    if len(parts) != 3:
        raise ProofRefused("proof: not a compact JWS (header.claims.signature)")
    header = _json_part(parts[0], "header")
    if header.get("alg") != "EdDSA" or header.get("typ") != TOKEN_TYPE:
        raise ProofRefused(f"proof: header must say alg EdDSA and typ {TOKEN_TYPE}")
    kid = header.get("kid")
    key = authority.key(kid) if isinstance(kid, str) else None
    if key is None or not isinstance(kid, str):
        raise ProofRefused(f"proof: signed with key {kid!r}, which the workers do not trust")
    try:
        verifier = Ed25519PublicKey.from_public_bytes(_b64decode(key.x))
        verifier.verify(_b64decode(parts[2]), f"{parts[0]}.{parts[1]}".encode())
    except (InvalidSignature, ValueError) as err:
        raise ProofRefused("proof: the signature does not verify") from err
    try:
        return ProofClaims.model_validate(_json_part(parts[1], "claims")), kid
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "claims"
        raise ProofRefused(f"proof: claim {where}: {first['msg']}") from err


def _json_part(part: str, what: str) -> Mapping[str, Any]:
    try:
        value = json.loads(_b64decode(part))
    except (ValueError, UnicodeDecodeError) as err:
        raise ProofRefused(f"proof: its {what} is not base64url JSON") from err
    if not isinstance(value, dict):
        raise ProofRefused(f"proof: its {what} is not a JSON object")
    return value


def _name(claims: Mapping[str, ClaimValue], claim: str) -> str:
    value = claims.get(claim)
    if not isinstance(value, str) or not value.strip():
        raise ProofRefused(f"proof: has no {claim!r} claim to name the person by")
    if len(value) > MAX_NAME_LENGTH:
        raise ProofRefused(
            f"proof: its {claim!r} claim is longer than {MAX_NAME_LENGTH} characters"
        )
    return value


def _groups(claims: Mapping[str, ClaimValue], claim: str) -> tuple[str, ...]:
    value = claims.get(claim, [])
    values: Sequence[str] = [value] if isinstance(value, str) else value
    return tuple(sorted(set(values)))[:64]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as err:
        raise ValueError("not base64url") from err
