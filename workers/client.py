"""One way to connect to Temporal, shared by the worker, the CLI and the tests.

Where and how to connect is Temporal's standard client configuration, the one the Temporal
CLI reads: a profile (`TEMPORAL_PROFILE`, default `default`) in `temporal.toml`
(`TEMPORAL_CONFIG_FILE`, default `~/.config/temporalio/temporal.toml`), overridden by
`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS`,
`TEMPORAL_TLS_SERVER_CA_CERT_PATH`/`_DATA`, `TEMPORAL_TLS_CLIENT_CERT_PATH`/`_DATA`,
`TEMPORAL_TLS_CLIENT_KEY_PATH`/`_DATA`, `TEMPORAL_TLS_SERVER_NAME` and `TEMPORAL_GRPC_META_*`,
overridden in turn by what the caller sets explicitly (`--address`, `Settings(...)`). An API
key may instead be a file (`PHASEGATE_API_KEY_FILE`), read again whenever it changes, so a
long-running worker follows a token that is renewed before it expires.

Every failure is one line naming the setting or the server and what to do:

    TemporalUnreachable        no working connection (also the base of the two below)
    ├── TemporalMisconfigured  the configuration itself is wrong: file, profile, certificate, key
    └── TemporalRefused        the server answered and said no: token, role, namespace

Neither the API key nor any certificate or key content ever appears in a message or a log.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import functools
import gc
import json
import logging
import os
import re
import stat
import sys
import time
import tomllib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.envconfig import ClientConfigProfile, DataSource
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from workers.codec import data_converter_for
from workers.settings import Settings

logger = logging.getLogger(__name__)

_DESCRIBE_TIMEOUT = timedelta(seconds=10)
# A certificate chain, key or token file is far smaller; anything larger is not one.
MAX_CLIENT_FILE_BYTES = 1024 * 1024
_TRUE, _FALSE = ("true", "1"), ("false", "0")


class TemporalUnreachable(RuntimeError):
    """No working connection to Temporal; the message says where we looked and what to do."""


class TemporalMisconfigured(TemporalUnreachable):
    """The client configuration cannot be used: a file, profile, certificate or key is wrong."""


class TemporalRefused(TemporalUnreachable):
    """The server answered and refused: an expired or unauthorized token, a wrong namespace."""


@dataclass(frozen=True)
class TemporalConnection:
    """Everything `Client.connect` needs, with where each part came from for messages."""

    address: str
    namespace: str
    tls: TLSConfig | bool = field(repr=False)
    api_key: str | None = field(default=None, repr=False)
    # "TEMPORAL_API_KEY", "PHASEGATE_API_KEY_FILE (/path)" or "api_key of profile ..."
    api_key_source: str | None = None
    rpc_metadata: Mapping[str, str] = field(default_factory=dict)
    # How the server certificate is checked, and which client certificate is sent.
    server_ca: str | None = None
    client_cert: str | None = None


async def connect(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Client:
    """A client for the configured server and namespace, after checking the namespace is
    there and usable; `TemporalUnreachable` (or a subclass) of one line otherwise."""
    settings = settings or Settings()
    _collect_clients_before_exit()
    connection = resolve_connection(settings)
    data_converter = data_converter_for(settings)
    try:
        client = await Client.connect(
            connection.address,
            namespace=connection.namespace,
            api_key=connection.api_key,
            tls=connection.tls,
            rpc_metadata=connection.rpc_metadata,
            data_converter=data_converter,
            runtime=runtime,
        )
    except RuntimeError as err:
        raise _connect_problem(connection, str(err)) from None
    await _check_namespace(client, connection)
    if settings.api_key_file is not None and connection.api_key is not None:
        _follow_api_key_file(
            client, settings.api_key_file, settings.api_key_refresh_seconds, connection.api_key
        )
    return client


@functools.cache
def _collect_clients_before_exit() -> None:
    """A client sits in reference cycles, so unless collected earlier it is freed while the
    interpreter shuts down, and the SDK's native threads then abort the process at exit
    (`PyGILState_Release`, temporalio/sdk-python#300). Collect it while Python still runs."""
    atexit.register(gc.collect)


# --- configuration -------------------------------------------------------------------------


def default_config_file() -> Path:
    """Where the Temporal CLI and SDKs look for `temporal.toml` when nothing says otherwise."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME", "")
        base = Path(xdg) if xdg.startswith("/") else Path.home() / ".config"
    return base / "temporalio" / "temporal.toml"


def resolve_connection(settings: Settings) -> TemporalConnection:
    """The connection `settings`, the environment and the profile describe, with every file
    read and checked; `TemporalMisconfigured` naming the setting at the first problem."""
    environ = os.environ
    config_file = settings.temporal_config_file
    if config_file is not None:
        _read(config_file, "TEMPORAL_CONFIG_FILE")
    profile_name = settings.temporal_profile or "default"
    shown_file = config_file or default_config_file()
    where = f"profile {profile_name!r} in {shown_file}"
    try:
        profile = ClientConfigProfile.load(
            settings.temporal_profile, config_source=config_file, config_file_strict=True
        )
    except RuntimeError as err:
        raise TemporalMisconfigured(_profile_problem(str(err), profile_name, shown_file)) from None
    tls_env = environ.get("TEMPORAL_TLS", "").strip()
    if tls_env and tls_env.lower() not in _TRUE + _FALSE:
        raise TemporalMisconfigured(f"TEMPORAL_TLS: {tls_env!r} is not true or false")
    _refuse_disabled_host_verification(environ, shown_file, profile_name, where)
    api_key, api_key_source = _api_key(settings, profile, where)

    tls: TLSConfig | bool = api_key is not None
    server_ca = client_cert_label = None
    if profile.tls is not None and profile.tls.disabled is not True:
        server_ca_cert, server_ca = _pem(
            profile.tls.server_root_ca_cert, "SERVER_CA_CERT", "server_ca_cert", environ, where
        )
        cert, client_cert_label = _pem(
            profile.tls.client_cert, "CLIENT_CERT", "client_cert", environ, where
        )
        key, key_label = _pem(
            profile.tls.client_private_key, "CLIENT_KEY", "client_key", environ, where
        )
        if server_ca_cert is not None and server_ca is not None:
            _certificates(server_ca_cert, server_ca)
        _check_client_pair(cert, client_cert_label, key, key_label)
        tls = TLSConfig(
            server_root_ca_cert=server_ca_cert,
            domain=profile.tls.server_name,
            client_cert=cert,
            client_private_key=key,
        )
    elif profile.tls is not None:
        tls = False
    return TemporalConnection(
        address=settings.temporal_address,
        namespace=settings.temporal_namespace,
        tls=tls,
        api_key=api_key,
        api_key_source=api_key_source,
        rpc_metadata=dict(profile.grpc_meta),
        server_ca=server_ca,
        client_cert=client_cert_label,
    )


def _profile_problem(message: str, profile: str, file: Path) -> str:
    lines = [line.strip(" |") for line in message.splitlines() if line.strip(" |^")]
    first = lines[0].removeprefix("Configuration loading error: ") if lines else message
    if first.startswith("Profile ") and first.endswith(" not found"):
        missing = "" if file.is_file() else f" ({file} does not exist)"
        return f"TEMPORAL_PROFILE: no profile {profile!r} in {file}{missing}"
    detail = f": {lines[-1]}" if len(lines) > 1 else ""
    return f"{file}: not a Temporal client configuration: {first}{detail}"


def _refuse_disabled_host_verification(
    environ: Mapping[str, str], file: Path, profile: str, where: str
) -> None:
    """The Python SDK always verifies the server's name; saying nothing would mislead."""
    fix = "set TEMPORAL_TLS_SERVER_NAME to a name in the server's certificate instead"
    value = environ.get("TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", "").strip().lower()
    if value in _TRUE:
        raise TemporalMisconfigured(
            f"TEMPORAL_TLS_DISABLE_HOST_VERIFICATION: not supported by Phasegate; {fix}"
        )
    try:
        table: Any = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    tls = table.get("profile", {}).get(profile, {}).get("tls", {})
    if isinstance(tls, dict) and tls.get("disable_host_verification") is True:
        raise TemporalMisconfigured(
            f"tls.disable_host_verification of {where}: not supported by Phasegate; {fix}"
        )


def _api_key(
    settings: Settings, profile: ClientConfigProfile, where: str
) -> tuple[str | None, str | None]:
    # An exported but empty TEMPORAL_API_KEY is no key, as for the Temporal CLI.
    given = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else ""
    if settings.api_key_file is not None:
        if given:
            raise TemporalMisconfigured(
                "TEMPORAL_API_KEY and PHASEGATE_API_KEY_FILE are both set: keep one"
            )
        return (
            read_api_key(settings.api_key_file),
            f"PHASEGATE_API_KEY_FILE ({settings.api_key_file})",
        )
    if given:
        return _valid_api_key(given.strip(), "TEMPORAL_API_KEY"), "TEMPORAL_API_KEY"
    if profile.api_key:
        source = f"api_key of {where}"
        return _valid_api_key(profile.api_key.strip(), source), source
    return None, None


def read_api_key(path: Path) -> str:
    """The API key in `path` (surrounding whitespace dropped); `TemporalMisconfigured`."""
    setting = f"PHASEGATE_API_KEY_FILE: {path}"
    try:
        text = _read(path, "PHASEGATE_API_KEY_FILE").decode("utf-8").strip()
    except UnicodeDecodeError:
        raise TemporalMisconfigured(f"{setting}: not text") from None
    return _valid_api_key(text, setting)


def _valid_api_key(key: str, setting: str) -> str:
    if not key:
        raise TemporalMisconfigured(f"{setting}: empty")
    if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        raise TemporalMisconfigured(f"{setting}: not a single token (spaces or line breaks)")
    return key


def _read(path: Path, setting: str) -> bytes:
    """The bytes of `path`, a regular file of at most `MAX_CLIENT_FILE_BYTES` (a certificate,
    key or token); `TemporalMisconfigured` saying `setting: path: why` otherwise."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError
            if not stat.S_ISREG(mode):
                raise TemporalMisconfigured(f"{setting}: {path}: not a regular file")
            data = handle.read(MAX_CLIENT_FILE_BYTES + 1)
        if len(data) > MAX_CLIENT_FILE_BYTES:
            raise TemporalMisconfigured(
                f"{setting}: {path}: larger than {MAX_CLIENT_FILE_BYTES // 1024} KiB"
            )
        return data
    except FileNotFoundError:
        why = "no such file"
    except IsADirectoryError:
        why = "a directory, not a file"
    except PermissionError:
        why = "not readable (permission denied)"
    except OSError as err:
        why = err.strerror or type(err).__name__
    raise TemporalMisconfigured(f"{setting}: {path}: {why}")


def _pem(
    source: DataSource | None, env_stem: str, key_stem: str, environ: Mapping[str, str], where: str
) -> tuple[bytes | None, str | None]:
    """The bytes of one TLS file or inline value, and how messages name it."""
    if source is None:
        return None, None
    if isinstance(source, Path):
        env = f"TEMPORAL_TLS_{env_stem}_PATH"
        setting = env if env in environ else f"tls.{key_stem}_path of {where}"
        return _read(source, setting), f"{setting}: {source}"
    env = f"TEMPORAL_TLS_{env_stem}_DATA"
    setting = env if env in environ else f"tls.{key_stem}_data of {where}"
    return (source.encode() if isinstance(source, str) else source), setting


def _certificates(data: bytes, label: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise TemporalMisconfigured(f"{label}: not a PEM certificate")
    return certificates


def _check_client_pair(
    cert: bytes | None, cert_label: str | None, key: bytes | None, key_label: str | None
) -> None:
    """A client certificate needs its key, the key must be the certificate's, and the
    certificate must be valid now."""
    if cert is None and key is None:
        return
    if cert is None or cert_label is None:
        raise TemporalMisconfigured(
            f"{(key_label or '').split(': ')[0]} is set but TEMPORAL_TLS_CLIENT_CERT_PATH is not:"
            " a client certificate needs both"
        )
    if key is None or key_label is None:
        raise TemporalMisconfigured(
            f"{cert_label.split(': ')[0]} is set but TEMPORAL_TLS_CLIENT_KEY_PATH is not:"
            " a client certificate needs both"
        )
    leaf = _certificates(cert, cert_label)[0]
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise TemporalMisconfigured(
            f"{key_label}: encrypted; Temporal clients need the key unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TemporalMisconfigured(f"{key_label}: not a PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != private_key.public_key().public_bytes(*spki):
        raise TemporalMisconfigured(f"{key_label}: not the key of the certificate {cert_label}")
    now = datetime.now(UTC)
    if leaf.not_valid_after_utc < now:
        raise TemporalMisconfigured(
            f"{cert_label}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if leaf.not_valid_before_utc > now:
        raise TemporalMisconfigured(
            f"{cert_label}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )


# --- what the server said ------------------------------------------------------------------

_STATUS_CODE = re.compile(r"code: (\w+)")
_EXPECTED_NAME = re.compile(r'expected: \w+\("?([^")]*)"?\)')


def _connect_problem(connection: TemporalConnection, message: str) -> TemporalUnreachable:
    """One line for a failed `Client.connect`, from the core SDK's error text."""
    address, tls = connection.address, connection.tls is not False
    code = _STATUS_CODE.search(message)
    if code and code.group(1) in ("PermissionDenied", "Unauthenticated"):
        return _refused(connection, _status_message(message))
    if "ConnectionRefused" in message or "tcp connect error" in message:
        return TemporalUnreachable(
            f"cannot reach Temporal at {address} (namespace {connection.namespace}): start it "
            "with `phasegate dev`, or point TEMPORAL_ADDRESS or your temporal.toml profile at "
            "your server"
        )
    if "dns error" in message or "failed to lookup address" in message:
        return TemporalUnreachable(f"cannot resolve the host of TEMPORAL_ADDRESS {address}")
    handshake = f"TLS handshake with Temporal at {address} failed"
    if "NotValidForName" in message:
        found = _EXPECTED_NAME.search(message)
        name = found.group(1) if found else "the name dialed"
        return TemporalUnreachable(
            f"{handshake}: its certificate is not valid for {name}; set "
            "TEMPORAL_TLS_SERVER_NAME to a name the certificate holds"
        )
    if "InvalidCertificate(Expired" in message:
        return TemporalUnreachable(f"{handshake}: its certificate has expired")
    if "InvalidCertificate" in message:
        trusted = (
            f"the CA in {connection.server_ca}"
            if connection.server_ca
            else "any CA this machine trusts (no TEMPORAL_TLS_SERVER_CA_CERT_PATH given)"
        )
        return TemporalUnreachable(
            f"{handshake}: its certificate is not signed by {trusted}; point "
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH at the CA that signed it"
        )
    if tls and ("InvalidContentType" in message or "CorruptMessage" in message):
        return TemporalUnreachable(
            f"Temporal at {address} does not speak TLS: set TEMPORAL_TLS=false "
            "(and drop the TLS and API key settings) for a plain server"
        )
    closed = ("transport error", "connection closed", "AlertReceived")
    if any(sign in message for sign in closed):
        if not tls:
            return TemporalUnreachable(
                f"Temporal at {address} closed the connection: it expects TLS; set "
                "TEMPORAL_TLS=true and TEMPORAL_TLS_SERVER_CA_CERT_PATH"
            )
        if connection.client_cert is None:
            return TemporalUnreachable(
                f"Temporal at {address} closed the TLS connection: it requires a client "
                "certificate; set TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH"
            )
        return TemporalUnreachable(
            f"Temporal at {address} closed the TLS connection: it did not accept the client "
            f"certificate ({connection.client_cert}); is it signed by a CA the server trusts?"
        )
    first = message.splitlines()[0] if message else "no detail"
    return TemporalUnreachable(f"cannot connect to Temporal at {address}: {first[:300]}")


def _status_message(message: str) -> str:
    found = re.search(r'message: "([^"]*)"', message)
    return found.group(1) if found else "refused"


async def _check_namespace(client: Client, connection: TemporalConnection) -> None:
    """`Client.connect` does not look at the namespace; the first poll would fail later."""
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=connection.namespace), timeout=_DESCRIBE_TIMEOUT
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise TemporalRefused(
                f"namespace {connection.namespace!r} not found at {connection.address}: create it "
                "or set TEMPORAL_NAMESPACE to one that exists"
            ) from None
        if err.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED):
            raise _refused(connection, err.message) from None
        raise TemporalUnreachable(
            f"Temporal at {connection.address} could not describe namespace "
            f"{connection.namespace!r}: {err.status.name}: {err.message}"
        ) from None


