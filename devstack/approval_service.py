"""The Phasegate approval service as a subprocess on a loopback port, for tests and the demo:
trusting one identity provider, with a fresh signing key in its working folder."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

import approvals
from approvals.proofs import ApprovalAuthority, TrustedKey
from approvals.settings import CONFIG_ENV, DEFAULT_CLAIMS, DEFAULT_SCOPES, ENV_PREFIX
from devstack.identity_provider import IdentityProvider
from devstack.processes import (
    LOOPBACK,
    READY_TIMEOUT_S,
    ManagedProcess,
    free_port,
    wait_until_ready,
)

# Where this process imports `approvals` from; the service imports the same code.
_SOURCE_ROOT = Path(approvals.__file__).resolve().parent.parent


class LocalApprovalService(ManagedProcess):
    """A running approval service: `url` is its public base URL and the issuer of its proofs,
    `jwks_url` where workers read its keys, `callback_url` the redirect URI its web client
    needs at the identity provider.

    Stop it with `stop()` or by leaving its `with` block.
    """

    def __init__(self, *, workdir: Path, port: int, env: Mapping[str, str], key_file: Path) -> None:
        url = f"http://{LOOPBACK}:{port}"
        self.jwks_url = f"{url}/.well-known/jwks.json"
        self.callback_url = f"{url}/callback"
        self.key_file = key_file
        argv = [sys.executable, "-m", "approvals.service"]
        super().__init__("approvals", argv, workdir=workdir, port=port, url=url, env=env)

    def authority(self) -> ApprovalAuthority:
        """What a worker trusts: this service's issuer and the keys it publishes now."""
        response = httpx.get(self.jwks_url, timeout=5.0, trust_env=False)
        response.raise_for_status()
        keys = [TrustedKey.model_validate(key) for key in response.json()["keys"]]
        return ApprovalAuthority(issuer=self.url, keys=keys)


def start_approval_service(
    *,
    issuer: str,
    cli_client_id: str,
    workdir: Path,
    web_client_id: str | None = None,
    web_client_secret: str | None = None,
    claims: Sequence[str] = DEFAULT_CLAIMS,
    scopes: Sequence[str] = DEFAULT_SCOPES,
    port: int | None = None,
    proof_lifetime_seconds: int = 300,
) -> LocalApprovalService:
    """`phasegate-approvals` trusting the provider at `issuer`, on `port` of loopback (default:
    a free one), ready once `/healthz` answers as this service. The web client's secret goes
    to a file readable by its owner only; the signing key is created in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://{LOOPBACK}:{port}"
    key_file = workdir / "signing-key.pem"
    provider: dict[str, object] = {
        "issuer": issuer,
        "cli_client_id": cli_client_id,
        "claims": list(claims),
        "scopes": list(scopes),
    }
    if web_client_id is not None:
        provider["web_client_id"] = web_client_id
    if web_client_secret is not None:
        secret_file = workdir / "web-client-secret"
        descriptor = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(web_client_secret)
        provider["web_client_secret"] = {"file": str(secret_file)}
    # Every setting in the environment, so none left in this process's environment applies.
    env = {
        f"{ENV_PREFIX}PUBLIC_URL": url,
        f"{ENV_PREFIX}HOST": LOOPBACK,
        f"{ENV_PREFIX}PORT": str(port),
        f"{ENV_PREFIX}SIGNING_KEY_FILE": str(key_file),
        f"{ENV_PREFIX}CREATE_SIGNING_KEY": "true",
        f"{ENV_PREFIX}PROOF_LIFETIME_SECONDS": str(proof_lifetime_seconds),
        f"{ENV_PREFIX}IDENTITY_PROVIDERS": json.dumps([provider]),
        CONFIG_ENV: "",
        "PYTHONPATH": os.pathsep.join(
            [str(_SOURCE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    service = LocalApprovalService(workdir=workdir, port=port, env=env, key_file=key_file)
    wait_until_ready(service, lambda: _serves_as(url), READY_TIMEOUT_S)
    return service


def start_approval_service_for(
    provider: IdentityProvider, workdir: Path, *, port: int | None = None
) -> LocalApprovalService:
    """`start_approval_service` trusting the local `provider`, for its CLI and web clients."""
    return start_approval_service(
        issuer=provider.issuer,
        cli_client_id=provider.cli_client_id,
        web_client_id=provider.web_client_id,
        web_client_secret=provider.web_client_secret,
        workdir=workdir,
        port=port,
    )


def _serves_as(url: str) -> bool:
    """Whether the approval service for issuer `url` answers there (not another server that
    took the port first)."""
    try:
        response = httpx.get(f"{url}/healthz", timeout=1.0, trust_env=False)
        return response.status_code == 200 and response.json().get("issuer") == url
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
