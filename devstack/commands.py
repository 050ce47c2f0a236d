"""The local stack's commands: `phasegate dev`, `phasegate demo`, `phasegate kube …` and
`phasegate migration demo`, mounted on the `phasegate` CLI by `register`.

Each runs under `stop_on_signals`: Ctrl-C, SIGTERM and SIGHUP stop every process it started
and end it with exit code 128 + the signal's number (130, 143, 129).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from devstack import migration_demo
from devstack.demo import DemoOptions, example_plan, run_demo
from devstack.kube_demo import kube_app
from devstack.processes import (
    LocalProcessError,
    run_stoppable,
    start_temporal_dev_server,
    stop_on_signals,
)
from schemas.launch_messages import LaunchStatus
from starters import launches
from starters.output import fail, finish, settings_of, stdout, valid_plan
from starters.render import render_line, render_status
from workers.client import TemporalUnreachable


def register(app: typer.Typer) -> None:
    """Mount the local stack's commands on the `phasegate` CLI."""
    app.command()(dev)
    app.command()(demo)
    app.add_typer(migration_demo.app, name="migration")
    app.add_typer(kube_app, name="kube")


def dev(
    ctx: typer.Context,
    db_file: Annotated[
        Path, typer.Option(help="SQLite file, so launches survive a restart.")
    ] = Path(".phasegate/temporal.db"),
    port: Annotated[int, typer.Option(help="Frontend port for clients and workers.")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Temporal Web UI port.")] = 8233,
) -> None:
    """Run the Temporal dev server with Phasegate's search attributes, until Ctrl-C."""
    settings = settings_of(ctx)
    db_file = db_file.resolve()
    with stop_on_signals("phasegate dev"):
        try:
            server = start_temporal_dev_server(
                workdir=db_file.parent,
                db_filename=db_file,
                port=port,
                ui_port=ui_port,
                namespace=settings.temporal_namespace,
            )
        except LocalProcessError as err:
            fail(str(err))
        out = stdout()
        out.print(Text.assemble("Temporal  ", (server.address, "bold")), soft_wrap=True)
        out.print(Text.assemble("Web UI    ", (server.url, "bold")), soft_wrap=True)
        out.print(Text(f"Database  {db_file}\nLog       {server.log_path}"), soft_wrap=True)
        out.print(
            Text(
                f"Run `TEMPORAL_ADDRESS={server.address} phasegate worker` next to it. "
                "Ctrl-C stops.",
                style="dim",
            ),
            soft_wrap=True,
        )
        code = server.wait()
        fail(f"the Temporal dev server exited with code {code}; see {server.log_path}")


def demo(
    plan: Annotated[
        Path | None,
        typer.Option(
            help="Launch plan; default: examples/plans/checkout.yaml "
            "(checkout-faulty.yaml with --faulty).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Approve every gate as demo-bot.")
    ] = False,
    faulty: Annotated[
        bool,
        typer.Option("--faulty", help="Make the new code path fail half its requests."),
    ] = False,
    keep_running: Annotated[
        bool,
        typer.Option("--keep-running", help="Keep everything running after the launch ends."),
    ] = False,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="Also serve the demo behind TLS and validate its security first "
            "(examples/plans/checkout-secure.yaml).",
        ),
    ] = False,
    workdir: Annotated[
        Path, typer.Option(help="Where the demo keeps its state, flag file and logs.")
    ] = Path(".phasegate/demo"),
) -> None:
    """Launch the checkout demo end to end: dev server + UI, demo service under load,
    Prometheus, a worker. Ends with the launch (exit 1 unless it completed)."""
    default = "checkout-secure.yaml" if secure else "checkout.yaml"
    chosen = plan or example_plan("checkout-faulty.yaml" if faulty else default)
    valid_plan(chosen)
    options = DemoOptions(
        workdir=workdir.resolve(),
        plan=chosen.resolve(),
        auto_approve=auto_approve,
        faulty=faulty,
        keep_running=keep_running,
        secure=secure,
    )
    out = stdout()
    shown: list[str] = []

    def say(line: str) -> None:
        out.print(Text(line, style="bold"), soft_wrap=True)

    def on_status(current: LaunchStatus) -> None:
        # One line per change of what the launch is doing, so the demo reads as a log.
        line = render_line(current)
        if not shown or shown[-1] != line:
            shown.append(line)
            out.print(Text(line), soft_wrap=True)

    with stop_on_signals("phasegate demo"):
        try:
            final = run_stoppable(run_demo(options, say, on_status))
        except (LocalProcessError, TemporalUnreachable, launches.LaunchError) as err:
            fail(str(err))
    out.print(render_status(final))
    finish(final)
