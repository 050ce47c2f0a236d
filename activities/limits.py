"""What this worker lets a plan touch, from the worker's own configuration: which secrets it
may read, which hosts its webhooks, probes and Prometheus queries may reach, which databases it
may connect to, and where it may read and write files.

The limits are a YAML file named by PHASEGATE_WORKER_LIMITS. Without one a worker reads no
secret, reaches only public addresses, connects to no database, and reads or writes no file a
plan names; every refusal says which entry of the limits would allow it. The same checks run
when a launch starts (`activities/admission.py`) and again where the access happens, because
a launch may outlive a change of limits and a name may resolve elsewhere later.

    secrets:    {env: [names or globs], files: [folders]}
    network:    {hosts: [host globs or CIDRs; default "*"], private: [CIDRs or host globs]}
    databases:  [host[:port][/dbname] globs, or a socket folder /path]
    files:      {flags: [folders], read: [folders], backups: [folders]}
    kubernetes: {namespaces: [globs; default "*", which leaves out kube-*]}

Relative folders are taken against the limits file's own folder.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpcore
import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import AfterValidator, Field, PrivateAttr

from activities.errors import ConfigurationError
from schemas.basics import SecretRef, StrictModel
from schemas.problems import PlanError, parse_document

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# How a refusal points at the fix.
WHERE = "the worker's limits (PHASEGATE_WORKER_LIMITS)"
MAX_ENTRIES = 256
# A limits file is a short list; anything longer is a mistake.
MAX_LIMITS_BYTES = 256 * 1024
# A secret is a token or a connection string, never a large file.
MAX_SECRET_BYTES = 64 * 1024
# Names that reach a cloud's instance metadata (credentials) wherever they resolve.
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
# NAT64 embeds an IPv4 address; it is judged as that address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _host_pattern(value: str) -> str:
    """A CIDR (`10.0.0.0/8`, `::1/128`, `127.0.0.1`) or a host glob (`*.example.com`)."""
    value = value.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        pass
    if not value or not all((c.isascii() and c.isalnum()) or c in "-._*?" for c in value):
        raise ValueError(f"{value!r} is neither a CIDR nor a host name (globs * and ? allowed)")
    return value


def _env_pattern(value: str) -> str:
    if not value or not all((c.isascii() and c.isalnum()) or c in "_*?" for c in value):
        raise ValueError(f"{value!r} is not an environment variable name (globs * and ? allowed)")
    return value


def _namespace_pattern(value: str) -> str:
    if not value or not all(c in "abcdefghijklmnopqrstuvwxyz0123456789-*?" for c in value):
        raise ValueError(f"{value!r} is not a namespace name (globs * and ? allowed)")
    return value


@dataclass(frozen=True)
class DatabasePattern:
    """`host[:port][/dbname]` with globs, `[v6]` for an IPv6 host, or a socket folder `/path`."""

    host: str
    port: str = "*"
    dbname: str = "*"

    @classmethod
    def parse(cls, text: str) -> DatabasePattern:
        text = text.strip()
        if text.startswith("/"):
            return cls(host=str(Path(text)))
        host, _, dbname = text.partition("/")
        port = "*"
        if host.startswith("["):
            inner, _, rest = host[1:].partition("]")
            host = inner
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"{text!r}: write [v6-address]:port/dbname")
                port = rest[1:]
        elif ":" in host:
            host, _, port = host.partition(":")
        _host_pattern(host)
        if not port or not all(c.isdigit() or c in "*?" for c in port):
            raise ValueError(f"{text!r}: the port must be a number or a glob")
        if "/" in dbname or (dbname == "" and text.endswith("/")):
            raise ValueError(f"{text!r}: write host[:port][/dbname]")
        return cls(host=host.lower(), port=port, dbname=dbname or "*")

    def matches(self, host: str, port: str, dbname: str) -> bool:
        return (
            fnmatch.fnmatchcase(host.lower(), self.host)
            and fnmatch.fnmatchcase(port, self.port)
            and fnmatch.fnmatchcase(dbname, self.dbname)
        )


def _database_pattern(value: str) -> str:
    DatabasePattern.parse(value)
    return value.strip()


Entry = Annotated[str, Field(min_length=1, max_length=512)]
Folder = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f\x7f]+$")]
HostPattern = Annotated[Entry, AfterValidator(_host_pattern)]


def _entries(default: Sequence[str] = ()) -> Any:
    return Field(default_factory=lambda: list(default), max_length=MAX_ENTRIES)


class SecretLimits(StrictModel):
    env: list[Annotated[Entry, AfterValidator(_env_pattern)]] = _entries()
    files: list[Folder] = _entries()


class NetworkLimits(StrictModel):
    """`hosts` a plan may reach at all (`*`: any); a non-public address (loopback, link-local
    and cloud metadata, private ranges, ...) also needs a CIDR or host name in `private`."""

    hosts: list[HostPattern] = _entries(["*"])
    private: list[HostPattern] = _entries()

    def name_problem(self, host: str, *, shown: str | None = None) -> str | None:
        """What is wrong with reaching `host`, judged by its name alone; `shown` names the host
        in the message instead (for a URL that is a secret)."""
        name = _normal(host)
        label = shown or name
        if name in METADATA_NAMES and name not in self.private:
            return (
                f"{label} serves cloud instance metadata; {WHERE} allow it only by name "
                "in network.private"
            )
        # A name outside the globs may still be allowed by its addresses, when CIDRs are given.
        by_address = any(_is_cidr(entry) for entry in self.hosts)
        if _as_address(name) is None and not _matches_name(name, self.hosts) and not by_address:
            return f"host {label} is not in network.hosts of {WHERE}"
        return None

    def problem(
        self, host: str, addresses: Sequence[IPAddress], *, shown: str | None = None
    ) -> str | None:
        """What is wrong with reaching `host` at `addresses` (all of them must be allowed);
        `shown` names the host in the message instead (e.g. for a URL that is a secret)."""
        name = _normal(host)
        label = shown or name
        problem = self.name_problem(name, shown=shown)
        if problem is not None:
            return problem
        networks = [ipaddress.ip_network(entry) for entry in self.hosts if _is_cidr(entry)]
        if not _matches_name(name, self.hosts) and not (
            addresses and all(any(_judged(a) in net for net in networks) for a in addresses)
        ):
            return f"host {label} is not in network.hosts of {WHERE}"
        private = [ipaddress.ip_network(entry) for entry in self.private if _is_cidr(entry)]
        by_name = _matches_name(name, self.private)
        for address in addresses:
            kind = non_public(address)
            if kind is None or by_name or any(_judged(address) in net for net in private):
                continue
            at = "" if str(address) == label else f" ({address})"
            article = "an" if kind[0] in "aeiou" else "a"
            return (
                f"{label}{at} is {article} {kind} address: the worker reaches it only when "
                f"network.private in {WHERE} lists it (a CIDR, or the host name)"
            )
        return None

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` resolves to now; an address literal is itself."""
        literal = _as_address(_normal(host))
        if literal is not None:
            return [literal]
        infos = socket.getaddrinfo(_normal(host), port, type=socket.SOCK_STREAM)
        return _addresses(info[4][0] for info in infos)

    async def aresolve(self, host: str, port: int) -> list[IPAddress]:
        literal = _as_address(_normal(host))
        if literal is not None:
            return [literal]
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(_normal(host), port, type=socket.SOCK_STREAM)
        return _addresses(info[4][0] for info in infos)

    def check_url(self, url: str, *, where: str, shown: str | None = None) -> None:
        """Raise `ConfigurationError` unless the URL's host may be reached now; `shown` names
        the host in the message instead (for a URL that is a secret)."""
        host, port = _checked_origin(url, where, shown)
        try:
            addresses = self.resolve(host, port)
        except (OSError, UnicodeError, ValueError) as err:
            raise ConfigurationError(
                f"{where}: cannot resolve {shown or host}: {_why(err)}"
            ) from None
        problem = self.problem(host, addresses, shown=shown)
        if problem is not None:
            raise ConfigurationError(f"{where}: {problem}")

    async def acheck_url(self, url: str, *, where: str, shown: str | None = None) -> None:
        """`check_url` without blocking the event loop (the name is resolved in a thread)."""
        await asyncio.to_thread(self.check_url, url, where=where, shown=shown)


