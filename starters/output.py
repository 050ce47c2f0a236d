"""What every `phasegate` command prints and how it exits: plain consoles on stdout and stderr,
one red line and exit code 1 for a failure, exit code 2 with every problem for an invalid plan,
and the exit code a finished launch stands for.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from schemas.launch_messages import LaunchStatus, LaunchStatusValue
from schemas.plan import LaunchPlan
from schemas.problems import PlanError
from starters import launches
from workers.settings import Settings

EXIT_FAILED = 1
EXIT_INVALID_PLAN = 2


def stdout() -> Console:
    return Console(highlight=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def fail(message: str) -> NoReturn:
    stderr().print(Text(message, style="red"), soft_wrap=True)
    raise typer.Exit(EXIT_FAILED)


def count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def valid_plan(path: Path) -> LaunchPlan:
    """The plan at `path`, or exit 2 after listing every problem with its path in the file."""
    try:
        return launches.validate_plan(path)
    except PlanError as err:
        err_console = stderr()
        err_console.print(
            Text(f"{path}: {count(len(err.problems), 'problem')}", style="bold red"),
            soft_wrap=True,
        )
        for problem in err.problems:
            err_console.print(Text(f"  {problem}", style="red"), soft_wrap=True)
        raise typer.Exit(EXIT_INVALID_PLAN) from None


def finish(final: LaunchStatus) -> None:
    """Exit 0 (by returning) for a completed launch, 1 with its reason for any other end."""
    if final.status == LaunchStatusValue.COMPLETED:
        stdout().print(Text(f"{final.launch_id} completed", style="bold green"), soft_wrap=True)
        return
    reason = f": {final.reason}" if final.reason else ""
    fail(f"{final.launch_id} {final.status.value.replace('_', ' ')}{reason}")


def settings_of(ctx: typer.Context) -> Settings:
    """The settings the root `phasegate` options built (address, namespace, task queue, UI)."""
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings
