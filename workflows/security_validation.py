"""Security validation: probe the deployed service, report every finding, apply the severity policy.

The probes run first, side by side; then the audited requests; rate-limit bursts last, one
at a time, so they cannot starve the other checks; the report goes to the launch; a failed critical finding fails the phase (the
launch rolls back); each failed warning waits for a person to waive it, by id, with a reason.
Nothing here changes the service, so there is nothing to undo.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ActivityConfig

with workflow.unsafe.imports_passed_through():
    from activities.kube_checks import KUBE_CHECK_OPTIONS
    from activities.metrics import METRICS_OPTIONS, MetricsActivities
    from activities.options import summarized
    from activities.probes import PROBE_OPTIONS, ProbeActivities, burst_options, finding
    from schemas.analysis_spec import MetricSpec
    from schemas.launch_messages import PhaseInput, PhaseState
    from schemas.metrics_messages import MetricQuery, MetricReading
    from schemas.probe_messages import CheckProbe, CheckReport, ProbeRequest, RateLimitProbe
    from schemas.security_validation_spec import AuditCheck, SecurityCheck, SecurityValidationPhase
    from workflows.phase import UNEXPECTED_ERRORS, PhaseWorkflow


@workflow.defn(name="SecurityValidation", failure_exception_types=UNEXPECTED_ERRORS)
class SecurityValidationWorkflow(PhaseWorkflow):
    @workflow.run
    async def run(self, inp: PhaseInput[SecurityValidationPhase]) -> PhaseState:
        return await self.run_phase(inp, lambda: self._validate(inp))

    async def _validate(self, inp: PhaseInput[SecurityValidationPhase]) -> None:
        spec = inp.phase
        state = self.state
        state.steps = len(spec.checks())

        state.activity = f"probing {len(spec.checks())} check(s)"
        await self.report()
        reports = await asyncio.gather(*self._probes(spec))
        # Audited requests go after the other probes, whose requests would be audited too.
        reports += await asyncio.gather(*(self._audit(inp, spec, check) for check in spec.audit))
        for check in spec.rate_limits:
            state.activity = f"rate limit {check.id}: a burst of at most {check.burst} requests"
            await self.report()
            reports.append(
                await workflow.execute_activity_method(
                    ProbeActivities.check_rate_limit,
                    RateLimitProbe(check=check, ca_file=spec.ca_file),
                    **summarized(burst_options(check), f"rate limit {check.id}"),
                )
            )
        state.findings = [item for report in reports for item in report.findings]
        state.step = len(spec.checks())
        await self.report()

        failed = [f.id for f in state.findings if not f.passed]
        workflow.logger.info(
            "launch %s, phase %s: %d finding(s), failed: %s",
            inp.launch_id,
            spec.name,
            len(state.findings),
            ", ".join(failed) or "none",
        )
        critical = [f for f in state.findings if not f.passed and f.severity == "critical"]
        if critical:
            raise ApplicationError(
                f"security validation failed: {len(critical)} critical finding(s): "
                + "; ".join(f"{f.id} on {f.target}: {f.evidence}" for f in critical),
                type="SecurityCheckFailed",
                non_retryable=True,
            )

        for warning in [f for f in state.findings if not f.passed]:
            state.activity = f"waiting for a waiver of {warning.id}"
            decision = await self.require(
                spec.waiver_gate(warning.id),
                spec.waiver_spec(),
                f"Warning {warning.id} on {warning.target}: {warning.evidence}. "
                "Approve with a reason to waive it for this launch; reject to roll back.",
                inp,
                needs_reason=True,
            )
            warning.waived_by, warning.waiver_reason = decision.by, decision.comment
            await self.report()

    def _probes(self, spec: SecurityValidationPhase) -> list[asyncio.Future[CheckReport]]:
        """Every probe but audits and bursts, started at once: each check of the plan by the
        activity of its kind, with that kind's options."""
        kinds: list[tuple[Sequence[SecurityCheck], str, ActivityConfig]] = [
            (spec.tls, "check_tls", PROBE_OPTIONS),
            (spec.headers, "check_headers", PROBE_OPTIONS),
            (spec.authentication, "check_authentication", PROBE_OPTIONS),
            (spec.authorization, "check_authorization", KUBE_CHECK_OPTIONS),
            (spec.secret_hygiene, "check_secret_hygiene", KUBE_CHECK_OPTIONS),
        ]
        return [
            workflow.start_activity(
                activity,
                CheckProbe(check=check, ca_file=spec.ca_file),
                result_type=CheckReport,
                **summarized(options, f"{activity.replace('_', ' ')} {check.id}"),
            )
            for checks, activity, options in kinds
            for check in checks
        ]

    async def _audit(
        self,
        inp: PhaseInput[SecurityValidationPhase],
        spec: SecurityValidationPhase,
        check: AuditCheck,
    ) -> CheckReport:
        """Read the audit query, call the endpoint once, and wait for the query to go up."""
        assert inp.plan.targets.prometheus is not None
        query = MetricQuery(
            prometheus=inp.plan.targets.prometheus,
            metric=f"audit {check.id}",
            spec=MetricSpec(query=check.query, min=0),
            canary_variant="audit",
            stable_variant="audit",
        )
        before = await self._read(query)
        response = await workflow.execute_activity_method(
            ProbeActivities.send_request,
            ProbeRequest(
                url=check.url,
                method=check.method,
                token=check.token,
                where=f"audit.{check.id}",
                ca_file=spec.ca_file,
            ),
            **summarized(PROBE_OPTIONS, f"audited request {check.id}"),
        )
        answered = (
            f"{check.method} answered {response.status}"
            if response.status
            else f"{check.method} got no answer ({response.error})"
        )
        start = workflow.now()
        baseline = before.value or 0.0
        after = before
        while workflow.now() - start < check.within:
            await workflow.sleep(check.interval)
            after = await self._read(query)
            if after.value is not None and after.value > baseline:
                waited = (workflow.now() - start).total_seconds()
                evidence = f"{answered}; `{check.query}` went {baseline:g} → {after.value:g} within {waited:.0f}s"
                return _audit_report(check, True, evidence)
        seen = (
            f"{after.value:g}" if after.value is not None else f"no data ({after.error or 'empty'})"
        )
        evidence = (
            f"{answered}; `{check.query}` stayed at {seen} (was {baseline:g}) for {check.within}"
        )
        return _audit_report(check, False, evidence)

    async def _read(self, query: MetricQuery) -> MetricReading:
        try:
            return await workflow.execute_activity_method(
                MetricsActivities.query_metric, query, **METRICS_OPTIONS
            )
        except ActivityError as err:
            return MetricReading(error=str(err.cause or err))


def _audit_report(check: AuditCheck, passed: bool, evidence: str) -> CheckReport:
    target = f"{check.method} {check.url}"
    return CheckReport(findings=[finding(check, "recorded", target, passed, evidence)])
