"""Webhook notifications delivered to a real local HTTP receiver."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from activities.notify import NotifyActivities
from devstack.processes import free_port
from schemas.basics import SecretRef
from schemas.notification_spec import Webhook
from schemas.notify_messages import Notification


class Receiver(ThreadingHTTPServer):
    received: list[tuple[dict[str, str], dict[str, Any]]]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.startswith("/missing"):
            self.send_response(404)
        else:
            self.server.received.append((dict(self.headers), body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", free_port()), _Handler)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def note(*hooks: Webhook) -> Notification:
    return Notification(
        event="rolled_back",
        launch_id="launch-1",
        service="checkout",
        version="2.0.0",
        summary="rolled back: analysis failed",
        webhooks=list(hooks),
    )


async def test_delivers_with_secret_headers_and_reports_the_dead_receiver(
    receiver: Receiver, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("abc123\n")
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    hooks = [
        Webhook(name="ops", url=url, headers={"Authorization": {"file": str(token)}}),  # type: ignore[dict-item]
        Webhook(name="dead", url=f"http://127.0.0.1:{free_port()}/hook"),
        Webhook(name="quiet", url=url, events=["completed"]),
    ]
    async with httpx.AsyncClient() as http:
        result = await NotifyActivities(http).send_notification(note(*hooks))
    assert result.delivered == ["ops"]
    assert list(result.failed) == ["dead"]
    headers, body = receiver.received[0]
    assert len(receiver.received) == 1
    assert headers["Authorization"] == "abc123"
    assert body["event"] == "rolled_back"
    assert body["text"] == "[checkout 2.0.0] rolled back: analysis failed"


async def test_a_missing_secret_is_reported_not_sent(receiver: Receiver) -> None:
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    hook = Webhook(name="ops", url=url, headers={"X-Token": {"env": "PHASEGATE_TEST_ABSENT"}})  # type: ignore[dict-item]
    async with httpx.AsyncClient() as http:
        result = await NotifyActivities(http).send_notification(note(hook))
    assert "PHASEGATE_TEST_ABSENT is not set" in result.failed["ops"]
    assert receiver.received == []


async def test_a_secret_url_is_called_and_no_failure_or_log_quotes_a_secret(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = receiver.server_address[1]
    monkeypatch.setenv("PHASEGATE_TEST_HOOK_URL", f"http://127.0.0.1:{port}/hooks/tok-5c2e81")
    monkeypatch.setenv("PHASEGATE_TEST_GONE_URL", f"http://127.0.0.1:{port}/missing/tok-93ad07")
    monkeypatch.setenv("PHASEGATE_TEST_BAD_HEADER", "tok-b41f66\r\nX-Injected: 1")
    hooks = [
        Webhook(name="ops", url=SecretRef(env="PHASEGATE_TEST_HOOK_URL")),
        Webhook(name="gone", url=SecretRef(env="PHASEGATE_TEST_GONE_URL")),
        Webhook(
            name="bad-header",
            url=f"http://127.0.0.1:{port}/plain",
            headers={"X-Token": SecretRef(env="PHASEGATE_TEST_BAD_HEADER")},
        ),
    ]
    with caplog.at_level(logging.DEBUG):
        async with httpx.AsyncClient() as http:
            result = await NotifyActivities(http).send_notification(note(*hooks))
    assert result.delivered == ["ops"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "HTTP Request: POST" in logged  # httpx logs each request with its URL
    assert "tok-" not in logged
    assert result.failed["gone"] == "answered HTTP 404 Not Found"
    assert result.failed["bad-header"].startswith("LocalProtocolError: ")
    assert len(receiver.received) == 1
    assert "tok-" not in json.dumps(result.model_dump())
