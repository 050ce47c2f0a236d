"""The approval service's Ed25519 signing key: read from a PEM file (or created there, readable
by its owner only), with a key id derived from the public key so it stays the same across
restarts and replicas that share the file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from approvals.proofs import TrustedKey, public_key

# Far larger than any PEM private key; a bigger file is not one.
_MAX_KEY_FILE_BYTES = 16 * 1024


class SigningKeyError(ValueError):
    """The signing key file cannot be read, created or used; the message says which and why."""


@dataclass(frozen=True)
class SigningKey:
    """The private key proofs are signed with, and the id its JWKS entry carries."""

    private: Ed25519PrivateKey
    kid: str

    def trusted_key(self) -> TrustedKey:
        return public_key(self.private, self.kid)

    def jwk(self) -> dict[str, str]:
        """The public key as a JWKS entry (RFC 8037 `OKP`/`Ed25519`)."""
        key = self.trusted_key()
        return {
            "kty": key.kty,
            "crv": key.crv,
            "x": key.x,
            "kid": key.kid,
            "use": "sig",
            "alg": "EdDSA",
        }


def key_id(public: Ed25519PublicKey) -> str:
    """The RFC 7638 thumbprint of the public key: base64url SHA-256 of its canonical JWK."""
    x = _b64encode(public.public_bytes_raw())
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return _b64encode(hashlib.sha256(canonical.encode()).digest())


def load_signing_key(path: Path, *, create: bool = False) -> SigningKey:
    """The key in `path` (PKCS#8 PEM, unencrypted); with `create`, a new key written there
    with mode 0600 when the file does not exist yet."""
    if create and not path.exists():
        return _create(path)
    try:
        with path.open("rb") as file:
            pem = file.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SigningKeyError(
            f"signing_key_file: {path} does not exist; set create_signing_key to create it, "
            "or point signing_key_file at an Ed25519 PEM key"
        ) from None
    except OSError as err:
        raise SigningKeyError(f"signing_key_file: cannot read {path}: {err.strerror}") from None
    if len(pem) > _MAX_KEY_FILE_BYTES:
        raise SigningKeyError(f"signing_key_file: {path} is too large to be a PEM key")
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as err:
        raise SigningKeyError(
            f"signing_key_file: {path} is not an unencrypted PEM private key ({err})"
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(
            f"signing_key_file: {path} holds a {type(private).__name__}, not an Ed25519 key"
        )
    return SigningKey(private, key_id(private.public_key()))


def _create(path: Path) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written aside, then linked into place: a replica starting at the same moment either
    # links its own key first or reads this one whole, never a half-written file.
    draft = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
        os.link(draft, path)
    except FileExistsError:
        return load_signing_key(path)
    except OSError as err:
        raise SigningKeyError(f"signing_key_file: cannot create {path}: {err.strerror}") from None
    finally:
        draft.unlink(missing_ok=True)
    return SigningKey(private, key_id(private.public_key()))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
