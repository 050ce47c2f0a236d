"""`phasegate`: validate a plan, start a launch, watch it, decide its gates, run a worker.

Each command parses its arguments, calls one function of `starters/launches.py` and prints.
Anything that goes wrong talking to Temporal ends as one red line on stderr and exit code 1.
The local stack's commands (`dev`, `demo`, `kube`, `migration`) live in `devstack/commands.py`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.live import Live
from rich.text import Text
from temporalio.client import Client
from temporalio.service import RPCError

from devstack import commands as devstack_commands
from schemas.launch_messages import LaunchStatus
from starters import launches
from starters.output import count, fail, finish, settings_of, stdout, valid_plan
from starters.render import render_listing, render_status
from starters.schedule_cli import schedule_app
from workers.client import TemporalUnreachable, connect
from workers.main import serve
from workers.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    name="phasegate",
    help="Run a software launch as one durable Temporal pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
compensation_app = typer.Typer(
    help="Act on a rollback step (undo) that keeps failing.", no_args_is_help=True
)
app.add_typer(compensation_app, name="compensation")

LaunchId = Annotated[str, typer.Argument(help="The launch id (its workflow id).")]
PlanPath = Annotated[
    Path, typer.Argument(help="The launch plan (YAML).", dir_okay=False, show_default=False)
]


def _setting(envvar: str, help: str) -> Any:
    """A root option overriding one setting; left out, `envvar` (then the default) decides."""
    return typer.Option(envvar=envvar, help=help, show_default=False)


@app.callback()
def options(
    ctx: typer.Context,
    address: Annotated[
        str | None, _setting("TEMPORAL_ADDRESS", "Temporal frontend host:port.")
    ] = None,
    namespace: Annotated[str | None, _setting("TEMPORAL_NAMESPACE", "Temporal namespace.")] = None,
    task_queue: Annotated[
        str | None,
        _setting("PHASEGATE_TASK_QUEUE", "Task queue the launch workflows and the worker use."),
    ] = None,
    ui_url: Annotated[
        str | None, _setting("PHASEGATE_UI_URL", "Temporal Web UI base URL, for links.")
    ] = None,
) -> None:
    """Run a software launch as one durable Temporal pipeline."""
    overrides = {
        "temporal_address": address,
        "temporal_namespace": namespace,
        "task_queue": task_queue,
        "ui_url": ui_url,
    }
    ctx.obj = Settings().model_copy(
        update={field: value for field, value in overrides.items() if value is not None}
    )


# --- plans and launches ------------------------------------------------------------------


@app.command()
def validate(plan: PlanPath) -> None:
    """Check a plan without contacting anything; exit 2 with every problem if it is invalid."""
    valid = valid_plan(plan)
    gates = ", ".join(launches.gate_ids(valid)) or "none"
    stdout().print(
        Text(
            f"{plan}: ok ({valid.service} {valid.version}, {count(len(valid.phases), 'phase')}, "
            f"gates: {gates})",
            style="green",
        ),
        soft_wrap=True,
    )


@app.command()
def launch(
    ctx: typer.Context,
    plan: PlanPath,
    launch_id: Annotated[
        str | None, typer.Option("--id", help="Launch id. Default: SERVICE-VERSION-RANDOM.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the launch like `watch`.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --wait.")] = 1.0,
) -> None:
    """Validate a plan and start its launch; the plan is checked before Temporal is contacted."""
    valid = valid_plan(plan)
    settings = settings_of(ctx)

    async def start(client: Client) -> LaunchStatus | None:
        handle = await launches.start_launch(client, valid, settings=settings, launch_id=launch_id)
        out = stdout()
        out.print(Text.assemble("started ", (handle.id, "bold")), soft_wrap=True)
        out.print(launches.ui_link(settings, handle.id), soft_wrap=True, highlight=False)
        if not wait:
            return None
        return await _follow(client, handle.id, interval)

    final = _run(settings, start)
    if final is not None:
        finish(final)


@app.command()
def status(
    ctx: typer.Context,
    launch_id: LaunchId,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show a launch: phase, exposure, open gate, analysis, decisions, refusals, undos."""
    current = _run(settings_of(ctx), lambda client: launches.get_status(client, launch_id))
    if as_json:
        typer.echo(current.model_dump_json(indent=2))
    else:
        stdout().print(render_status(current))


@app.command()
def watch(
    ctx: typer.Context,
    launch_id: LaunchId,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
) -> None:
    """Follow a launch live until it finishes: exit 0 if completed, 1 if rolled back."""
    finish(_run(settings_of(ctx), lambda client: _follow(client, launch_id, interval)))


