"""`phasegate-worker`: one worker for every workflow and activity, with graceful shutdown.

The SDK's own metrics (task latencies, slots, failures) are served for Prometheus at
`PHASEGATE_METRICS_ADDRESS` (default 127.0.0.1:9464). What plans may make the worker touch is
read once, from `PHASEGATE_WORKER_LIMITS` (`activities/limits.py`), and the keys backups are
encrypted with from `PHASEGATE_BACKUP_KEYS` (`activities/backup_store.py`); a bad limits or key
file stops the worker before it connects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import backup_store
from activities import limits as worker_limits
from activities.admission import AdmissionActivities
from activities.alerts import AlertActivities, AlertLedgerActivities
from activities.approvals import ApprovalActivities
from activities.backup_store import BackupKeys, load_backup_keys
from activities.errors import ConfigurationError
from activities.flags import FlagdFileRouter
from activities.kube import KubeActivities, KubeConnection
from activities.kube_checks import KubeCheckActivities
from activities.kube_routers import NginxCanaryRouter, ReplicaWeightRouter
from activities.launch_state import LaunchStateActivities
from activities.limits import WorkerLimits, guarded_transport, load_limits, origin_of
from activities.metrics import MetricsActivities
from activities.notify import NotifyActivities
from activities.phase_end import PhaseEndActivities
from activities.postgres import PostgresActivities
from activities.probes import ProbeActivities
from activities.routing import RouterActivities
from workers.client import connect
from workers.sealing import DEFAULT_KEY_FILE, SealInterceptor, load_keys
from workers.settings import WORKER_READY_LINE, Settings, settings_problem
from workflows.alert_ledger import AlertLedgerWorkflow
from workflows.continuous import ContinuousAnalysisWorkflow
from workflows.full_launch import FullLaunchWorkflow
from workflows.health import HealthValidationWorkflow
from workflows.infra_setup import InfraSetupWorkflow
from workflows.launch import LaunchWorkflow
from workflows.migration_cutover import MigrationCutoverWorkflow
from workflows.security_validation import SecurityValidationWorkflow
from workflows.soft_launch import SoftLaunchWorkflow

WORKFLOWS: Sequence[type] = (
    LaunchWorkflow,
    InfraSetupWorkflow,
    SecurityValidationWorkflow,
    SoftLaunchWorkflow,
    FullLaunchWorkflow,
    MigrationCutoverWorkflow,
    HealthValidationWorkflow,
    AlertLedgerWorkflow,
    ContinuousAnalysisWorkflow,
)


# Every workflow run still runs in Temporal's sandbox (no clocks, randomness or I/O), but
# Phasegate's own workflow modules are imported once per worker rather than once per run: they
# keep no state of their own, and a launch waiting at a gate then costs the worker its state
# only (about 290 KiB instead of 480 KiB for a launch and its phase, benchmarks/README.md).
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows")
)


def load_worker_limits(settings: Settings) -> WorkerLimits:
    """The limits `PHASEGATE_WORKER_LIMITS` names (safe defaults when unset), refusing the
    worker's own key files and limits as secrets; `PlanError` naming every problem."""
    key_file = Path(settings.worker_key_file) if settings.worker_key_file else DEFAULT_KEY_FILE
    own = [key_file, *(path for path in (settings.backup_keys, settings.payload_keys) if path)]
    if settings.worker_limits is None:
        return WorkerLimits().protecting(*own)
    return load_limits(Path(settings.worker_limits)).protecting(*own)


def load_worker_backup_keys(settings: Settings) -> BackupKeys | None:
    """The backup keys `PHASEGATE_BACKUP_KEYS` names, or None when unset;
    `ConfigurationError` of one line for a file that is wrong or readable by others."""
    return None if settings.backup_keys is None else load_backup_keys(settings.backup_keys)


def worker_http(settings: Settings, limits: WorkerLimits) -> httpx.AsyncClient:
    """The HTTP client of every activity: each connection checked against the limits when it
    is made. The approval service is the worker's own configuration, so always reachable."""
    return httpx.AsyncClient(
        transport=guarded_transport(limits.network, trusted=origin_of(settings.approval_service))
    )


