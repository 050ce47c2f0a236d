"""The approval service's settings: one model, read from a YAML or JSON file and from
`PHASEGATE_APPROVALS_*` environment variables, which override the file field by field.

    public_url: https://approvals.example.com     # the issuer of every proof
    signing_key_file: /var/lib/phasegate-approvals/signing-key.pem
    identity_providers:
      - issuer: https://idp.example.com
        cli_client_id: phasegate-cli
        web_client_id: phasegate-web
        web_client_secret: {file: /run/secrets/phasegate-web}

Each field has its variable: `PHASEGATE_APPROVALS_PUBLIC_URL`, `_HOST`, `_PORT`,
`_SIGNING_KEY_FILE`, `_CREATE_SIGNING_KEY`, `_PROOF_LIFETIME_SECONDS` and
`_IDENTITY_PROVIDERS`, whose value is JSON (`'[{"issuer": ...}]'`); `PHASEGATE_APPROVALS_CONFIG`
names the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from approvals.proofs import LONGEST_LIFETIME_SECONDS
from schemas.basics import SecretRef, StrictModel
from schemas.problems import describe_errors

ENV_PREFIX = "PHASEGATE_APPROVALS_"
# The variable naming the config file, for `phasegate-approvals` without `--config`.
CONFIG_ENV = f"{ENV_PREFIX}CONFIG"
DEFAULT_PORT = 8780
DEFAULT_CLAIMS = ("sub", "email", "name", "preferred_username", "groups")
# `groups` is how most providers (and Phasegate's own) are asked for the groups claim; one that
# refuses unknown scopes needs `scopes` without it.
DEFAULT_SCOPES = ("openid", "profile", "email", "groups")
MAX_URL_LENGTH = 512
_MAX_CONFIG_BYTES = 256 * 1024
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: ids, claim names, scopes


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user name or password")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return value


def _token(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError("must be printable ASCII without spaces")
    return value


def _unique(values: list[str]) -> list[str]:
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"lists {', '.join(repeated)} more than once")
    return values


HttpUrl = Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH), AfterValidator(_http_url)]
Token = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_token)]
ClaimName = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_token)]


class IdentityProvider(StrictModel):
    """An OpenID Connect provider whose people may ask for proofs.

    `cli_client_id` is the audience of the ID tokens the CLI presents; `web_client_id` and
    `web_client_secret` are the confidential client the `/decide` page signs people in with
    (leave them out and the page refuses this provider). `claims` are the ID-token claims
    copied into proofs; `scopes` are what the page asks for.
    """

    issuer: HttpUrl
    cli_client_id: Token
    web_client_id: Token | None = None
    web_client_secret: SecretRef | None = None
    claims: Annotated[
        list[ClaimName], Field(min_length=1, max_length=16), AfterValidator(_unique)
    ] = Field(default_factory=lambda: list(DEFAULT_CLAIMS))
    scopes: Annotated[list[Token], Field(min_length=1, max_length=16), AfterValidator(_unique)] = (
        Field(default_factory=lambda: list(DEFAULT_SCOPES))
    )

    @field_validator("scopes")
    @classmethod
    def _asks_for_openid(cls, scopes: list[str]) -> list[str]:
        if "openid" not in scopes:
            raise ValueError("must include openid")
        return scopes


class ApprovalSettings(BaseSettings):
    """Everything the approval service needs; see the module docstring for the file format."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, hide_input_in_errors=True
    )

    public_url: HttpUrl = Field(
        description="Where people and workers reach the service; the issuer of every proof."
    )
    host: Annotated[str, Field(min_length=1, max_length=253)] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = DEFAULT_PORT
    signing_key_file: Path
    create_signing_key: bool = False
    proof_lifetime_seconds: Annotated[int, Field(ge=30, le=LONGEST_LIFETIME_SECONDS)] = 300
    identity_providers: Annotated[list[IdentityProvider], Field(min_length=1, max_length=16)]

    @field_validator("identity_providers")
    @classmethod
    def _one_entry_per_issuer(cls, providers: list[IdentityProvider]) -> list[IdentityProvider]:
        _unique([provider.issuer for provider in providers])
        return providers

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init arguments; a variable set in the environment wins.
        return env_settings, init_settings


class SettingsProblem(ValueError):
    """Settings the service cannot start with; `problems` holds one `field: message` line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{source}:\n" + "\n".join(f"  {line}" for line in problems))


def load_settings(
    config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> ApprovalSettings:
    """The settings from `config_file` (default: the file `PHASEGATE_APPROVALS_CONFIG` names,
    if any) overridden by `PHASEGATE_APPROVALS_*`; `SettingsProblem` naming each bad field."""
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(CONFIG_ENV):
        config_file = Path(environ[CONFIG_ENV])
    values = _read_config(config_file) if config_file is not None else {}
    source = str(config_file) if config_file is not None else "environment"
    try:
        return ApprovalSettings(**values)
    except ValidationError as err:
        raise SettingsProblem(source, describe_errors(err, document="settings")) from None
    except SettingsError as err:
        # A variable that holds a list or object but is not JSON.
        cause = f" ({err.__cause__})" if err.__cause__ else ""
        raise SettingsProblem(source, [f"{_first_line(str(err))}{cause}"]) from None


def resolve_secret(reference: SecretRef, field: str) -> SecretStr:
    """The secret a reference points at: an environment variable's value or a file's
    contents, without surrounding whitespace; `SettingsProblem` naming `field` otherwise."""
    if reference.env is not None:
        value = os.environ.get(reference.env, "").strip()
        if not value:
            raise SettingsProblem(
                "settings", [f"{field}: environment variable {reference.env} is not set"]
            )
        return SecretStr(value)
    path = Path(reference.file or "")
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise SettingsProblem(
            "settings", [f"{field}: cannot read {path}: {err.strerror}"]
        ) from None
    value = data[:_MAX_CONFIG_BYTES].decode(errors="replace").strip()
    if not value:
        raise SettingsProblem("settings", [f"{field}: {path} is empty"])
    return SecretStr(value)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise SettingsProblem(str(path), [f"(file): cannot read: {err.strerror}"]) from None
    if len(data) > _MAX_CONFIG_BYTES:
        raise SettingsProblem(str(path), [f"(file): larger than {_MAX_CONFIG_BYTES} bytes"])
    try:
        # YAML reads JSON too.
        document = yaml.safe_load(data.decode()) if data.strip() else {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SettingsProblem(
            str(path), [f"(file): not YAML or JSON{where}: {getattr(err, 'problem', err)}"]
        ) from None
    if not isinstance(document, dict):
        raise SettingsProblem(str(path), ["(file): must be a mapping of settings"])
    return {str(key): value for key, value in document.items()}


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "invalid settings"
