"""`phasegate schedule ...`: health profiles as Temporal Schedules, visible and controllable in the UI.

Each command parses its arguments, calls one function of `starters/schedules.py` and prints;
anything that goes wrong ends as one red line on stderr and exit code 1 (2 for a bad profile).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from schemas.health_profile import HealthProfile, LaunchActionKind
from schemas.problems import PlanError
from starters import schedules
from workers.client import TemporalUnreachable, connect, refused_call
from workers.settings import Settings

T = TypeVar("T")


class LaunchAction(StrEnum):
    ABORT = "abort"
    PAUSE = "pause"


ACTIONS: dict[LaunchAction, LaunchActionKind] = {
    LaunchAction.ABORT: "abort",
    LaunchAction.PAUSE: "pause",
}
EXIT_FAILED = 1
EXIT_INVALID_PROFILE = 2

schedule_app = typer.Typer(
    help="Run a health profile on a Temporal Schedule: SLO and endpoint checks, alerts, "
    "and the launch it guards.",
    no_args_is_help=True,
)

ProfilePath = Annotated[
    Path, typer.Argument(help="The health profile (YAML).", dir_okay=False, show_default=False)
]
Name = Annotated[str, typer.Argument(help="The profile name (or its schedule id, health-NAME).")]
LaunchOption = Annotated[
    str | None,
    typer.Option(
        "--launch",
        metavar="LAUNCH_ID",
        help="Guard this running launch: a failing critical check aborts or pauses it.",
        show_default=False,
    ),
]
OnCriticalFailure = Annotated[
    LaunchAction | None,
    typer.Option(
        "--on-critical-failure",
        help="What a failing critical check does to the guarded launch, once per incident: "
        "abort (roll back) or pause (hold exposure until a person resumes). Default: the "
        "profile's `launch.on_critical_failure`, else abort.",
        show_default=False,
    ),
]
Note = Annotated[str, typer.Option("--note", "-m", help="Why; shown on the schedule in the UI.")]


@schedule_app.command("create")
def create(
    ctx: typer.Context,
    profile: ProfilePath,
    launch: LaunchOption = None,
    paused: Annotated[bool, typer.Option(help="Create it paused.")] = False,
    on_critical_failure: OnCriticalFailure = None,
) -> None:
    """Validate a profile and create its schedule (health-NAME)."""
    valid = _valid_profile(profile, launch, on_critical_failure)
    settings = _settings(ctx)
    _run(settings, lambda client: schedules.create_schedule(client, valid, settings, paused=paused))
    _done(valid, settings, "created" + (" (paused)" if paused else ""))


@schedule_app.command("update")
def update(
    ctx: typer.Context,
    profile: ProfilePath,
    launch: LaunchOption = None,
    on_critical_failure: OnCriticalFailure = None,
) -> None:
    """Replace an existing schedule's checks and timing from the profile; paused stays paused."""
    valid = _valid_profile(profile, launch, on_critical_failure)
    settings = _settings(ctx)
    _run(settings, lambda client: schedules.update_schedule(client, valid, settings))
    _done(valid, settings, "updated")


@schedule_app.command("pause")
def pause(ctx: typer.Context, name: Name, note: Note = "paused from the CLI") -> None:
    """Stop starting runs until unpaused."""
    _run(_settings(ctx), lambda client: schedules.pause(client, name, note))
    _out().print(f"{schedules.schedule_id(name)} paused")


@schedule_app.command("unpause")
def unpause(ctx: typer.Context, name: Name, note: Note = "unpaused from the CLI") -> None:
    """Start runs again (also after the schedule paused itself on a failed run)."""
    _run(_settings(ctx), lambda client: schedules.unpause(client, name, note))
    _out().print(f"{schedules.schedule_id(name)} unpaused")


@schedule_app.command("trigger")
def trigger(ctx: typer.Context, name: Name) -> None:
    """Run the checks now (skipped if a run is in progress)."""
    _run(_settings(ctx), lambda client: schedules.trigger(client, name))
    _out().print(f"{schedules.schedule_id(name)} triggered")


@schedule_app.command("delete")
def delete(ctx: typer.Context, name: Name) -> None:
    """Delete the schedule and retire its alert ledger."""
    _run(_settings(ctx), lambda client: schedules.delete(client, name))
    _out().print(f"{schedules.schedule_id(name)} deleted")


@schedule_app.command("list")
def list_(ctx: typer.Context) -> None:
    """Every health schedule: timing, paused or not, last and next run."""
    found = _run(_settings(ctx), schedules.list_schedules)
    table = Table(box=None, header_style="bold")
    for column in ("schedule", "state", "timing", "launch", "last run", "next run"):
        table.add_column(column)
    for item in found:
        state = Text("paused", style="yellow") if item.paused else Text("active", style="green")
        if item.paused and item.note:
            state.append(f" ({item.note})", style="dim")
        table.add_row(
            item.schedule_id,
            state,
            item.timing,
            item.launch or "-",
            _when(item.last_run),
            _when(item.next_run),
        )
    _out().print(table if found else Text("no health schedules", style="dim"))


# --- glue --------------------------------------------------------------------------------


def _valid_profile(
    path: Path, launch: str | None, on_critical_failure: LaunchAction | None = None
) -> HealthProfile:
    try:
        action = ACTIONS[on_critical_failure] if on_critical_failure is not None else None
        return schedules.validate_profile(path, launch, action)
    except PlanError as err:
        console = Console(stderr=True, highlight=False)
        console.print(Text(f"{path}: {len(err.problems)} problem(s)", style="bold red"))
        for problem in err.problems:
            console.print(Text(f"  {problem}", style="red"), soft_wrap=True)
        raise typer.Exit(EXIT_INVALID_PROFILE) from None


def _done(profile: HealthProfile, settings: Settings, what: str) -> None:
    out = _out()
    out.print(Text.assemble((profile.schedule_id, "bold"), f" {what}"), soft_wrap=True)
    out.print(
        f"{settings.ui_url}/namespaces/{settings.temporal_namespace}/schedules/{profile.schedule_id}",
        soft_wrap=True,
    )


def _run(settings: Settings, work: Callable[[Client], Awaitable[T]]) -> T:
    async def connected() -> T:
        return await work(await connect(settings))

    try:
        return asyncio.run(connected())
    except (TemporalUnreachable, schedules.ScheduleError) as err:
        _fail(str(err))
    except RPCError as err:
        if err.status == RPCStatusCode.PERMISSION_DENIED:
            _fail(refused_call(settings, err))
        _fail(f"Temporal at {settings.temporal_address} said {err.status.name}: {err.message}")


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}" if moment else "-"


def _fail(message: str) -> NoReturn:
    Console(stderr=True, highlight=False).print(Text(message, style="red"), soft_wrap=True)
    raise typer.Exit(EXIT_FAILED)


def _out() -> Console:
    return Console(highlight=False)
