"""Resolving `SecretRef`s inside activities, so secret values never enter workflow history.

A reference is read only when the worker's limits allow it (`activities/limits.py`): a plan
cannot name any environment variable or file of the worker's machine as its "secret".
"""

from __future__ import annotations

import os

from activities.errors import ConfigurationError
from activities.limits import MAX_SECRET_BYTES, WorkerLimits, in_force
from schemas.basics import SecretRef


def resolve_secret(ref: SecretRef, *, where: str, limits: WorkerLimits | None = None) -> str:
    """The value `ref` names, if `limits` (default: the worker's, `limits.configure`) allow
    reading it. Errors name `where` and the reference, never the value."""
    problem = (limits or in_force()).secret_problem(ref)
    if problem is not None:
        raise ConfigurationError(f"{where}: {problem}")
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None:
            raise ConfigurationError(f"{where}: environment variable {ref.env} is not set")
        return value
    assert ref.file is not None
    try:
        with open(os.path.realpath(ref.file), "rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as err:
        raise ConfigurationError(
            f"{where}: cannot read secret file {ref.file}: {err.strerror}"
        ) from None
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigurationError(
            f"{where}: secret file {ref.file} is larger than {MAX_SECRET_BYTES // 1024} KiB"
        )
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigurationError(f"{where}: secret file {ref.file} is not UTF-8 text") from None
