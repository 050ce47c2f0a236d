"""The sign-in side of `phasegate demo --authenticated`: the local identity provider and the
approval service beside it, the plan's issuer pointed at them, and people proving who they are
with a fresh proof for the launch's start and for every vote at its gates.

Alice starts the launch; with `--auto-approve` carol approves each gate and bob adds the second
approval a gate with `min_approvals: 2` needs, each signed in through the provider's own login
form. Without it the person at the keyboard signs in with the CLI's device flow and decides the
gates in the Temporal UI or with `phasegate approve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from temporalio.client import Client

from approvals.proofs import plan_digest
from devstack.approval_service import LocalApprovalService, start_approval_service_for
from devstack.identity_provider import (
    IdentityProvider,
    Person,
    sign_in_with_password,
    start_identity_provider,
)
from devstack.processes import ManagedProcess
from schemas.decision_messages import Decision
from schemas.gate_spec import IdentitySpec
from schemas.launch_messages import LaunchStatus, LaunchStatusValue, OpenGate
from schemas.plan import LaunchPlan
from starters import launches, proof_client, sign_in
from workers.settings import Settings

# Where the example plan's issuer points, and the approval service beside it; taken ports are
# replaced by free ones, and the plan's issuer with them.
IDENTITY_PORT = 5556
APPROVALS_PORT = 5557
STARTER = "alice"
# Who approves with --auto-approve: the first person, and the next while a gate needs more.
APPROVERS = ("carol", "bob")
ENDED = (LaunchStatusValue.COMPLETED, LaunchStatusValue.ROLLED_BACK, LaunchStatusValue.REFUSED)


class NotAuthenticated(ValueError):
    """The plan's approvals are not proven (`identity: none`), so there is nothing to sign in to."""


@dataclass
class SignInStack:
    """The running identity provider and approval service."""

    provider: IdentityProvider
    service: LocalApprovalService

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self.service, self.provider]

    def stop(self) -> None:
        self.service.stop()
        self.provider.stop()

    def plan_for(self, plan: LaunchPlan) -> LaunchPlan:
        """The plan with its approvals proven at this provider; `NotAuthenticated` for a plan
        whose approvals are not proven at all."""
        identity = plan.approvals.authenticated
        if identity is None:
            raise NotAuthenticated(
                "--authenticated: the plan's approvals say `identity: none`; give a plan that "
                "names an issuer (examples/plans/checkout-authenticated.yaml)"
            )
        moved = IdentitySpec.model_validate(
            {**identity.model_dump(), "issuer": self.provider.issuer}
        )
        approvals = plan.approvals.model_copy(update={"identity": moved})
        return plan.model_copy(update={"approvals": approvals})

    def worker_env(self, workdir: Path) -> dict[str, str]:
        """What the worker needs to trust this approval service's proofs, and the key it seals
        its own messages with (kept in `workdir`, made on first use)."""
        return {
            "PHASEGATE_APPROVAL_SERVICE": self.service.url,
            "PHASEGATE_WORKER_KEY_FILE": str(_worker_key(workdir)),
        }

    def people(self) -> list[str]:
        """One line per person who can sign in: username, password, name and groups."""
        return [
            f"  {person.username:<6} password {person.password:<20} {person.name} "
            f"<{person.email}>, groups: {', '.join(person.groups) or 'none'}"
            for person in self.provider.people
        ]

    def decide_link(self, status: LaunchStatus, gate: OpenGate) -> str:
        """The approval service's page that signs a person in and gives the signal input
        that approves `gate`."""
        query = urlencode(
            {
                "launch": status.launch_id,
                "run": status.run_id,
                "gate": gate.gate,
                "decision": "approve",
                **({"evidence": status.evidence} if status.evidence else {}),
            }
        )
        return f"{self.service.url}/decide?{query}"


