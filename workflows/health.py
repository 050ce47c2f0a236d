"""One scheduled health validation: run the profile's checks, guard the attached launch, alert.

A schedule starts this short workflow every interval; it reads like the on-call runbook it
replaces: measure every check side by side, judge each pass / warn / fail, abort or pause the
launch it guards when a critical check fails (once per incident: not again while the launch is
already paused, rolling back or finished), then hand the checks to the profile's alert ledger,
which alerts only on what changed.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.alerts import LEDGER_OPTIONS, AlertLedgerActivities
    from activities.kube import KUBE_HEALTH_OPTIONS, KubeActivities
    from activities.launch_state import LAUNCH_STATE_OPTIONS, LaunchStateActivities
    from activities.metrics import METRICS_OPTIONS, MetricsActivities
    from activities.options import summarized
    from activities.probes import PROBE_OPTIONS, ProbeActivities
    from schemas.analysis_spec import MetricSpec
    from schemas.decision_messages import AbortRequest, HoldRequest
    from schemas.health_messages import (
        AlertOutcome,
        AlertRequest,
        CheckResult,
        HealthReport,
        HealthRunInput,
        HttpProbe,
        HttpProbeResult,
        LaunchAction,
        LaunchState,
        LaunchStateRequest,
        LedgerDelivery,
    )
    from schemas.health_profile import (
        CheckStatus,
        HealthProfile,
        HttpCheck,
        KubernetesCheck,
        LaunchActionKind,
        PrometheusCheck,
    )
    from schemas.kube_messages import DeploymentHealthReport, DeploymentHealthRequest
    from schemas.launch_messages import LaunchStatusValue
    from schemas.metrics_messages import MetricQuery, MetricReading
    from workflows.alert_ledger import OUTCOME_SIGNAL

# How long a run waits for its ledger's answer: alert retries with backoff fit well inside.
ALERT_ANSWER_TIMEOUT = timedelta(minutes=2)
SEVERITY: dict[CheckStatus, int] = {"pass": 0, "warn": 1, "fail": 2}
# Runs recorded before a failing run read the launch first sent its abort every time.
ONCE_PER_INCIDENT = "health-acts-once-per-incident"
# A launch in one of these is already undoing itself: nothing a health run sends would help.
ROLLING_BACK = (LaunchStatusValue.ROLLING_BACK.value, LaunchStatusValue.NEEDS_ATTENTION.value)


def worst(statuses: list[CheckStatus]) -> CheckStatus:
    return max(statuses, key=SEVERITY.__getitem__, default="pass")


def judge_metric(check: PrometheusCheck, reading: MetricReading) -> CheckResult:
    result = CheckResult(name=check.name, kind=check.kind, status="pass", critical=check.critical)
    if reading.error:
        return result.model_copy(
            update={"status": check.on_error, "detail": f"Prometheus error: {reading.error}"}
        )
    if reading.value is None:
        return result.model_copy(
            update={"status": check.on_no_data, "detail": "no data for the query"}
        )
    value = reading.value
    for status, bounds in (("fail", check.fail), ("warn", check.warn)):
        if bounds is not None and bounds.breached_by(value):
            return result.model_copy(
                update={
                    "status": status,
                    "value": value,
                    "detail": f"{value:.4g} outside {_bounds(bounds.min, bounds.max)}",
                }
            )
    return result.model_copy(update={"value": value, "detail": f"{value:.4g}"})


def judge_probe(check: HttpCheck, probe: HttpProbeResult, now_seconds: float) -> CheckResult:
    result = CheckResult(name=check.name, kind=check.kind, status="pass", critical=check.critical)
    if probe.error or probe.status_code is None:
        return result.model_copy(
            update={"status": "fail", "detail": f"unreachable: {probe.error or 'no answer'}"}
        )
    findings: list[tuple[CheckStatus, str]] = []
    if probe.status_code not in check.expect_status:
        expected = ", ".join(str(code) for code in check.expect_status)
        findings.append(("fail", f"status {probe.status_code}, expected {expected}"))
    latency = probe.latency_seconds or 0.0
    if check.latency is not None:
        fail, warn = check.latency.fail.total_seconds(), check.latency.warn
        if latency > fail:
            findings.append(("fail", f"latency {_ms(latency)} > {_ms(fail)}"))
        elif warn is not None and latency > warn.total_seconds():
            findings.append(("warn", f"latency {_ms(latency)} > {_ms(warn.total_seconds())}"))
    if check.tls_expiry is not None:
        if probe.tls_expires_at is None:
            findings.append(("fail", "no TLS certificate seen"))
        else:
            left = timedelta(seconds=probe.tls_expires_at.timestamp() - now_seconds)
            days = f"certificate expires in {left.total_seconds() / 86400:.1f} days"
            if left < check.tls_expiry.fail:
                findings.append(("fail", days))
            elif check.tls_expiry.warn is not None and left < check.tls_expiry.warn:
                findings.append(("warn", days))
    status = worst([status for status, _ in findings])
    detail = "; ".join(text for _, text in findings) or (
        f"status {probe.status_code} in {_ms(latency)}"
    )
    return result.model_copy(update={"status": status, "value": latency, "detail": detail})


def judge_deployments(check: KubernetesCheck, report: DeploymentHealthReport) -> CheckResult:
    """Each Deployment's numbers in the detail; the worst finding over all of them decides."""
    findings: list[CheckStatus] = []
    details: list[str] = []
    for deployment in report.deployments:
        where = f"{report.namespace}/{deployment.name}"
        if deployment.error:
            findings.append(check.on_error)
            details.append(f"{where}: {deployment.error}")
            continue
        if not deployment.found:
            findings.append("fail")
            details.append(f"Deployment {where} not found")
            continue
        available, desired = deployment.available, deployment.desired
        notes = [f"{available}/{desired} available"]
        if check.min_available is not None and available < check.min_available:
            findings.append("fail")
            notes.append(f"below min_available {check.min_available}")
        elif available < desired:
            findings.append("warn" if check.min_available is not None else "fail")
        if deployment.rollout == "failed":
            findings.append("fail")
            notes.append(f"rollout failed: {deployment.rollout_detail}")
        elif deployment.rollout == "progressing":
            findings.append("warn")
            notes.append(f"rolling out: {deployment.rollout_detail}")
        restarts = f"{deployment.restarts} restarts"
        if check.max_restarts_fail is not None and deployment.restarts > check.max_restarts_fail:
            findings.append("fail")
            restarts += f" > {check.max_restarts_fail}"
        elif check.max_restarts_warn is not None and deployment.restarts > check.max_restarts_warn:
            findings.append("warn")
            restarts += f" > {check.max_restarts_warn}"
        details.append(f"{deployment.name}: {', '.join([*notes, restarts])}")
    return CheckResult(
        name=check.name,
        kind=check.kind,
        status=worst(findings),
        critical=check.critical,
        detail="; ".join(details),
    )


