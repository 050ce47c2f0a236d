"""`phasegate codec-server` over real HTTP: Temporal's codec protocol with the payload keys,
a bearer token on every POST, CORS for the UI's origin only, bounded bodies, one-line errors."""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from starters.codec_server import MAX_BODY_BYTES, MAX_PAYLOADS, settings_from
from tests.support.cli import phasegate
from tests.support.payloads import CodecServer, codec_server, write_key_file, write_private
from workers.codec import ENCODING, KEY_ID, EncryptionCodec, PayloadKeys

UI_ORIGIN = "http://127.0.0.1:18233"
PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=b'{"flag_key": "codec-server-7c1d"}')


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, payload_keys_file: Path
) -> Iterator[CodecServer]:
    with codec_server(
        tmp_path_factory.mktemp("codec-server"), payload_keys_file, [UI_ORIGIN]
    ) as running:
        yield running


def as_json(*payloads: Payload) -> dict[str, Any]:
    return json_format.MessageToDict(Payloads(payloads=list(payloads)))


def from_json(document: dict[str, Any]) -> list[Payload]:
    return list(json_format.ParseDict(document, Payloads()).payloads)


def post(
    server: CodecServer, path: str, *, token: str | None = "", **kwargs: Any
) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token or server.token}"
    return httpx.post(f"{server.url}{path}", headers=headers, timeout=10.0, **kwargs)


@pytest.mark.parametrize("path", ["/decode", "/default/decode"])
async def test_decode_gives_back_what_the_worker_encrypted(
    server: CodecServer, payload_keys: PayloadKeys, path: str
) -> None:
    (encrypted,) = await EncryptionCodec(payload_keys).encode([PLAIN])

    response = post(
        server, path, json=as_json(encrypted, PLAIN), headers={"X-Namespace": "default"}
    )

    assert response.status_code == 200, response.text
    assert from_json(response.json()) == [PLAIN, PLAIN]


@pytest.mark.parametrize("path", ["/encode", "/default/encode"])
async def test_encode_encrypts_under_the_current_key(
    server: CodecServer, payload_keys: PayloadKeys, path: str
) -> None:
    response = post(server, path, json=as_json(PLAIN))

    assert response.status_code == 200, response.text
    (encrypted,) = from_json(response.json())
    assert dict(encrypted.metadata) == {"encoding": ENCODING, KEY_ID: b"test-payloads-1"}
    assert b"codec-server-7c1d" not in encrypted.data
    assert await EncryptionCodec(payload_keys).decode([encrypted]) == [PLAIN]


def test_no_payloads_in_no_payloads_out(server: CodecServer) -> None:
    response = post(server, "/decode", json={"payloads": []})

    assert (response.status_code, response.json()) == (200, {"payloads": []})


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        b"Bearer",
        b"Bearer wrong-token-of-enough-length",
        b"Basic dXNlcjpwYXNz",
        "Bearer \u2713".encode(),
    ],
)
def test_every_post_needs_the_token(server: CodecServer, authorization: bytes | None) -> None:
    headers = {} if authorization is None else {b"Authorization": authorization}
    for path in ("/decode", "/encode", "/default/decode"):
        response = httpx.post(
            f"{server.url}{path}", json=as_json(PLAIN), headers=headers, timeout=10.0
        )
        assert response.status_code == 401, (path, response.text)
        assert response.json() == {"error": "Authorization: Bearer <token> required"}
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_token_never_reaches_the_log(server: CodecServer) -> None:
    post(server, "/decode", json=as_json(PLAIN))
    post(server, "/decode", token=None, json=as_json(PLAIN))
    post(server, "/decode", token=server.token + "x", json=as_json(PLAIN))

    log = server.process.log_path.read_text()
    assert "codec server on http://127.0.0.1" in log
    assert server.token not in log


