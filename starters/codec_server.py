"""`phasegate codec-server`: Temporal's remote codec protocol over the deployment's payload
keys, so the Temporal UI and CLI show launches decrypted to whoever holds the bearer token.

    POST /encode, /{namespace}/encode   {"payloads": [...]} -> the same, encrypted
    POST /decode, /{namespace}/decode   {"payloads": [...]} -> the same, decrypted
    GET  /healthz                       200 while the server runs

Payloads are protobuf JSON (`temporal.api.common.v1.Payloads`: base64 metadata values and
data). Every POST needs `Authorization: Bearer <token>` (the token file's one line), checked in
constant time before the body is read; tokens are never logged and uvicorn's access log is
off. Answers: 401 without the token, 413 for a body over 4 MiB or over 1000 payloads, 400 for a
body that is not payloads JSON, 422 for a payload the keys cannot decrypt, each with
{"error": "<one line>"}. CORS admits only the UI origins given (never `*`): POST with the
headers content-type, authorization and x-namespace, credentials allowed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads

from activities.backup_store import read_private_file
from activities.errors import ConfigurationError
from approvals.service import read_body
from workers.codec import EncryptionCodec, PayloadKeys, PayloadUnreadable, load_payload_keys

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_PAYLOADS = 1000
MIN_TOKEN_CHARS = 16
MAX_TOKEN_FILE_BYTES = 4096
DEFAULT_PORT = 8081
CORS_HEADERS = ["content-type", "authorization", "x-namespace"]
PAYLOADS_SHAPE = '{"payloads": [{"metadata": {"encoding": "<base64>"}, "data": "<base64>"}]}'

logger = logging.getLogger("phasegate.codec_server")

_Conversion = Callable[[Payload], Payload]


class CodecServerError(ConfigurationError):
    """The codec server cannot start as asked; one line naming the option or file."""


@dataclass(frozen=True)
class CodecServerSettings:
    keys: PayloadKeys
    token: str = field(repr=False)
    origins: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT


def ui_origin(value: str) -> str:
    """`value` as a CORS origin (`scheme://host[:port]`, http or https, nothing after it)."""
    parts = urlsplit(value.strip())
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or not _port_valid(parts)
    ):
        raise CodecServerError(
            f"--origin {value!r}: must be the UI's origin, scheme://host[:port] (http or "
            "https, no path, never *)"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _port_valid(parts: SplitResult) -> bool:
    try:
        parts.port  # noqa: B018  (raises for a port that is not one)
    except ValueError:
        return False
    return True


def load_token(path: Path) -> str:
    """The bearer token in `path` (one line, at least 16 characters, a file only its owner
    may read); `CodecServerError` of one line that never shows it."""
    data = read_private_file(path, "--token-file", MAX_TOKEN_FILE_BYTES, CodecServerError)
    try:
        lines = data.decode("ascii").strip().splitlines()
    except UnicodeDecodeError:
        raise CodecServerError(f"--token-file {path}: the token must be ASCII text") from None
    if len(data) > MAX_TOKEN_FILE_BYTES or len(lines) != 1:
        raise CodecServerError(f"--token-file {path}: must hold one line, the token")
    token = lines[0].strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in token):
        raise CodecServerError(
            f"--token-file {path}: the token must be at least {MIN_TOKEN_CHARS} printable "
            "characters without spaces (e.g. `openssl rand -base64 32`)"
        )
    return token


def settings_from(
    *,
    keys_file: Path | None,
    token_file: Path,
    origins: Sequence[str],
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
) -> CodecServerSettings:
    """Everything the server needs, read and checked now; `ConfigurationError` of one line."""
    if keys_file is None:
        raise CodecServerError(
            "no payload keys: give --keys FILE or set PHASEGATE_PAYLOAD_KEYS (the file the "
            "workers encrypt payloads with)"
        )
    if not origins:
        raise CodecServerError("--origin URL: the Temporal UI's origin, allowed by CORS")
    return CodecServerSettings(
        keys=load_payload_keys(keys_file),
        token=load_token(token_file),
        origins=tuple(dict.fromkeys(ui_origin(origin) for origin in origins)),
        host=host,
        port=port,
    )


class CodecEndpoints:
    """The encode and decode endpoints over one codec, behind one bearer token."""

    def __init__(self, codec: EncryptionCodec, token: str) -> None:
        self._codec = codec
        self._token = token.encode("ascii")

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "keys": self._codec.key_ids})

    async def encode(self, request: Request) -> Response:
        return await self._convert(request, self._codec.encrypt)

    async def decode(self, request: Request) -> Response:
        return await self._convert(request, self._codec.decrypt)

    async def _convert(self, request: Request, convert: _Conversion) -> Response:
        if not self._authorized(request):
            return JSONResponse(
                {"error": "Authorization: Bearer <token> required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="phasegate-codec"'},
            )
        body = await read_body(request, MAX_BODY_BYTES)
        if body is None:
            return _error(413, f"body: larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB")
        payloads = _payloads(body)
        if isinstance(payloads, Response):
            return payloads
        try:
            converted = Payloads(payloads=[convert(payload) for payload in payloads.payloads])
        except PayloadUnreadable as err:
            return _error(422, str(err))
        document = json_format.MessageToDict(converted)
        document.setdefault("payloads", [])
        return JSONResponse(document)

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        try:
            offered = token.strip().encode("ascii")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(offered, self._token)


def _payloads(body: bytes) -> Payloads | Response:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return _error(400, f"body: not JSON; send {PAYLOADS_SHAPE}")
    if not isinstance(document, dict) or not isinstance(document.get("payloads"), list):
        return _error(400, f"body: must be {PAYLOADS_SHAPE}")
    if len(document["payloads"]) > MAX_PAYLOADS:
        return _error(413, f"payloads: more than {MAX_PAYLOADS} in one request")
    unreadable = _not_base64(document["payloads"])
    if unreadable:
        return _error(400, f"payloads: {unreadable} is not base64; send {PAYLOADS_SHAPE}")
    try:
        return json_format.ParseDict(document, Payloads())
    except (json_format.ParseError, RecursionError):
        return _error(
            400, f"payloads: not Temporal payloads in protobuf JSON; send {PAYLOADS_SHAPE}"
        )


def _not_base64(payloads: list[object]) -> str:
    """The first field of `payloads` that should be base64 and is not ("payload 1 data"), or
    "". Protobuf's JSON parser would drop the characters it does not know and go on."""
    for number, payload in enumerate(payloads, start=1):
        if not isinstance(payload, dict):
            continue  # the protobuf parser names it
        metadata = payload.get("metadata")
        fields = [("data", payload.get("data"))]
        if isinstance(metadata, dict):
            fields += [("metadata", value) for value in metadata.values()]
        for name, value in fields:
            if isinstance(value, str) and not _is_base64(value):
                return f"payload {number} {name}"
    return ""