def already_acted_on(state: LaunchState, action: LaunchActionKind) -> str:
    """Why a failing run sends nothing to the launch it guards, or "" when it should act."""
    launch = f"launch {state.launch_id}"
    if not state.found:
        return f"{launch} is not running (not found); alerted only"
    if not state.running or state.status in (
        LaunchStatusValue.COMPLETED.value,
        LaunchStatusValue.ROLLED_BACK.value,
    ):
        return f"{launch} is not running ({state.status}); alerted only"
    if state.status in ROLLING_BACK:
        return f"{launch} is already rolling back ({state.status}); {action} not sent again"
    if action == "pause" and state.paused is not None:
        held = state.paused
        return (
            f"{launch} is already paused by {held.by} ({held.source}) since "
            f"{held.at:%Y-%m-%d %H:%M:%S}; pause not sent again"
        )
    return ""


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms"


def _bounds(low: float | None, high: float | None) -> str:
    parts = ([f"min {low:g}"] if low is not None else []) + (
        [f"max {high:g}"] if high is not None else []
    )
    return ", ".join(parts)


@workflow.defn(name="HealthValidation")
class HealthValidationWorkflow:
    def __init__(self) -> None:
        self._request_id = ""
        self._outcome: AlertOutcome | None = None
        self._report: HealthReport | None = None

    @workflow.run
    async def run(self, inp: HealthRunInput) -> HealthReport:
        profile = inp.profile
        info = workflow.info()
        checks = await asyncio.gather(*(self._evaluate(profile, check) for check in profile.checks))
        report = HealthReport(
            profile=profile.name,
            service=profile.service,
            run_id=f"{info.workflow_id}/{info.run_id}",
            started_at=workflow.now(),
            status=worst([check.status for check in checks]),
            checks=list(checks),
        )
        self._show(report)
        if profile.launch is not None:
            report.launch = await self._guard_launch(profile, report)
        if profile.alerts.receivers:
            await self._alert(inp, report)
        report.finished_at = workflow.now()
        self._show(report)
        failing = report.failing_critical()
        if profile.schedule.pause_on_failure and failing:
            # A failed run is what makes the schedule pause itself.
            raise ApplicationError(
                f"critical check(s) failed: {', '.join(check.name for check in failing)}",
                report.model_dump(mode="json"),
                type="CriticalCheckFailed",
                non_retryable=True,
            )
        return report

    # --- checks -------------------------------------------------------------------------

    async def _evaluate(
        self, profile: HealthProfile, check: PrometheusCheck | HttpCheck | KubernetesCheck
    ) -> CheckResult:
        if isinstance(check, PrometheusCheck):
            assert profile.prometheus is not None
            reading = await workflow.execute_activity_method(
                MetricsActivities.query_metric,
                MetricQuery(
                    prometheus=profile.prometheus,
                    metric=check.name,
                    spec=MetricSpec(query=check.query, max=check.fail.max, min=check.fail.min),
                    canary_variant="",
                    stable_variant="",
                ),
                **summarized(METRICS_OPTIONS, f"check {check.name}"),
            )
            return judge_metric(check, reading)
        if isinstance(check, KubernetesCheck):
            deployments = await workflow.execute_activity_method(
                KubeActivities.check_deployment_health,
                DeploymentHealthRequest(namespace=check.namespace, deployments=check.deployments),
                **summarized(KUBE_HEALTH_OPTIONS, f"check {check.name}"),
            )
            return judge_deployments(check, deployments)
        probe = await workflow.execute_activity_method(
            ProbeActivities.probe_http,
            HttpProbe(check=check),
            **summarized(PROBE_OPTIONS, f"check {check.name}"),
        )
        return judge_probe(check, probe, workflow.now().timestamp())

    # --- the launch it guards ----------------------------------------------------------

    async def _guard_launch(self, profile: HealthProfile, report: HealthReport) -> LaunchAction:
        assert profile.launch is not None
        launch_id = profile.launch.id
        failing = report.failing_critical()
        if not failing:
            return LaunchAction(
                launch_id=launch_id,
                action="none",
                signalled=False,
                detail="no critical check failed",
            )
        action = profile.launch.on_critical_failure
        if workflow.patched(ONCE_PER_INCIDENT):
            state = await self._launch_state(launch_id)
            acted = already_acted_on(state, action) if state is not None else ""
            if acted:
                return LaunchAction(
                    launch_id=launch_id, action=action, signalled=False, detail=acted
                )
        reason = "critical health check(s) failed: " + "; ".join(
            f"{check.name} ({check.detail})" for check in failing
        )
        by, request_id = f"health:{profile.name}"[:128], report.run_id[:128]
        # Sealed by this worker, dated by this run: the launch knows it from a person's.
        request: HoldRequest | AbortRequest = (
            HoldRequest(reason=reason[:2000], by=by, id=request_id, sent_at=workflow.now())
            if action == "pause"
            else AbortRequest(reason=reason[:2000], by=by, id=request_id, sent_at=workflow.now())
        )
        try:
            await workflow.get_external_workflow_handle(launch_id).signal(action, request)
        except FailureError as err:
            return LaunchAction(
                launch_id=launch_id,
                action=action,
                signalled=False,
                detail=f"launch {launch_id} is not running ({err}); alerted only",
            )
        return LaunchAction(
            launch_id=launch_id, action=action, signalled=True, detail=f"{action} sent: {reason}"
        )

    async def _launch_state(self, launch_id: str) -> LaunchState | None:
        """The launch as it is now, or None when it cannot be read: then the run acts anyway."""
        try:
            return await workflow.execute_activity_method(
                LaunchStateActivities.read_launch_state,
                LaunchStateRequest(launch_id=launch_id),
                **summarized(LAUNCH_STATE_OPTIONS, f"read launch {launch_id}"),
            )
        except ActivityError as err:
            workflow.logger.warning(
                "launch %s could not be read (%s); acting on it anyway", launch_id, err.cause
            )
            return None

    # --- alerts -------------------------------------------------------------------------

    async def _alert(self, inp: HealthRunInput, report: HealthReport) -> None:
        profile = inp.profile
        # Deterministic, and the same on replay or after a reset, unlike the run id.
        self._request_id = str(workflow.uuid4())
        request = AlertRequest(
            request_id=self._request_id,
            run_id=report.run_id,
            reply_to=workflow.info().workflow_id,
            profile=profile.name,
            service=profile.service,
            receivers=profile.alerts.receivers,
            alert_on=profile.alerts.alert_on,
            repeat_after_seconds=profile.alerts.repeat_after.total_seconds()
            if profile.alerts.repeat_after is not None
            else None,
            checks=report.checks,
        )
        try:
            await workflow.execute_activity_method(
                AlertLedgerActivities.record_in_ledger,
                LedgerDelivery(
                    ledger_id=profile.ledger_id,
                    runs_per_history=inp.ledger_runs_per_history,
                    request=request,
                ),
                **LEDGER_OPTIONS,
            )
        except ActivityError as err:
            report.alert_error = f"cannot reach the alert ledger {profile.ledger_id}: {err.cause}"
            return
        try:
            await workflow.wait_condition(
                lambda: self._outcome is not None, timeout=ALERT_ANSWER_TIMEOUT
            )
        except TimeoutError:
            report.alert_error = (
                f"the alert ledger {profile.ledger_id} did not answer within {ALERT_ANSWER_TIMEOUT}"
            )
            return
        report.alerts = self._outcome
        failed = [d for d in self._outcome.deliveries if not d.delivered] if self._outcome else []
        if failed:
            report.alert_error = "; ".join(f"{d.receiver}: {d.error}" for d in failed)

    @workflow.signal(name=OUTCOME_SIGNAL, description="Internal: the alert ledger's answer.")
    def alert_outcome(self, outcome: AlertOutcome) -> None:
        if self._request_id and outcome.request_id == self._request_id:
            self._outcome = outcome

    @workflow.query(name="report", description="This run's checks so far.")
    def report(self) -> HealthReport | None:
        return self._report

    def _show(self, report: HealthReport) -> None:
        self._report = report
        lines = [f"{report.profile}: {report.status}"] + [
            f"{check.status:4} {check.name}: {check.detail}" for check in report.checks
        ]
        if report.launch is not None:
            lines.append(f"launch {report.launch.launch_id}: {report.launch.detail}")
        if report.alert_error:
            lines.append(f"alerts: {report.alert_error}")
        workflow.set_current_details("\n".join(lines))
