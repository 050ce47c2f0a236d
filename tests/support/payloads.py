"""The payload keys the encryption tests use, and `phasegate codec-server` as its own process.

The committed `payload-test.keys` is checked out 0644, which workers and the codec server
refuse; tests use a 0600 copy of it in a private folder. Unlike the backup keys, it is not put
in the environment: a test opts in to encrypted payloads, every other test keeps them in clear.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.converter import DataConverter

from devstack.processes import ManagedProcess, free_port, wait_until_ready
from workers.codec import ENCODING, PayloadKeys, encrypted_data_converter, load_payload_keys

TEST_PAYLOAD_KEYS_FILE = Path(__file__).resolve().parent / "payload-test.keys"
CODEC_READY_TIMEOUT_S = 60.0


def write_private(path: Path, text: str) -> Path:
    """`text` in a new file at `path` only its owner may read (0600)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    return path


def write_key_file(path: Path, current: str, keys: dict[str, bytes]) -> Path:
    """A payload key file (0600) holding `keys`, with `current` encrypting."""
    material = {kid: base64.b64encode(key).decode("ascii") for kid, key in keys.items()}
    return write_private(path, json.dumps({"current": current, "keys": material}))


@pytest.fixture(scope="session")
def payload_keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0600 copy of the committed test payload keys."""
    folder = tmp_path_factory.mktemp("payload-keys")
    return write_private(folder / "payload-test.keys", TEST_PAYLOAD_KEYS_FILE.read_text())


@pytest.fixture(scope="session")
def payload_keys(payload_keys_file: Path) -> PayloadKeys:
    return load_payload_keys(payload_keys_file)


@pytest.fixture(scope="session")
def encrypted_converter(payload_keys: PayloadKeys) -> DataConverter:
    """The data converter of a worker and CLI given the test payload keys."""
    return encrypted_data_converter(payload_keys)


def with_converter(client: Client, converter: DataConverter) -> Client:
    """A client of the same server and namespace as `client`, converting with `converter`."""
    config = client.config()
    config["data_converter"] = converter
    return Client(**config)


@dataclass(frozen=True)
class CodecServer:
    """A running `phasegate codec-server`: its base URL and the token it requires."""

    url: str
    token: str
    process: ManagedProcess


@contextmanager
def codec_server(
    workdir: Path, keys_file: Path, origins: Sequence[str], token: str | None = None
) -> Iterator[CodecServer]:
    """`phasegate codec-server` on a free loopback port, ready once /healthz answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    token = token or secrets.token_urlsafe(32)
    token_file = write_private(workdir / f"codec-token-{secrets.token_hex(4)}", token + "\n")
    port = free_port()
    argv = [
        str(Path(sys.executable).parent / "phasegate"),
        "codec-server",
        "--keys",
        str(keys_file),
        "--token-file",
        str(token_file),
        "--port",
        str(port),
        *(arg for origin in origins for arg in ("--origin", origin)),
    ]
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess("codec-server", argv, workdir=workdir, port=port, url=url)
    with process:
        wait_until_ready(process, lambda: _answers(f"{url}/healthz"), CODEC_READY_TIMEOUT_S)
        yield CodecServer(url=url, token=token, process=process)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def stored_payloads(message: Message, *, field: str = "") -> Iterator[tuple[str, Payload]]:
    """Every payload in `message` (a history, an event, ...) with the name of the field that
    holds it, search attributes left out: they are stored in clear by design, for queries."""
    if isinstance(message, Payload):
        yield field, message
        return
    for descriptor, value in message.ListFields():
        kind = descriptor.message_type
        if kind is None or descriptor.name == "search_attributes":
            continue
        if kind.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, Message):
                    yield from stored_payloads(item, field=f"{descriptor.name}[{key}]")
            continue
        if descriptor.is_repeated:
            values: Iterable[object] = value
        else:
            values = [value]
        for item in values:
            if isinstance(item, Message):
                # Named by the field that holds the list, not the list's own `payloads`.
                inner = field if descriptor.name == "payloads" else descriptor.name
                yield from stored_payloads(item, field=inner)


# What the SDK itself records about a local activity run (its result is a payload of its own,
# encrypted) and about a patch, outside the payload codec: names, counters and times, no data.
_BOOKKEEPING: dict[str, frozenset[str]] = {
    "details[data]": frozenset(
        {
            "seq",
            "attempt",
            "activity_id",
            "activity_type",
            "complete_time",
            "backoff",
            "original_schedule_time",
            "activation_index",
        }
    ),
    "details[patch-data]": frozenset({"id", "deprecated"}),
}


def _bookkeeping(event: HistoryEvent, field: str, payload: Payload) -> bool:
    """Whether `payload` is the SDK's own record of a marker (the keys it writes, nothing else)."""
    keys = _BOOKKEEPING.get(field)
    if keys is None or event.event_type != EventType.EVENT_TYPE_MARKER_RECORDED:
        return False
    if payload.metadata.get("encoding") != b"json/plain":
        return False
    try:
        record = json.loads(payload.data)
    except ValueError:
        return False
    return isinstance(record, dict) and set(record) <= keys


def clear_text_in(history: WorkflowHistory, values: Sequence[str]) -> list[str]:
    """What a reader of the stored `history` without the keys can see: each payload not
    encrypted (by the field holding it) and each of `values` found anywhere, inside payloads
    (decoded from their base64) or in the history's other fields. Empty when sealed."""
    found = []
    raw = b""
    for event in history.events:
        for field, payload in stored_payloads(event):
            if payload.metadata.get("encoding") != ENCODING and not _bookkeeping(
                event, field, payload
            ):
                found.append(f"a payload in {field} is not encrypted")
            raw += payload.SerializeToString()
    text = history.to_json()
    for value in values:
        if value.encode() in raw or value in text:
            found.append(f"{value!r} in clear")
    return found
