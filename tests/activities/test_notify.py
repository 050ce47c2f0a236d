"""Webhook notifications delivered to a real local HTTP receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from activities.notify import NotifyActivities
from devstack.processes import free_port
from schemas.notification_spec import Webhook
from schemas.notify_messages import Notification


class Receiver(ThreadingHTTPServer):
    received: list[tuple[dict[str, str], dict[str, Any]]]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
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
