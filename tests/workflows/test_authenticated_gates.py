"""A launch whose plan names an identity provider: only proofs count, on time-skipped launches.

A client with full access to the namespace but no approver's proof cannot start a launch in
someone's name, open or close a gate, abort, act on an undo, or forge the launch's internal
channels; each attempt is refused and audited, and the launch goes on unaffected.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from approvals.proofs import ApprovalAuthority, plan_digest
from schemas.decision_messages import AuthorityRequest, GateVote
from schemas.launch_messages import LaunchStatus, PhaseInput
from schemas.plan import LaunchPlan
from tests.support.fakes import FakeWorld, running_launch
from tests.support.histories import HISTORIES, replay, save_history
from tests.support.launches import gate_open, new_launch_id, wait_for
from tests.support.plans import exposure_only, make_plan
from tests.support.proofs import ProofMaker, TrustingWorld
from workflows.launch import LaunchWorkflow

ISSUER = "http://idp.test"
IDENTITY = {"identity": {"issuer": ISSUER}, "timeout": "1h"}
LIFETIME = timedelta(minutes=14)


async def maker_for(env: WorkflowEnvironment, launch_id: str) -> ProofMaker:
    """Proofs issued at the test server's current time, bound to `launch_id` (the run is set
    once the launch started)."""
    maker = ProofMaker(launch=launch_id, run="", idp=ISSUER)
    await keep_time(env, maker)
    return maker


async def keep_time(env: WorkflowEnvironment, maker: ProofMaker) -> None:
    """Issue the next proofs at the test server's time, which skips ahead as tests wait."""
    now = (await env.get_current_time()).timestamp()
    maker.clock = lambda: now


def authenticated_plan(**approvals: Any) -> LaunchPlan:
    return make_plan(
        approvals={**IDENTITY, "approvers": ["group:release-managers", "bob"], **approvals}
    )


def proof(maker: ProofMaker, person: str, act: Any, target: str, **fields: Any) -> str:
    return maker.proof(person, act, target, lifetime=LIFETIME, **fields)


def notes(current: LaunchStatus, handler: str) -> list[tuple[bool, str]]:
    return [(e.accepted, e.note) for e in current.audit if e.handler.endswith(handler)]


