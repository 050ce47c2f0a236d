"""A real Temporal cluster for the tests: the server built from go.temporal.io/server (by
deploy/temporal/build.sh) on a throwaway PostgreSQL, with TLS for clients and between its own
services, and authorization by JWT access tokens from the local identity provider.

Its configuration is deploy/temporal/config/production.yaml, the template docker-compose's
`cluster` profile uses too; here its environment points it at free loopback ports, certificates
from a fresh CA and the provider's published keys. All five services run in one process
(frontend, internal-frontend, history, matching, worker): the internal frontend is how the
server's own system worker (schedules, batch operations) gets past authorization, and it only
accepts certificates from a second CA that never signs a client's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import psycopg
from google.protobuf.duration_pb2 import Duration
from psycopg import sql
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.service import ConnectConfig, RPCError, RPCStatusCode, ServiceClient, TLSConfig

from devstack.identity_provider import TEMPORAL_AUDIENCE, IdentityProvider, machine_token
from devstack.pki import Authority
from devstack.postgres_cluster import SUPERUSER, PostgresCluster
from devstack.processes import (
    LOOPBACK,
    BinaryNotFoundError,
    LocalProcessError,
    ManagedProcess,
    wait_until_ready,
)
from workflows.visibility import SEARCH_ATTRIBUTES

# One source for the version: deploy/temporal/versions.env says the same
# (tests/devstack/test_temporal_cluster.py checks).
TEMPORAL_SERVER_VERSION = "v1.32.0"
REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "deploy" / "temporal" / "build.sh"
CONFIG_TEMPLATE = REPO / "deploy" / "temporal" / "config" / "production.yaml"
SERVER_NOT_FOUND = (
    "the Temporal server {version} is not built: run `deploy/setup.sh test` (or `bash "
    "deploy/temporal/build.sh`, which builds it from Go modules into {path}; about 8 minutes)"
)
SERVICES = ("frontend", "internal-frontend", "history", "matching", "worker")
SERVER_NAME = "localhost"
NAMESPACE = "default"
RETENTION = timedelta(days=1)
# Joining the membership ring, acquiring the history shards and reading the keys take a few
# seconds; a loaded machine can take much longer.
READY_TIMEOUT_S = 90.0
_POLL_S = 0.2
_RPC_TIMEOUT = timedelta(seconds=5)
# One connection attempt; a server that takes the TCP connection but never answers the
# handshake must not hold the start past READY_TIMEOUT_S.
_CONNECT_TIMEOUT_S = 10.0
_SQL_TOOL_TIMEOUT_S = 120.0
# Small pools: the PostgreSQL the tests share allows 50 connections and the five services
# each keep their own.
_SQL_MAX_CONNS = "3"
_SQL_VIS_MAX_CONNS = "2"
# Tests register search attributes and use them at once; without this the frontend serves
# its cached list for up to a minute.
# Eager activity dispatch: a worker gets the activity a workflow task schedules in the answer
# to that task, one round trip sooner than by polling.
_DYNAMIC_CONFIG = """\
system.forceSearchAttributesCacheRefreshOnRead:
  - value: true
system.enableActivityEagerExecution:
  - value: true
"""
_KINDS = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}

_LOW_PORTS = (20_000, 32_768)
_DEFAULTED = (
    "FRONTEND_BIND_ON_IP",
    "TEMPORAL_JWT_KEY_REFRESH",
    "TEMPORAL_JWT_PERMISSIONS_CLAIM",
    "PROMETHEUS_ENDPOINT",
)

TokenSource = Callable[[str], str]


@dataclass(frozen=True)
class ServerBuild:
    """The cached build: the server, its SQL schema tool and the PostgreSQL schema."""

    directory: Path

    @property
    def server(self) -> Path:
        return self.directory / "temporal-server"

    @property
    def sql_tool(self) -> Path:
        return self.directory / "temporal-sql-tool"

    def versioned_schema(self, store: str) -> Path:
        """The schema folder the SQL tool updates `store` ("temporal" or "visibility") from."""
        return self.directory / "schema" / "postgresql" / "v12" / store / "versioned"


def temporal_cache() -> Path:
    return Path(
        os.environ.get(
            "PHASEGATE_TEMPORAL_CACHE", Path.home() / ".cache" / "phasegate" / "temporal"
        )
    )


def find_build() -> ServerBuild:
    """The complete cached build of TEMPORAL_SERVER_VERSION (where deploy/temporal/build.sh
    puts it); BinaryNotFoundError says how to build it."""
    build = ServerBuild(temporal_cache() / f"server-{TEMPORAL_SERVER_VERSION}")
    if not (build.directory / ".complete").is_file() or not os.access(build.server, os.X_OK):
        raise BinaryNotFoundError(
            SERVER_NOT_FOUND.format(version=TEMPORAL_SERVER_VERSION, path=build.directory)
        )
    return build


@dataclass(frozen=True)
class TemporalCluster:
    """A running cluster. Clients reach `address` over TLS for `server_name`, trusting
    `ca_file`, showing `client_cert`/`client_key`, with a bearer token from `token()`.

    `token(client)` is a fresh access token for one of the provider's machine clients:
    `phasegate-worker` (writes `default`), `phasegate-admin` (administers the cluster),
    `phasegate-reader` (reads `default`), `phasegate-other` (writes only `other`) and
    `phasegate-short` (writes `default` for two seconds).
    """

    address: str
    namespace: str
    server_name: str
    ca_file: Path
    client_cert: Path
    client_key: Path
    directory: Path
    issuer: str
    server: ManagedProcess = field(repr=False, compare=False)
    token_source: TokenSource = field(repr=False, compare=False)

    def token(self, client: str = "phasegate-worker") -> str:
        return self.token_source(client)

    def tls_config(self, *, client_cert: bool = True) -> TLSConfig:
        """The SDK's TLS settings for this cluster; without `client_cert` the server refuses
        the handshake."""
        return TLSConfig(
            server_root_ca_cert=self.ca_file.read_bytes(),
            domain=self.server_name,
            client_cert=self.client_cert.read_bytes() if client_cert else None,
            client_private_key=self.client_key.read_bytes() if client_cert else None,
        )

    def client_env(self, client: str = "phasegate-worker") -> dict[str, str]:
        """Temporal's standard client environment (what the SDKs' envconfig and the `temporal`
        CLI read) for connecting as machine client `client`, with a token fetched now."""
        return {
            "TEMPORAL_ADDRESS": self.address,
            "TEMPORAL_NAMESPACE": self.namespace,
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(self.ca_file),
            "TEMPORAL_TLS_SERVER_NAME": self.server_name,
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(self.client_cert),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(self.client_key),
            "TEMPORAL_API_KEY": self.token(client),
        }

    @property
    def log_path(self) -> Path:
        return self.server.log_path


@contextmanager
def temporal_cluster(
    directory: Path,
    postgres: PostgresCluster,
    provider: IdentityProvider,
    *,
    search_attributes: Mapping[str, str] = SEARCH_ATTRIBUTES,
) -> Iterator[TemporalCluster]:
    """The cluster on free loopback ports, its databases on `postgres`, trusting the access
    tokens `provider` signs for the audience `temporal`; namespace `default` registered with
    `search_attributes`. Stopped, and its databases dropped, on the way out."""
    with start_temporal_cluster(
        directory,
        postgres,
        issuer=provider.issuer,
        jwks_uri=provider.jwks_uri,
        audience=TEMPORAL_AUDIENCE,
        token_source=lambda client: machine_token(provider, client),
        search_attributes=search_attributes,
    ) as cluster:
        yield cluster


@contextmanager
def start_temporal_cluster(
    directory: Path,
    postgres: PostgresCluster,
    *,
    issuer: str,
    jwks_uri: str,
    token_source: TokenSource,
    audience: str = "",
    search_attributes: Mapping[str, str] = SEARCH_ATTRIBUTES,
    history_shards: int = 1,
) -> Iterator[TemporalCluster]:
    """The cluster trusting tokens signed with the keys at `jwks_uri` (and for `audience`, if
    given); `token_source(client)` gives a token for a client name (`phasegate-admin` must
    administer the cluster)."""
    build = find_build()
    directory.mkdir(parents=True, exist_ok=True)
    pki = _issue_certificates(directory)
    suffix = uuid.uuid4().hex[:8]
    databases = (f"temporal_{suffix}", f"temporal_visibility_{suffix}")
    try:
        _create_databases(build, postgres, directory, *databases)
        dynamic_config = directory / "dynamicconfig.yaml"
        dynamic_config.write_text(_DYNAMIC_CONFIG)
        ports = _free_ports(_port_names())
        env = {
            "LOG_LEVEL": "warn",
            "NUM_HISTORY_SHARDS": str(history_shards),
            "POSTGRES_SEEDS": LOOPBACK,
            "DB_PORT": str(postgres.port),
            "POSTGRES_USER": SUPERUSER,
            "POSTGRES_PWD": "",
            "DBNAME": databases[0],
            "VISIBILITY_DBNAME": databases[1],
            "SQL_MAX_CONNS": _SQL_MAX_CONNS,
            "SQL_VIS_MAX_CONNS": _SQL_VIS_MAX_CONNS,
            "BIND_ON_IP": LOOPBACK,
            "TEMPORAL_BROADCAST_ADDRESS": LOOPBACK,
            "TEMPORAL_TLS_CLIENT_CA": str(pki.ca_file),
            "TEMPORAL_TLS_FRONTEND_CERT": str(pki.frontend[0]),
            "TEMPORAL_TLS_FRONTEND_KEY": str(pki.frontend[1]),
            "TEMPORAL_TLS_INTERNODE_CA": str(pki.internode_ca_file),
            "TEMPORAL_TLS_INTERNODE_CERT": str(pki.internode[0]),
            "TEMPORAL_TLS_INTERNODE_KEY": str(pki.internode[1]),
            "TEMPORAL_TLS_INTERNODE_SERVER_NAME": SERVER_NAME,
            "TEMPORAL_JWT_KEY_SOURCE": jwks_uri,
            "TEMPORAL_JWT_AUDIENCE": audience,
            "DYNAMIC_CONFIG_FILE_PATH": str(dynamic_config),
            **{name: str(port) for name, port in ports.items()},
            # The template's other settings keep their defaults whatever this process has set.
            **dict.fromkeys(_DEFAULTED, ""),
        }
        server = _start_server(build, directory, ports["FRONTEND_GRPC_PORT"], env)
        cluster = TemporalCluster(
            address=f"{LOOPBACK}:{ports['FRONTEND_GRPC_PORT']}",
            namespace=NAMESPACE,
            server_name=SERVER_NAME,
            ca_file=pki.ca_file,
            client_cert=pki.client[0],
            client_key=pki.client[1],
            directory=directory,
            issuer=issuer,
            server=server,
            token_source=token_source,
        )
        try:
            _in_own_loop(_bootstrap(cluster, search_attributes))
            yield cluster
        finally:
            server.stop()
    finally:
        _drop_databases(postgres, databases)


def _free_ports(names: Sequence[str]) -> dict[str, int]:
    """A distinct free loopback port for each name, below 32768: the server records its
    services' ports in a PostgreSQL `smallint`. (The kernel hands out ephemeral ports from
    32768 up, so these also do not collide with `free_port`'s.)"""
    ports: dict[str, int] = {}
    while len(ports) < len(names):
        port = _LOW_PORTS[0] + secrets.randbelow(_LOW_PORTS[1] - _LOW_PORTS[0])
        if port not in ports.values() and _bindable(port):
            ports[names[len(ports)]] = port
    return ports


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _port_names() -> list[str]:
    names = ["FRONTEND_GRPC_PORT"]
    for service in SERVICES:
        prefix = service.upper().replace("-", "_")
        names.append(f"{prefix}_MEMBERSHIP_PORT")
        if service != "frontend":
            names.append(f"{prefix}_GRPC_PORT")
    return names


