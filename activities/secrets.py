"""Resolving `SecretRef`s inside activities, so secret values never enter workflow history."""

from __future__ import annotations

import os
from pathlib import Path

from activities.errors import ConfigurationError
from schemas.basics import SecretRef


def resolve_secret(ref: SecretRef, *, where: str) -> str:
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None:
            raise ConfigurationError(f"{where}: environment variable {ref.env} is not set")
        return value
    assert ref.file is not None
    try:
        return Path(ref.file).read_text().strip()
    except OSError as err:
        raise ConfigurationError(
            f"{where}: cannot read secret file {ref.file}: {err.strerror}"
        ) from None