def _refused(connection: TemporalConnection, said: str) -> TemporalRefused:
    """Why the server refused us, from what the token itself claims: the server only ever
    says `Request unauthorized.`."""
    address, namespace = connection.address, connection.namespace
    if connection.api_key is None:
        return TemporalRefused(
            f"Temporal at {address} refused namespace {namespace!r} without an API key ({said}): "
            "set TEMPORAL_API_KEY or PHASEGATE_API_KEY_FILE to a token with a role on it"
        )
    claims = token_claims(connection.api_key)
    refused = f"Temporal at {address} refused the API key from {connection.api_key_source}"
    if claims is None:
        return TemporalRefused(f"{refused} ({said}): it is not a token this server accepts")
    subject = claims.get("sub")
    whose = f" (subject {subject})" if isinstance(subject, str) and len(subject) < 100 else ""
    expires = claims.get("exp")
    if isinstance(expires, int | float) and expires <= time.time():
        at = datetime.fromtimestamp(expires, UTC)
        ago = int(time.time() - expires)
        return TemporalRefused(
            f"{refused}{whose}: the token expired at {at:%H:%M:%S} UTC ({ago} s ago); get a "
            "fresh one"
        )
    granted = granted_by(claims)
    if granted is not None:
        return TemporalRefused(
            f"{refused}{whose} for namespace {namespace!r}: the token grants {granted}, no role "
            f"on {namespace!r} (check TEMPORAL_NAMESPACE, or get a token with {namespace}:write)"
        )
    return TemporalRefused(
        f"{refused}{whose} for namespace {namespace!r} ({said}): the token is not signed by a "
        "key the server trusts, or grants no role there"
    )


