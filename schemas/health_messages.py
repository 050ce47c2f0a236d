"""Messages of the scheduled health validation: run input, check results, the report, alerts.

Kept apart from `messages.py` (the launch's) but built the same way: one model in, one out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.basics import Message
from schemas.decision_messages import Hold
from schemas.health_profile import AlertReceiver, CheckStatus, HealthProfile, HttpCheck

# Runs the ledger handles per history before it continues as new, unless the server
# suggests it earlier.
LEDGER_RUNS_PER_HISTORY = 200


class HealthRunInput(Message):
    """What a schedule starts a run with: the whole profile, so a run needs no file."""

    profile: HealthProfile
    ledger_runs_per_history: int = LEDGER_RUNS_PER_HISTORY


class CheckResult(Message):
    name: str
    kind: str
    status: CheckStatus
    critical: bool = False
    value: float | None = None
    detail: str = ""


class HttpProbe(Message):
    check: HttpCheck


class HttpProbeResult(Message):
    """What the endpoint did; the workflow classifies it against the check's bounds."""

    status_code: int | None = None
    latency_seconds: float | None = None
    tls_expires_at: datetime | None = None
    error: str = ""


# --- alerts -------------------------------------------------------------------------------


class AlertState(Message):
    """One alert as the ledger knows it, and which receivers already heard of it."""

    check: str
    status: Literal["firing", "resolved"]
    severity: str
    summary: str
    critical: bool = False
    value: float | None = None
    starts_at: datetime
    ends_at: datetime | None = None
    firing_sent: list[str] = Field(default_factory=list)
    resolved_sent: list[str] = Field(default_factory=list)
    last_sent: datetime | None = None


class AlertBatch(Message):
    """Alerts for one receiver, sent in one request by `send_alerts`."""

    profile: str
    service: str
    receiver: AlertReceiver
    alerts: list[AlertState]
    run_id: str = ""


class AlertDelivery(Message):
    receiver: str
    alerts: list[str]
    status: Literal["firing", "resolved", "mixed"]
    delivered: bool
    error: str = ""


class AlertRequest(Message):
    """A finished run's checks, signalled to the profile's alert ledger."""

    request_id: str
    run_id: str
    reply_to: str
    profile: str
    service: str
    receivers: list[AlertReceiver]
    alert_on: Literal["fail", "warn"]
    repeat_after_seconds: float | None = None
    checks: list[CheckResult]


class LedgerDelivery(Message):
    """`record_in_ledger`'s input: the request and where the ledger lives."""

    ledger_id: str
    runs_per_history: int
    request: AlertRequest


class AlertOutcome(Message):
    """The ledger's answer to one run: what it sent, what failed, what is firing now."""

    request_id: str
    run_id: str
    deliveries: list[AlertDelivery] = Field(default_factory=list)
    firing: list[str] = Field(default_factory=list)


class LedgerInput(Message):
    profile: str
    alerts: dict[str, AlertState] = Field(default_factory=dict)
    runs_per_history: int = LEDGER_RUNS_PER_HISTORY
    recent_requests: list[str] = Field(default_factory=list)


class LaunchStateRequest(Message):
    launch_id: str


class LaunchState(Message):
    """What a failing health run needs to know of the launch it guards before acting on it."""

    launch_id: str
    found: bool = True
    running: bool = False
    # The launch's own status value (`paused`, `rolling_back`, ...) while it runs, else how
    # its execution closed (`completed`, `terminated`, ...).
    status: str = ""
    paused: Hold | None = None


class LaunchAction(Message):
    launch_id: str
    action: Literal["abort", "pause", "none"]
    signalled: bool
    detail: str


class HealthReport(Message):
    profile: str
    service: str
    run_id: str
    started_at: datetime
    finished_at: datetime | None = None
    status: CheckStatus
    checks: list[CheckResult]
    alerts: AlertOutcome | None = None
    alert_error: str = ""
    launch: LaunchAction | None = None

    def failing_critical(self) -> list[CheckResult]:
        return [check for check in self.checks if check.critical and check.status == "fail"]
