"""The checkout demo behind TLS, for the security validation phase: a local CA, the demo service
on HTTPS with its secure surface, and the plan's security checks pointed at it."""

from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from devstack.pki import Authority
from devstack.processes import ManagedProcess, free_port, serve_demo
from schemas.basics import SecretRef
from schemas.plan import LaunchPlan, Phase
from schemas.security_validation_spec import SecurityValidationPhase


@dataclass
class SecureService:
    process: ManagedProcess
    url: str
    ca_file: Path
    token_file: Path
    metrics_port: int

    def stop(self) -> None:
        self.process.stop()

    def plan_for(self, plan: LaunchPlan) -> LaunchPlan:
        """Point every security check at this service, trusting its CA, with its token."""
        base = httpx.URL(self.url)
        token = SecretRef(file=str(self.token_file))
        phases: list[Phase] = []
        for phase in plan.phases:
            if not isinstance(phase, SecurityValidationPhase):
                phases.append(phase)
                continue
            update: dict[str, object] = {"ca_file": str(self.ca_file)}
            for group in ("tls", "headers", "authentication", "rate_limits", "audit"):
                checks = []
                for check in getattr(phase, group):
                    url = httpx.URL(check.url).copy_with(
                        scheme="https", host=base.host, port=base.port
                    )
                    changes: dict[str, object] = {"url": str(url)}
                    if getattr(check, "token", None) is not None:
                        changes["token"] = token
                    checks.append(check.model_copy(update=changes))
                update[group] = checks
            phases.append(phase.model_copy(update=update))
        return plan.model_copy(update={"phases": phases})


def start_secure_demo_service(
    *,
    flag_file: Path,
    flag_key: str,
    workdir: Path,
    port: int | None = None,
    metrics_port: int | None = None,
    login_limit: int = 20,
) -> SecureService:
    """The demo service on HTTPS with a certificate from a fresh local CA; metrics on plain HTTP."""
    workdir.mkdir(parents=True, exist_ok=True)
    authority = Authority.create(workdir / "pki", name="Phasegate Demo CA")
    cert_file, key_file = authority.issue("checkout")
    token_file = workdir / "orders-token"
    token_file.write_text(secrets.token_urlsafe(24))
    token_file.chmod(0o600)
    metrics_port = metrics_port or free_port()
    managed = serve_demo(
        "demo-service-tls",
        [
            "--tls-cert",
            str(cert_file),
            "--tls-key",
            str(key_file),
            "--orders-token-file",
            str(token_file),
            "--login-limit",
            str(login_limit),
            "--metrics-port",
            str(metrics_port),
        ],
        flag_file=flag_file,
        flag_key=flag_key,
        workdir=workdir,
        port=port,
        trust=ssl.create_default_context(cafile=str(authority.ca_file)),
    )
    return SecureService(managed, managed.url, authority.ca_file, token_file, metrics_port)
