"""The traffic-router interface and the activities that move exposure through it.

A router owns one way of sending a share of users to the new version: a flagd flag,
Kubernetes replica weights, or nginx ingress canary weights. Each router takes its own kind of
plan section; the activities dispatch on the plan's `router.kind`, so workflows never know
which router is in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeAlias, TypedDict, TypeVar, assert_never

from temporalio import activity, workflow

from activities.errors import ConfigurationError
from activities.options import SECOND, activity_options
from schemas.routing_messages import (
    ExposureRequest,
    ExposureState,
    PromoteRequest,
    RestoreRequest,
    RouterSnapshot,
    SnapshotRequest,
)
from schemas.targets import FlagdRouter, IngressCanaryRouter, ReplicaCanaryRouter
from schemas.targets import TrafficRouter as RouterSpec

ROUTING_OPTIONS = activity_options(
    30 * SECOND, attempts=10, first_retry=SECOND / 5, longest_retry=10 * SECOND
)
# The same timeouts and retries for a change run as a local activity (a flag file).
LOCAL_ROUTING_OPTIONS = workflow.LocalActivityConfig(
    start_to_close_timeout=ROUTING_OPTIONS["start_to_close_timeout"],
    retry_policy=ROUTING_OPTIONS["retry_policy"],
)


SpecT_contra = TypeVar("SpecT_contra", contravariant=True)
SpecT = TypeVar("SpecT", FlagdRouter, ReplicaCanaryRouter, IngressCanaryRouter)


class TrafficRouter(Protocol[SpecT_contra]):
    """What every router does, for the plan section it takes (`TrafficRouter[FlagdRouter]`).
    Each method is idempotent: calling it twice changes nothing more."""

    def snapshot(self, spec: SpecT_contra) -> RouterSnapshot: ...

    def set_weight(self, spec: SpecT_contra, weight: float, launch_id: str) -> bool: ...

    def restore(self, spec: SpecT_contra, snapshot: RouterSnapshot) -> bool: ...

    def promote(self, spec: SpecT_contra, launch_id: str) -> bool: ...


class Routers(TypedDict, total=False):
    """The routers a worker serves, keyed by the plan's `router.kind`."""

    flagd: TrafficRouter[FlagdRouter]
    kube_replicas: TrafficRouter[ReplicaCanaryRouter]
    nginx_ingress: TrafficRouter[IngressCanaryRouter]


@dataclass(frozen=True)
class _BoundRouter(Generic[SpecT]):
    """A router together with the plan section it acts on."""

    router: TrafficRouter[SpecT]
    spec: SpecT

    def snapshot(self) -> RouterSnapshot:
        return self.router.snapshot(self.spec)

    def set_weight(self, weight: float, launch_id: str) -> bool:
        return self.router.set_weight(self.spec, weight, launch_id)

    def restore(self, snapshot: RouterSnapshot) -> bool:
        return self.router.restore(self.spec, snapshot)

    def promote(self, launch_id: str) -> bool:
        return self.router.promote(self.spec, launch_id)


_AnyBoundRouter: TypeAlias = (
    _BoundRouter[FlagdRouter]
    | _BoundRouter[ReplicaCanaryRouter]
    | _BoundRouter[IngressCanaryRouter]
)


class RouterActivities:
    """Exposure activities; `routers` holds the implementation of each `router.kind` served."""

    def __init__(self, routers: Routers) -> None:
        self._routers = routers

    def _router(self, spec: RouterSpec) -> _AnyBoundRouter:
        match spec:
            case FlagdRouter():
                return self._bind(self._routers.get("flagd"), spec)
            case ReplicaCanaryRouter():
                return self._bind(self._routers.get("kube_replicas"), spec)
            case IngressCanaryRouter():
                return self._bind(self._routers.get("nginx_ingress"), spec)
            case _:
                assert_never(spec)

    def _bind(self, router: TrafficRouter[SpecT] | None, spec: SpecT) -> _BoundRouter[SpecT]:
        if router is None:
            raise ConfigurationError(
                f"router kind {spec.kind!r} is not served by this worker "
                f"(it serves: {', '.join(sorted(self._routers))})"
            )
        return _BoundRouter(router, spec)

    @activity.defn(name="snapshot_exposure")
    def snapshot_exposure(self, request: SnapshotRequest) -> RouterSnapshot:
        return self._router(request.router).snapshot()

    @activity.defn(name="set_exposure")
    def set_exposure(self, request: ExposureRequest) -> ExposureState:
        changed = self._router(request.router).set_weight(request.weight, request.launch_id)
        activity.logger.info("exposure %.3g%% (changed=%s)", request.weight, changed)
        return ExposureState(weight=request.weight, changed=changed)

    @activity.defn(name="restore_exposure")
    def restore_exposure(self, request: RestoreRequest) -> ExposureState:
        changed = self._router(request.router).restore(request.snapshot)
        activity.logger.info("exposure restored to its earlier definition (changed=%s)", changed)
        return ExposureState(weight=0.0, changed=changed)

    @activity.defn(name="promote_exposure")
    def promote_exposure(self, request: PromoteRequest) -> ExposureState:
        changed = self._router(request.router).promote(request.launch_id)
        return ExposureState(weight=100.0, changed=changed)
