"""Infrastructure setup: apply the service's Kubernetes objects, wait for the rollout, check
that Prometheus scrapes it. Every object's undo (delete it, or put it back as it was) is
registered before the object is applied, so a rollback leaves nothing the launch created.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.kube import KUBE_OPTIONS, KubeActivities, rollout_options
    from activities.metrics import MetricsActivities, targets_options
    from activities.options import summarized
    from schemas.infra_setup_spec import InfraSetupPhase, SecretSpec
    from schemas.kube_messages import (
        ApplyObjectRequest,
        ApplySecretRequest,
        KubeObjectRef,
        ManifestsRequest,
        RestoreObjectRequest,
        RolloutRequest,
        SnapshotObjectRequest,
    )
    from schemas.launch_messages import PhaseInput, PhaseState
    from schemas.metrics_messages import TargetsUpRequest
    from workflows.compensation import RESTORE_OBJECT
    from workflows.phase import UNEXPECTED_ERRORS, PhaseWorkflow


@workflow.defn(name="InfraSetup", failure_exception_types=UNEXPECTED_ERRORS)
class InfraSetupWorkflow(PhaseWorkflow):
    @workflow.run
    async def run(self, inp: PhaseInput[InfraSetupPhase]) -> PhaseState:
        return await self.run_phase(inp, lambda: self.set_up(inp))

    async def set_up(self, inp: PhaseInput[InfraSetupPhase]) -> None:
        spec = inp.phase
        plan, state = inp.plan, self.state

        state.activity = f"reading {len(spec.manifests)} manifest file(s)"
        manifests = await workflow.execute_activity_method(
            KubeActivities.read_manifests,
            ManifestsRequest(
                paths=spec.manifests,
                namespace=spec.namespace,
                launch_id=inp.launch_id,
                service=plan.service,
            ),
            **KUBE_OPTIONS,
        )
        # The namespace comes first, then the secrets, then everything the manifests name.
        namespace, *objects = manifests.objects
        state.steps = len(manifests.objects) + len(spec.secrets)

        await self.apply(namespace, inp)
        for secret in spec.secrets:
            await self.apply_secret(secret, inp)
        for obj in objects:
            await self.apply(obj, inp)

        deployments = [
            KubeObjectRef.of(obj).name for obj in objects if obj.get("kind") == "Deployment"
        ]
        if deployments:
            state.activity = f"waiting for the rollout of {', '.join(deployments)}"
            await self.report()
            await workflow.execute_activity_method(
                KubeActivities.check_rollout,
                RolloutRequest(namespace=spec.namespace, deployments=deployments),
                **summarized(
                    rollout_options(spec.rollout_timeout),
                    f"rollout of {len(deployments)} Deployment(s)",
                ),
            )

        if spec.prometheus_jobs and plan.targets.prometheus is not None:
            state.activity = f"checking that Prometheus scrapes {', '.join(spec.prometheus_jobs)}"
            await self.report()
            await workflow.execute_activity_method(
                MetricsActivities.check_targets_up,
                TargetsUpRequest(prometheus=plan.targets.prometheus, jobs=spec.prometheus_jobs),
                **targets_options(spec.targets_timeout),
            )

    async def apply(self, obj: dict[str, object], inp: PhaseInput[InfraSetupPhase]) -> None:
        ref = KubeObjectRef.of(obj)
        await self.register_undo(ref, inp)
        await workflow.execute_activity_method(
            KubeActivities.apply_object,
            ApplyObjectRequest(object=obj, launch_id=inp.launch_id),
            **summarized(KUBE_OPTIONS, f"apply {ref.describe()}"),
        )

    async def apply_secret(self, secret: SecretSpec, inp: PhaseInput[InfraSetupPhase]) -> None:
        """A Secret whose values the worker resolves from their references."""
        namespace = inp.phase.namespace
        ref = KubeObjectRef(api_version="v1", kind="Secret", name=secret.name, namespace=namespace)
        await self.register_undo(ref, inp)
        request = ApplySecretRequest(
            secret=secret, namespace=namespace, launch_id=inp.launch_id, service=inp.plan.service
        )
        await workflow.execute_activity_method(
            KubeActivities.apply_secret,
            request,
            **summarized(KUBE_OPTIONS, f"apply {ref.describe()}"),
        )

    async def register_undo(self, ref: KubeObjectRef, inp: PhaseInput[InfraSetupPhase]) -> None:
        """Snapshot the object as it is, then record how to return to that, before applying."""
        self.state.step += 1
        self.state.activity = f"applying {ref.describe()}"
        snapshot = await workflow.execute_activity_method(
            KubeActivities.snapshot_object,
            SnapshotObjectRequest(ref=ref, launch_id=inp.launch_id),
            **summarized(KUBE_OPTIONS, f"snapshot {ref.describe()}"),
        )
        verb = "put back" if snapshot.existed else "delete"
        await self.compensations.register(
            RESTORE_OBJECT,
            RestoreObjectRequest(snapshot=snapshot, launch_id=inp.launch_id),
            f"{verb} {ref.describe()}",
        )