class FileLimits(StrictModel):
    """Folders a plan may name files in: flag files written, manifests, migration folders and
    CA bundles read, database backups written."""

    flags: list[Folder] = _entries()
    read: list[Folder] = _entries()
    backups: list[Folder] = _entries()


class KubernetesLimits(StrictModel):
    """Namespaces a plan may act in; `*` leaves out kube-*, which must be named."""

    namespaces: list[Annotated[Entry, AfterValidator(_namespace_pattern)]] = _entries(["*"])

    def problem(self, namespace: str) -> str | None:
        for pattern in self.namespaces:
            if namespace.startswith("kube-") and not pattern.startswith("kube-"):
                continue
            if fnmatch.fnmatchcase(namespace, pattern):
                return None
        return f"namespace {namespace} is not in kubernetes.namespaces of {WHERE}"


class WorkerLimits(StrictModel):
    secrets: SecretLimits = SecretLimits()
    network: NetworkLimits = NetworkLimits()
    databases: list[Annotated[Entry, AfterValidator(_database_pattern)]] = _entries()
    files: FileLimits = FileLimits()
    kubernetes: KubernetesLimits = KubernetesLimits()

    # Files no plan may read whatever the folders say: the worker's own key and limits.
    _never_read: tuple[str, ...] = PrivateAttr(default=())

    def protecting(self, *paths: str | Path) -> WorkerLimits:
        """These limits, refusing `paths` as secret files even inside an allowed folder."""
        copy = self.model_copy()
        copy._never_read = (*self._never_read, *(str(_resolved(p)) for p in paths))
        return copy

    def under(self, base_dir: Path) -> WorkerLimits:
        """These limits with relative folders taken against `base_dir`."""

        def absolute(folders: list[str]) -> list[str]:
            return [str((base_dir / Path(folder).expanduser()).resolve()) for folder in folders]

        return self.model_copy(
            update={
                "secrets": self.secrets.model_copy(update={"files": absolute(self.secrets.files)}),
                "files": FileLimits(
                    flags=absolute(self.files.flags),
                    read=absolute(self.files.read),
                    backups=absolute(self.files.backups),
                ),
            }
        )

    # --- secrets -----------------------------------------------------------------------

    def secret_problem(self, ref: SecretRef) -> str | None:
        """Why this worker may not read `ref`, or None; says nothing of its value."""
        if ref.env is not None:
            if any(fnmatch.fnmatchcase(ref.env, pattern) for pattern in self.secrets.env):
                return None
            return (
                f"environment variable {ref.env} is not one this worker may read: "
                f"add it to secrets.env in {WHERE}"
            )
        assert ref.file is not None
        problem = _outside(ref.file, self.secrets.files, "secrets.files")
        if problem is None and str(_resolved(ref.file)) in self._never_read:
            return f"file {ref.file} is the worker's own configuration, never a plan's secret"
        return problem

    # --- files -------------------------------------------------------------------------

    def flag_file_problem(self, path: str) -> str | None:
        return _outside(path, self.files.flags, "files.flags")

    def read_problem(self, path: str) -> str | None:
        return _outside(path, self.files.read, "files.read")

    def backup_problem(self, path: str) -> str | None:
        return _outside(path, self.files.backups, "files.backups")

    # --- databases ---------------------------------------------------------------------

    def database_problem(self, dsn: str, *, also: Iterable[str] = ()) -> str | None:
        """Why the database a DSN names (and the databases `also` of the same server) may not
        be reached, or None. Never repeats the DSN or a parse error: either may hold a password."""
        try:
            params = conninfo_to_dict(dsn)
        except (psycopg.Error, ValueError, TypeError):
            return (
                "the DSN is not a valid libpq connection string (not shown: it may hold a password)"
            )
        for key in ("service", "servicefile"):
            if key in params:
                return f"the DSN names `{key}`: give host, port and dbname in the DSN itself"
        hosts = _split(params.get("hostaddr")) or _split(params.get("host"))
        if not hosts:
            return (
                "the DSN names no host: give host=... (the worker's local socket is not for plans)"
            )
        ports = _split(params.get("port")) or ["5432"]
        if len(ports) == 1:
            ports = ports * len(hosts)
        if len(ports) != len(hosts):
            return "the DSN gives a different number of hosts and ports"
        dbname = str(params.get("dbname") or params.get("user") or "")
        if not dbname:
            return "the DSN names no dbname: give dbname=..."
        patterns = [DatabasePattern.parse(entry) for entry in self.databases]
        for host, port in zip(hosts, ports, strict=True):
            for name in (dbname, *also):
                if not any(pattern.matches(host, port, name) for pattern in patterns):
                    shown = f"[{host}]" if ":" in host else host
                    return f"database {shown}:{port}/{name} is not in databases of {WHERE}" + (
                        " (a restore reconnects to it to recreate the target)"
                        if name in also
                        else ""
                    )
        return None


