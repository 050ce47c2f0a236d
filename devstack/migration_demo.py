"""`phasegate migration demo`: the checkout launch ending in its orders migration, against a
throwaway PostgreSQL seeded with orders, on the same demo stack as `phasegate demo`, all of it
stopped on SIGINT, SIGTERM and SIGHUP (`stop_on_signals`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import psycopg
import typer
import yaml
from rich.text import Text

from activities.backup_store import generate_key_file, load_backup_keys
from activities.errors import ConfigurationError
from activities.limits import FileLimits, SecretLimits, WorkerLimits
from devstack.checkout_db import seed_checkout
from devstack.demo import DemoOptions, example_plan, run_demo
from devstack.postgres_cluster import postgres_cluster
from devstack.processes import LOOPBACK, LocalProcessError, run_stoppable, stop_on_signals
from schemas.launch_messages import LaunchStatus
from starters import launches
from starters.output import fail, stdout
from workers.client import TemporalUnreachable

app = typer.Typer(
    help="The migration cutover phase against a local PostgreSQL.", no_args_is_help=True
)


@app.command("demo")
def demo(
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="demo-bot approves every gate as it opens.")
    ] = False,
    rows: Annotated[int, typer.Option(help="Orders to seed.")] = 50_000,
    workdir: Annotated[Path, typer.Option(help="Where the demo keeps its state.")] = Path(
        ".phasegate/migration-demo"
    ),
) -> None:
    """Launch examples/plans/checkout-migration.yaml: soft and full launch, then back up,
    migrate, verify and cut the orders over to orders_v2, and watch."""
    out = stdout()
    seen: set[str] = set()

    def say(line: str) -> None:
        out.print(Text(line), soft_wrap=True)

    def on_status(status: LaunchStatus) -> None:
        line = f"{status.status.value}: {status.phase} — " + next(
            (p.activity for p in status.phases if p.name == status.phase), ""
        )
        if status.open_gate is not None:
            line = f"waiting at gate {status.open_gate.gate}: {status.open_gate.question}"
        if line not in seen:
            seen.add(line)
            say(line)

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    plan = _plan_in(workdir)
    try:
        backup_keys = _backup_keys(workdir)
    except ConfigurationError as err:
        fail(str(err))
    with stop_on_signals("phasegate migration demo"):
        try:
            with postgres_cluster(workdir / "postgres") as cluster:
                dsn = cluster.create_database("checkout")
                seed_checkout(dsn, rows)
                say(f"PostgreSQL on port {cluster.port}: database checkout with {rows} orders")
                options = DemoOptions(
                    workdir=workdir,
                    plan=plan,
                    auto_approve=auto_approve,
                    worker_env={
                        "CHECKOUT_DSN": dsn,
                        "PHASEGATE_BACKUP_KEYS": str(backup_keys),
                    },
                    worker_limits=_limits(plan, workdir, cluster.port),
                )
                final = run_stoppable(run_demo(options, say, on_status))
                say(
                    f"launch {final.launch_id} {final.status.value}{_reason(final)}; {_cutover(dsn)}"
                )
        except (LocalProcessError, TemporalUnreachable, launches.LaunchError) as err:
            fail(str(err))
    if final.status.value != "completed":
        raise typer.Exit(1)


def _reason(final: LaunchStatus) -> str:
    return f": {final.reason}" if final.reason else ""


def _cutover(dsn: str) -> str:
    """Which table the checkout reads now, and whether orders_v2 is still there."""
    with psycopg.connect(dsn) as conn:
        view = conn.execute(
            "SELECT definition FROM pg_views WHERE viewname = 'checkout_orders'"
        ).fetchone()
        new_table = conn.execute("SELECT to_regclass('orders_v2')").fetchone()
    reads = "orders_v2" if view and "orders_v2" in str(view[0]) else "orders"
    exists = "exists" if new_table and new_table[0] else "is gone"
    return f"checkout_orders reads {reads}; orders_v2 {exists}"


def _limits(plan: Path, workdir: Path, port: int) -> WorkerLimits:
    """What the migration needs beyond the demo stack: its DSN, its database (and the server's
    `postgres` database a restore starts from), its scripts and its backups folder."""
    phases = yaml.safe_load(plan.read_text())["phases"]
    scripts = [p["migrations"] for p in phases if p["kind"] == "migration_cutover"]
    return WorkerLimits(
        secrets=SecretLimits(env=["CHECKOUT_DSN"]),
        databases=[f"{LOOPBACK}:{port}/checkout", f"{LOOPBACK}:{port}/postgres"],
        files=FileLimits(read=scripts, backups=[str(workdir / "backups")]),
    )


def _backup_keys(workdir: Path) -> Path:
    """The demo worker's backup key file (0600), made on the first run and kept, so that the
    backups of earlier runs in `workdir` stay readable."""
    path = workdir / "backup.keys"
    if not path.exists():
        generate_key_file(path)
    load_backup_keys(path)  # a file changed by hand is refused here, not by the worker
    return path


def _plan_in(workdir: Path) -> Path:
    """The example plan with its folders made absolute and its backups kept in `workdir`."""
    source = example_plan("checkout-migration.yaml")
    data = yaml.safe_load(source.read_text())
    for phase in data["phases"]:
        if phase["kind"] == "migration_cutover":
            phase["migrations"] = str((source.parent / phase["migrations"]).resolve())
            phase["backup_dir"] = str(workdir / "backups")
    plan = workdir / source.name
    plan.write_text(yaml.safe_dump(data, sort_keys=False))
    return plan