@app.command(name="list")
def list_(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option(help="Only this service.")] = None,
    status: Annotated[
        str | None, typer.Option(help="Only this status, e.g. waiting, completed, rolled_back.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
) -> None:
    """List launches, filtered on their search attributes."""
    found = _run(
        settings_of(ctx),
        lambda client: launches.list_launches(client, service=service, status=status, limit=limit),
    )
    stdout().print(render_listing(found))


# --- people acting on a launch ---------------------------------------------------------

Approver = Annotated[
    str | None,
    typer.Option(
        "--as",
        metavar="NAME",
        envvar="PHASEGATE_APPROVER",
        help="Who you are, as the plan's approvers name you. Default: $PHASEGATE_APPROVER, "
        "then $USER.",
        show_default=False,
    ),
]
Comment = Annotated[str, typer.Option("--comment", "-m", help="Why; kept in the audit trail.")]

# What a person does to one gate or undo of a launch, given the settings, the launch id, the
# gate or undo id, who they are and their comment: send it, then say what was done.
Act = Callable[[Settings, str, str, str, str], None]


def _acting_on(item: str, item_help: str, act: Act) -> Callable[..., None]:
    """A command by which a person acts on one `item` (a gate, an undo) of a launch, on record
    under their name (`--as`) and with their `--comment`."""

    def command(
        ctx: typer.Context,
        launch_id: LaunchId,
        target: str = typer.Argument(metavar=item, help=item_help, show_default=False),
        approver: Approver = None,
        comment: Comment = "",
    ) -> None:
        act(settings_of(ctx), launch_id, target, _who(approver), comment)

    return command


def _decide(decision: Literal["approve", "reject"]) -> Act:
    def decide(settings: Settings, launch_id: str, gate: str, by: str, comment: str) -> None:
        taken = _run(
            settings,
            lambda client: launches.decide(client, launch_id, gate, by, decision, comment),
        )
        stdout().print(
            Text.assemble(
                (taken.outcome, "green" if taken.outcome == "approved" else "red"),
                f" {taken.gate} of {launch_id} as {taken.by}",
                f": {taken.comment}" if taken.comment else "",
            ),
            soft_wrap=True,
        )

    return decide


def _compensate(action: str, send: Callable[[Client, str, str, str, str], Awaitable[None]]) -> Act:
    def compensate(settings: Settings, launch_id: str, undo: str, by: str, comment: str) -> None:
        _run(settings, lambda client: send(client, launch_id, undo, by, comment))
        stdout().print(
            Text(
                f"asked {launch_id} for a {action} of {undo}; the refusal, if any, shows in "
                f"`phasegate status {launch_id}`"
            ),
            soft_wrap=True,
        )

    return compensate


# What each command acts on: its name in the usage line, and its help.
GATE = ("gate", "The gate id, e.g. soft-launch.before.")
UNDO = ("compensation", "The undo's id, e.g. soft-launch.1.")
app.command(
    "approve",
    help="Go: approve an open gate (refused unless it is open and you are one of its approvers).",
)(_acting_on(*GATE, _decide("approve")))
app.command("reject", help="No-go: reject an open gate; the launch rolls back.")(
    _acting_on(*GATE, _decide("reject"))
)


@app.command()
def abort(
    ctx: typer.Context,
    launch_id: LaunchId,
    reason: Annotated[str, typer.Option(help="Why; shown as the rollback reason.")],
    approver: Approver = None,
) -> None:
    """Stop a launch now and roll back everything it changed."""
    by = _who(approver)
    _run(settings_of(ctx), lambda client: launches.abort(client, launch_id, reason, by))
    stdout().print(
        Text(f"asked {launch_id} to abort; follow the rollback with `phasegate watch {launch_id}`"),
        soft_wrap=True,
    )


compensation_app.command("retry", help="Try a failing undo again, once its cause is fixed.")(
    _acting_on(*UNDO, _compensate("retry", launches.retry_compensation))
)
compensation_app.command(
    "skip", help="Give up on a failing undo, on record (a comment saying why is required)."
)(_acting_on(*UNDO, _compensate("skip", launches.skip_compensation)))


# --- running things ----------------------------------------------------------------------


@app.command()
def worker(ctx: typer.Context) -> None:
    """Run the worker for every Phasegate workflow and activity until Ctrl-C or SIGTERM."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = settings_of(ctx)
    try:
        asyncio.run(serve(settings))
    except TemporalUnreachable as err:
        fail(str(err))


# The local stack: `dev`, `demo`, `kube …`, `migration demo`.
devstack_commands.register(app)
app.add_typer(schedule_app, name="schedule")


def main() -> None:
    app()


# --- glue --------------------------------------------------------------------------------


async def _follow(client: Client, launch_id: str, interval: float) -> LaunchStatus:
    """Redraw the status until the launch finishes; returns the last status seen."""
    last: LaunchStatus | None = None
    with Live(Text(f"waiting for {launch_id}…"), console=stdout(), auto_refresh=False) as live:
        async for current in launches.follow_launch(client, launch_id, interval=interval):
            last = current
            live.update(render_status(current), refresh=True)
    assert last is not None
    return last


def _run(settings: Settings, work: Callable[[Client], Awaitable[T]]) -> T:
    """Connect, do one thing, and turn every failure to reach or use Temporal into one line."""

    async def connected() -> T:
        return await work(await connect(settings))

    try:
        return asyncio.run(connected())
    except launches.DecisionError as err:
        fail(f"refused: {err}")
    except (TemporalUnreachable, launches.LaunchError) as err:
        fail(str(err))
    except RPCError as err:
        fail(f"Temporal at {settings.temporal_address} said {err.status.name}: {err.message}")
    except KeyboardInterrupt:
        fail("interrupted; the launch itself goes on")


def _who(approver: str | None) -> str:
    name = approver or os.environ.get("USER")
    if not name:
        fail("who are you? give --as NAME or set PHASEGATE_APPROVER")
    return name


if __name__ == "__main__":
    main()
