"""The secrets docker-compose's `cluster` profile mounts, made on this machine and never
committed: the frontend's and the clients' CA and certificates, a separate internode CA, the
payload keys, the workers' seal key, the PostgreSQL password, and a token signing key with
the tokens it signs for the worker, the CLI and the admin (the Temporal server reads the
public half as a JWKS file).

    python -m devstack.compose_secrets deploy/secrets

Running it again keeps every key and certificate that is there (payloads and histories
written under them stay readable) and signs fresh tokens. Every file is the caller's, mode
0600 (public files 0644) in a 0700 directory: a container reads them only when it runs as the
caller's uid, which docker-compose.yml takes from PHASEGATE_UID / PHASEGATE_GID.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from devstack.pki import Authority

# The name the frontend's certificate is valid for: the compose service, and this machine
# through the loopback port compose publishes.
SERVER_NAMES = ("temporal-cluster", "localhost")
PAYLOAD_KEY_ID = "compose-1"
TOKEN_ISSUER = "phasegate-compose"
# The audience the server accepts (TEMPORAL_JWT_AUDIENCE), as for the identity provider's tokens.
TOKEN_AUDIENCE = "temporal"
SIGNING_KEY_ID = "compose-signing-1"
DEFAULT_TOKEN_DAYS = 30
# Who the tokens are for and what the server's default claim mapper grants them.
TOKENS = {
    "worker": ("phasegate-worker", ["default:write"]),
    "cli": ("phasegate-cli", ["default:write"]),
    "admin": ("phasegate-admin", ["temporal-system:admin", "default:admin"]),
}


@dataclass(frozen=True)
class ComposeSecrets:
    """Where each file lives under the secrets directory (docker-compose.yml's `secrets:`)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca" / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "ca" / "temporal-cluster.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "ca" / "temporal-cluster.key"

    @property
    def client_cert(self) -> Path:
        return self.directory / "ca" / "phasegate.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "ca" / "phasegate.key"

    @property
    def internode_ca(self) -> Path:
        return self.directory / "internode" / "ca.pem"

    @property
    def internode_cert(self) -> Path:
        return self.directory / "internode" / "internode.pem"

    @property
    def internode_key(self) -> Path:
        return self.directory / "internode" / "internode.key"

    @property
    def payload_keys(self) -> Path:
        return self.directory / "payload-keys.json"

    @property
    def worker_seal_key(self) -> Path:
        return self.directory / "worker-seal.key"

    @property
    def postgres_password(self) -> Path:
        return self.directory / "postgres-password"

    @property
    def signing_key(self) -> Path:
        return self.directory / "token-signing.key"

    @property
    def jwks(self) -> Path:
        return self.directory / "jwks.json"

    def profile(self, who: str) -> Path:
        """The temporal.toml holding `who`'s token as the default profile's api_key."""
        return self.directory / f"{who}.toml"


def make_compose_secrets(
    directory: Path, *, token_days: int = DEFAULT_TOKEN_DAYS
) -> ComposeSecrets:
    """Every file docker-compose.yml's `cluster` profile mounts, in `directory`; keeps what is
    there, signs fresh tokens valid for `token_days`."""
    if token_days < 1:
        raise ValueError("token lifetime: at least 1 day")
    made = ComposeSecrets(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)

    clients = _authority(directory / "ca", "Phasegate Compose CA")
    if not made.server_cert.exists():
        clients.issue("temporal-cluster", dns=SERVER_NAMES, ips=("127.0.0.1",))
    if not made.client_cert.exists():
        clients.issue("phasegate", dns=(), ips=())
    internode = _authority(directory / "internode", "Phasegate Compose Internode CA")
    if not made.internode_cert.exists():
        internode.issue("internode", dns=("localhost",), ips=())
    for public in (made.ca, made.server_cert, made.client_cert, made.internode_ca):
        public.chmod(0o644)
    for folder in (clients.directory, internode.directory):
        folder.chmod(0o700)

    _write_once(
        made.payload_keys,
        json.dumps(
            {
                "current": PAYLOAD_KEY_ID,
                "keys": {PAYLOAD_KEY_ID: base64.b64encode(secrets.token_bytes(32)).decode()},
            },
            indent=2,
        )
        + "\n",
    )
    _write_once(made.worker_seal_key, secrets.token_hex(32) + "\n")
    _write_once(made.postgres_password, secrets.token_urlsafe(24) + "\n")

    if not made.signing_key.exists():
        signing = ec.generate_private_key(ec.SECP256R1())
        _write_secret(
            made.signing_key,
            signing.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        )
    signing_key = serialization.load_pem_private_key(made.signing_key.read_bytes(), None)
    if not isinstance(signing_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{made.signing_key}: not an EC private key")
    public_jwk = ECAlgorithm.to_jwk(signing_key.public_key(), as_dict=True)
    public_jwk.update({"kid": SIGNING_KEY_ID, "alg": "ES256", "use": "sig"})
    made.jwks.write_text(json.dumps({"keys": [public_jwk]}, indent=2) + "\n")
    made.jwks.chmod(0o644)

    now = int(time.time())
    for who, (subject, permissions) in TOKENS.items():
        token = jwt.encode(
            {
                "iss": TOKEN_ISSUER,
                "sub": subject,
                "aud": TOKEN_AUDIENCE,
                "permissions": permissions,
                "iat": now,
                "exp": now + token_days * 86_400,
            },
            signing_key,
            algorithm="ES256",
            headers={"kid": SIGNING_KEY_ID},
        )
        _write_secret(
            made.profile(who),
            f"# {subject}'s token for the compose cluster; the rest of the connection comes\n"
            "# from TEMPORAL_* in docker-compose.yml. Made by devstack/compose_secrets.py.\n"
            f'[profile.default]\napi_key = "{token}"\n',
        )
    return made


def _authority(directory: Path, name: str) -> Authority:
    """The CA in `directory`, made the first time."""
    cert_file, key_file = directory / "ca.pem", directory / "ca.key"
    if not cert_file.exists():
        return Authority.create(directory, name)
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_file}: not an EC private key")
    return Authority(directory, key, x509.load_pem_x509_certificate(cert_file.read_bytes()))


def _write_once(path: Path, text: str) -> None:
    if not path.exists():
        _write_secret(path, text)


def _write_secret(path: Path, text: str) -> None:
    """`text` into `path`, readable by its owner only from the first byte on."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    temporary.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.compose_secrets",
        description="Make the secrets docker-compose.yml's cluster profile mounts.",
    )
    parser.add_argument("directory", type=Path, help="where to write them (deploy/secrets)")
    parser.add_argument(
        "--token-days",
        type=int,
        default=DEFAULT_TOKEN_DAYS,
        help=f"lifetime of the worker's and admin's tokens (default {DEFAULT_TOKEN_DAYS})",
    )
    args = parser.parse_args(argv)
    try:
        made = make_compose_secrets(args.directory, token_days=args.token_days)
    except (OSError, ValueError) as err:
        print(f"compose secrets: {err}", file=sys.stderr)
        return 1
    if os.getuid() == 0:
        # Containers never run as root: hand the files to the images' own user instead.
        print(
            f"compose secrets in {made.directory}, owned by root; give them to the "
            f"containers' user: chown -R 10001:10001 {made.directory}"
        )
    else:
        print(
            f"compose secrets in {made.directory}; before `docker compose --profile cluster "
            f"up`:\n  export PHASEGATE_UID={os.getuid()} PHASEGATE_GID={os.getgid()}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