def start_sign_in_stack(
    workdir: Path, *, identity_port: int | None = None, approvals_port: int | None = None
) -> SignInStack:
    """The identity provider with the test people and the approval service trusting it, on
    the given loopback ports (default: free ones). `LocalProcessError` (a
    `BinaryNotFoundError` when the provider is not built) if either does not start."""
    provider = start_identity_provider(workdir / "identity", port=identity_port)
    try:
        service = start_approval_service_for(provider, workdir / "approvals", port=approvals_port)
    except BaseException:
        provider.stop()
        raise
    return SignInStack(provider, service)


Say = Callable[[str], None]


async def launch_and_follow(
    client: Client,
    settings: Settings,
    plan: LaunchPlan,
    stack: SignInStack,
    *,
    auto_approve: bool,
    say: Say,
    on_status: Callable[[LaunchStatus], None],
) -> LaunchStatus:
    """Start the launch with a proof of who starts it and follow it to its end: approving each
    gate as carol (and bob) with `auto_approve`, else showing how to decide each as it opens."""
    launch_id = launches.new_launch_id(plan)
    if auto_approve:
        starter = stack.provider.person(STARTER)
        say(f"{starter.username} signs in at {stack.provider.issuer} to start the launch")
        id_token = await asyncio.to_thread(sign_in_with_password, stack.provider, STARTER)
    else:
        say(
            f"sign in to start the launch (as {STARTER}, password "
            f"{stack.provider.person(STARTER).password}), with the CLI's sign-in:"
        )
        signed_in = await sign_in.sign_in_now(
            stack.provider.issuer, stack.provider.cli_client_id, show=_show_code(say)
        )
        id_token = signed_in.id_token
        say(f"signed in as {signed_in.person.name}")
    proof = await proof_client.request_proof(
        stack.service.url,
        id_token,
        launch=launch_id,
        run="",
        act="start",
        target=plan_digest(plan),
    )
    await launches.start_launch(
        client, plan, settings=settings, launch_id=launch_id, start_proof=proof
    )
    say(f"launch {launch_id} started: {launches.ui_link(settings, launch_id)}")
    if auto_approve:
        names = " and ".join(APPROVERS)
        say(
            f"--auto-approve: {names} approve each gate as it opens, each vote with a fresh "
            f"proof from {stack.service.url}"
        )
        final = await _approve_as_people(client, stack, launch_id, APPROVERS, say, on_status)
    else:
        _how_to_decide(settings, stack, launch_id, sign_in.person_of(id_token).name, say)
        final = await _follow_announcing_gates(client, stack, settings, launch_id, say, on_status)
    for line in proven_decisions(final):
        say(line)
    return final


def proven_decisions(status: LaunchStatus) -> list[str]:
    """Who started the launch and who took each decision, and whether their names were proven."""
    lines = [f"started by {status.started_by or 'nobody proven'} (signed in at {status.identity})"]
    lines += [
        f"{decision.gate}: {decision.outcome} by {', '.join(decision.people) or decision.by} "
        f"({decision.source}; authenticated: {str(decision.authenticated).lower()})"
        for decision in status.decisions
    ]
    return lines


# --- --auto-approve ----------------------------------------------------------------------


@dataclass
class _GateVotes:
    """The votes cast at one opening of a gate: how many people took their turn, and whether
    the gate has what it needs."""

    turns: int = 0
    closed: bool = False


async def _approve_as_people(
    client: Client,
    stack: SignInStack,
    launch_id: str,
    people: Sequence[str],
    say: Say,
    on_status: Callable[[LaunchStatus], None],
    *,
    interval: float = 0.5,
) -> LaunchStatus:
    """Approve every gate as it opens, as `people[0]`, then the next person while the gate
    needs more approvals; a refused vote is shown and the next person tries."""
    gates: dict[tuple[str, str], _GateVotes] = {}
    while True:
        status = await launches.get_status(client, launch_id)
        on_status(status)
        if status.status in ENDED:
            return status
        gate = status.open_gate
        votes = _GateVotes(closed=True)
        if gate is not None:
            votes = gates.setdefault((gate.gate, gate.opened_at.isoformat()), _GateVotes())
        if gate is None or votes.closed or votes.turns >= len(people):
            await asyncio.sleep(interval)
            continue
        person = stack.provider.person(people[votes.turns])
        votes.turns += 1
        try:
            decision = await _approve(client, stack, status, gate, person)
        except launches.DecisionError as err:
            say(f"{person.username} may not approve {gate.gate}: {err}")
            continue
        votes.closed = decision.pending == 0
        still = f"; {decision.pending} more approval(s) needed" if decision.pending else ""
        say(
            f"{person.username} approved {gate.gate} (approved so far by "
            f"{', '.join(decision.people)}){still}"
        )