def _why(err: Exception) -> str:
    if isinstance(err, TimeoutError):
        return "no answer in time"
    return (err.strerror if isinstance(err, OSError) else None) or str(err) or type(err).__name__


def _split(value: object) -> list[str]:
    return [part.strip() for part in str(value or "").split(",") if part.strip()]


# --- addresses and names ---------------------------------------------------------------


def _normal(host: str) -> str:
    return host.strip().strip("[]").lower().rstrip(".")


def _as_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _addresses(raw: Iterable[object]) -> list[IPAddress]:
    found: list[IPAddress] = []
    for value in raw:
        address = _as_address(str(value).split("%")[0])
        if address is not None and address not in found:
            found.append(address)
    return found


def _is_cidr(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry)
    except ValueError:
        return False
    return True


def _matches_name(name: str, patterns: Sequence[str]) -> bool:
    return any(not _is_cidr(p) and fnmatch.fnmatchcase(name, p) for p in patterns)


def _judged(address: IPAddress) -> IPAddress:
    """An IPv6 address carrying an IPv4 one (mapped, NAT64) is judged as that IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def non_public(address: IPAddress) -> str | None:
    """Which kind of non-public address this is (`loopback`, `link-local`, ...), or None for an
    address on the public internet."""
    address = _judged(address)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"  # 169.254.169.254, the cloud metadata service, is one
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved or not address.is_global:
        return "non-public"
    return None


def url_origin(url: str) -> tuple[str, int]:
    """(host, port) a URL reaches; `ValueError` saying what is wrong (never quoting it: the URL
    may be a secret)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ValueError("is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("needs an http:// or https:// URL with a host")
    return parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)