def activities(
    http: httpx.AsyncClient,
    client: Client,
    kube: KubeConnection | None = None,
    settings: Settings | None = None,
    limits: WorkerLimits | None = None,
) -> list[Any]:
    """Every activity, bound to the clients it needs. The Kubernetes client is made on first
    use, from `kube` or else the environment (PHASEGATE_KUBECONFIG, KUBECONFIG, in-cluster)."""
    settings = settings or Settings()
    limits = limits or load_worker_limits(settings)
    kube = kube or KubeConnection(settings.kubeconfig)
    admission = AdmissionActivities(limits)
    approvals = ApprovalActivities(http, settings.approval_service)
    router = RouterActivities(
        {
            "flagd": FlagdFileRouter(limits),
            "kube_replicas": ReplicaWeightRouter(kube),
            "nginx_ingress": NginxCanaryRouter(kube),
        }
    )
    metrics = MetricsActivities(limits)
    notify = NotifyActivities(http)
    kubernetes = KubeActivities(kube)
    kube_checks = KubeCheckActivities(kube.api)
    postgres = PostgresActivities()
    probes = ProbeActivities(http, limits)
    alerts = AlertActivities(http)
    ledger = AlertLedgerActivities(client)
    phase_end = PhaseEndActivities(client)
    launch_state = LaunchStateActivities(client)
    return [
        admission.admit_plan,
        approvals.approval_authority,
        router.snapshot_exposure,
        router.set_exposure,
        router.restore_exposure,
        router.promote_exposure,
        metrics.query_metric,
        metrics.check_targets_up,
        notify.send_notification,
        kubernetes.read_manifests,
        kubernetes.snapshot_object,
        kubernetes.apply_object,
        kubernetes.apply_secret,
        kubernetes.restore_object,
        kubernetes.check_rollout,
        kubernetes.check_deployment_health,
        postgres.preflight_migration,
        postgres.backup_database,
        postgres.apply_migrations,
        postgres.verify_migration,
        postgres.cut_over_sql,
        postgres.switch_back_sql,
        postgres.check_writes_since_cutover,
        postgres.restore_database,
        probes.check_tls,
        probes.check_headers,
        probes.check_authentication,
        probes.check_rate_limit,
        probes.send_request,
        kube_checks.check_authorization,
        kube_checks.check_secret_hygiene,
        probes.probe_http,
        alerts.send_alerts,
        ledger.record_in_ledger,
        phase_end.describe_phase_end,
        launch_state.read_launch_state,
    ]


def build_worker(
    client: Client,
    http: httpx.AsyncClient,
    executor: concurrent.futures.ThreadPoolExecutor,
    settings: Settings | None = None,
    *,
    task_queue: str | None = None,
    kube: KubeConnection | None = None,
    limits: WorkerLimits | None = None,
    backup_keys: BackupKeys | None = None,
) -> Worker:
    settings = settings or Settings()
    limits = limits or load_worker_limits(settings)
    # Secrets are resolved in many activity modules; they all read under these limits.
    worker_limits.configure(limits)
    backup_keys = backup_keys or load_worker_backup_keys(settings)
    if backup_keys is not None:
        backup_store.configure(backup_keys)
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=list(WORKFLOWS),
        activities=activities(http, client, kube, settings, limits),
        interceptors=[SealInterceptor(load_keys(settings.worker_key_file))],
        workflow_runner=WORKFLOW_RUNNER,
        activity_executor=executor,
        max_concurrent_activities=settings.max_concurrent_activities,
        max_cached_workflows=settings.max_cached_workflows,
        max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
    )


async def serve(settings: Settings) -> None:
    limits = load_worker_limits(settings)
    backup_keys = load_worker_backup_keys(settings)
    runtime = Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=settings.metrics_address))
    )
    client = await connect(settings, runtime=runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=settings.max_concurrent_activities
    ) as executor:
        async with worker_http(settings, limits) as http:
            worker = build_worker(
                client, http, executor, settings, limits=limits, backup_keys=backup_keys
            )
            logging.info(
                "phasegate worker on %s, task queue %s, metrics on %s, limits from %s, "
                "backup keys from %s",
                settings.temporal_address,
                settings.task_queue,
                settings.metrics_address,
                settings.worker_limits or "nowhere (no secrets, files or private hosts)",
                settings.backup_keys or "nowhere (no backups)",
            )
            async with worker:
                logging.info("%s on task queue %s", WORKER_READY_LINE, settings.task_queue)
                await stop.wait()
                logging.info("shutting down: finishing running activities")


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings()
    except ValidationError as err:
        raise SystemExit(f"phasegate-worker: {settings_problem(err)}") from None
    try:
        asyncio.run(serve(settings))
    except (ConfigurationError, RuntimeError, ValueError) as err:
        raise SystemExit(f"phasegate-worker: {err}") from None


if __name__ == "__main__":
    main()