def test_a_body_over_the_limit_is_refused(server: CodecServer) -> None:
    response = post(
        server,
        "/decode",
        content=b" " * (MAX_BODY_BYTES + 1),
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 413
    assert response.json() == {"error": "body: larger than 4 MiB"}


def test_too_many_payloads_are_refused(server: CodecServer) -> None:
    response = post(server, "/decode", json={"payloads": [{}] * (MAX_PAYLOADS + 1)})

    assert response.status_code == 413
    assert response.json() == {"error": f"payloads: more than {MAX_PAYLOADS} in one request"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "body: not JSON"),
        (b'["payloads"]', "body: must be"),
        (b'{"payloads": {"data": "AA=="}}', "body: must be"),
        (b'{"payloads": [{"data": 12}]}', "payloads: not Temporal payloads"),
        (b'{"payloads": [{"metadata": {"encoding": 7}}]}', "payloads: not Temporal payloads"),
        (b'{"payloads": [{"colour": "red"}]}', "payloads: not Temporal payloads"),
        (b'{"payloads": [{"data": "AA=="}, {"data": "no*base64"}]}', "payloads: payload 2 data"),
        (b'{"payloads": [{"metadata": {"encoding": "%%%"}}]}', "payloads: payload 1 metadata"),
        (b"[" * 100_000 + b"]" * 100_000, "body: "),
    ],
)
def test_bad_bodies_are_one_line(server: CodecServer, body: bytes, expected: str) -> None:
    response = post(server, "/decode", content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert message.startswith(expected)
    assert "\n" not in message


async def test_a_payload_under_an_unknown_key_is_named_by_its_key_id(server: CodecServer) -> None:
    retired = PayloadKeys(current="retired-3", keys={"retired-3": os.urandom(32)})
    (encrypted,) = await EncryptionCodec(retired).encode([PLAIN])

    response = post(server, "/decode", json=as_json(encrypted))

    assert response.status_code == 422
    message = response.json()["error"]
    assert "payload key 'retired-3'" in message
    assert "it holds test-payloads-1" in message
    assert base64.b64encode(encrypted.data).decode() not in message


def test_cors_preflight_admits_the_ui_origin(server: CodecServer) -> None:
    response = httpx.options(
        f"{server.url}/decode",
        headers={
            "Origin": UI_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization,x-namespace",
        },
        timeout=10.0,
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == UI_ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"content-type", "authorization", "x-namespace"} <= allowed


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:9999", "null"])
def test_cors_preflight_refuses_other_origins(server: CodecServer, origin: str) -> None:
    response = preflight(server, origin, "POST")

    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_cors_preflight_refuses_other_methods(server: CodecServer) -> None:
    response = preflight(server, UI_ORIGIN, "DELETE")

    assert response.status_code == 400
    assert "Disallowed CORS method" in response.text


def preflight(server: CodecServer, origin: str, method: str) -> httpx.Response:
    return httpx.options(
        f"{server.url}/decode",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=10.0,
    )


def test_answers_carry_cors_headers_for_the_ui_origin_only(server: CodecServer) -> None:
    ours = post(server, "/decode", json=as_json(PLAIN), headers={"Origin": UI_ORIGIN})
    theirs = post(server, "/decode", json=as_json(PLAIN), headers={"Origin": "http://evil.example"})

    assert ours.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "access-control-allow-origin" not in theirs.headers


def test_only_post_decodes(server: CodecServer) -> None:
    assert httpx.get(f"{server.url}/decode", timeout=10.0).status_code == 405
    assert httpx.get(f"{server.url}/healthz", timeout=10.0).json()["keys"] == ["test-payloads-1"]


def test_it_stops_cleanly_on_sigterm(tmp_path: Path, payload_keys_file: Path) -> None:
    with codec_server(tmp_path, payload_keys_file, [UI_ORIGIN]) as running:
        assert post(running, "/decode", json=as_json(PLAIN)).status_code == 200
        code = running.process.stop()

    # uvicorn finishes the requests under way, then ends by the signal it was sent.
    assert code == -signal.SIGTERM
    log = running.process.log_path.read_text()
    assert log.index("Shutting down") < log.index("Finished server process")


def token_file(tmp_path: Path, text: str = "a-token-of-enough-length\n") -> Path:
    return write_private(tmp_path / "token", text)


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("*", "--origin '*': must be the UI's origin"),
        ("http://ui.example/path", "--origin 'http://ui.example/path': must be the UI's origin"),
        ("ftp://ui.example", "--origin 'ftp://ui.example': must be the UI's origin"),
        ("http://ui.example:ui", "--origin 'http://ui.example:ui': must be the UI's origin"),
    ],
)
def test_an_origin_that_is_not_one_is_refused(
    tmp_path: Path, payload_keys_file: Path, origin: str, expected: str
) -> None:
    result = phasegate(
        "codec-server",
        "--keys",
        str(payload_keys_file),
        "--token-file",
        str(token_file(tmp_path)),
        "--origin",
        origin,
    )

    assert result.exit_code == 1
    assert result.output.strip().startswith(expected)
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        ("short\n", 0o600, "the token must be at least 16 printable characters"),
        ("one-token-of-enough-length\nanother-of-enough-length\n", 0o600, "must hold one line"),
        ("a-token-of-enough-length\n", 0o644, "may be read or written by group or others"),
    ],
)
def test_a_bad_token_file_is_one_line_without_the_token(
    tmp_path: Path, payload_keys_file: Path, text: str, mode: int, expected: str
) -> None:
    path = token_file(tmp_path, text)
    os.chmod(path, mode)

    result = phasegate(
        "codec-server",
        "--keys",
        str(payload_keys_file),
        "--token-file",
        str(path),
        "--origin",
        UI_ORIGIN,
    )

    assert result.exit_code == 1
    assert expected in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "enough-length" not in result.output


def test_the_settings_never_show_the_token(tmp_path: Path, payload_keys_file: Path) -> None:
    settings = settings_from(
        keys_file=payload_keys_file, token_file=token_file(tmp_path), origins=[UI_ORIGIN]
    )

    assert settings.token == "a-token-of-enough-length"
    assert "enough-length" not in repr(settings)
    assert "enough-length" not in str(settings)


def test_without_keys_it_says_where_they_come_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PHASEGATE_PAYLOAD_KEYS", raising=False)

    result = phasegate(
        "codec-server", "--token-file", str(token_file(tmp_path)), "--origin", UI_ORIGIN
    )

    assert result.exit_code == 1
    assert "no payload keys: give --keys FILE or set PHASEGATE_PAYLOAD_KEYS" in result.output


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    keys = write_key_file(tmp_path / "keys.json", "p1", {"p1": os.urandom(32)})
    os.chmod(keys, 0o640)

    result = phasegate(
        "codec-server",
        "--keys",
        str(keys),
        "--token-file",
        str(token_file(tmp_path)),
        "--origin",
        UI_ORIGIN,
    )

    assert result.exit_code == 1
    assert f"payload key file {keys} may be read or written by group or others" in result.output
