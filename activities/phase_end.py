"""How the server ended a phase workflow: read from its close event, for the launch's reason.

A launch sees only that its phase was terminated or timed out; who terminated it and why (an
operator's reason, or the server's own when the phase's history outgrew its limits) are in the
phase's close event, which this activity reads with the worker's client.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client, WorkflowHistoryEventFilterType
from temporalio.service import RPCError

from activities.options import SECOND, activity_options
from schemas.launch_messages import PhaseEnd, PhaseEndRequest

PHASE_END_OPTIONS = activity_options(30 * SECOND, attempts=5, longest_retry=10 * SECOND)
# Whoever terminates a workflow writes its reason and identity; a launch keeps this much.
KEEP_CHARS = 500


class PhaseEndActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="describe_phase_end")
    async def describe_phase_end(self, request: PhaseEndRequest) -> PhaseEnd:
        handle = self._client.get_workflow_handle(
            request.workflow_id, run_id=request.run_id or None
        )
        try:
            async for event in handle.fetch_history_events(
                event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT
            ):
                if event.HasField("workflow_execution_terminated_event_attributes"):
                    ended = event.workflow_execution_terminated_event_attributes
                    return PhaseEnd(
                        how="terminated",
                        reason=ended.reason[:KEEP_CHARS],
                        identity=ended.identity[:KEEP_CHARS],
                    )
                if event.HasField("workflow_execution_timed_out_event_attributes"):
                    return PhaseEnd(how="timed_out")
        except RPCError as err:
            raise RuntimeError(
                f"the history of {request.workflow_id} could not be read: {err.message[:KEEP_CHARS]}"
            ) from None
        return PhaseEnd(how="other")
