"""`phasegate`: validate a plan, start a launch, watch it, decide its gates, run a worker.

Each command parses its arguments, calls one function of `starters/launches.py` and prints.
Anything that goes wrong talking to Temporal ends as one red line on stderr and exit code 1.
The local stack's commands (`dev`, `demo`, `kube`, `migration`) live in `devstack/commands.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

import typer
from pydantic import ValidationError
from rich.live import Live
from rich.text import Text
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.admission import plan_problems
from activities.errors import ConfigurationError
from activities.limits import load_limits
from approvals.proofs import Act, plan_digest
from devstack import commands as devstack_commands
from schemas.decision_messages import Decision, Hold
from schemas.launch_messages import LaunchStatus
from schemas.problems import PlanError, describe_errors
from starters import bulk, launches, proof_client, sign_in
from starters import codec_server as codec_server_app
from starters.output import (
    EXIT_FAILED,
    EXIT_INVALID_PLAN,
    count,
    fail,
    finish,
    settings_of,
    stderr,
    stdout,
    valid_plan,
)
from starters.render import render_listing, render_status
from starters.schedule_cli import schedule_app
from workers.client import TemporalUnreachable, connect, refused_call
from workers.main import serve
from workers.settings import Settings, settings_problem
from workflows.rollback import SIGNALS, UndoAction

T = TypeVar("T")

app = typer.Typer(
    name="phasegate",
    help="Run a software launch as one durable Temporal pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
compensation_app = typer.Typer(
    help="Act on a rollback step (undo) that keeps failing or would lose live writes.",
    no_args_is_help=True,
)
app.add_typer(compensation_app, name="compensation")

LaunchId = Annotated[str, typer.Argument(help="The launch id (its workflow id).")]
PlanPath = Annotated[
    Path, typer.Argument(help="The launch plan (YAML).", dir_okay=False, show_default=False)
]
Approver = Annotated[
    str | None,
    typer.Option(
        "--as",
        metavar="NAME",
        help="Who you are, when the launch's approvals are not authenticated (`identity: none`); "
        "otherwise your sign-in names you. Default: $PHASEGATE_APPROVER, then $USER.",
        show_default=False,
    ),
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
    profile: Annotated[
        str | None,
        _setting(
            "TEMPORAL_PROFILE",
            "Profile in the Temporal client configuration file (address, namespace, TLS, API "
            "key), as the Temporal CLI reads it. Default: default.",
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        _setting(
            "TEMPORAL_CONFIG_FILE",
            "Temporal client configuration file (TOML). "
            "Default: ~/.config/temporalio/temporal.toml.",
        ),
    ] = None,
) -> None:
    """Run a software launch as one durable Temporal pipeline.

    Temporal is found as the Temporal CLI finds it: these options, then TEMPORAL_* variables
    (TEMPORAL_API_KEY, TEMPORAL_TLS_CLIENT_CERT_PATH, ...), then the profile."""
    connection: dict[str, Any] = {
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": namespace,
        "TEMPORAL_PROFILE": profile,
        "TEMPORAL_CONFIG_FILE": config_file,
    }
    overrides = {"task_queue": task_queue, "ui_url": ui_url}
    try:
        settings = Settings(**{name: value for name, value in connection.items() if value})
    except ValidationError as err:
        fail(settings_problem(err))
    ctx.obj = settings.model_copy(
        update={field: value for field, value in overrides.items() if value is not None}
    )


# --- plans and launches ------------------------------------------------------------------


@app.command()
def validate(
    ctx: typer.Context,
    plan: PlanPath,
    limits: Annotated[
        Path | None,
        typer.Option(
            "--limits",
            help="The worker's limits file, to check what the plan may touch. "
            "Default: $PHASEGATE_WORKER_LIMITS.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check a plan without starting anything; exit 2 with every problem if it is invalid.

    With the worker's limits it also checks the secrets, hosts, databases, files and namespaces
    the plan names against them, as the worker does when the launch starts (secret values are
    read by the worker only)."""
    valid = valid_plan(plan)
    configured = settings_of(ctx).worker_limits
    limits_file = limits or (Path(configured) if configured else None)
    if limits_file is None:
        checked = "worker limits not checked: give --limits FILE or set PHASEGATE_WORKER_LIMITS"
    else:
        try:
            worker = load_limits(limits_file)
        except PlanError as err:
            _problems(f"{limits_file} (the worker's limits)", err.problems, EXIT_FAILED)
            raise typer.Exit(EXIT_FAILED) from None
        _problems(str(plan), plan_problems(valid, worker, resolve=False), EXIT_INVALID_PLAN)
        checked = (
            f"within the worker limits in {limits_file} (secret values are read by the worker "
            "when the launch starts)"
        )
    gates = ", ".join(launches.gate_ids(valid)) or "none"
    stdout().print(
        Text(
            f"{plan}: ok ({valid.service} {valid.version}, {count(len(valid.phases), 'phase')}, "
            f"gates: {gates})",
            style="green",
        ),
        soft_wrap=True,
    )
    # Beside the verdict, not in it: scripts read the verdict from stdout.
    stderr().print(Text(checked, style="dim"), soft_wrap=True)


