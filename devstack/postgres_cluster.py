"""A throwaway PostgreSQL cluster from Debian's packages: initdb into a fresh folder, then the
server as a `ManagedProcess` on a free loopback port, for the migration tests, the benchmark
and the demo. Like every process started here, a stop signal or exit stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from devstack.processes import (
    LOOPBACK,
    BinaryNotFoundError,
    LocalProcessError,
    ManagedProcess,
    as_user,
    free_port,
    wait_until_ready,
)

PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "phasegate"
POSTGRES_NOT_FOUND = (
    "PostgreSQL server binaries not found under /usr/lib/postgresql/<version>/bin: run "
    "`deploy/setup.sh postgres` (Debian packages postgresql, postgresql-client) or set "
    "PHASEGATE_PG_BIN"
)
READY_TIMEOUT_S = 60.0
# Durability is pointless for a cluster that is thrown away; speed is not.
THROWAWAY_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "50",
    "shared_buffers": "64MB",
}


def server_bin_dir() -> Path:
    """The newest installed server's bin folder (initdb, postgres, pg_dump, pg_restore)."""
    explicit = os.environ.get("PHASEGATE_PG_BIN")
    candidates = (
        [Path(explicit)]
        if explicit
        else sorted(
            (path / "bin" for path in PG_ROOT.glob("*") if path.name.isdigit()),
            key=lambda path: int(path.parent.name),
            reverse=True,
        )
    )
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    raise BinaryNotFoundError(f"{POSTGRES_NOT_FOUND} (tried: {', '.join(map(str, candidates))})")


@dataclass(frozen=True)
class PostgresCluster:
    """A running cluster; `dsn(db)` is a connection string for one of its databases."""

    server: ManagedProcess
    data_dir: Path
    bin_dir: Path

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def log_path(self) -> Path:
        return self.server.log_path

    def dsn(self, database: str = "postgres") -> str:
        return f"host={LOOPBACK} port={self.port} user={SUPERUSER} dbname={database}"

    def create_database(self, name: str) -> str:
        """A fresh empty database (dropped first if it exists); returns its DSN."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Stop the server and throw its data away."""
        self.server.stop()
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def _server_user() -> str | None:
    """initdb and postgres refuse to run as root: then they run as Debian's `postgres` user."""
    return "postgres" if os.geteuid() == 0 else None


def start_postgres(workdir: Path, *, port: int | None = None) -> PostgresCluster:
    """initdb (trust auth for the loopback superuser, durability off: it is thrown away) and
    start the server, ready for connections.

    The cluster lives in a fresh temporary folder (owned by the server's user, as a pytest
    folder of root's would not be reachable) that `stop` removes; the server's log is
    `workdir/postgres.log`.
    """
    bin_dir = server_bin_dir()
    user = _server_user()
    workdir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="phasegate-pg-"))
    if user is not None:
        shutil.chown(base, user)
    data_dir = base / "pgdata"
    port = port or free_port()
    settings = {
        "port": str(port),
        "listen_addresses": LOOPBACK,
        "unix_socket_directories": str(base),
        **THROWAWAY_SETTINGS,
    }
    try:
        _initdb(bin_dir, data_dir, user)
        server = ManagedProcess(
            "postgres",
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data_dir),
                *(arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")),
            ],
            workdir=workdir,
            port=port,
            url=f"postgresql://{LOOPBACK}:{port}",
            stop_signal=signal.SIGQUIT,  # immediate shutdown: nothing in it needs keeping
            user=user,
        )
        cluster = PostgresCluster(server=server, data_dir=data_dir, bin_dir=bin_dir)
        # Stops the server if it exits, does not answer in time, or a stop signal comes.
        wait_until_ready(server, cluster.accepts_connections, READY_TIMEOUT_S)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return cluster


@contextmanager
def postgres_cluster(workdir: Path) -> Iterator[PostgresCluster]:
    cluster = start_postgres(workdir)
    try:
        yield cluster
    finally:
        cluster.stop()


def _initdb(bin_dir: Path, data_dir: Path, user: str | None) -> None:
    argv = [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, "--auth=trust"]
    done = subprocess.run(
        [*argv, "--encoding=UTF8", "--locale=C"],
        capture_output=True,
        text=True,
        check=False,
        **as_user(user),
    )
    if done.returncode != 0:
        raise LocalProcessError(
            f"initdb failed with code {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
