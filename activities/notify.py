"""Webhook notifications: gate opened, launch finished or rolled back, an undo that keeps failing.

A receiver that is down is reported in the result, not raised: a missing notification must
never hold a launch or its rollback hostage.
"""

from __future__ import annotations

import httpx
from temporalio import activity

from activities.errors import ConfigurationError
from activities.options import SECOND, activity_options
from activities.secrets import resolve_secret
from schemas.notify_messages import Notification, NotificationResult

NOTIFY_OPTIONS = activity_options(30 * SECOND, attempts=3)


class NotifyActivities:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    @activity.defn(name="send_notification")
    async def send_notification(self, note: Notification) -> NotificationResult:
        result = NotificationResult()
        body = {
            "event": note.event,
            "launch_id": note.launch_id,
            "service": note.service,
            "version": note.version,
            "summary": note.summary,
            "text": f"[{note.service} {note.version}] {note.summary}",
            "details": note.details,
        }
        for hook in note.webhooks:
            if note.event not in hook.events:
                continue
            try:
                headers = {
                    name: resolve_secret(ref, where=f"notifications.{hook.name}.headers.{name}")
                    for name, ref in hook.headers.items()
                }
                response = await self._http.post(hook.url, json=body, headers=headers, timeout=10)
                response.raise_for_status()
                result.delivered.append(hook.name)
            except (httpx.HTTPError, ConfigurationError) as err:
                activity.logger.warning("webhook %s failed: %s", hook.name, err)
                result.failed[hook.name] = f"{type(err).__name__}: {err}"[:300]
        return result
