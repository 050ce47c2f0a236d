"""Alert webhooks for the scheduled health validation: Alertmanager's v2 alert list and Slack.

`send_alerts` raises when the receiver does not take the alerts, so the retry policy below
backs off and tries again; the alert ledger records a receiver that stays down.
"""

from __future__ import annotations

from typing import Any

import httpx
from temporalio import activity
from temporalio.client import Client

from activities.options import SECOND, activity_options
from activities.redaction import HTTP_CLIENT_LOGGERS, keep_out_of_logs, redact
from activities.secrets import resolve_secret
from schemas.health_messages import AlertBatch, AlertState, LedgerDelivery, LedgerInput

ALERT_OPTIONS = activity_options(15 * SECOND, attempts=4, longest_retry=8 * SECOND)
LEDGER_OPTIONS = activity_options(30 * SECOND, attempts=5)
ALERT_NAME = "PhasegateHealthCheck"
LEDGER_WORKFLOW = "HealthAlertLedger"
RECORD_SIGNAL = "record"


def alert_labels(batch: AlertBatch, alert: AlertState) -> dict[str, str]:
    """Alertmanager identifies an alert by its labels: the same check always maps to the same set."""
    return {
        "alertname": ALERT_NAME,
        "profile": batch.profile,
        "service": batch.service,
        "check": alert.check,
        "severity": alert.severity,
    }


def alertmanager_payload(batch: AlertBatch) -> list[dict[str, Any]]:
    payload = []
    for alert in batch.alerts:
        item: dict[str, Any] = {
            "labels": alert_labels(batch, alert),
            "annotations": {"summary": alert.summary, "run": batch.run_id},
            "startsAt": alert.starts_at.isoformat(),
        }
        if alert.status == "resolved" and alert.ends_at is not None:
            item["endsAt"] = alert.ends_at.isoformat()
        payload.append(item)
    return payload


def slack_payload(batch: AlertBatch) -> dict[str, Any]:
    lines = []
    for alert in batch.alerts:
        mark = (
            ":red_circle: FIRING" if alert.status == "firing" else ":large_green_circle: RESOLVED"
        )
        critical = " (critical)" if alert.critical else ""
        lines.append(f"{mark} *{alert.check}*{critical}: {alert.summary}")
    firing = sum(1 for alert in batch.alerts if alert.status == "firing")
    return {
        "text": f"[{batch.service}] health profile {batch.profile}: "
        f"{firing} firing, {len(batch.alerts) - firing} resolved",
        "attachments": [
            {
                "color": "danger" if firing else "good",
                "mrkdwn_in": ["text"],
                "text": "\n".join(lines),
            }
        ],
    }


class AlertActivities:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    @activity.defn(name="send_alerts")
    async def send_alerts(self, batch: AlertBatch) -> int:
        receiver = batch.receiver
        headers = {
            name: resolve_secret(ref, where=f"alerts.receivers.{receiver.name}.headers.{name}")
            for name, ref in receiver.headers.items()
        }
        # A header value must not come back in a failure or a log line (h11 quotes a header
        # value it refuses; httpcore's traces show them).
        secrets = list(headers.values())
        keep_out_of_logs(secrets, HTTP_CLIENT_LOGGERS)
        body: Any = (
            alertmanager_payload(batch) if receiver.kind == "alertmanager" else slack_payload(batch)
        )
        try:
            response = await self._http.post(receiver.url, json=body, headers=headers, timeout=10)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as err:
            raise ConnectionError(
                redact(f"alerts.receivers.{receiver.name}: {type(err).__name__}: {err}", secrets)
            ) from None
        if response.is_error:
            raise ConnectionError(
                f"alerts.receivers.{receiver.name}: answered HTTP {response.status_code} "
                f"{response.reason_phrase}"
            )
        return len(batch.alerts)


class AlertLedgerActivities:
    """Hands a run's checks to its profile's alert ledger, starting the ledger if need be."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="record_in_ledger")
    async def record_in_ledger(self, request: LedgerDelivery) -> None:
        # Signal-with-start: atomic, and a second delivery of the same run is ignored by the
        # ledger (it remembers recent run ids), so a retry converges.
        await self._client.start_workflow(
            LEDGER_WORKFLOW,
            LedgerInput(profile=request.request.profile, runs_per_history=request.runs_per_history),
            id=request.ledger_id,
            task_queue=activity.info().task_queue,
            start_signal=RECORD_SIGNAL,
            start_signal_args=[request.request],
            static_summary=f"alert ledger of health profile {request.request.profile}",
        )
