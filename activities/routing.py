"""The traffic-router interface and the activities that move exposure through it.

A router owns one way of sending a share of users to the new version (a flagd flag today;
Kubernetes replica weights and ingress canary weights plug in beside it). The activities
dispatch on the plan's `router.kind`, so workflows never know which router is in use.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

from activities.errors import NON_RETRYABLE, ConfigurationError
from schemas.routing_messages import (
    ExposureRequest,
    ExposureState,
    PromoteRequest,
    RestoreRequest,
    RouterSnapshot,
    SnapshotRequest,
)
from schemas.targets import TrafficRouter as RouterSpec

ROUTING_OPTIONS = workflow.ActivityConfig(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(milliseconds=200),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=10,
        non_retryable_error_types=NON_RETRYABLE,
    ),
)


class TrafficRouter(Protocol):
    """What every router does. Each method is idempotent: calling it twice changes nothing more."""

    def snapshot(self, spec: RouterSpec) -> RouterSnapshot: ...

    def set_weight(self, spec: RouterSpec, weight: float, launch_id: str) -> bool: ...

    def restore(self, spec: RouterSpec, snapshot: RouterSnapshot) -> bool: ...

    def promote(self, spec: RouterSpec, launch_id: str) -> bool: ...


class RouterActivities:
    """Exposure activities; `routers` maps a plan's `router.kind` to its implementation."""

    def __init__(self, routers: dict[str, TrafficRouter]) -> None:
        self._routers = routers

    def _router(self, spec: RouterSpec) -> TrafficRouter:
        try:
            return self._routers[spec.kind]
        except KeyError:
            raise ConfigurationError(
                f"router kind {spec.kind!r} is not served by this worker "
                f"(it serves: {', '.join(sorted(self._routers))})"
            ) from None

    @activity.defn
    def snapshot_exposure(self, request: SnapshotRequest) -> RouterSnapshot:
        return self._router(request.router).snapshot(request.router)

    @activity.defn
    def set_exposure(self, request: ExposureRequest) -> ExposureState:
        changed = self._router(request.router).set_weight(
            request.router, request.weight, request.launch_id
        )
        activity.logger.info("exposure %.3g%% (changed=%s)", request.weight, changed)
        return ExposureState(weight=request.weight, changed=changed)

    @activity.defn
    def restore_exposure(self, request: RestoreRequest) -> ExposureState:
        changed = self._router(request.router).restore(request.router, request.snapshot)
        activity.logger.info("exposure restored to its earlier definition (changed=%s)", changed)
        return ExposureState(weight=0.0, changed=changed)

    @activity.defn
    def promote_exposure(self, request: PromoteRequest) -> ExposureState:
        changed = self._router(request.router).promote(request.router, request.launch_id)
        return ExposureState(weight=100.0, changed=changed)