def granted_by(claims: Mapping[str, Any]) -> str | None:
    """What a token's `permissions` claim grants, shortened for one line (the claim comes from
    a token, so at most 10 entries of printable text); None when it has no such claim."""
    permissions = claims.get("permissions")
    if not isinstance(permissions, list):
        return None
    shown = [
        "".join(c if c.isprintable() else "?" for c in str(entry)[:80])
        for entry in permissions[:10]
    ]
    more = f" and {len(permissions) - 10} more" if len(permissions) > 10 else ""
    return (", ".join(shown) + more) or "no permissions"


def refused_call(settings: Settings, err: RPCError) -> str:
    """One line for a call the server answered with PERMISSION_DENIED after connecting: the
    token has a role on the namespace, but not one that may do this."""
    address, namespace = settings.temporal_address, settings.temporal_namespace
    try:
        connection = resolve_connection(settings)
        address, namespace = connection.address, connection.namespace
        claims = token_claims(connection.api_key) if connection.api_key else None
    except TemporalUnreachable:
        claims = None
    granted = granted_by(claims) if claims else None
    grants = f"; the token grants {granted}" if granted else ""
    return (
        f"Temporal at {address} refused this on namespace {namespace!r} "
        f"({err.message[:200]}){grants}: it needs a role that may do it "
        f"({namespace}:write starts, decides and aborts launches)"
    )


def token_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, unverified (the server verifies it), or None if it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


# --- API keys that change ------------------------------------------------------------------

_FOLLOWERS: set[asyncio.Task[None]] = set()


def _follow_api_key_file(client: Client, path: Path, every: float, current: str) -> None:
    """Give `client` (and the workers polling through it) the key in `path` whenever it
    changes, for as long as the client is in use."""
    task = asyncio.get_running_loop().create_task(
        _follow(weakref.ref(client), path, every, current), name=f"api key from {path}"
    )
    _FOLLOWERS.add(task)
    task.add_done_callback(_FOLLOWERS.discard)


async def _follow(client_ref: weakref.ref[Client], path: Path, every: float, key: str) -> None:
    problem: str | None = None
    while True:
        await asyncio.sleep(every)
        client = client_ref()
        if client is None:
            return
        try:
            latest = await asyncio.to_thread(read_api_key, path)
        except TemporalMisconfigured as err:
            if str(err) != problem:
                problem = str(err)
                logger.warning("keeping the current API key: %s", problem)
            continue
        problem = None
        if latest != key:
            client.api_key = key = latest
            logger.info("API key reloaded from %s", path)
        del client
