"""Keeping secret values out of everything an activity reports: results, failures and logs.

Activities resolve `SecretRef`s into values, and the libraries they hand them to quote them
back: psycopg echoes a connection string it cannot parse, httpx names the URL a request went
to, h11 quotes a header value it refuses. `redact` removes the values (and anything shaped like
a credential) from a text; `kept_out` does it for an exception leaving an activity, keeping
its type so the retry policy still tells retryable failures from the rest.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit

from temporalio.exceptions import ApplicationError

from activities.errors import NON_RETRYABLE, ConfigurationError
from activities.secrets import resolve_secret
from schemas.basics import SecretRef

REDACTED = "***"
# `password=...` in a libpq connection string or a URL's query; `scheme://user:password@`.
_PASSWORD_SETTING = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&'\"]+)")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@'\"]*):[^@/\s'\"]*@")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without any of the `secrets` (also as they appear escaped, percent-encoded or
    line by line) and without `password=...` or `user:password@` fragments."""
    for value in sorted(_variants(secrets), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = _PASSWORD_SETTING.sub(rf"\g<1>{REDACTED}", text)
    return _USERINFO.sub(rf"\g<1>:{REDACTED}@", text)


def _variants(secrets: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for secret in secrets:
        value = secret.strip()
        for part in {value, *(line.strip() for line in value.splitlines())}:
            if part:
                found.update(
                    (
                        part,
                        repr(part)[1:-1],
                        repr(part.encode())[2:-1],
                        quote(part, safe=""),
                        quote(part),
                    )
                )
    return found


def url_secrets(url: str) -> list[str]:
    """What to keep out of reports for a URL given as a secret: the URL, its path, query,
    fragment and credentials (its scheme and host alone say where, not how to get in)."""
    parts = [url]
    try:
        split = urlsplit(url)
    except ValueError:
        return parts
    parts += [split.query, split.fragment, split.password or "", split.username or ""]
    if split.path not in ("", "/"):
        parts.append(split.path)
    if split.netloc:
        parts.append(url.split(split.netloc, 1)[-1])  # everything after the host
    return [part for part in parts if part not in ("", "/")]


def resolve_url(url: str | SecretRef, *, where: str) -> tuple[str, list[str]]:
    """The URL to call, and what of it must stay out of reports: nothing of a plain URL (it is
    in the plan already), all of one given as a secret reference."""
    if isinstance(url, str):
        return url, []
    value = resolve_secret(url, where=where)
    secrets = url_secrets(value)
    if not re.match(r"^https?://[^\s/]+", value):
        raise ConfigurationError(
            f"{where}: the secret {describe_ref(url)} does not hold an http:// or https:// URL"
        )
    return value, secrets


def describe_ref(ref: SecretRef) -> str:
    """Where a secret lives, never what it is: `env:NAME` or `file:PATH`."""
    return f"env:{ref.env}" if ref.env is not None else f"file:{ref.file}"


@contextmanager
def kept_out(secrets: Iterable[str]) -> Iterator[None]:
    """Re-raise an exception that quotes one of `secrets` (in its message or its cause's) as
    the same kind of failure with the secrets redacted and the cause dropped."""
    try:
        yield
    except Exception as err:
        values = list(secrets)
        messages = [str(err)]
        cause = err.__cause__
        while cause is not None:
            messages.append(str(cause))
            cause = cause.__cause__
        if all(redact(message, values) == message for message in messages):
            raise
        raise redacted(err, redact(str(err), values)) from None


def redacted(err: Exception, message: str) -> Exception:
    """`err` again, saying `message`: the same class when it takes a message alone, else an
    `ApplicationError` of the same type name (what the workflow and the retry policy see)."""
    if isinstance(err, ApplicationError):
        return ApplicationError(message, type=err.type, non_retryable=err.non_retryable)
    kind = type(err)
    try:
        again = kind(message)
    except Exception:
        again = None
    if again is not None and str(again) == message:
        return again
    return ApplicationError(
        message, type=kind.__name__, non_retryable=kind.__name__ in NON_RETRYABLE
    )


class _LogRedaction(logging.Filter):
    """Redacts the secrets it was given from every record of the loggers it is installed on."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def remember(self, secrets: Iterable[str]) -> None:
        with self._lock:
            self._secrets.update(secret for secret in secrets if secret)

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            secrets = list(self._secrets)
        message = record.getMessage()
        clean = redact(message, secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_LOG_REDACTION = _LogRedaction()
# httpx logs every request's URL at INFO; httpcore's DEBUG traces quote the errors it raises.
HTTP_CLIENT_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
)


def keep_out_of_logs(secrets: Iterable[str], loggers: Iterable[str]) -> None:
    """Redact `secrets` from what the library `loggers` write (urllib3 logs the path and query
    of a request it retries, which for a secret URL is the secret)."""
    _LOG_REDACTION.remember(secrets)
    for name in loggers:
        logger = logging.getLogger(name)
        if _LOG_REDACTION not in logger.filters:
            logger.addFilter(_LOG_REDACTION)
