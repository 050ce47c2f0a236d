"""Alert webhooks against a real local receiver: Alertmanager's v2 list, Slack's message, a dead port."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from activities.alerts import AlertActivities
from devstack.processes import free_port
from schemas.health_messages import AlertBatch, AlertState
from schemas.health_profile import AlertReceiver
from tests.support.receiver import webhook_receiver

STARTED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ENDED = datetime(2026, 1, 2, 3, 9, 5, tzinfo=UTC)


def batch(receiver: AlertReceiver) -> AlertBatch:
    return AlertBatch(
        profile="checkout",
        service="checkout",
        receiver=receiver,
        run_id="health-checkout-1/abc",
        alerts=[
            AlertState(
                check="error-rate",
                status="firing",
                severity="critical",
                summary="fail: 0.5 outside max 0.05",
                critical=True,
                starts_at=STARTED,
            ),
            AlertState(
                check="healthz",
                status="resolved",
                severity="warning",
                summary="back to pass: status 200 in 3ms",
                starts_at=STARTED,
                ends_at=ENDED,
            ),
        ],
    )


async def test_alertmanager_gets_its_v2_alert_list() -> None:
    with webhook_receiver() as receiver:
        async with httpx.AsyncClient() as http:
            target = AlertReceiver(
                name="am", kind="alertmanager", url=f"{receiver.url}/api/v2/alerts"
            )
            sent = await AlertActivities(http).send_alerts(batch(target))
        (body,) = receiver.bodies("/api/v2/alerts")

    assert sent == 2
    assert body == [
        {
            "labels": {
                "alertname": "PhasegateHealthCheck",
                "profile": "checkout",
                "service": "checkout",
                "check": "error-rate",
                "severity": "critical",
            },
            "annotations": {
                "summary": "fail: 0.5 outside max 0.05",
                "run": "health-checkout-1/abc",
            },
            "startsAt": "2026-01-02T03:04:05+00:00",
        },
        {
            "labels": {
                "alertname": "PhasegateHealthCheck",
                "profile": "checkout",
                "service": "checkout",
                "check": "healthz",
                "severity": "warning",
            },
            "annotations": {
                "summary": "back to pass: status 200 in 3ms",
                "run": "health-checkout-1/abc",
            },
            "startsAt": "2026-01-02T03:04:05+00:00",
            "endsAt": "2026-01-02T03:09:05+00:00",
        },
    ]


async def test_slack_gets_one_message_with_every_alert() -> None:
    with webhook_receiver() as receiver:
        async with httpx.AsyncClient() as http:
            target = AlertReceiver(name="chat", kind="slack", url=f"{receiver.url}/hook")
            await AlertActivities(http).send_alerts(batch(target))
        (body,) = receiver.bodies("/hook")

    assert body["text"] == "[checkout] health profile checkout: 1 firing, 1 resolved"
    assert body["attachments"][0]["color"] == "danger"
    assert body["attachments"][0]["text"].splitlines() == [
        ":red_circle: FIRING *error-rate* (critical): fail: 0.5 outside max 0.05",
        ":large_green_circle: RESOLVED *healthz*: back to pass: status 200 in 3ms",
    ]


async def test_a_receiver_that_is_down_raises_so_the_retry_policy_backs_off() -> None:
    target = AlertReceiver(name="am", kind="alertmanager", url=f"http://127.0.0.1:{free_port()}/")
    async with httpx.AsyncClient() as http:
        # A plain (retryable) error naming the receiver: the retry policy backs off.
        with pytest.raises(ConnectionError, match=r"alerts\.receivers\.am: ConnectError"):
            await AlertActivities(http).send_alerts(batch(target))
