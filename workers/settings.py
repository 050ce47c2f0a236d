"""Phasegate's settings: the plan file says what to launch, the environment says where."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.envconfig import ClientConfigProfile

# The task queue of every Phasegate workflow and activity, unless PHASEGATE_TASK_QUEUE says otherwise.
TASK_QUEUE = "phasegate"

# Logged once the worker polls its task queue; process supervisors wait for it.
WORKER_READY_LINE = "phasegate worker polling"


class Settings(BaseSettings):
    """Read from `PHASEGATE_*` and Temporal's own client configuration on demand.

    Where Temporal is comes from, first to last: what the caller passes (`--address`,
    `Settings(TEMPORAL_ADDRESS=...)`), the environment (`TEMPORAL_ADDRESS`,
    `TEMPORAL_NAMESPACE`), the profile in the `temporal.toml` the Temporal CLI reads, then the
    local dev server. TLS and API keys are read when connecting (`workers/client.py`)."""

    model_config = SettingsConfigDict(env_prefix="PHASEGATE_", extra="ignore")

    # Temporal's client configuration file and the profile in it, as the Temporal CLI reads
    # them; unset: `~/.config/temporalio/temporal.toml`, profile `default`.
    temporal_config_file: Path | None = Field(
        default=None, validation_alias=AliasChoices("TEMPORAL_CONFIG_FILE")
    )
    temporal_profile: str | None = Field(
        default=None, validation_alias=AliasChoices("TEMPORAL_PROFILE")
    )
    temporal_address: str = Field(
        default="127.0.0.1:7233",
        validation_alias=AliasChoices("TEMPORAL_ADDRESS", "PHASEGATE_TEMPORAL_ADDRESS"),
    )
    temporal_namespace: str = Field(
        default="default",
        validation_alias=AliasChoices("TEMPORAL_NAMESPACE", "PHASEGATE_TEMPORAL_NAMESPACE"),
    )
    # Sent as `Authorization: Bearer ...` (TLS on unless TEMPORAL_TLS=false); overrides the
    # profile's `api_key`.
    temporal_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("TEMPORAL_API_KEY")
    )
    # A file holding the API key, read again whenever it changes: a token that a sidecar or
    # Kubernetes (projected service account token) renews before it expires.
    api_key_file: Path | None = None
    api_key_refresh_seconds: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)
    ui_url: str = Field(
        default="http://127.0.0.1:8233",
        validation_alias=AliasChoices("PHASEGATE_UI_URL", "TEMPORAL_UI_URL"),
    )
    task_queue: str = TASK_QUEUE
    metrics_address: str = "127.0.0.1:9464"
    max_concurrent_activities: int = Field(default=50, ge=1, le=1000)
    # How many workflow runs the worker keeps in memory; a run evicted from the cache is
    # replayed from its history when its next task comes, so memory stays bounded however
    # many launches wait at gates.
    max_cached_workflows: int = Field(default=1000, ge=0, le=100_000)
    # How many workflow tasks the worker runs at once (each one is short: no I/O).
    max_concurrent_workflow_tasks: int = Field(default=100, ge=1, le=1000)
    graceful_shutdown_seconds: float = Field(default=30.0, ge=0, le=3600, allow_inf_nan=False)
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
    # The keys every payload this deployment sends through Temporal is encrypted with (a 0600
    # file, `workers/codec.py` describes it), the same for workers, CLI and codec server.
    # Unset: payloads travel and rest in Temporal's history in clear.
    payload_keys: Path | None = None
    # The approval service whose signed proofs the workers accept (its public base URL); its
    # keys are read from `<url>/.well-known/jwks.json`.
    approval_service: str | None = None
    # The CLI's client id at the plan's identity provider: a public client that may use the
    # device flow. Its ID tokens are what the approval service accepts from the CLI.
    oidc_client_id: str = "phasegate-cli"

    @model_validator(mode="after")
    def _where_the_profile_says(self) -> Settings:
        """Address and namespace the caller and the environment left out come from the
        profile. A profile that cannot be read changes nothing here: connecting says why."""
        given = self.model_fields_set
        if {"temporal_address", "temporal_namespace"} <= given:
            return self
        try:
            profile = ClientConfigProfile.load(
                self.temporal_profile, config_source=self.temporal_config_file, disable_env=True
            )
        except (RuntimeError, OSError):
            return self
        if profile.address and "temporal_address" not in given:
            self.temporal_address = profile.address
        if profile.namespace and "temporal_namespace" not in given:
            self.temporal_namespace = profile.namespace
        return self


def settings_problem(err: ValidationError) -> str:
    """One line naming each environment variable (or option) whose value `Settings` refused."""
    problems = []
    for error in err.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        alias = (
            Settings.model_fields[field].validation_alias
            if field in Settings.model_fields
            else None
        )
        name = alias.choices[0] if isinstance(alias, AliasChoices) else f"PHASEGATE_{field.upper()}"
        problems.append(f"{name}: {error['msg']}")
    return "; ".join(problems)