async def test_a_launch_without_the_starters_proof_changes_nothing(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    launch_id = new_launch_id()
    maker = await maker_for(time_skipping_env, launch_id)
    world = TrustingWorld(maker)
    plan = authenticated_plan()
    other_plan = proof(maker, "alice", "start", plan_digest(make_plan(version="6.6.6")))
    async with running_launch(
        time_skipping_env.client, plan, world, launch_id=launch_id, start_proof=other_plan
    ) as handle:
        result = await handle.result()
    assert result.status == "refused"
    assert result.reason.startswith("not started, nothing changed: start_proof: made for target")
    assert world.names() == ["approval_authority"]


async def test_four_eyes_quorum_and_forged_channels(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    env = time_skipping_env
    launch_id = new_launch_id()
    maker = await maker_for(env, launch_id)
    world = TrustingWorld(maker)
    plan = authenticated_plan(min_approvals=2)
    start = proof(maker, "alice", "start", plan_digest(plan))
    gate = "soft-launch.before"
    async with running_launch(
        env.client, plan, world, launch_id=launch_id, start_proof=start
    ) as handle:
        opened = await gate_open(env, handle, gate)
        assert (opened.started_by, opened.identity) == ("alice", ISSUER)
        maker.run = opened.run_id
        await keep_time(env, maker)

        def vote(person: str, verb: str = "approve", **fields: str) -> dict[str, str]:
            return {"gate": gate, "proof": proof(maker, person, verb, gate, **fields)}

        # Refused: a self-declared name, the starter, a proof for another gate or launch.
        await handle.signal(LaunchWorkflow.approve, {"gate": gate, "approver": "carol"})
        await handle.signal(LaunchWorkflow.approve, vote("alice"))
        await handle.signal(
            LaunchWorkflow.approve,
            {"gate": gate, "proof": proof(maker, "carol", "approve", "full-launch.after")},
        )
        await handle.signal(LaunchWorkflow.approve, vote("carol", launch="launch-other"))
        # One approval of two, then the same person again.
        await handle.signal(LaunchWorkflow.approve, vote("carol"))
        await handle.signal(LaunchWorkflow.approve, vote("carol"))
        counted = await wait_for(env, handle, lambda s: len(notes(s, "approve")) == 6)
        assert [accepted for accepted, _ in notes(counted, "approve")] == [
            False,
            False,
            False,
            False,
            True,
            False,
        ]
        refusals = [note for _, note in notes(counted, "approve")]
        assert refusals[0].startswith("proof: missing")
        assert "'alice' started this launch and may not approve" in refusals[1]
        assert "made for target 'full-launch.after'" in refusals[2]
        assert "made for launch 'launch-other'" in refusals[3]
        assert refusals[4] == "approval 1 of 2 (carol)"
        assert "'carol' already approved" in refusals[5]
        assert counted.open_gate is not None
        assert counted.open_gate.approvals == ["carol"]

        # Forged internal channels: a vote straight to the phase, a report to the launch.
        await keep_time(env, maker)
        phase = env.client.get_workflow_handle(f"{launch_id}.soft-launch")
        forged = GateVote(
            gate=gate,
            verb="approve",
            launch_run=opened.run_id,
            person="bob",
            proof=proof(maker, "bob", "approve", gate),
            at=counted.open_gate.opened_at,
            source="signal",
            seal="verified",
        )
        await phase.signal("relay_decision", forged)
        # An oversized relay is refused as malformed; its refusal does not quote it.
        await phase.signal(
            "relay_decision", {**forged.model_dump(mode="json"), "gate": "g" * 100_000}
        )
        await handle.signal(
            "phase_progress",
            {
                "phase": "soft-launch",
                "status": "completed",
                "seq": 10_000,
                "launch_run": opened.run_id,
                "seal": "verified",
            },
        )
        await wait_for(env, handle, lambda s: len(notes(s, "relay_decision")) == 2)
        still = await wait_for(env, handle, lambda s: len(notes(s, "phase_progress")) == 1)
        assert notes(still, "relay_decision")[0][1].startswith("seal: not relayed by the launch")
        oversized = notes(still, "relay_decision")[1][1]
        assert oversized.startswith("malformed: gate: String should have at most 256")
        assert len(oversized) < 200
        assert notes(still, "phase_progress")[0][1].startswith("seal: not sent by a Phasegate")
        assert still.open_gate is not None
        assert still.open_gate.approvals == ["carol"]
        assert "set_exposure" not in world.names()

        # The second distinct person opens the gate.
        await keep_time(env, maker)
        await handle.signal(LaunchWorkflow.approve, vote("bob"))
        # Aborted at the next gate, not mid-analysis (the test server skips time while waiting).
        moved = await gate_open(env, handle, "soft-launch.step-2")
        assert moved.exposure is not None
        decision = moved.decisions[0]
        assert (decision.outcome, decision.people, decision.authenticated) == (
            "approved",
            ["carol", "bob"],
            True,
        )

        # Abort: without a proof, with a name typed in, by someone not allowed; then by bob.
        await keep_time(env, maker)
        await handle.signal(LaunchWorkflow.abort, {"reason": "x"})
        await handle.signal(LaunchWorkflow.abort, {"reason": "x", "by": "bob"})
        await handle.signal(
            LaunchWorkflow.abort, {"reason": "x", "proof": proof(maker, "mallory", "abort", "")}
        )
        await handle.signal(
            LaunchWorkflow.abort, {"reason": "x", "proof": proof(maker, "bob", "approve", "")}
        )
        # A seal claimed from outside: only a Phasegate worker's seal counts.
        sent_at = (await env.get_current_time()).isoformat()
        await handle.signal(
            LaunchWorkflow.abort, {"reason": "x", "seal": "verified", "sent_at": sent_at}
        )
        refused = await wait_for(env, handle, lambda s: len(notes(s, "abort")) == 5)
        assert notes(refused, "abort")[4][1].startswith("proof: missing")
        assert refused.status in ("running", "waiting")
        assert not any(accepted for accepted, _ in notes(refused, "abort"))
        await handle.signal(
            LaunchWorkflow.abort, {"reason": "enough", "proof": proof(maker, "bob", "abort", "")}
        )
        result = await handle.result()
    assert result.status == "rolled_back"
    assert result.reason == "aborted by bob: enough"
    # The new workflow code replays: refusals, the quorum, the relayed votes, the abort.
    histories = []
    for workflow_id in (launch_id, f"{launch_id}.soft-launch"):
        history = await env.client.get_workflow_handle(workflow_id).fetch_history()
        histories.append((workflow_id, history.to_json()))
    await replay(histories)
    if os.environ.get("PHASEGATE_RECORD_HISTORIES"):
        for workflow_id, text in histories:
            kind = "launch" if workflow_id == launch_id else "soft-launch"
            save_history(HISTORIES / f"authenticated_quorum.{kind}.json", workflow_id, text)


async def test_a_stuck_undo_moves_only_with_an_approvers_proof(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    env = time_skipping_env
    launch_id = new_launch_id()
    maker = await maker_for(env, launch_id)
    world = TrustingWorld(maker, restore_failures=100)
    plan = exposure_only(
        [{"weight": 10, "approval": True}, {"weight": 100}],
        approvals={**IDENTITY, "approvers": ["bob"], "allow_self_approval": True},
    )
    start = proof(maker, "bob", "start", plan_digest(plan))
    async with running_launch(
        env.client, plan, world, launch_id=launch_id, start_proof=start
    ) as handle:
        opened = await gate_open(env, handle, "full-launch.step-1")
        maker.run = opened.run_id
        await keep_time(env, maker)
        await handle.signal(
            LaunchWorkflow.reject,
            {
                "gate": "full-launch.step-1",
                "proof": proof(maker, "bob", "reject", "full-launch.step-1"),
            },
        )
        await wait_for(env, handle, lambda s: s.status == "needs_attention", timeout=60)
        await keep_time(env, maker)
        undo = "full-launch.1"
        await handle.signal(
            LaunchWorkflow.skip_compensation, {"compensation": undo, "by": "bob", "comment": "x"}
        )
        await handle.signal(
            LaunchWorkflow.skip_compensation,
            {
                "compensation": undo,
                "comment": "x",
                "proof": proof(maker, "bob", "retry_compensation", undo),
            },
        )
        refused = await wait_for(env, handle, lambda s: len(notes(s, "skip_compensation")) == 2)
        assert refused.status == "needs_attention"
        assert [accepted for accepted, _ in notes(refused, "skip_compensation")] == [False, False]
        await handle.signal(
            LaunchWorkflow.skip_compensation,
            {
                "compensation": undo,
                "comment": "flag removed by hand",
                "proof": proof(maker, "bob", "skip_compensation", undo),
            },
        )
        result = await handle.result()
    record = result.final.compensations[0]
    assert (record.status, record.resolved_by) == (
        "skipped",
        "skipped by bob: flag removed by hand",
    )


async def test_status_says_when_approvals_are_not_authenticated(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    async with running_launch(time_skipping_env.client, make_plan(), FakeWorld()) as handle:
        current = await gate_open(time_skipping_env, handle, "soft-launch.before")
        assert current.identity == ""
        assert "Approvals are NOT authenticated" in current.waiting_for
        await handle.signal(LaunchWorkflow.abort, {"reason": "done", "by": "alice"})
        result = await handle.result()
    assert result.reason == "aborted by alice: done"


async def test_a_phase_started_on_its_own_does_nothing(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    world = FakeWorld()
    plan = exposure_only([{"weight": 100}])
    async with running_launch(time_skipping_env.client, plan, world) as launch:
        await launch.result()
        task_queue = (await launch.describe()).task_queue
        with pytest.raises(WorkflowFailureError) as failed:
            await time_skipping_env.client.execute_workflow(
                "FullLaunch",
                PhaseInput(launch_id="someone-elses", plan=plan, phase_index=0),
                id=f"{launch.id}.direct",
                task_queue=task_queue,
            )
    assert "runs only as a child of launch 'someone-elses'" in str(failed.value.cause)
    assert world.names().count("set_exposure") == 1


async def test_a_proof_signed_with_a_rotated_key_reloads_the_keys_once(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    env = time_skipping_env
    launch_id = new_launch_id()
    maker = await maker_for(env, launch_id)
    world = TrustingWorld(maker)
    plan = authenticated_plan()
    start = proof(maker, "alice", "start", plan_digest(plan))
    gate = "soft-launch.before"
    async with running_launch(
        env.client, plan, world, launch_id=launch_id, start_proof=start
    ) as handle:
        opened = await gate_open(env, handle, gate)
        # The approval service rotates its key; the launch loaded the old one at its start.
        maker.run = opened.run_id
        maker.key, maker.kid = Ed25519PrivateKey.generate(), "rotated"
        await keep_time(env, maker)
        await handle.signal(
            LaunchWorkflow.approve, {"gate": gate, "proof": proof(maker, "carol", "approve", gate)}
        )
        moved = await gate_open(env, handle, "soft-launch.step-2")
        assert [d.people for d in moved.decisions] == [["carol"]]
        assert world.calls.count(("approval_authority", "rotated")) == 1
        await keep_time(env, maker)
        await handle.signal(
            LaunchWorkflow.abort, {"reason": "done", "proof": proof(maker, "bob", "abort", "")}
        )
        result = await handle.result()
    assert result.reason == "aborted by bob: done"


class KeylessWorld(TrustingWorld):
    """A worker that cannot reach the approval service."""

    @activity.defn(name="approval_authority")
    async def approval_authority(self, request: AuthorityRequest) -> ApprovalAuthority:
        self.calls.append(("approval_authority", request.kid))
        raise ApplicationError("approval service unreachable", non_retryable=True)


async def test_keys_that_cannot_be_loaded_refuse_the_launch_and_change_nothing(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    launch_id = new_launch_id()
    maker = await maker_for(time_skipping_env, launch_id)
    world = KeylessWorld(maker)
    plan = authenticated_plan()
    start = proof(maker, "alice", "start", plan_digest(plan))
    async with running_launch(
        time_skipping_env.client, plan, world, launch_id=launch_id, start_proof=start
    ) as handle:
        result = await handle.result()
    assert result.status == "refused"
    assert "the approval service's keys could not be loaded" in result.reason
    assert "approval service unreachable" in result.reason
    assert world.names() == ["approval_authority"]


class OnceReachableWorld(TrustingWorld):
    """A worker that loads the approval service's keys once, then cannot reach it."""

    @activity.defn(name="approval_authority")
    async def approval_authority(self, request: AuthorityRequest) -> ApprovalAuthority:
        self.calls.append(("approval_authority", request.kid))
        if request.kid:
            raise ApplicationError("approval service unreachable", non_retryable=True)
        return self.maker.authority


async def test_a_key_reload_that_fails_refuses_the_vote_and_the_launch_goes_on(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    env = time_skipping_env
    launch_id = new_launch_id()
    maker = await maker_for(env, launch_id)
    world = OnceReachableWorld(maker)
    plan = authenticated_plan()
    start = proof(maker, "alice", "start", plan_digest(plan))
    gate = "soft-launch.before"
    async with running_launch(
        env.client, plan, world, launch_id=launch_id, start_proof=start
    ) as handle:
        opened = await gate_open(env, handle, gate)
        maker.run = opened.run_id
        stranger = ProofMaker(launch=launch_id, run=opened.run_id, idp=ISSUER, clock=maker.clock)
        await handle.signal(
            LaunchWorkflow.approve,
            {"gate": gate, "proof": proof(stranger, "carol", "approve", gate)},
        )
        refused = await wait_for(env, handle, lambda s: len(notes(s, "approve")) == 1)
        assert notes(refused, "approve")[0] == (
            False,
            f"proof: signed with key {stranger.kid!r}, which the workers do not trust",
        )
        assert refused.status == "waiting"
        await keep_time(env, maker)
        await handle.signal(
            LaunchWorkflow.abort, {"reason": "done", "proof": proof(maker, "bob", "abort", "")}
        )
        result = await handle.result()
    assert result.reason == "aborted by bob: done"