@dataclass(frozen=True)
class _Certificates:
    ca_file: Path
    frontend: tuple[Path, Path]
    client: tuple[Path, Path]
    internode_ca_file: Path
    internode: tuple[Path, Path]


def _issue_certificates(directory: Path) -> _Certificates:
    """The client CA (signing the frontend's certificate and the clients') and the internode CA
    (signing only the certificate the services show each other)."""
    authority = Authority.create(directory / "pki", "Phasegate Temporal CA")
    internode = Authority.create(directory / "internode-pki", "Phasegate Temporal Internode CA")
    return _Certificates(
        ca_file=authority.ca_file,
        frontend=authority.issue("frontend", dns=(SERVER_NAME,), ips=(LOOPBACK,)),
        client=authority.issue("client", dns=(), ips=(), common_name="phasegate-client"),
        internode_ca_file=internode.ca_file,
        internode=internode.issue("internode", dns=(SERVER_NAME,), ips=(LOOPBACK,)),
    )


def _create_databases(
    build: ServerBuild, postgres: PostgresCluster, directory: Path, main: str, visibility: str
) -> None:
    """Both databases with the schema of this server version, as an operator sets them up."""
    for database, store in ((main, "temporal"), (visibility, "visibility")):
        _sql_tool(build, postgres, directory, database, ["create-database"])
        _sql_tool(build, postgres, directory, database, ["setup-schema", "-v", "0.0"])
        schema = build.versioned_schema(store)
        _sql_tool(build, postgres, directory, database, ["update-schema", "-d", str(schema)])


