"""Webhook notifications: gate opened, launch finished or rolled back, an undo that keeps failing.

A receiver that is down is reported in the result, not raised: a missing notification must
never hold a launch or its rollback hostage.
"""

from __future__ import annotations

import httpx
from temporalio import activity

from activities.errors import ConfigurationError
from activities.options import SECOND, activity_options
from activities.redaction import HTTP_CLIENT_LOGGERS, keep_out_of_logs, redact, resolve_url
from activities.secrets import resolve_secret
from schemas.notify_messages import Notification, NotificationResult
from schemas.targets import describe_url

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
            # A secret URL or header value must not come back in the failure (httpx names the
            # URL, h11 quotes a header value it refuses).
            secrets: list[str] = []
            try:
                url, secrets = resolve_url(hook.url, where=f"notifications.{hook.name}.url")
                headers = {
                    name: resolve_secret(ref, where=f"notifications.{hook.name}.headers.{name}")
                    for name, ref in hook.headers.items()
                }
                secrets += headers.values()
                keep_out_of_logs(secrets, HTTP_CLIENT_LOGGERS)
                response = await self._http.post(url, json=body, headers=headers, timeout=10)
                if response.is_error:
                    failure = f"answered HTTP {response.status_code} {response.reason_phrase}"
                else:
                    result.delivered.append(hook.name)
                    continue
            except (httpx.HTTPError, httpx.InvalidURL, ConfigurationError, ValueError) as err:
                failure = f"{type(err).__name__}: {err}"
            failure = redact(failure, secrets)[:300]
            activity.logger.warning(
                "webhook %s (%s) failed: %s", hook.name, describe_url(hook.url), failure
            )
            result.failed[hook.name] = failure
        return result
