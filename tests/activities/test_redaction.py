"""Secret values kept out of what activities report: texts, failures, library logs."""

from __future__ import annotations

import logging

import httpx
import psycopg
import pytest
from temporalio.exceptions import ApplicationError

from activities.errors import ConfigurationError, MigrationError
from activities.probes import ProbeActivities
from activities.redaction import (
    REDACTED,
    keep_out_of_logs,
    kept_out,
    redact,
    resolve_url,
    url_secrets,
)
from schemas.basics import SecretRef
from schemas.probe_messages import ProbeRequest
from tests.support.receiver import webhook_receiver

TOKEN = "tok-7f3a9c1e5b"


def test_values_and_credential_shapes_are_redacted() -> None:
    text = (
        f"h11: Illegal header value b'Bearer {TOKEN}\\nx'; "
        "host=db port=5432 password=hunter2x dbname=app; "
        "postgresql://app:pa55word@db:5432/app; "
        "password = 'quoted pass'; "
        f"{TOKEN.upper()} stays"
    )
    clean = redact(text, [f"Bearer {TOKEN}\nx"])
    for secret in (TOKEN, "hunter2x", "pa55word", "quoted pass"):
        assert secret not in clean
    assert "host=db port=5432 password=*** dbname=app" in clean
    assert "postgresql://app:***@db:5432/app" in clean
    assert TOKEN.upper() in clean  # only what was given or looks like a credential goes


def test_every_line_of_a_multiline_secret_and_its_encodings_go() -> None:
    secret = "first-line-9d2\nsecond/line ü"
    text = "a first-line-9d2 b second%2Fline%20%C3%BC c second/line ü d"
    assert redact(text, [secret]) == f"a {REDACTED} b {REDACTED} c {REDACTED} d"


def test_a_secret_url_is_kept_out_in_every_part() -> None:
    url = f"https://hooks.example/services/{TOKEN}?key=k3y9"
    parts = url_secrets(url)
    assert url in parts
    assert f"/services/{TOKEN}" in parts
    assert "key=k3y9" in parts
    message = f"Client error '404 Not Found' for url '{url}' (path /services/{TOKEN})"
    clean = redact(message, parts)
    assert TOKEN not in clean
    assert "k3y9" not in clean
    assert "404 Not Found" in clean


def test_a_plain_url_is_returned_as_it_is_with_nothing_to_hide() -> None:
    assert resolve_url("https://example.com/hook", where="x") == ("https://example.com/hook", [])


def test_a_secret_url_is_resolved_and_a_bad_one_refused_without_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PHASEGATE_TEST_URL", f"https://hooks.example/{TOKEN}")
    url, secrets = resolve_url(SecretRef(env="PHASEGATE_TEST_URL"), where="notifications.ops.url")
    assert url == f"https://hooks.example/{TOKEN}"
    assert url in secrets
    monkeypatch.setenv("PHASEGATE_TEST_URL", f"ftp://{TOKEN}")
    with pytest.raises(ConfigurationError) as refused:
        resolve_url(SecretRef(env="PHASEGATE_TEST_URL"), where="notifications.ops.url")
    assert str(refused.value) == (
        "notifications.ops.url: the secret env:PHASEGATE_TEST_URL does not hold an http:// or "
        "https:// URL"
    )


def test_a_failure_quoting_a_secret_is_raised_again_as_the_same_kind() -> None:
    with pytest.raises(MigrationError) as caught, kept_out([TOKEN]):
        raise MigrationError(f"script failed near {TOKEN}")
    assert str(caught.value) == f"script failed near {REDACTED}"
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_a_failure_quoting_nothing_is_left_alone() -> None:
    original = ConnectionError("database restarting")
    with pytest.raises(ConnectionError) as caught, kept_out([TOKEN]):
        raise original
    assert caught.value is original


def send() -> None:
    try:
        raise ValueError(f"bad value {TOKEN}")
    except ValueError as err:
        raise RuntimeError("could not send") from err


def test_a_secret_in_the_cause_alone_drops_the_cause() -> None:
    with pytest.raises(RuntimeError) as caught, kept_out([TOKEN]):
        send()
    assert str(caught.value) == "could not send"
    assert caught.value.__cause__ is None


def test_a_library_error_keeps_its_type_name_for_the_retry_policy() -> None:
    with pytest.raises(psycopg.OperationalError) as operational, kept_out(["hunter2x"]):
        raise psycopg.OperationalError("auth failed for password hunter2x")
    assert str(operational.value) == f"auth failed for password {REDACTED}"

    class Picky(Exception):
        def __init__(self, code: int, text: str) -> None:
            super().__init__(f"{code}: {text}")

    with pytest.raises(ApplicationError) as caught, kept_out([TOKEN]):
        raise Picky(7, TOKEN)
    assert (caught.value.type, caught.value.message, caught.value.non_retryable) == (
        "Picky",
        f"7: {REDACTED}",
        False,
    )


def test_a_library_logger_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    keep_out_of_logs([f"/{TOKEN}/api"], ["phasegate.test.library"])
    with caplog.at_level(logging.WARNING, logger="phasegate.test.library"):
        logging.getLogger("phasegate.test.library").warning(
            "Retrying after connection broken: %s", f"/{TOKEN}/api/v1/query?query=up"
        )
    assert [record.getMessage() for record in caplog.records] == [
        f"Retrying after connection broken: {REDACTED}/v1/query?query=up"
    ]


async def test_a_probe_failure_never_quotes_its_token(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PHASEGATE_TEST_PROBE_TOKEN", f"{TOKEN}\r\nX-Injected: 1")
    token = SecretRef(env="PHASEGATE_TEST_PROBE_TOKEN")
    with webhook_receiver() as receiver, caplog.at_level(logging.DEBUG):
        request = ProbeRequest(url=f"{receiver.url}/audited", token=token, where="audit.record")
        async with httpx.AsyncClient() as http:
            answer = await ProbeActivities(http).send_request(request)
    assert answer.status is None
    assert answer.error.startswith("LocalProtocolError: Illegal header value")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert TOKEN not in answer.error + logged
    assert receiver.posts == []
