"""Secrets never leave the worker: real launches use every kind of secret a plan can name, then
every workflow history, worker log line, notification, CLI output and failure reason is
searched for their values.

The secrets: webhook headers from the environment and from a file, a webhook URL from the
environment, Prometheus' URL (a token in its path) and bearer token through a proxy that
refuses anything else, migration DSNs with a password PostgreSQL really checks, and two bad
DSNs holding a password: one psycopg cannot parse, one libpq refuses while quoting it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from google.protobuf.json_format import MessageToDict
from psycopg import sql
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from devstack.postgres_cluster import PostgresCluster
from devstack.processes import ManagedProcess, free_port, start_prometheus, wait_for_first_scrape
from schemas.launch_messages import LaunchResult
from schemas.plan import LaunchPlan
from tests.support.cli import against
from tests.support.launches import start_launch
from tests.support.plans import plan_dict
from tests.support.postgres import SEEDED_ROWS, CheckoutDatabase, migration_plan, migrations
from tests.support.receiver import Receiver, webhook_receiver
from tests.support.servers import canary_share
from workers.settings import Settings

pytestmark = pytest.mark.integration


def token(label: str) -> str:
    return f"{label}-{secrets.token_hex(12)}"


# --- the servers the secrets open -------------------------------------------------------


@dataclass
class PrometheusProxy:
    """Prometheus behind a path token and a bearer token: only a request with both gets in."""

    url: str
    admitted: int = 0
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def prometheus_proxy(upstream: str, path_token: str, bearer: str) -> Iterator[PrometheusProxy]:
    proxy = PrometheusProxy(url="")
    prefix = f"/{path_token}"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.forward()

        def do_POST(self) -> None:
            self.forward()

        def forward(self) -> None:
            allowed = (
                self.path.startswith(f"{prefix}/")
                and self.headers.get("Authorization") == f"Bearer {bearer}"
            )
            with proxy.lock:
                if allowed:
                    proxy.admitted += 1
                else:
                    proxy.refused += 1
            if not allowed:
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            length = int(self.headers.get("Content-Length") or 0)
            answer = httpx.request(
                self.command,
                upstream + self.path.removeprefix(prefix),
                content=self.rfile.read(length) if length else None,
                headers={"Content-Type": self.headers.get("Content-Type", "text/plain")},
                timeout=10,
            )
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("Content-Type", "text/plain"))
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}{prefix}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """Prometheus scraping itself: `sum(up)` is 1 once it has."""
    port = free_port()
    with start_prometheus(
        scrape_targets={"self": [f"127.0.0.1:{port}"]},
        workdir=tmp_path_factory.mktemp("prometheus"),
        port=port,
    ) as running:
        wait_for_first_scrape(running)
        yield running


def password_role(cluster: PostgresCluster) -> tuple[str, str]:
    """A superuser that must give its password (SCRAM) over TCP; every other user of the
    shared test cluster keeps trust authentication."""
    role, password = f"secret_{uuid.uuid4().hex[:8]}", token("pg")
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        row = conn.execute("SHOW hba_file").fetchone()
        assert row is not None
        hba = Path(str(row[0]))
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")
    wrong = f"host=127.0.0.1 port={cluster.port} user={role} password=wrong dbname=postgres"
    deadline = time.monotonic() + 10
    while not (refusal := refused(wrong)):  # the reload takes effect a moment later
        assert time.monotonic() < deadline, "the cluster still accepts a wrong password"
        time.sleep(0.05)
    assert "password authentication failed" in refusal
    return role, password


def refused(dsn: str) -> str:
    """Why the server refuses a connection with `dsn`, or "" when it accepts it."""
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.OperationalError as err:
        return str(err)
    return ""


# --- where a secret could leak ----------------------------------------------------------


class LogLines(logging.Handler):
    """Every record any logger of this process writes, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def every_log_line() -> Iterator[LogLines]:
    root = logging.getLogger()
    handler, level = LogLines(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.setLevel(level)
        root.removeHandler(handler)


def strings(value: Any) -> Iterator[str]:
    """Every string in a history event, payloads decoded from base64 to their text."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "data" and isinstance(item, str) and "metadata" in value:
                yield base64.b64decode(item).decode("utf-8", errors="replace")
            else:
                yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


async def histories(client: Client, workflow_id: str, run_id: str) -> dict[str, str]:
    """The text of every run of the workflow and of every child it started, recursively."""
    found: dict[str, str] = {}
    pending = [(workflow_id, run_id)]
    while pending:
        wid, rid = pending.pop()
        history = await client.get_workflow_handle(wid, run_id=rid).fetch_history()
        found[f"{wid}/{rid}"] = "\n".join(
            text for event in history.events for text in strings(MessageToDict(event))
        )
        for event in history.events:
            if event.HasField("child_workflow_execution_started_event_attributes"):
                child = event.child_workflow_execution_started_event_attributes
                pending.append(
                    (child.workflow_execution.workflow_id, child.workflow_execution.run_id)
                )
            if event.HasField("workflow_execution_continued_as_new_event_attributes"):
                attributes = event.workflow_execution_continued_as_new_event_attributes
                pending.append((wid, attributes.new_execution_run_id))
    return found


# --- the launches -----------------------------------------------------------------------


@dataclass
class Secrets:
    """Every secret value of the test, by what it is."""

    values: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, value: str) -> str:
        self.values[name] = value
        return value

    def found_in(self, text: str) -> list[str]:
        return [name for name, value in self.values.items() if value in text]


@dataclass
class Launched:
    workflow_id: str
    run_id: str
    result: LaunchResult


async def launch_all(
    env: WorkflowEnvironment, task_queue: str, plans: dict[str, dict[str, Any]]
) -> dict[str, Launched]:
    """Start every plan at once and wait for every one to end."""
    handles = {
        name: await start_launch(env.client, LaunchPlan.model_validate(plan), task_queue)
        for name, plan in plans.items()
    }
    results = await asyncio.wait_for(
        asyncio.gather(*(handle.result() for handle in handles.values())), timeout=240
    )
    return {
        name: Launched(handle.id, handle.first_execution_run_id or "", result)
        for (name, handle), result in zip(handles.items(), results, strict=True)
    }


def launch_plans(
    db: CheckoutDatabase, tmp_path: Path, receiver: Receiver, hook_header: Path, bearer: Path
) -> dict[str, dict[str, Any]]:
    """Four launches sharing the secret Prometheus and webhooks: a flag launch analysed through
    Prometheus, a migration on password DSNs watched through it, and two migrations on DSNs
    that cannot work."""
    shared: dict[str, Any] = {
        "analysis": {"scraped": {"query": "sum(up)", "min": 1, "interval": "1s", "count": 2}},
        "notifications": [
            {
                "name": "secret-url",
                "url": {"env": "PHASEGATE_TEST_HOOK_URL"},
                "headers": {"X-Token": {"env": "PHASEGATE_TEST_HOOK_TOKEN"}},
            },
            {
                "name": "plain-url",
                "url": f"{receiver.url}/plain",
                "headers": {"Authorization": {"file": str(hook_header)}},
            },
        ],
    }
    prometheus = {"url": {"env": "PHASEGATE_TEST_PROM_URL"}, "bearer_token": {"file": str(bearer)}}
    folder = migrations(db.workdir)
    plans = {
        "flag": plan_dict(
            tmp_path / "flags.json",
            phases=[
                {
                    "name": "soft-launch",
                    "kind": "soft_launch",
                    "steps": [{"weight": 50, "analysis": ["scraped"]}],
                },
                {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
            ],
        ),
        "migration": migration_plan(
            db,
            folder,
            source={"env": "PHASEGATE_TEST_SOURCE_DSN"},
            target={"file": str(tmp_path / "target.dsn")},
            watch={"analysis": ["scraped"]},
        ),
        "refused DSN": migration_plan(db, folder, source={"env": "PHASEGATE_TEST_BAD_DSN"}),
        "unparsable DSN": migration_plan(
            db, folder, source={"env": "PHASEGATE_TEST_UNPARSABLE_DSN"}
        ),
    }
    for plan in plans.values():
        plan.update(json.loads(json.dumps(shared)))
        plan["targets"]["prometheus"] = dict(prometheus)
    return plans


async def leak_sites(
    client: Client,
    settings: Settings,
    launches: dict[str, Launched],
    receiver: Receiver,
    logs: LogLines,
) -> dict[str, str]:
    """Every place a secret could have gone, as text: histories, results, CLI output,
    notification bodies and the worker's log."""
    texts: dict[str, str] = {}
    for name, launch in launches.items():
        for run, text in (await histories(client, launch.workflow_id, launch.run_id)).items():
            texts[f"history of {run} ({name})"] = text
        texts[f"result of {name}"] = launch.result.model_dump_json()
        for args in (("status", launch.workflow_id), ("status", launch.workflow_id, "--json")):
            shown = await asyncio.to_thread(against, settings, *args)
            assert shown.exit_code == 0, shown.output
            texts[f"phasegate {' '.join(args)}"] = shown.output
    listing = await asyncio.to_thread(against, settings, "list", "--service", "checkout")
    assert listing.exit_code == 0, listing.output
    texts["phasegate list"] = listing.output
    with receiver.lock:
        texts["notification bodies"] = json.dumps([body for _, body in receiver.posts])
    texts["log lines"] = "\n".join(logs.lines)
    return texts


async def test_no_secret_value_leaves_the_worker(
    dev_env: WorkflowEnvironment,
    worker: str,
    dev_settings: Settings,
    prometheus: ManagedProcess,
    postgres: PostgresCluster,
    checkout_db: CheckoutDatabase,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = Secrets()
    role, db_password = await asyncio.to_thread(password_role, postgres)
    found.add("database password", db_password)
    database = checkout_db.dsn.split("dbname=")[1]
    dsn = (
        f"host=127.0.0.1 port={postgres.port} user={role} password={db_password} dbname={database}"
    )
    monkeypatch.setenv("PHASEGATE_TEST_SOURCE_DSN", found.add("source DSN", dsn))
    (tmp_path / "target.dsn").write_text(dsn)
    refused = found.add("password of the DSN libpq refuses", token("pg"))
    monkeypatch.setenv(
        "PHASEGATE_TEST_BAD_DSN",
        found.add(
            "DSN libpq refuses",
            # libpq quotes the sslmode it refuses: here the password, put in the wrong place
            f"host=127.0.0.1 port={postgres.port} user={role} password={refused} "
            f"sslmode={refused} dbname=postgres",
        ),
    )
    broken = found.add("password of the DSN psycopg cannot parse", token("pg"))
    monkeypatch.setenv(
        "PHASEGATE_TEST_UNPARSABLE_DSN",
        found.add(
            "DSN psycopg cannot parse",
            f"postgresql://{role}:{broken}@[127.0.0.1:{postgres.port}/postgres",
        ),
    )
    header_from_env = found.add("webhook header from the environment", token("env"))
    monkeypatch.setenv("PHASEGATE_TEST_HOOK_TOKEN", header_from_env)
    header_from_file = found.add("webhook header from a file", token("file"))
    (tmp_path / "hook-auth").write_text(header_from_file + "\n")
    hook_path = found.add("webhook URL path", token("hook"))
    prometheus_path = found.add("Prometheus URL path", token("prom"))
    bearer = found.add("Prometheus bearer token", token("bearer"))
    (tmp_path / "prometheus-token").write_text(bearer)

    with (
        webhook_receiver() as receiver,
        prometheus_proxy(prometheus.url, prometheus_path, bearer) as proxy,
        every_log_line() as logs,
    ):
        monkeypatch.setenv(
            "PHASEGATE_TEST_HOOK_URL", found.add("webhook URL", f"{receiver.url}/hooks/{hook_path}")
        )
        monkeypatch.setenv("PHASEGATE_TEST_PROM_URL", found.add("Prometheus URL", proxy.url))
        plans = launch_plans(
            checkout_db, tmp_path, receiver, tmp_path / "hook-auth", tmp_path / "prometheus-token"
        )
        launches = await launch_all(dev_env, worker, plans)
        texts = await leak_sites(dev_env.client, dev_settings, launches, receiver, logs)

    # Nothing leaked from the launches' ends, whether reached or refused ...
    statuses = {name: launch.result.status for name, launch in launches.items()}
    assert statuses == {
        "flag": "completed",
        "migration": "completed",
        "refused DSN": "rolled_back",
        "unparsable DSN": "refused",
    }, {name: launch.result.reason for name, launch in launches.items()}
    assert len([where for where in texts if where.startswith("history of")]) >= 7
    leaks = {where: found.found_in(text) for where, text in texts.items()}
    assert {where: names for where, names in leaks.items() if names} == {}

    # ... and the launches did use every secret, so finding none means something.
    assert "migrate.source: cannot connect:" in launches["refused DSN"].result.reason
    assert 'invalid sslmode value: "***"' in launches["refused DSN"].result.reason
    assert "phases[0].source" in launches["unparsable DSN"].result.reason
    assert canary_share(tmp_path / "flags.json", "checkout-v2") == 100.0
    assert await asyncio.to_thread(checkout_db.scalar, "SELECT count(*) FROM orders_v2") == (
        SEEDED_ROWS
    )
    flag_phases = launches["flag"].result.final.phases
    measured = [m.value for p in flag_phases for r in p.analysis for m in r.measurements]
    assert measured
    assert set(measured) == {1.0}
    assert (proxy.admitted >= len(measured), proxy.refused) == (True, 0)
    secret_url_events = [body["event"] for body in receiver.bodies(f"/hooks/{hook_path}")]
    with receiver.lock:
        headers = {
            (path, key.lower(), value)
            for path, sent in receiver.headers
            for key, value in sent.items()
        }
    assert {"launch_started", "completed", "rolled_back"} <= set(secret_url_events)
    assert (f"/hooks/{hook_path}", "x-token", header_from_env) in headers
    assert ("/plain", "authorization", header_from_file) in headers
