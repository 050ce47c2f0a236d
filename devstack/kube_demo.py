"""`phasegate kube`: the local Kubernetes control plane and the Kubernetes demo launch.

`phasegate kube up` runs the control plane until Ctrl-C; `phasegate kube demo` launches
examples/plans/kube/checkout.yaml (infra_setup, then a replica-weighted soft and full launch)
against it with a Temporal dev server and a worker, and shows what is in the namespace after.
Both stop everything they started on SIGINT, SIGTERM and SIGHUP (`stop_on_signals`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from kubernetes import client
from rich.console import Console
from temporalio.client import Client

from activities.kube_client import api_client_from_kubeconfig
from activities.limits import FileLimits, KubernetesLimits, SecretLimits, WorkerLimits
from devstack.demo import auto_approve, example_plan
from devstack.kube_cluster import ControlPlane, control_plane, start_control_plane
from devstack.processes import (
    LocalProcessError,
    run_stoppable,
    start_temporal_dev_server,
    start_worker,
    stop_on_signals,
)
from schemas.infra_setup_spec import InfraSetupPhase
from schemas.launch_messages import LaunchStatus
from starters import launches
from starters.output import fail
from workers.client import TemporalUnreachable, connect
from workers.settings import Settings

kube_app = typer.Typer(
    help="The local Kubernetes control plane and the Kubernetes demo.", no_args_is_help=True
)
# Only what the example plan needs: its manifests, the Secret's password and its namespace.
KUBE_DEMO_LIMITS = WorkerLimits(
    secrets=SecretLimits(env=["CHECKOUT_DB_PASSWORD"]),
    files=FileLimits(read=[str(example_plan("kube/manifests"))]),
    kubernetes=KubernetesLimits(namespaces=["checkout"]),
)

console = Console()
Workdir = Annotated[Path, typer.Option(help="Where certificates, etcd data and logs go.")]


@kube_app.command("up")
def up(workdir: Workdir = Path(".phasegate/kube")) -> None:
    """Start etcd, kube-apiserver, controller-manager, scheduler and kwok; print the kubeconfig."""
    started = time.monotonic()
    with stop_on_signals("phasegate kube up"):
        try:
            plane = start_control_plane(workdir.resolve())
        except LocalProcessError as err:
            fail(str(err))
        try:
            console.print(
                f"control plane ready in {time.monotonic() - started:.1f}s at {plane.server}"
            )
            console.print(f"export KUBECONFIG={plane.kubeconfig}")
            console.print("Ctrl-C stops it.")
            while all(process.running for process in plane.processes):
                time.sleep(0.5)
            exited = next(process for process in plane.processes if not process.running)
        finally:
            plane.stop()
        fail(f"{exited.name} exited with code {exited.process.returncode}; see {exited.log_path}")


@kube_app.command("demo")
def demo(
    workdir: Workdir = Path(".phasegate/kube-demo"),
    reject: Annotated[
        bool, typer.Option(help="Reject the soft launch's gate: watch everything roll back.")
    ] = False,
) -> None:
    """Launch the Kubernetes example plan with every gate decided by one of its approvers."""
    os.environ.setdefault("CHECKOUT_DB_PASSWORD", "demo-password")
    workdir = workdir.resolve()
    with stop_on_signals("phasegate kube demo"):
        try:
            with control_plane(workdir / "cluster") as plane:
                final = run_stoppable(_run(plane, workdir, reject))
        except (LocalProcessError, TemporalUnreachable, launches.LaunchError) as err:
            fail(str(err))
    raise typer.Exit(0 if final.status.value == ("rolled_back" if reject else "completed") else 1)


async def _run(plane: ControlPlane, workdir: Path, reject: bool) -> LaunchStatus:
    console.print(f"Kubernetes API at {plane.server} (KUBECONFIG={plane.kubeconfig})")
    server = start_temporal_dev_server(workdir=workdir)
    worker = start_worker(
        address=server.address,
        workdir=workdir,
        extra_env={"PHASEGATE_KUBECONFIG": str(plane.kubeconfig)},
        limits=KUBE_DEMO_LIMITS,
    )
    try:
        settings = Settings(TEMPORAL_ADDRESS=server.address, PHASEGATE_UI_URL=server.url)
        plan = launches.validate_plan(example_plan("kube/checkout.yaml"))
        temporal = await connect(settings)
        handle = await launches.start_launch(temporal, plan, settings=settings)
        console.print(f"launch {handle.id}: {launches.ui_link(settings, handle.id)}")
        last = [""]

        def show(status: LaunchStatus) -> None:
            line = f"{status.status.value:12} {status.phase:12} step {status.step} exposure {status.exposure}"
            if line != last[0]:
                console.print(line)
                last[0] = line

        if reject:
            final = await _reject_soft_launch(temporal, handle.id, show)
        else:
            final = await auto_approve(temporal, handle.id, plan.approvals.approvers[0], show)
        console.print(f"launch {final.status.value}{': ' + final.reason if final.reason else ''}")
        namespace = next(p for p in plan.phases if isinstance(p, InfraSetupPhase)).namespace
        _show_namespace(plane, namespace)
        return final
    finally:
        worker.stop()
        server.stop()


async def _reject_soft_launch(
    temporal: Client, launch_id: str, show: Callable[[LaunchStatus], None]
) -> LaunchStatus:
    while True:
        status = await launches.get_status(temporal, launch_id)
        show(status)
        if status.open_gate is not None:
            await launches.decide(
                temporal,
                launch_id,
                status.open_gate.gate,
                "alice",  # an approver of the example plan
                "reject",
                "demo: reject the soft launch",
            )
        if status.status.value in ("completed", "rolled_back"):
            return status
        await asyncio.sleep(0.5)


def _show_namespace(plane: ControlPlane, namespace: str) -> None:
    api = api_client_from_kubeconfig(plane.kubeconfig)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    names = {n.metadata.name for n in core.list_namespace().items if n.metadata is not None}
    if namespace not in names:
        console.print(f"namespace {namespace}: gone (everything the launch created was deleted)")
        return
    for deployment in apps.list_namespaced_deployment(namespace).items:
        console.print(f"Deployment {namespace}/{_describe(deployment)}")


def _describe(deployment: client.V1Deployment) -> str:
    """`name: ready/wanted ready, images`; the API may leave any of these out."""
    name = deployment.metadata.name if deployment.metadata is not None else None
    spec = deployment.spec
    wanted = spec.replicas if spec is not None and spec.replicas is not None else 1
    ready = deployment.status.ready_replicas if deployment.status is not None else None
    pod = spec.template.spec if spec is not None else None
    images = ", ".join(c.image or "(no image)" for c in pod.containers) if pod else "no pods"
    return f"{name or '(unnamed)'}: {ready or 0}/{wanted} ready, {images}"