async def _approve(
    client: Client, stack: SignInStack, status: LaunchStatus, gate: OpenGate, person: Person
) -> Decision:
    """`person` signs in and approves `gate` with a proof made for this vote alone."""
    id_token = await asyncio.to_thread(sign_in_with_password, stack.provider, person.username)
    proof = await proof_client.request_proof(
        stack.service.url,
        id_token,
        launch=status.launch_id,
        run=status.run_id,
        act="approve",
        target=gate.gate,
        evidence=status.evidence,
    )
    return await launches.decide(
        client,
        status.launch_id,
        gate.gate,
        "",
        "approve",
        f"approved by the demo, signed in as {person.username}",
        proof=proof,
        evidence=status.evidence,
    )


# --- people deciding -----------------------------------------------------------------------


def _show_code(say: Say) -> sign_in.ShowCode:
    def show(code: sign_in.DeviceCode) -> None:
        say(f"  open {code.verification_uri} and enter the code {code.user_code}")
        if code.verification_uri_complete:
            say(f"  (or open {code.verification_uri_complete}); waiting for the sign-in…")

    return show


def _how_to_decide(
    settings: Settings, stack: SignInStack, launch_id: str, starter: str, say: Say
) -> None:
    env = (
        f"TEMPORAL_ADDRESS={settings.temporal_address} "
        f"PHASEGATE_APPROVAL_SERVICE={stack.service.url}"
    )
    say(
        f"{starter} started it and may not approve its gates (four eyes): decide them as carol, "
        "and as bob for the second approval the gate at 50% needs."
    )
    say(
        "In the UI, a gate's details give its approval page and the `phasegate signal-input` "
        "command: sign in, copy the signal input (a fresh proof) and paste it into Send a Signal."
    )
    say(
        f"Or from another terminal: `{env} .venv/bin/phasegate login --issuer "
        f"{stack.provider.issuer}`, then `{env} .venv/bin/phasegate approve {launch_id} GATE`"
    )


async def _follow_announcing_gates(
    client: Client,
    stack: SignInStack,
    settings: Settings,
    launch_id: str,
    say: Say,
    on_status: Callable[[LaunchStatus], None],
) -> LaunchStatus:
    """Follow the launch to its end, saying where to approve each gate as it opens."""
    announced: set[tuple[str, str]] = set()
    final = None
    async for status in launches.follow_launch(client, launch_id, interval=0.5):
        on_status(status)
        final = status
        gate = status.open_gate
        if gate is None or (gate.gate, gate.opened_at.isoformat()) in announced:
            continue
        announced.add((gate.gate, gate.opened_at.isoformat()))
        say(f"approve {gate.gate} at {stack.decide_link(status, gate)}")
        say(
            f"  or get the signal input: `TEMPORAL_ADDRESS={settings.temporal_address} "
            f"PHASEGATE_APPROVAL_SERVICE={stack.service.url} .venv/bin/phasegate signal-input "
            f"approve {launch_id} {gate.gate}`"
        )
    assert final is not None
    return final


def _worker_key(workdir: Path) -> Path:
    """The demo worker's sealing key in `workdir` (mode 0600), made the first time."""
    path = workdir / "worker.key"
    with contextlib.suppress(FileExistsError):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    return path
