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
from devstack.authenticated_demo import NotAuthenticated
from devstack.demo import DemoOptions, example_plan, run_demo
from devstack.identity_provider import PasswordSignInFailed, find_binary
from devstack.kube_demo import kube_app
from devstack.processes import (
    LocalProcessError,
    run_stoppable,
    start_temporal_dev_server,
    stop_on_signals,
)
from schemas.launch_messages import LaunchStatus
from starters import launches, proof_client, sign_in
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
            help="Launch plan; default: examples/plans/checkout.yaml (checkout-faulty.yaml "
            "with --faulty, checkout-secure.yaml with --secure, checkout-authenticated.yaml "
            "with --authenticated).",
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
    authenticated: Annotated[
        bool,
        typer.Option(
            "--authenticated",
            help="People sign in at a local identity provider and every decision carries a "
            "proof from a local approval service (examples/plans/checkout-authenticated.yaml); "
            "with --auto-approve, alice starts the launch and carol and bob approve it.",
        ),
    ] = False,
    workdir: Annotated[
        Path, typer.Option(help="Where the demo keeps its state, flag file and logs.")
    ] = Path(".phasegate/demo"),
) -> None:
    """Launch the checkout demo end to end: dev server + UI, demo service under load,
    Prometheus, a worker. Ends with the launch (exit 1 unless it completed)."""
    if authenticated and secure and plan is None:
        fail(
            "--authenticated --secure: give --plan, a plan with a security_validation phase "
            "whose approvals name an issuer"
        )
    chosen = plan or example_plan(
        _default_plan(faulty=faulty, secure=secure, authenticated=authenticated)
    )
    identity = valid_plan(chosen).approvals.authenticated
    if authenticated and identity is None:
        fail(f"--authenticated: {chosen} says `identity: none`; give a plan that names an issuer")
    if not authenticated and identity is not None:
        fail(f"{chosen}: its approvals are proven at {identity.issuer}; add --authenticated")
    if authenticated:
        try:
            find_binary()
        except LocalProcessError as err:
            fail(f"--authenticated: {err}")
    options = DemoOptions(
        workdir=workdir.resolve(),
        plan=chosen.resolve(),
        auto_approve=auto_approve,
        faulty=faulty,
        keep_running=keep_running,
        secure=secure,
        authenticated=authenticated,
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
        except (
            LocalProcessError,
            TemporalUnreachable,
            launches.LaunchError,
            NotAuthenticated,
            PasswordSignInFailed,
            proof_client.ProofUnavailable,
            sign_in.SignInError,
        ) as err:
            fail(str(err))
    out.print(render_status(final))
    finish(final)


def _default_plan(*, faulty: bool, secure: bool, authenticated: bool) -> str:
    if authenticated:
        return "checkout-authenticated.yaml"
    if faulty:
        return "checkout-faulty.yaml"
    return "checkout-secure.yaml" if secure else "checkout.yaml"
