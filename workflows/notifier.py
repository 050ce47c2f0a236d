"""The launch's notifications: one event to the plan's webhooks that listen for it. A webhook
that cannot be reached is logged, never a reason to stop or roll back a launch."""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.notify import NOTIFY_OPTIONS, NotifyActivities
    from schemas.notification_spec import NotificationEvent
    from schemas.notify_messages import Notification
    from schemas.plan import LaunchPlan


class Notifier:
    def __init__(self, launch_id: str, plan: LaunchPlan) -> None:
        self._launch_id = launch_id
        self._plan = plan

    async def send(
        self, event: NotificationEvent, summary: str, details: dict[str, Any] | None = None
    ) -> None:
        plan = self._plan
        if not any(event in hook.events for hook in plan.notifications):
            return
        note = Notification(
            event=event,
            launch_id=self._launch_id,
            service=plan.service,
            version=plan.version,
            summary=summary,
            details=details or {},
            webhooks=plan.notifications,
        )
        try:
            await workflow.execute_activity_method(
                NotifyActivities.send_notification, note, **NOTIFY_OPTIONS
            )
        except ActivityError as err:
            workflow.logger.warning("notification %s not sent: %s", event, err)
