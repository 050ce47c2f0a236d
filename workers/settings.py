"""Phasegate's settings: the plan file says what to launch, the environment says where."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The task queue of every Phasegate workflow and activity, unless PHASEGATE_TASK_QUEUE says otherwise.
TASK_QUEUE = "phasegate"

# Logged once the worker polls its task queue; process supervisors wait for it.
WORKER_READY_LINE = "phasegate worker polling"


class Settings(BaseSettings):
    """Read from `PHASEGATE_*` (and `TEMPORAL_ADDRESS` / `TEMPORAL_NAMESPACE`) on demand."""

    model_config = SettingsConfigDict(env_prefix="PHASEGATE_", extra="ignore")

    temporal_address: str = Field(
        default="127.0.0.1:7233",
        validation_alias=AliasChoices("TEMPORAL_ADDRESS", "PHASEGATE_TEMPORAL_ADDRESS"),
    )
    temporal_namespace: str = Field(
        default="default",
        validation_alias=AliasChoices("TEMPORAL_NAMESPACE", "PHASEGATE_TEMPORAL_NAMESPACE"),
    )
    ui_url: str = Field(
        default="http://127.0.0.1:8233",
        validation_alias=AliasChoices("PHASEGATE_UI_URL", "TEMPORAL_UI_URL"),
    )
    task_queue: str = TASK_QUEUE
    metrics_address: str = "127.0.0.1:9464"
    max_concurrent_activities: int = 50
    graceful_shutdown_seconds: float = 30.0
    # The cluster for Kubernetes activities; unset means KUBECONFIG, then in-cluster config.
    kubeconfig: str | None = None
    # The key this deployment's workers seal their messages to each other with, one per line
    # (the first signs, any verifies). Unset: `~/.config/phasegate/worker.key`, made on first use.
    worker_key_file: str | None = None
    # What plans may make this worker touch: secrets, hosts, databases, files (a YAML file;
    # `activities/limits.py` describes it). Unset: no secret, no non-public address, no
    # database and no file a plan names.
    worker_limits: str | None = None
    # The keys backups are encrypted with (a 0600 file, `activities/backup_store.py` describes
    # it), the same on every worker. Unset: this worker takes and restores no backup.
    backup_keys: Path | None = None
    # The approval service whose signed proofs the workers accept (its public base URL); its
    # keys are read from `<url>/.well-known/jwks.json`.
    approval_service: str | None = None
    # The CLI's client id at the plan's identity provider: a public client that may use the
    # device flow. Its ID tokens are what the approval service accepts from the CLI.
    oidc_client_id: str = "phasegate-cli"
