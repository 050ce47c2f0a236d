"""The alert ledger: one long-lived workflow per health profile that remembers what is firing.

Each scheduled run is a short workflow of its own and forgets everything when it ends; the
ledger is where "already alerted" lives between runs. A run signals its checks (`record`), the
ledger works out which alerts are new, still firing or resolved, sends only those to each
receiver that has not heard them yet, and signals the outcome back to the run. Its state is
small and carried across continue-as-new, so its history stays bounded however long it runs.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.alerts import ALERT_OPTIONS, LEDGER_WORKFLOW, RECORD_SIGNAL, AlertActivities
    from activities.options import summarized
    from schemas.health_messages import (
        AlertBatch,
        AlertDelivery,
        AlertOutcome,
        AlertRequest,
        AlertState,
        CheckResult,
        LedgerInput,
    )
    from schemas.health_profile import AlertReceiver
    from workflows.phase import failure_reason

OUTCOME_SIGNAL = "alert_outcome"
KEEP_RECENT_REQUESTS = 20


def advance(
    alerts: dict[str, AlertState], request: AlertRequest, now: datetime
) -> dict[str, AlertState]:
    """The alerts after one run: new ones fire, failing ones keep firing, healed ones resolve."""
    alerting = ("fail",) if request.alert_on == "fail" else ("fail", "warn")
    updated = dict(alerts)
    seen = set()
    for check in request.checks:
        seen.add(check.name)
        current = updated.get(check.name)
        if check.status in alerting:
            updated[check.name] = _firing(current, check, now)
        elif current is not None and current.status == "firing":
            updated[check.name] = _resolved(current, f"back to {check.status}: {check.detail}", now)
    for name, current in alerts.items():
        if name not in seen and current.status == "firing":
            updated[name] = _resolved(current, "check removed from the profile", now)
    return updated


def _firing(current: AlertState | None, check: CheckResult, now: datetime) -> AlertState:
    summary = f"{check.status}: {check.detail}"
    if current is not None and current.status == "firing":
        return current.model_copy(update={"summary": summary, "value": check.value})
    # Receivers that heard "firing" but not yet "resolved" still believe it fires.
    still = [r for r in current.firing_sent if r not in current.resolved_sent] if current else []
    return AlertState(
        check=check.name,
        status="firing",
        severity="critical" if check.critical else "warning",
        summary=summary,
        critical=check.critical,
        value=check.value,
        starts_at=current.starts_at if current is not None and still else now,
        firing_sent=still,
    )


def _resolved(current: AlertState, summary: str, now: datetime) -> AlertState:
    return current.model_copy(
        update={"status": "resolved", "summary": summary, "ends_at": now, "resolved_sent": []}
    )


def due_for(
    alert: AlertState, receiver: str, now: datetime, repeat_after: timedelta | None
) -> bool:
    """Whether `receiver` must hear about this alert now."""
    if alert.status == "resolved":
        return receiver in alert.firing_sent and receiver not in alert.resolved_sent
    if receiver not in alert.firing_sent:
        return True
    return (
        repeat_after is not None
        and alert.last_sent is not None
        and now - alert.last_sent >= repeat_after
    )


def settled(alert: AlertState, receivers: list[str]) -> bool:
    """A resolved alert every receiver that heard it fire has also heard resolve."""
    return alert.status == "resolved" and all(
        r in alert.resolved_sent for r in alert.firing_sent if r in receivers
    )


@workflow.defn(name=LEDGER_WORKFLOW)
class AlertLedgerWorkflow:
    def __init__(self) -> None:
        self._queue: list[AlertRequest] = []
        self._alerts: dict[str, AlertState] = {}
        self._recent: list[str] = []
        self._handled = 0
        self._retired = False

    @workflow.run
    async def run(self, inp: LedgerInput) -> LedgerInput:
        self._alerts = dict(inp.alerts)
        self._recent = list(inp.recent_requests)
        while True:
            await workflow.wait_condition(
                lambda: bool(self._queue) or self._retired or self._history_full(inp)
            )
            if self._queue:
                await self._handle(self._queue.pop(0))
                continue
            state = LedgerInput(
                profile=inp.profile,
                alerts=self._alerts,
                runs_per_history=inp.runs_per_history,
                recent_requests=self._recent,
            )
            if self._retired:
                return state
            workflow.continue_as_new(state)

    def _history_full(self, inp: LedgerInput) -> bool:
        return (
            self._handled >= inp.runs_per_history or workflow.info().is_continue_as_new_suggested()
        )

    @workflow.signal(name=RECORD_SIGNAL, description="Internal: a health run reports its checks.")
    def record(self, request: AlertRequest) -> None:
        if request.request_id in self._recent or any(
            queued.request_id == request.request_id for queued in self._queue
        ):
            return
        self._queue.append(request)

    @workflow.signal(
        name="retire", description="Stop the ledger (its schedule was deleted). No input."
    )
    def retire(self) -> None:
        self._retired = True

    @workflow.query(name="alerts", description="Every alert the ledger knows, firing or resolved.")
    def alerts(self) -> list[AlertState]:
        return list(self._alerts.values())

    async def _handle(self, request: AlertRequest) -> None:
        now = workflow.now()
        self._alerts = advance(self._alerts, request, now)
        repeat = (
            timedelta(seconds=request.repeat_after_seconds)
            if request.repeat_after_seconds is not None
            else None
        )
        deliveries = await asyncio.gather(
            *(self._deliver(request, receiver, now, repeat) for receiver in request.receivers)
        )
        names = [receiver.name for receiver in request.receivers]
        self._alerts = {
            name: alert for name, alert in self._alerts.items() if not settled(alert, names)
        }
        self._recent = [*self._recent, request.request_id][-KEEP_RECENT_REQUESTS:]
        self._handled += 1
        outcome = AlertOutcome(
            request_id=request.request_id,
            run_id=request.run_id,
            deliveries=[delivery for delivery in deliveries if delivery is not None],
            firing=sorted(a.check for a in self._alerts.values() if a.status == "firing"),
        )
        workflow.set_current_details(
            f"{request.profile}: firing {', '.join(outcome.firing) or 'nothing'}"
        )
        try:
            await workflow.get_external_workflow_handle(request.reply_to).signal(
                OUTCOME_SIGNAL, outcome
            )
        except FailureError as err:
            workflow.logger.info("run %s no longer waits: %s", request.reply_to, err)

    async def _deliver(
        self,
        request: AlertRequest,
        receiver: AlertReceiver,
        now: datetime,
        repeat: timedelta | None,
    ) -> AlertDelivery | None:
        due = [a for a in self._alerts.values() if due_for(a, receiver.name, now, repeat)]
        if not due:
            return None
        statuses = {alert.status for alert in due}
        delivery = AlertDelivery(
            receiver=receiver.name,
            alerts=[alert.check for alert in due],
            status=statuses.pop() if len(statuses) == 1 else "mixed",
            delivered=False,
        )
        batch = AlertBatch(
            profile=request.profile,
            service=request.service,
            receiver=receiver,
            alerts=due,
            run_id=request.run_id,
        )
        try:
            await workflow.execute_activity_method(
                AlertActivities.send_alerts,
                batch,
                **summarized(
                    ALERT_OPTIONS,
                    f"{delivery.status} {', '.join(delivery.alerts)} to {receiver.name}",
                ),
            )
        except ActivityError as err:
            reason = failure_reason(err)
            workflow.logger.warning("receiver %s did not take alerts: %s", receiver.name, reason)
            return delivery.model_copy(update={"error": f"receiver down: {reason}"})
        for alert in due:
            current = self._alerts[alert.check]
            if current.status != alert.status:
                continue
            sent = "firing_sent" if alert.status == "firing" else "resolved_sent"
            self._alerts[alert.check] = current.model_copy(
                update={
                    sent: sorted({*getattr(current, sent), receiver.name}),
                    "last_sent": workflow.now(),
                }
            )
        return delivery.model_copy(update={"delivered": True})