def _is_base64(text: str) -> bool:
    """Standard or URL-safe base64, padded or not, as protobuf JSON writes bytes."""
    try:
        base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _error(status_code: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status_code)


def create_app(settings: CodecServerSettings) -> Starlette:
    """The codec server as an ASGI app."""
    endpoints = CodecEndpoints(EncryptionCodec(settings.keys), settings.token)
    return Starlette(
        routes=[
            Route("/healthz", endpoints.healthz, methods=["GET"]),
            Route("/encode", endpoints.encode, methods=["POST"]),
            Route("/decode", endpoints.decode, methods=["POST"]),
            Route("/{namespace}/encode", endpoints.encode, methods=["POST"]),
            Route("/{namespace}/decode", endpoints.decode, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.origins),
                allow_methods=["POST"],
                allow_headers=CORS_HEADERS,
                allow_credentials=True,
                max_age=600,
            )
        ],
    )


def serve(settings: CodecServerSettings) -> None:
    """Serve until SIGINT or SIGTERM, then finish the requests under way."""
    logger.info(
        "phasegate codec server on http://%s:%d for %s, payload keys %s from %s",
        settings.host,
        settings.port,
        ", ".join(settings.origins),
        ", ".join(sorted(settings.keys.keys)),
        settings.keys.source,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,
        server_header=False,
        log_level="info",
        timeout_graceful_shutdown=10,
    )
