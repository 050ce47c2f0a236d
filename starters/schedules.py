"""Client-side health schedules: create, update, pause, unpause, trigger, delete, list. No printing.

A profile `NAME` becomes the Temporal Schedule `health-NAME`; each of its runs is a short
`HealthValidation` workflow, and `health-alerts-NAME` is the profile's alert ledger.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from schemas.health_messages import HealthRunInput
from schemas.health_profile import HealthProfile, LaunchActionKind, LaunchLink, load_profile
from workers.settings import Settings
from workflows.health import HealthValidationWorkflow

T = TypeVar("T")
SCHEDULE_PREFIX = "health-"
# A run that hangs must not hold the schedule: with overlap `skip` it would block every later run.
RUN_TIMEOUT = timedelta(minutes=10)
OVERLAP = {"skip": ScheduleOverlapPolicy.SKIP, "buffer_one": ScheduleOverlapPolicy.BUFFER_ONE}


class ScheduleError(RuntimeError):
    """The server answered, but the schedule operation cannot be done; the message says why."""


@dataclass(frozen=True)
class ScheduleListing:
    name: str
    schedule_id: str
    paused: bool
    note: str
    timing: str
    launch: str
    next_run: datetime | None
    last_run: datetime | None


def schedule_id(name: str) -> str:
    return name if name.startswith(SCHEDULE_PREFIX) else f"{SCHEDULE_PREFIX}{name}"


def validate_profile(
    path: Path, launch_id: str | None = None, on_critical_failure: LaunchActionKind | None = None
) -> HealthProfile:
    """Load a profile (raising `PlanError` with every problem); `launch_id` attaches a launch,
    which a failing critical check aborts or pauses as `on_critical_failure`, else the profile,
    says."""
    profile = load_profile(path)
    if launch_id:
        action = on_critical_failure or (
            profile.launch.on_critical_failure if profile.launch is not None else "abort"
        )
        link = LaunchLink(id=launch_id, on_critical_failure=action)
        profile = profile.model_copy(update={"launch": link})
    elif on_critical_failure is not None and profile.launch is not None:
        link = profile.launch.model_copy(update={"on_critical_failure": on_critical_failure})
        profile = profile.model_copy(update={"launch": link})
    return profile


def build_schedule(
    profile: HealthProfile, settings: Settings, *, paused: bool = False, note: str = ""
) -> Schedule:
    timing = profile.schedule
    return Schedule(
        action=ScheduleActionStartWorkflow(
            HealthValidationWorkflow.run,
            HealthRunInput(profile=profile),
            id=profile.schedule_id,
            task_queue=settings.task_queue,
            execution_timeout=RUN_TIMEOUT,
            static_summary=f"health check of {profile.service} ({profile.name})",
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timing.every)] if timing.every else [],
            cron_expressions=[timing.cron] if timing.cron else [],
            jitter=timing.jitter or None,
        ),
        policy=SchedulePolicy(
            overlap=OVERLAP[timing.overlap],
            catchup_window=timing.catchup_window,
            pause_on_failure=timing.pause_on_failure,
        ),
        state=ScheduleState(paused=paused, note=note),
    )


async def create_schedule(
    client: Client, profile: HealthProfile, settings: Settings, *, paused: bool = False
) -> ScheduleHandle:
    try:
        return await client.create_schedule(
            profile.schedule_id,
            build_schedule(profile, settings, paused=paused, note="created by phasegate"),
            memo={"phasegate_profile": profile.name, "service": profile.service},
        )
    except ScheduleAlreadyRunningError:
        raise ScheduleError(
            f"schedule {profile.schedule_id} already exists; change it with "
            f"`phasegate schedule update`"
        ) from None


async def update_schedule(client: Client, profile: HealthProfile, settings: Settings) -> None:
    """Replace what runs and when; paused or not stays as it is."""

    def replace(current: ScheduleUpdateInput) -> ScheduleUpdate:
        state = current.description.schedule.state
        return ScheduleUpdate(
            schedule=build_schedule(profile, settings, paused=state.paused, note=state.note or "")
        )

    await _call(client, profile.schedule_id, lambda handle: handle.update(replace))


async def pause(client: Client, name: str, note: str) -> None:
    await _call(client, schedule_id(name), lambda handle: handle.pause(note=note))


async def unpause(client: Client, name: str, note: str) -> None:
    await _call(client, schedule_id(name), lambda handle: handle.unpause(note=note))


async def trigger(client: Client, name: str) -> None:
    """Run now; still never alongside a running one (overlap `skip`)."""
    await _call(
        client, schedule_id(name), lambda handle: handle.trigger(overlap=ScheduleOverlapPolicy.SKIP)
    )


async def delete(client: Client, name: str) -> None:
    """Delete the schedule and retire its alert ledger; runs already started finish."""
    sid = schedule_id(name)
    await _call(client, sid, lambda handle: handle.delete())
    ledger = client.get_workflow_handle(f"health-alerts-{sid.removeprefix(SCHEDULE_PREFIX)}")
    try:
        await ledger.signal("retire")
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise


async def describe(client: Client, name: str) -> ScheduleListing:
    sid = schedule_id(name)
    description = await _call(client, sid, lambda handle: handle.describe())
    schedule = description.schedule
    info = description.info
    profile = await _profile(client, schedule)
    return ScheduleListing(
        name=sid.removeprefix(SCHEDULE_PREFIX),
        schedule_id=sid,
        paused=schedule.state.paused,
        note=schedule.state.note or "",
        timing=_timing(profile),
        launch=profile.launch.id if profile is not None and profile.launch else "",
        next_run=info.next_action_times[0] if info.next_action_times else None,
        last_run=info.recent_actions[-1].started_at if info.recent_actions else None,
    )


async def list_schedules(client: Client) -> list[ScheduleListing]:
    found = []
    async for entry in await client.list_schedules():
        if not entry.id.startswith(SCHEDULE_PREFIX):
            continue
        try:
            found.append(await describe(client, entry.id))
        except ScheduleError:
            # Visibility lags: a schedule deleted a moment ago may still be listed.
            continue
    return sorted(found, key=lambda listing: listing.schedule_id)


async def _profile(client: Client, schedule: Schedule) -> HealthProfile | None:
    """The profile a schedule runs, decoded from its action's argument."""
    action = schedule.action
    if not isinstance(action, ScheduleActionStartWorkflow) or not action.args:
        return None
    payloads = [arg for arg in action.args if isinstance(arg, Payload)]
    if not payloads:
        return None
    try:
        (run_input,) = await client.data_converter.decode(payloads, [HealthRunInput])
    except Exception:  # a schedule of ours from an incompatible version: show it anyway
        return None
    return run_input.profile if isinstance(run_input, HealthRunInput) else None


def _timing(profile: HealthProfile | None) -> str:
    if profile is None:
        return "?"
    timing = profile.schedule
    text = f"every {_duration(timing.every)}" if timing.every else f"cron {timing.cron}"
    if timing.jitter:
        text += f" ±{_duration(timing.jitter)}"
    return f"{text}, overlap {timing.overlap}"


def _duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


async def _call(client: Client, sid: str, work: Callable[[ScheduleHandle], Awaitable[T]]) -> T:
    try:
        return await work(client.get_schedule_handle(sid))
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleError(
                f"no schedule {sid}; create it with `phasegate schedule create`"
            ) from None
        raise
