"""A throwaway PostgreSQL cluster from Debian's packages: initdb + pg_ctl into a folder, on a
free loopback port, for the migration tests, the benchmark and the demo.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from devstack.processes import LOOPBACK, BinaryNotFoundError, LocalProcessError, free_port

PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "phasegate"
POSTGRES_NOT_FOUND = (
    "PostgreSQL server binaries not found under /usr/lib/postgresql/<version>/bin: run "
    "`deploy/setup.sh postgres` (Debian packages postgresql, postgresql-client) or set "
    "PHASEGATE_PG_BIN"
)


def server_bin_dir() -> Path:
    """The newest installed server's bin folder (initdb, pg_ctl, pg_dump, pg_restore)."""
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
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    raise BinaryNotFoundError(f"{POSTGRES_NOT_FOUND} (tried: {', '.join(map(str, candidates))})")


@dataclass(frozen=True)
class PostgresCluster:
    """A running cluster; `dsn(db)` is a connection string for one of its databases."""

    data_dir: Path
    port: int
    bin_dir: Path
    log_path: Path
    workdir: Path

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

    def stop(self) -> None:
        subprocess.run(
            [
                *_as_server_user(),
                str(self.bin_dir / "pg_ctl"),
                "stop",
                "-D",
                str(self.data_dir),
                "-m",
                "immediate",
            ],
            capture_output=True,
            check=False,
        )
        if self.log_path.exists():
            shutil.copy(self.log_path, self.workdir / "postgres.log")
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def _as_server_user() -> list[str]:
    """initdb refuses to run as root: then the cluster runs as Debian's `postgres` user."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    if runuser is None:
        raise BinaryNotFoundError("runuser not found (util-linux): needed to run initdb as root")
    return [runuser, "-u", "postgres", "--"]


def start_postgres(workdir: Path, *, port: int | None = None) -> PostgresCluster:
    """initdb (trust auth for the loopback superuser, fsync off: it is thrown away) and start.

    The cluster and its log live in a fresh temporary folder (owned by the server's user, as
    a pytest folder of root's would not be reachable) that `stop` removes after copying the
    log to `workdir`.
    """
    bin_dir = server_bin_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="phasegate-pg-"))
    if os.geteuid() == 0:
        os.chown(base, pwd.getpwnam("postgres").pw_uid, -1)
    data_dir = base / "pgdata"
    log_path = base / "postgres.log"
    port = port or free_port()
    try:
        _run(
            [
                *_as_server_user(),
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            "initdb",
        )
        options = (
            f"-c port={port} -c listen_addresses={LOOPBACK} -c unix_socket_directories='{base}' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50 "
            "-c shared_buffers=64MB"
        )
        _run(
            [
                *_as_server_user(),
                str(bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(data_dir),
                "-l",
                str(log_path),
                "-o",
                options,
                "-w",
                "-t",
                "60",
            ],
            "pg_ctl start",
            log_path=log_path,
        )
    except BaseException:
        # A cluster that never started leaves nothing behind (a server that did is stopped
        # by `stop`).
        shutil.rmtree(base, ignore_errors=True)
        raise
    cluster = PostgresCluster(
        data_dir=data_dir, port=port, bin_dir=bin_dir, log_path=log_path, workdir=workdir
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(cluster.dsn(), connect_timeout=2):
                return cluster
        except psycopg.OperationalError as err:
            if time.monotonic() > deadline:
                cluster.stop()
                raise LocalProcessError(
                    f"PostgreSQL on port {port} does not answer: {err}"
                ) from err
            time.sleep(0.1)


@contextmanager
def postgres_cluster(workdir: Path) -> Iterator[PostgresCluster]:
    cluster = start_postgres(workdir)
    try:
        yield cluster
    finally:
        cluster.stop()


def _run(argv: list[str], what: str, *, log_path: Path | None = None) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log = log_path.read_text()[-3000:] if log_path and log_path.exists() else ""
        raise LocalProcessError(
            f"{what} failed with code {done.returncode}: {done.stderr.strip()[-2000:]}\n{log}"
        )
