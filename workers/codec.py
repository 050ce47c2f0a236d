"""Payload encryption: every payload a worker or the CLI sends through Temporal (workflow and
activity inputs and results, signals, queries, updates, memos, schedules' arguments, failure
messages and stack traces) rests in history as AES-256-GCM ciphertext.

The key file (`PHASEGATE_PAYLOAD_KEYS`, mode 0600, JSON or YAML) has the shape of the backup
key file: `current` names the key that encrypts, `keys` holds every key that still decrypts.
Workers, the CLI and the codec server of a deployment hold the same file. To rotate, add a key
and make it `current`; keep the old one while histories written with it are kept (a random
96-bit nonce per payload: rotate well before 2^32 payloads under one key).

    {"current": "p2", "keys": {"p1": "<base64 of 32 random bytes>", "p2": "..."}}

An encrypted payload:

    metadata  encoding: binary/encrypted, encryption-key-id: <key id>
    data      nonce (12 random bytes) | AES-256-GCM ciphertext of the original payload's
              serialized protobuf (its metadata included), tag at the end

with the additional data `binary/encrypted` NUL `<key id>`, so a key id swapped on a payload
fails to authenticate. A payload whose encoding is not `binary/encrypted` decodes unchanged:
histories written before payloads were encrypted stay readable.

Keys are read from a file only. An environment variable holding key bytes would be copied to
every child process, shown by `docker inspect` and kept in shell history; containers mount the
file as a secret instead (docker-compose.yml).

    ConfigurationError
    ├── PayloadKeysError    the key file cannot be used: missing, readable by others, malformed
    └── PayloadUnreadable   a payload names a key id the key file lacks, or fails to
                            authenticate (changed, or encrypted under another key of that id)
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from activities.backup_store import KID_PATTERN, KeyRing, read_key_file
from activities.errors import ConfigurationError
from workers.settings import Settings

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
TAG_BYTES = 16
# How a missing or refused key file points at the fix.
WHERE = "the payload key file (PHASEGATE_PAYLOAD_KEYS)"
_KID = re.compile(KID_PATTERN.strip("^$"))


class PayloadKeysError(ConfigurationError):
    """The payload key file cannot be used; one line naming the file, never a key."""


class PayloadUnreadable(ConfigurationError):
    """A payload cannot be decrypted; one line naming its key id, never its data."""


class PayloadKeys(KeyRing):
    """The keys payloads are encrypted with."""

    kind = "payload key"


def load_payload_keys(path: str | Path) -> PayloadKeys:
    """The keys in `path`; a `PayloadKeysError` of one line naming the file and each field that
    is wrong (never a key's value), and refusing a file others may read."""
    current, keys = read_key_file(Path(path), "payload key file", WHERE, PayloadKeysError)
    return PayloadKeys(current=current, keys=keys, source=str(path))


def _associated_data(kid: str) -> bytes:
    return ENCODING + b"\x00" + kid.encode("ascii")


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each whole payload, under the current key; decodes under any key held."""

    def __init__(self, keys: PayloadKeys) -> None:
        self._keys = keys
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.keys.items()}

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        kid = self._keys.current
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[kid].encrypt(
            nonce, payload.SerializeToString(), _associated_data(kid)
        )
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID: kid.encode("ascii")}, data=nonce + sealed
        )

    def decrypt(self, payload: Payload) -> Payload:
        """The original payload; one that is not encrypted comes back as it is."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        kid = _key_id(payload)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            held = ", ".join(self.key_ids)
            raise PayloadUnreadable(
                f"a payload was encrypted with payload key {kid!r}, which "
                f"{_file_of(self._keys)} does not hold (it holds {held}): add key {kid!r} "
                "back under keys"
            )
        data = payload.data
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise PayloadUnreadable(
                f"a payload encrypted with payload key {kid!r} is cut short "
                f"({len(data)} bytes, at least {NONCE_BYTES + TAG_BYTES} expected)"
            )
        try:
            plaintext = cipher.decrypt(
                data[:NONCE_BYTES], data[NONCE_BYTES:], _associated_data(kid)
            )
        except InvalidTag:
            raise PayloadUnreadable(
                f"a payload encrypted with payload key {kid!r} does not authenticate: it was "
                f"changed, or encrypted under another key named {kid!r}"
            ) from None
        try:
            return Payload.FromString(plaintext)
        except DecodeError:
            raise PayloadUnreadable(
                f"a payload encrypted with payload key {kid!r} authenticates but holds no payload"
            ) from None


def _file_of(keys: PayloadKeys) -> str:
    return f"payload key file {keys.source}" if keys.source else WHERE


def _key_id(payload: Payload) -> str:
    raw = payload.metadata.get(KEY_ID)
    if raw is None:
        raise PayloadUnreadable(f"an encrypted payload has no {KEY_ID} in its metadata")
    try:
        kid = raw.decode("ascii")
    except UnicodeDecodeError:
        kid = ""
    if not _KID.fullmatch(kid):
        raise PayloadUnreadable(
            f"an encrypted payload's {KEY_ID} does not match {KID_PATTERN} (not shown)"
        )
    return kid


class WithoutPayloadKeys(PayloadCodec):
    """What a client without payload keys converts with: payloads go out in clear, and an
    encrypted one coming in is one line saying which setting is missing, not a traceback."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        for payload in payloads:
            if payload.metadata.get("encoding") == ENCODING:
                raise PayloadUnreadable(
                    f"a payload is encrypted (payload key {_key_id(payload)!r}) and no payload "
                    "keys are set: point PHASEGATE_PAYLOAD_KEYS at the deployment's payload key "
                    "file"
                )
        return list(payloads)


def encrypted_data_converter(keys: PayloadKeys) -> DataConverter:
    """The pydantic data converter with every payload encrypted under `keys`, failure messages
    and stack traces included."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def data_converter_for(settings: Settings) -> DataConverter:
    """What workers and the CLI convert payloads with: encrypted under the keys
    `settings.payload_keys` names, in clear when it is unset (an encrypted payload read
    then is a `PayloadUnreadable` naming the setting). `PayloadKeysError` for a key file that
    cannot be used."""
    if settings.payload_keys is None:
        return dataclasses.replace(pydantic_data_converter, payload_codec=WithoutPayloadKeys())
    return encrypted_data_converter(load_payload_keys(settings.payload_keys))