def _problems(source: str, problems: list[str], code: int) -> None:
    """Nothing when `problems` is empty; else list them on stderr and exit with `code`."""
    if not problems:
        return
    err = stderr()
    err.print(
        Text(f"{source}: {count(len(problems), 'problem')}", style="bold red"), soft_wrap=True
    )
    for problem in problems:
        err.print(Text(f"  {problem}", style="red"), soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def launch(
    ctx: typer.Context,
    plan: PlanPath,
    launch_id: Annotated[
        str | None, typer.Option("--id", help="Launch id. Default: SERVICE-VERSION-RANDOM.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the launch like `watch`.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --wait.")] = 1.0,
    approver: Approver = None,
) -> None:
    """Validate a plan and start its launch; the plan is checked before Temporal is contacted.

    When the plan's approvals are authenticated you sign in, and the launch records who started
    it from a proof; otherwise from --as."""
    valid = valid_plan(plan)
    settings = settings_of(ctx)
    identity = valid.approvals.authenticated
    if identity is not None:
        if approver is not None:
            fail(f"--as: names come from your sign-in at {identity.issuer}; leave --as out")
        try:
            proof_client.service_url(settings, identity.issuer)
        except proof_client.ApprovalServiceUnreachable as err:
            fail(str(err))
    chosen_id = launch_id or launches.new_launch_id(valid)

    async def start(client: Client) -> LaunchStatus | None:
        start_proof, started_by = "", ""
        if identity is None:
            started_by = approver or _default_name()
        else:
            granted = await proof_client.proof_for(
                settings,
                identity.issuer,
                launch=chosen_id,
                run="",
                act="start",
                target=plan_digest(valid),
                show=_show_code,
            )
            start_proof = granted.proof
        handle = await launches.start_launch(
            client,
            valid,
            settings=settings,
            launch_id=chosen_id,
            start_proof=start_proof,
            started_by=started_by,
        )
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
#
# When a launch's approvals are authenticated (its status names an identity provider), every
# act carries a fresh proof from the approval service for exactly that act, target and run, and
# the person's sign-in names them; `--as` is refused. Otherwise the name is taken as typed.

Comment = Annotated[str, typer.Option("--comment", "-m", help="Why; kept in the audit trail.")]
Evidence = Annotated[
    str | None,
    typer.Option(
        "--evidence",
        metavar="ID",
        help="The analysis evidence you decided on, as `status` shows it (e.g. ev-12); refused "
        "if measurements got worse since. Default: the launch's current evidence.",
        show_default=False,
    ),
]
GateArgument = Annotated[
    str, typer.Argument(metavar="GATE", help="The gate id, e.g. soft-launch.before.")
]
UndoArgument = Annotated[
    str, typer.Argument(metavar="COMPENSATION", help="The undo's id, e.g. soft-launch.1.")
]


@dataclass(frozen=True)
class Sender:
    """Who an act is sent as: a proof (and the person and evidence it is for) when the launch's
    approvals are authenticated, a name as typed when they are not."""

    by: str = ""
    proof: str = ""
    evidence: str = ""
    granted: proof_client.GrantedProof | None = None


async def _sender(
    settings: Settings,
    status: LaunchStatus,
    act: Act,
    target: str,
    approver: str | None,
    evidence: str | None = None,
) -> Sender:
    """Sign in (cached) and fetch a proof for `act` on `target` when the launch's approvals are
    authenticated; otherwise say they are not and take the typed name."""
    if not status.identity:
        stderr().print(
            Text(
                f"approvals of {status.launch_id} are not authenticated (its plan says "
                "`identity: none`): names are taken as typed",
                style="yellow",
            ),
            soft_wrap=True,
        )
        return Sender(by=_who(approver), evidence=evidence or "")
    if approver is not None:
        fail(
            f"--as: names come from your sign-in at {status.identity}; leave --as out "
            "(`phasegate login` shows who you are signed in as)"
        )
    seen = evidence if evidence is not None else ""
    if evidence is None and act in ("approve", "reject"):
        seen = status.evidence
    granted = await proof_client.proof_for(
        settings,
        status.identity,
        launch=status.launch_id,
        run=status.run_id,
        act=act,
        target=target,
        evidence=seen,
        show=_show_code,
    )
    return Sender(proof=granted.proof, evidence=seen, granted=granted)


def _decision_command(decision: Literal["approve", "reject"]) -> Callable[..., None]:
    def command(
        ctx: typer.Context,
        launch_id: LaunchId,
        gate: GateArgument,
        approver: Approver = None,
        comment: Comment = "",
        evidence: Evidence = None,
    ) -> None:
        settings = settings_of(ctx)

        async def send(client: Client) -> Decision:
            status = await launches.get_status(client, launch_id)
            sender = await _sender(settings, status, decision, gate, approver, evidence)
            return await launches.decide(
                client,
                launch_id,
                gate,
                sender.by,
                decision,
                comment,
                proof=sender.proof,
                evidence=sender.evidence,
            )

        taken = _run(settings, send)
        if taken.pending > 0:
            so_far = f", approved so far by {', '.join(taken.people)}" if taken.people else ""
            stdout().print(
                Text.assemble(
                    ("counted", "green"),
                    f"; {taken.pending} more approval(s) needed ({taken.gate} of {launch_id}"
                    f"{so_far})",
                ),
                soft_wrap=True,
            )
            return
        stdout().print(
            Text.assemble(
                (taken.outcome, "green" if taken.outcome == "approved" else "red"),
                f" {taken.gate} of {launch_id} as {taken.by}",
                f": {taken.comment}" if taken.comment else "",
            ),
            soft_wrap=True,
        )

    return command


# What each act on a stuck undo asks of the launch, as the CLI confirms it.
ASKED: dict[UndoAction, str] = {
    "retry": "a retry of",
    "skip": "a skip of",
    "keep_writes": "to keep the live writes at risk in",
    "drop_writes": "to drop the live writes at risk in",
}


def _compensation_command(action: UndoAction) -> Callable[..., None]:
    act = SIGNALS[action]

    def command(
        ctx: typer.Context,
        launch_id: LaunchId,
        undo: UndoArgument,
        approver: Approver = None,
        comment: Comment = "",
    ) -> None:
        settings = settings_of(ctx)

        async def signal(client: Client) -> LaunchStatus:
            status = await launches.get_status(client, launch_id)
            sender = await _sender(settings, status, act, undo, approver)
            # The rows the person is shown are the rows the decision is for: if the restore
            # finds another count by the time the signal arrives, the launch refuses it.
            at_risk = status.writes_at_risk if action in ("keep_writes", "drop_writes") else None
            await launches.act_on_compensation(
                client,
                launch_id,
                action,
                undo,
                sender.by,
                comment,
                sender.proof,
                rows=at_risk.rows if at_risk is not None else None,
            )
            return status

        status = _run(settings, signal)
        at_risk = status.writes_at_risk
        rows = (
            f" ({count(at_risk.rows, 'row')} at risk, saved in {at_risk.saved or 'no file'})"
            if at_risk is not None and action in ("keep_writes", "drop_writes")
            else ""
        )
        stdout().print(
            Text(
                f"asked {launch_id} {ASKED[action]} {undo}{rows}; the refusal, if any, shows in "
                f"`phasegate status {launch_id}`"
            ),
            soft_wrap=True,
        )

    return command


app.command(
    "approve",
    help="Go: approve an open gate (refused unless it is open and you are one of its approvers).",
)(_decision_command("approve"))
app.command("reject", help="No-go: reject an open gate; the launch rolls back.")(
    _decision_command("reject")
)


@app.command()
def abort(
    ctx: typer.Context,
    launch_id: LaunchId,
    reason: Annotated[str, typer.Option(help="Why; shown as the rollback reason.")],
    approver: Approver = None,
) -> None:
    """Stop a launch now and roll back everything it changed."""
    settings = settings_of(ctx)

    async def send(client: Client) -> None:
        status = await launches.get_status(client, launch_id)
        sender = await _sender(settings, status, "abort", "", approver)
        await launches.abort(client, launch_id, reason, sender.by, sender.proof)

    _run(settings, send)
    stdout().print(
        Text(f"asked {launch_id} to abort; follow the rollback with `phasegate watch {launch_id}`"),
        soft_wrap=True,
    )


@app.command()
def pause(
    ctx: typer.Context,
    launch_id: LaunchId,
    reason: Annotated[
        str,
        typer.Option("--comment", "-m", metavar="REASON", help="Why; shown with the hold."),
    ],
    approver: Approver = None,
) -> None:
    """Hold a launch where it is: exposure stays, gates wait, analysis goes on; `resume` goes on."""
    if not reason.strip():
        fail("-m REASON: a pause needs its reason, shown to whoever resumes it")
    settings = settings_of(ctx)

    async def send(client: Client) -> Hold | None:
        status = await launches.get_status(client, launch_id)
        sender = await _sender(settings, status, "pause", "", approver)
        return await launches.hold(client, launch_id, "pause", reason, sender.by, sender.proof)

    held = _run(settings, send)
    if held is None:  # resumed again before the update answered
        stdout().print(Text(f"{launch_id} is not paused now"), soft_wrap=True)
        return
    stdout().print(
        Text.assemble(
            ("paused", "yellow"),
            f" {launch_id} as {held.by}: {held.reason}; resume with `phasegate resume {launch_id}`",
        ),
        soft_wrap=True,
    )


@app.command()
def resume(
    ctx: typer.Context,
    launch_id: LaunchId,
    reason: Annotated[
        str, typer.Option("--comment", "-m", metavar="REASON", help="Why; kept in the audit.")
    ] = "",
    approver: Approver = None,
) -> None:
    """Let a paused launch go on from where it held."""
    settings = settings_of(ctx)

    async def send(client: Client) -> tuple[Hold | None, Hold | None, Sender]:
        status = await launches.get_status(client, launch_id)
        sender = await _sender(settings, status, "resume", "", approver)
        after = await launches.hold(client, launch_id, "resume", reason, sender.by, sender.proof)
        return status.paused, after, sender

    before, after, sender = _run(settings, send)
    if after is not None:  # paused again before the update answered
        stdout().print(
            Text(f"{launch_id} is paused again by {after.by}: {after.reason}"), soft_wrap=True
        )
        return
    # A proven person is named by the launch from the proof, as the audit trail shows.
    who = f" as {sender.by}" if sender.by else ""
    held = f" (held by {before.by}: {before.reason})" if before is not None else ""
    stdout().print(
        Text.assemble(
            ("resumed", "green"),
            f" {launch_id}{who}{held}",
            f": {reason}" if reason else "",
        ),
        soft_wrap=True,
    )


compensation_app.command("retry", help="Try a failing undo again, once its cause is fixed.")(
    _compensation_command("retry")
)
compensation_app.command(
    "skip",
    help="Give up on a failing undo, on record (a comment saying why is required); for a "
    "database restore that would lose live writes, the database stays migrated.",
)(_compensation_command("skip"))
compensation_app.command(
    "keep-writes",
    help="Keep the live writes a database restore would lose: it reverts, then runs the "
    "migration folder's carry_over.sql in the same transaction.",
)(_compensation_command("keep_writes"))
compensation_app.command(
    "drop-writes",
    help="Let a database restore drop the live writes it would lose, at most as many rows as "
    "`status` shows, on record (a comment saying why is required).",
)(_compensation_command("drop_writes"))


class SignalName(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    ABORT = "abort"
    PAUSE = "pause"
    RESUME = "resume"


# Signals that name no gate: they act on the whole launch, with a reason.
LAUNCH_SIGNALS: dict[SignalName, Act] = {
    SignalName.ABORT: "abort",
    SignalName.PAUSE: "pause",
    SignalName.RESUME: "resume",
}


@app.command("signal-input")
def signal_input(
    ctx: typer.Context,
    signal: Annotated[SignalName, typer.Argument(help="The signal you will send.")],
    launch_id: LaunchId,
    gate: Annotated[
        str | None,
        typer.Argument(
            metavar="GATE",
            help="The gate to approve or reject. Default: the open gate. None for abort, "
            "pause and resume.",
            show_default=False,
        ),
    ] = None,
    evidence: Evidence = None,
    comment: Annotated[
        str, typer.Option("--comment", "-m", help="Why (the reason, for abort and pause).")
    ] = "",
    approver: Approver = None,
) -> None:
    """Print the input to paste into the Temporal UI's Send a Signal (a fresh proof included)."""
    settings = settings_of(ctx)
    whole = LAUNCH_SIGNALS.get(signal)
    if whole is not None and gate is not None:
        fail(f"GATE: {signal.value} acts on the whole launch; leave the gate out")
    if signal == SignalName.ABORT and not comment.strip():
        fail("-m REASON: an abort needs its reason, shown as the rollback reason")
    if signal == SignalName.PAUSE and not comment.strip():
        fail("-m REASON: a pause needs its reason, shown to whoever resumes it")

    async def build(client: Client) -> tuple[dict[str, str], Sender]:
        status = await launches.get_status(client, launch_id)
        if whole is not None:
            sender = await _sender(settings, status, whole, "", approver)
            return _abort_input(comment, sender), sender
        target = gate or (status.open_gate.gate if status.open_gate is not None else "")
        if not target:
            fail(f"GATE: no gate of {launch_id} is open now; name the gate to decide")
        verb: Act = "approve" if signal == SignalName.APPROVE else "reject"
        sender = await _sender(settings, status, verb, target, approver, evidence)
        return _decision_input(target, comment, sender), sender

    payload, sender = _run(settings, build)
    typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    granted = sender.granted
    until = (
        f" before {granted.expires_at:%H:%M:%S} UTC"
        if granted is not None and granted.expires_at is not None
        else ""
    )
    who = f"signed in as {granted.person.name}" if granted is not None else f"as {sender.by}"
    stderr().print(
        Text(
            f"in the Temporal UI, open {launch_id}, choose Send a Signal, name `{signal.value}`, "
            f"and paste the input above{until} ({who})"
        ),
        soft_wrap=True,
    )


def _decision_input(gate: str, comment: str, sender: Sender) -> dict[str, str]:
    payload = {"gate": gate}
    if not sender.proof:
        payload["approver"] = sender.by
    payload["comment"] = comment
    if sender.evidence:
        payload["evidence"] = sender.evidence
    if sender.proof:
        payload["proof"] = sender.proof
    return payload


def _abort_input(reason: str, sender: Sender) -> dict[str, str]:
    """The input of `abort`, `pause` or `resume`: a reason and who sends it."""
    if sender.proof:
        return {"reason": reason, "proof": sender.proof}
    return {"reason": reason, "by": sender.by}


# --- signing in --------------------------------------------------------------------------

IssuerOption = Annotated[
    str | None,
    typer.Option(
        "--issuer",
        metavar="URL",
        help="The identity provider (the plan's approvals.identity.issuer).",
        show_default=False,
    ),
]


@app.command()
def login(
    ctx: typer.Context,
    issuer: IssuerOption = None,
    launch_id: Annotated[
        str | None,
        typer.Option(
            "--launch",
            metavar="LAUNCH_ID",
            help="Sign in where this launch's approvals are proven.",
        ),
    ] = None,
) -> None:
    """Sign in at the identity provider now and say who you are.

    The provider is --issuer, else the one --launch's approvals are proven at, else the one you
    signed in at before."""
    settings = settings_of(ctx)
    cache = sign_in.SignInCache.default()
    if issuer is None and launch_id is not None:
        status = _run(settings, lambda client: launches.get_status(client, launch_id))
        if not status.identity:
            fail(f"approvals of {launch_id} are not authenticated (`identity: none`): no sign-in")
        issuer = status.identity
    if issuer is None:
        issuer = _only_signed_in_issuer(cache)
    signed_in = _signed_in(
        sign_in.sign_in_now(issuer, settings.oidc_client_id, show=_show_code, cache=cache)
    )
    person = signed_in.person
    via = "" if signed_in.source == "device" else f" (from {signed_in.source})"
    email = f" <{person.email}>" if person.email and person.email != person.name else ""
    stdout().print(
        Text.assemble(
            "signed in at ",
            (signed_in.issuer, "bold"),
            f"{via} as ",
            (person.name, "bold"),
            email,
            f"; groups: {', '.join(person.groups) or 'none'}",
        ),
        soft_wrap=True,
    )


@app.command()
def logout(issuer: IssuerOption = None) -> None:
    """Forget your sign-in (every one, or --issuer's) and revoke it at the provider."""
    cache = sign_in.SignInCache.default()
    entries = [e for e in cache.entries() if issuer is None or e.issuer == issuer]
    if not entries:
        stdout().print(Text(f"not signed in{f' at {issuer}' if issuer else ''}"), soft_wrap=True)
    for entry in entries:
        revoked = _signed_in(sign_in.sign_out(entry, cache))
        stdout().print(
            Text(
                f"signed out of {entry.issuer}"
                + ("" if revoked else "; the provider did not confirm revoking the sign-in")
            ),
            soft_wrap=True,
        )
    for variable in (sign_in.ID_TOKEN_ENV, sign_in.CREDENTIALS_ENV):
        if os.environ.get(variable):
            stderr().print(Text(f"{variable} is still set and still signs you in"), soft_wrap=True)


def _only_signed_in_issuer(cache: sign_in.SignInCache) -> str:
    issuers = sorted({entry.issuer for entry in cache.entries()})
    if len(issuers) == 1:
        return issuers[0]
    if issuers:
        fail(f"--issuer: you signed in at {', '.join(issuers)} before; name one")
    fail(
        "--issuer URL (the plan's approvals.identity.issuer) or --launch LAUNCH_ID: where to sign in"
    )


def _signed_in(work: Awaitable[T]) -> T:
    """Run one sign-in step; its failure is one red line."""

    async def run() -> T:
        return await work

    try:
        return asyncio.run(run())
    except sign_in.SignInError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted; not signed in")


def _show_code(code: sign_in.DeviceCode) -> None:
    """Tell the person how to approve this sign-in (on stderr: stdout stays the command's)."""
    err = stderr()
    err.print(
        Text.assemble(
            "To sign in, open ",
            (code.verification_uri, "bold"),
            " and enter the code ",
            (code.user_code, "bold"),
        ),
        soft_wrap=True,
    )
    if code.verification_uri_complete:
        err.print(Text(f"  (or open {code.verification_uri_complete})"), soft_wrap=True)
    err.print(Text("Waiting for the sign-in…", style="dim"), soft_wrap=True)


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
    except (TemporalUnreachable, PlanError, ConfigurationError) as err:
        fail(str(err))


@app.command("codec-server")
def codec_server(
    ctx: typer.Context,
    origin: Annotated[
        list[str],
        typer.Option(
            "--origin",
            metavar="URL",
            help="The Temporal UI's origin (scheme://host:port) that may call it; repeatable.",
            show_default=False,
        ),
    ],
    token_file: Annotated[
        Path,
        typer.Option(
            "--token-file",
            metavar="FILE",
            help="The bearer token every request must carry (one line, mode 0600).",
            dir_okay=False,
            show_default=False,
        ),
    ],
    keys: Annotated[
        Path | None,
        typer.Option(
            "--keys",
            metavar="FILE",
            help="The payload key file. Default: $PHASEGATE_PAYLOAD_KEYS.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = (
        codec_server_app.DEFAULT_PORT
    ),
) -> None:
    """Serve Temporal's codec endpoints (/encode, /decode) so the UI shows payloads decrypted."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = codec_server_app.settings_from(
            keys_file=keys or settings_of(ctx).payload_keys,
            token_file=token_file,
            origins=origin,
            host=host,
            port=port,
        )
    except ConfigurationError as err:
        fail(str(err))
    codec_server_app.serve(settings)


# --- many launches at once ------------------------------------------------------------
#
# Each launch is acted on as the single-launch command acts on it (its status read at that
# moment, a proof of its own when its approvals are proven), at most --concurrency at once.

bulk_app = typer.Typer(
    help="Approve, reject, abort, pause or resume every running launch a filter matches.",
    no_args_is_help=True,
)
app.add_typer(bulk_app, name="bulk")

Concurrency = Annotated[
    int,
    typer.Option(help=f"At most this many launches acted on at once (1..{bulk.MAX_CONCURRENCY})."),
]


def _bulk_prover(settings: Settings, approver: str | None) -> bulk.Prover:
    """Proofs for launches whose approvals are proven: one sign-in, then one proof per act."""
    signing_in = asyncio.Lock()

    async def prove(status: LaunchStatus, act: Act, target: str, evidence: str) -> str:
        if approver is not None:
            raise proof_client.ProofUnavailable(
                f"--as: names come from your sign-in at {status.identity}; leave --as out"
            )
        service = proof_client.service_url(settings, status.identity)
        # The first launch waits for the sign-in; the others then read it from the cache.
        async with signing_in:
            signed_in = await sign_in.id_token(
                status.identity, settings.oidc_client_id, show=_show_code
            )
        return await proof_client.request_proof(
            service,
            signed_in.id_token,
            launch=status.launch_id,
            run=status.run_id,
            act=act,
            target=target,
            evidence=evidence,
        )

    return prove


def _print_outcome(outcome: bulk.LaunchOutcome) -> None:
    style = {"done": "green", "refused": "yellow", "failed": "red"}[outcome.outcome]
    said = "" if outcome.outcome == "done" else f"{outcome.outcome}: "
    stdout().print(
        Text.assemble((outcome.launch_id, "bold"), ": ", (said + outcome.detail, style)),
        soft_wrap=True,
    )


def _bulk_summary(result: bulk.BulkResult) -> None:
    """The summary line; exit 1 when any launch refused or failed."""
    line = Text(result.summary(), style="bold")
    stdout().print(line, soft_wrap=True)
    if not result.clean:
        raise typer.Exit(EXIT_FAILED)


def _bulk_command(action: bulk.BulkAction) -> Callable[..., None]:
    def command(
        ctx: typer.Context,
        service: Annotated[str | None, typer.Option(help="Only this service's launches.")] = None,
        phase: Annotated[
            str | None, typer.Option(help="Only launches in this phase, e.g. soft-launch.")
        ] = None,
        gate: Annotated[
            str | None,
            typer.Option(
                help="Only launches whose open gate is this one, e.g. soft-launch.before."
            ),
        ] = None,
        status: Annotated[
            str | None, typer.Option(help="Only launches in this status, e.g. waiting, paused.")
        ] = None,
        every: Annotated[
            bool,
            typer.Option("--all", help="Every running launch, when no filter is given."),
        ] = False,
        limit: Annotated[
            int,
            typer.Option(help=f"At most this many launches, newest first (1..{bulk.MAX_LIMIT})."),
        ] = bulk.DEFAULT_LIMIT,
        concurrency: Concurrency = bulk.DEFAULT_CONCURRENCY,
        comment: Annotated[
            str,
            typer.Option(
                "--comment", "-m", metavar="COMMENT", help="Why (the reason, for abort and pause)."
            ),
        ] = "",
        approver: Approver = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="List what would be acted on; send nothing.")
        ] = False,
        yes: Annotated[bool, typer.Option("--yes", help="Act on every launch matched.")] = False,
    ) -> None:
        settings = settings_of(ctx)
        by = approver or _default_name()
        try:
            bulk.check_filter(
                service=service,
                phase=phase,
                status=status,
                gate=gate,
                limit=limit,
                concurrency=concurrency,
            )
            bulk.check_request(action, comment, by)
        except bulk.BulkInputError as err:
            fail(str(err))
        if not (service or phase or gate or status or every):
            fail(
                "no filter: give --service, --phase, --gate or --status, or --all to act on "
                "every running launch"
            )
        act = not dry_run and yes

        async def work(client: Client) -> tuple[list[str], bulk.BulkResult | None]:
            selected = await bulk.select_launches(
                client,
                service=service,
                phase=phase,
                status=status,
                gate=gate,
                limit=limit,
                concurrency=concurrency,
            )
            if not selected or not act:
                return selected, None
            done = await bulk.bulk_act(
                client,
                action,
                selected,
                comment=comment,
                by=by,
                prove=_bulk_prover(settings, approver),
                gate=gate,
                concurrency=concurrency,
                on_outcome=_print_outcome,
            )
            return selected, done

        selected, result = _run(settings, work)
        if not selected:
            stdout().print(Text("no running launch matches"), soft_wrap=True)
            return
        matched = (
            "1 running launch matches"
            if len(selected) == 1
            else f"{len(selected)} running launches match"
        )
        if len(selected) == limit:
            matched += f" (--limit {limit} reached: more may)"
        if dry_run:
            for launch_id in selected:
                stdout().print(Text(f"would {action} {launch_id}"), soft_wrap=True)
            stdout().print(Text(f"{matched}; nothing sent (--dry-run)"), soft_wrap=True)
            return
        if result is None:
            fail(f"{matched}: add --yes to {action} them, or --dry-run to list them")
        _bulk_summary(result)

    return command


for _action, _help in (
    ("approve", "Go: approve the open gate of every launch matched."),
    ("reject", "No-go: reject the open gate of every launch matched; each rolls back."),
    ("abort", "Stop every launch matched and roll back (-m REASON); the abort is a signal."),
    ("pause", "Hold every launch matched where it is (-m REASON)."),
    ("resume", "Let every paused launch matched go on."),
):
    bulk_app.command(_action, help=_help)(_bulk_command(cast(bulk.BulkAction, _action)))


@app.command("stop-line")
def stop_line(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service to stop.")],
    reason: Annotated[
        str,
        typer.Option("--comment", "-m", metavar="REASON", help="Why; each rollback's reason."),
    ],
    approver: Approver = None,
    concurrency: Concurrency = bulk.DEFAULT_CONCURRENCY,
) -> None:
    """Stop the line: abort every running launch of SERVICE now; each rolls back."""
    settings = settings_of(ctx)
    by = approver or _default_name()
    try:
        bulk.check_filter(service=service, concurrency=concurrency)
        bulk.check_request("abort", reason, by)
    except bulk.BulkInputError as err:
        fail(str(err).replace("--service", "SERVICE"))

    async def work(client: Client) -> bulk.BulkResult:
        return await bulk.stop_the_line(
            client,
            service,
            reason,
            by=by,
            prove=_bulk_prover(settings, approver),
            concurrency=concurrency,
            on_outcome=_print_outcome,
        )

    result = _run(settings, work)
    if not result.outcomes:
        stdout().print(Text(f"no running launch of {service}"), soft_wrap=True)
        return
    _bulk_summary(result)


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
    except (launches.DecisionError, launches.HoldError) as err:
        fail(f"refused: {err}")
    except ValidationError as err:
        # What was typed does not fit the message the launch takes (a reason too long, ...).
        fail("; ".join(describe_errors(err, document="request")))
    except launches.LaunchRefused as err:
        fail(refused_call(settings, err.answer))
    except (
        TemporalUnreachable,
        ConfigurationError,
        launches.LaunchError,
        proof_client.ProofUnavailable,
        sign_in.SignInError,
    ) as err:
        fail(str(err))
    except RPCError as err:
        if err.status == RPCStatusCode.PERMISSION_DENIED:
            fail(refused_call(settings, err))
        fail(f"Temporal at {settings.temporal_address} said {err.status.name}: {err.message}")
    except KeyboardInterrupt:
        fail("interrupted; the launch itself goes on")


def _who(approver: str | None) -> str:
    name = approver or _default_name()
    if not name:
        fail("who are you? give --as NAME or set PHASEGATE_APPROVER")
    return name


def _default_name() -> str:
    return os.environ.get("PHASEGATE_APPROVER") or os.environ.get("USER") or ""


if __name__ == "__main__":
    main()
