"""What the health schedule reads of the launch it guards, so one incident acts on it once.

Schedules start a new health run every interval, so the memory of an incident already acted on
lives in the launch itself: a launch paused, rolling back or finished needs no second pause or
abort. Read with the worker's client: whether the execution runs, then its `status` query.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.options import SECOND, activity_options
from schemas.health_messages import LaunchState, LaunchStateRequest
from schemas.launch_messages import LaunchStatus

# A few quick tries: a run that cannot read the launch acts on it rather than wait.
LAUNCH_STATE_OPTIONS = activity_options(30 * SECOND, attempts=3, longest_retry=5 * SECOND)
# A query waits for a worker to answer; without one it would hang until the RPC deadline.
QUERY_TIMEOUT = timedelta(seconds=10)
KEEP_CHARS = 500


class LaunchStateActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="read_launch_state")
    async def read_launch_state(self, request: LaunchStateRequest) -> LaunchState:
        handle = self._client.get_workflow_handle(request.launch_id)
        try:
            execution = (await handle.describe()).status
            if execution != WorkflowExecutionStatus.RUNNING:
                closed = execution.name.lower() if execution is not None else "closed"
                return LaunchState(launch_id=request.launch_id, status=closed)
            status = await handle.query(
                "status", result_type=LaunchStatus, rpc_timeout=QUERY_TIMEOUT
            )
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return LaunchState(launch_id=request.launch_id, found=False)
            raise RuntimeError(
                f"launch {request.launch_id} could not be read: {err.message[:KEEP_CHARS]}"
            ) from None
        except WorkflowQueryFailedError as err:
            raise RuntimeError(
                f"launch {request.launch_id} could not answer its status: {str(err)[:KEEP_CHARS]}"
            ) from None
        return LaunchState(
            launch_id=request.launch_id,
            running=True,
            status=status.status.value,
            paused=status.paused,
        )