def _sql_tool(
    build: ServerBuild,
    postgres: PostgresCluster,
    directory: Path,
    database: str,
    command: Sequence[str],
) -> None:
    argv = [
        str(build.sql_tool),
        "--plugin",
        "postgres12",
        "--ep",
        LOOPBACK,
        "-p",
        str(postgres.port),
        "-u",
        SUPERUSER,
        "--db",
        database,
        *command,
    ]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            cwd=directory,
            timeout=_SQL_TOOL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        raise LocalProcessError(
            f"temporal-sql-tool {' '.join(command)} on {database} took over "
            f"{_SQL_TOOL_TIMEOUT_S:g}s"
        ) from err
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip())[-2000:]
        raise LocalProcessError(
            f"temporal-sql-tool {' '.join(command)} on {database} failed with code "
            f"{done.returncode}: {said}"
        )


def _drop_databases(postgres: PostgresCluster, databases: Sequence[str]) -> None:
    if not postgres.server.running:
        return
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        for name in databases:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _start_server(
    build: ServerBuild, directory: Path, port: int, env: Mapping[str, str]
) -> ManagedProcess:
    argv = [str(build.server), "--config-file", str(CONFIG_TEMPLATE), "start"]
    for service in SERVICES:
        argv += ["--service", service]
    server = ManagedProcess(
        "temporal-server",
        argv,
        workdir=directory,
        port=port,
        url=f"{LOOPBACK}:{port}",
        env=env,
    )
    # Listening is not serving; `_bootstrap` waits for that.
    wait_until_ready(server, lambda: _tcp_open(port), READY_TIMEOUT_S)
    return server


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return True
    except OSError:
        return False


def _in_own_loop(coroutine: Coroutine[object, object, None]) -> None:
    """Run `coroutine` to the end on an event loop of its own, in a thread, so that this works
    the same from plain code and from code already running a loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coroutine).result()


async def _bootstrap(cluster: TemporalCluster, search_attributes: Mapping[str, str]) -> None:
    """Register the namespace and the search attributes as the administrator, retrying until
    the server serves; raise with its log's last lines if it does not in time, or at once if
    it refuses the administrator's token (its keys are read before it serves)."""
    token = cluster.token("phasegate-admin")
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_error = "no answer yet"
    while True:
        cluster.server.raise_if_exited(" before it was ready")
        try:
            # The bare service client: this is the operator's setup, not a Phasegate client.
            service = await asyncio.wait_for(
                ServiceClient.connect(
                    ConnectConfig(
                        target_host=cluster.address, tls=cluster.tls_config(), api_key=token
                    )
                ),
                _CONNECT_TIMEOUT_S,
            )
            await _register(service, cluster.namespace, search_attributes)
            return
        except TimeoutError:
            last_error = f"no connection within {_CONNECT_TIMEOUT_S:g}s"
        except (RPCError, RuntimeError) as err:
            last_error = f"{type(err).__name__}: {err}"
            refused = (
                err.status == RPCStatusCode.PERMISSION_DENIED
                if isinstance(err, RPCError)
                else "PermissionDenied" in str(err)
            )
            if refused:
                raise LocalProcessError(
                    f"the Temporal server at {cluster.address} refused the administrator's "
                    f"token ({last_error}); does it read the keys that signed it? Last lines "
                    f"of {cluster.server.log_path}:\n{cluster.server.log_tail()}"
                ) from None
        if time.monotonic() > deadline:
            raise LocalProcessError(
                f"the Temporal server at {cluster.address} did not register namespace "
                f"{cluster.namespace!r} within {READY_TIMEOUT_S:g}s ({last_error}); last lines "
                f"of {cluster.server.log_path}:\n{cluster.server.log_tail()}"
            )
        await asyncio.sleep(_POLL_S)


async def _register(
    service: ServiceClient, namespace: str, search_attributes: Mapping[str, str]
) -> None:
    try:
        await service.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=namespace,
                workflow_execution_retention_period=_duration(RETENTION),
            ),
            timeout=_RPC_TIMEOUT,
        )
    except RPCError as err:
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise
    await service.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=namespace), timeout=_RPC_TIMEOUT
    )
    if not search_attributes:
        return
    try:
        await service.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={key: _KINDS[kind] for key, kind in search_attributes.items()},
            ),
            timeout=_RPC_TIMEOUT,
        )
    except RPCError as err:
        # An earlier attempt added them and its answer was lost.
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise


def _duration(value: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(value)
    return duration