def _checked_origin(url: str, where: str, shown: str | None) -> tuple[str, int]:
    try:
        return url_origin(url)
    except ValueError as err:
        raise ConfigurationError(f"{where}: {shown + ' ' if shown else ''}{err}") from None


# --- paths -----------------------------------------------------------------------------


def _resolved(path: str | Path) -> Path:
    return Path(path).resolve()


def _outside(path: str, roots: Sequence[str], limit: str) -> str | None:
    """Why `path` (symlinks and `..` resolved) is not inside one of `roots`, or None."""
    try:
        resolved = _resolved(path)
        inside = any(resolved.is_relative_to(_resolved(root)) for root in roots)
    except (OSError, RuntimeError, ValueError):
        return f"{path} is not a usable path"
    if inside:
        return None
    return f"{path} is not inside a folder of {limit} in {WHERE}"


# --- loading and the limits in force -----------------------------------------------------


def load_limits(path: Path) -> WorkerLimits:
    """The limits in `path`, relative folders taken against its folder; a `PlanError` naming
    every problem otherwise."""
    source = str(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_LIMITS_BYTES + 1)
    except OSError as err:
        raise PlanError(source, [f"(file): cannot read: {err.strerror}"]) from None
    if len(data) > MAX_LIMITS_BYTES:
        raise PlanError(source, [f"(file): larger than {MAX_LIMITS_BYTES // 1024} KiB"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError(source, ["(file): is not UTF-8 text"]) from None
    if "\x00" in text:
        raise PlanError(source, ["(file): is not text (it holds NUL bytes)"])
    # A file of comments only (a fresh worker's) is the safe default, not a missing mapping.
    empty = all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines())
    limits = parse_document(
        "{}" if empty else text,
        WorkerLimits,
        source=source,
        document="limits",
        fields="secrets, network, databases, files, kubernetes",
    )
    return limits.under(path.resolve().parent).protecting(path)


_in_force = WorkerLimits()


def configure(limits: WorkerLimits) -> None:
    """The limits `resolve_secret` applies from now on in this process (one worker, one set)."""
    global _in_force
    _in_force = limits


def in_force() -> WorkerLimits:
    return _in_force


# --- the HTTP client's guard -------------------------------------------------------------


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves every host it connects to, checks every address against the limits, and then
    connects only to those checked addresses: a name cannot resolve elsewhere in between."""

    def __init__(
        self,
        network: NetworkLimits,
        trusted: Iterable[tuple[str, int]] = (),
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._network = network
        self._trusted = frozenset((_normal(host), port) for host, port in trusted)
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if (_normal(host), port) in self._trusted:
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._network.aresolve(host, port)
        except (OSError, TimeoutError, UnicodeError, ValueError) as err:
            raise httpcore.ConnectError(f"cannot resolve {host}: {_why(err)}") from None
        problem = self._network.problem(host, addresses)
        if problem is not None:
            raise ConfigurationError(f"refused: {problem}")
        error: Exception = httpcore.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as err:
                error = err
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise ConfigurationError("refused: a plan's requests never go to a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(
    network: NetworkLimits,
    *,
    verify: ssl.SSLContext | bool = True,
    trusted: Iterable[tuple[str, int]] = (),
    inner: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncHTTPTransport:
    """httpx's transport connecting through `GuardedBackend`; environment proxies are not used
    (a proxy would reach hosts the worker cannot check)."""
    transport = httpx.AsyncHTTPTransport(verify=verify, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=GuardedBackend(network, trusted, inner),
    )
    return transport


def origin_of(url: str | None) -> list[tuple[str, int]]:
    """`[(host, port)]` of a URL the worker's own configuration names (e.g. the approval
    service), which its requests may reach whatever the limits say; [] for None."""
    try:
        return [url_origin(url)] if url else []
    except ValueError:
        return []  # not a URL: nothing to trust
