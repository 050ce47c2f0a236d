"""Plan admission: every problem a plan has with the worker's limits, named by its path, from
the activity, from `phasegate validate --limits`, and for a launch on the real dev server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.admission import AdmissionActivities, plan_problems, profile_problems
from activities.limits import WorkerLimits, load_limits
from devstack.postgres_cluster import PostgresCluster
from schemas.admission_messages import AdmissionRequest
from schemas.health_profile import HealthProfile
from schemas.launch_messages import LaunchStatusValue
from schemas.plan import LaunchPlan, load_plan
from tests.support.cli import phasegate
from tests.support.health_profiles import profile_dict
from tests.support.launches import start_launch, wait_for
from tests.support.limits import session_limits, write_limits
from tests.support.plans import migration_phase, plan_dict
from tests.support.receiver import webhook_receiver
from tests.support.servers import running_worker

WHERE = "the worker's limits (PHASEGATE_WORKER_LIMITS)"


def everything_plan(tmp_path: Path) -> dict[str, Any]:
    """A plan that touches every kind of thing the limits govern, each somewhere they refuse
    by default."""
    return plan_dict(
        flag_file="/etc/phasegate/flags.json",
        targets={
            "prometheus": {
                "url": "http://169.254.169.254:9090",
                "bearer_token": {"env": "HOME"},
            },
            "router": {
                "kind": "flagd",
                "flag_file": "/etc/phasegate/flags.json",
                "flag_key": "checkout-v2",
            },
        },
        notifications=[
            {
                "name": "ops",
                "url": "http://127.0.0.1:9/hook",
                "headers": {"Authorization": {"file": "/etc/passwd"}},
            }
        ],
        phases=[
            {
                "name": "infra",
                "kind": "infra_setup",
                "namespace": "kube-system",
                "secrets": [{"name": "db", "data": {"password": {"env": "AWS_SECRET_ACCESS_KEY"}}}],
            },
            {
                "name": "security",
                "kind": "security_validation",
                "ca_file": "/etc/ssl/private/ca.pem",
                "authentication": [
                    {"id": "orders", "url": "https://10.0.0.1/orders", "token": {"env": "PATH"}}
                ],
            },
            migration_phase(
                source={"file": str(tmp_path / "dsn")},
                migrations="/etc",
                backup_dir="/var/backups",
            ),
            {"name": "full-launch", "kind": "full_launch", "steps": [{"weight": 100}]},
        ],
    )


def test_every_touch_outside_the_safe_defaults_is_named(tmp_path: Path) -> None:
    plan = LaunchPlan.model_validate(everything_plan(tmp_path))

    problems = plan_problems(plan, WorkerLimits(), resolve=False)

    assert problems == [
        f"targets.prometheus.url: 169.254.169.254 is a link-local address: the worker reaches "
        f"it only when network.private in {WHERE} lists it (a CIDR, or the host name)",
        "targets.prometheus.bearer_token: environment variable HOME is not one this worker may "
        f"read: add it to secrets.env in {WHERE}",
        "targets.router.flag_file: /etc/phasegate/flags.json is not inside a folder of "
        f"files.flags in {WHERE}",
        f"notifications[0].url: 127.0.0.1 is a loopback address: the worker reaches it only "
        f"when network.private in {WHERE} lists it (a CIDR, or the host name)",
        "notifications[0].headers.Authorization: /etc/passwd is not inside a folder of "
        f"secrets.files in {WHERE}",
        f"phases[0].namespace: namespace kube-system is not in kubernetes.namespaces of {WHERE}",
        "phases[0].secrets[0].data.password: environment variable AWS_SECRET_ACCESS_KEY is not "
        f"one this worker may read: add it to secrets.env in {WHERE}",
        f"phases[1].ca_file: /etc/ssl/private/ca.pem is not inside a folder of files.read in {WHERE}",
        f"phases[1].authentication[0].url: 10.0.0.1 is a private address: the worker reaches it "
        f"only when network.private in {WHERE} lists it (a CIDR, or the host name)",
        "phases[1].authentication[0].token: environment variable PATH is not one this worker "
        f"may read: add it to secrets.env in {WHERE}",
        f"phases[2].source: {tmp_path / 'dsn'} is not inside a folder of secrets.files in {WHERE}",
        f"phases[2].migrations: /etc is not inside a folder of files.read in {WHERE}",
        f"phases[2].backup_dir: /var/backups is not inside a folder of files.backups in {WHERE}",
    ]


def test_manifests_are_read_only_inside_files_read(tmp_path: Path) -> None:
    infra = {"name": "infra", "kind": "infra_setup", "namespace": "shop"}
    plan = LaunchPlan.model_validate(
        plan_dict(
            flag_file=tmp_path / "f.json",
            phases=[{**infra, "manifests": ["/etc/kubernetes/admin.yaml", str(tmp_path / "ok")]}],
        )
    )
    limits = load_limits(
        write_limits(
            tmp_path, files={"flags": ["."], "read": ["."]}, network={"private": ["127.0.0.1"]}
        )
    )
    assert plan_problems(plan, limits) == [
        "phases[0].manifests[0]: /etc/kubernetes/admin.yaml is not inside a folder of "
        f"files.read in {WHERE}"
    ]


def allowed_limits(tmp_path: Path, postgres_port: int | None = None) -> WorkerLimits:
    return load_limits(
        write_limits(
            tmp_path,
            secrets={"env": ["PHASEGATE_TEST_*"], "files": ["secrets"]},
            network={"private": ["127.0.0.0/8"]},
            databases=[f"127.0.0.1:{postgres_port or 5432}"],
            files={"flags": ["flags"], "read": ["plan"], "backups": ["backups"]},
        )
    )


def test_a_plan_inside_the_limits_is_admitted_with_its_secrets_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: PostgresCluster
) -> None:
    (tmp_path / "secrets").mkdir()
    dsn_file = tmp_path / "secrets" / "dsn"
    dsn_file.write_text(postgres.dsn("checkout"))
    monkeypatch.setenv("PHASEGATE_TEST_TOKEN", "t0ken")
    plan = LaunchPlan.model_validate(
        plan_dict(
            flag_file=tmp_path / "flags" / "f.json",
            notifications=[
                {
                    "name": "ops",
                    "url": {"env": "PHASEGATE_TEST_HOOK"},
                    "headers": {"X-Token": {"env": "PHASEGATE_TEST_TOKEN"}},
                }
            ],
            phases=[
                migration_phase(
                    source={"file": str(dsn_file)},
                    migrations=str(tmp_path / "plan" / "migrations"),
                    backup_dir=str(tmp_path / "backups"),
                ),
            ],
        )
    )
    limits = allowed_limits(tmp_path, postgres.port)
    monkeypatch.setenv("PHASEGATE_TEST_HOOK", "http://127.0.0.1:9/hook")

    assert plan_problems(plan, limits) == []

    monkeypatch.delenv("PHASEGATE_TEST_TOKEN")
    monkeypatch.setenv("PHASEGATE_TEST_HOOK", "https://user:hunter2@169.254.169.254/latest")
    dsn_file.write_text(f"host=127.0.0.1 port={postgres.port + 1} dbname=checkout password=pw1")
    problems = plan_problems(plan, limits)
    assert problems == [
        "notifications[0].url: the URL in this secret (169.254.169.254) is a link-local address: "
        f"the worker reaches it only when network.private in {WHERE} lists it (a CIDR, or the "
        "host name)",
        "notifications[0].headers.X-Token: environment variable PHASEGATE_TEST_TOKEN is not set",
        f"phases[0].source: database 127.0.0.1:{postgres.port + 1}/checkout is not in databases "
        f"of {WHERE}",
    ]
    assert not any("hunter2" in line or "pw1" in line for line in problems)


def test_a_dsn_that_does_not_parse_is_refused_without_quoting_it(
    tmp_path: Path, postgres: PostgresCluster
) -> None:
    (tmp_path / "secrets").mkdir()
    dsn_file = tmp_path / "secrets" / "dsn"
    dsn_file.write_text("host=127.0.0.1 password='s3cr3t-fragment dbname=checkout")
    plan = LaunchPlan.model_validate(
        plan_dict(
            flag_file=tmp_path / "flags" / "f.json",
            phases=[
                migration_phase(
                    source={"file": str(dsn_file)},
                    migrations=str(tmp_path / "plan"),
                    backup_dir=str(tmp_path / "backups"),
                )
            ],
        )
    )
    assert plan_problems(plan, allowed_limits(tmp_path, postgres.port)) == [
        "phases[0].source: the DSN is not a valid libpq connection string (not shown: it may "
        "hold a password)"
    ]


def test_a_restore_needs_the_servers_postgres_database_too(
    tmp_path: Path, postgres: PostgresCluster
) -> None:
    (tmp_path / "secrets").mkdir()
    dsn_file = tmp_path / "secrets" / "dsn"
    dsn_file.write_text(postgres.dsn("checkout"))
    plan = LaunchPlan.model_validate(
        plan_dict(
            flag_file=tmp_path / "flags" / "f.json",
            phases=[
                migration_phase(
                    source={"file": str(dsn_file)},
                    migrations=str(tmp_path / "plan"),
                    backup_dir=str(tmp_path / "backups"),
                )
            ],
        )
    )
    limits = allowed_limits(tmp_path).model_copy(
        update={"databases": [f"127.0.0.1:{postgres.port}/checkout"]}
    )
    assert plan_problems(plan, limits) == [
        f"phases[0].source: database 127.0.0.1:{postgres.port}/postgres is not in databases of "
        f"{WHERE} (a restore reconnects to it to recreate the target)"
    ]


def test_a_health_profile_is_checked_the_same_way() -> None:
    profile = HealthProfile.model_validate(
        profile_dict(
            checks=[
                {"name": "meta", "kind": "http", "url": "http://169.254.169.254/latest"},
                {
                    "name": "pods",
                    "kind": "kubernetes",
                    "namespace": "kube-system",
                    "deployments": ["dns"],
                },
            ],
            alerts={
                "receivers": [
                    {
                        "name": "chat",
                        "kind": "slack",
                        "url": "https://hooks.example.com/x",
                        "headers": {"Authorization": {"env": "SLACK_TOKEN"}},
                    }
                ]
            },
        )
    )
    problems = profile_problems(profile, WorkerLimits(), resolve=False)
    assert [line.split(":")[0] for line in problems] == [
        "prometheus.url",
        "checks[0].url",
        "checks[1].namespace",
        "alerts.receivers[0].headers.Authorization",
    ]


async def test_the_activity_admits_or_lists_every_problem(tmp_path: Path) -> None:
    request = AdmissionRequest(
        launch_id="launch-1", plan=LaunchPlan.model_validate(everything_plan(tmp_path))
    )
    refused = await ActivityEnvironment().run(
        AdmissionActivities(WorkerLimits()).admit_plan, request
    )
    assert len(refused.problems) == 13
    assert not refused.admitted

    fine = request.model_copy(
        update={"plan": LaunchPlan.model_validate(plan_dict(flag_file=tmp_path / "f.json"))}
    )
    admitted = await ActivityEnvironment().run(
        AdmissionActivities(session_limits()).admit_plan, fine
    )
    assert admitted.problems == []


# --- phasegate validate --limits ---------------------------------------------------------------


def write_plan(path: Path, plan: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def test_validate_checks_the_limits_it_is_given(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", everything_plan(tmp_path))
    limits = write_limits(tmp_path, secrets={"env": ["HOME"]})

    result = phasegate("validate", str(plan), "--limits", str(limits))

    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"{plan}: 12 problems"
    assert lines[1].strip().startswith("targets.prometheus.url: 169.254.169.254 is a link-local")
    assert not any("bearer_token" in line for line in lines)  # HOME is allowed now


def test_validate_without_limits_says_they_were_not_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PHASEGATE_WORKER_LIMITS")
    plan = write_plan(tmp_path / "plan.yaml", everything_plan(tmp_path))

    result = phasegate("validate", str(plan))

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{plan}: ok (checkout 2.0.0, 4 phases")
    assert "worker limits not checked: give --limits FILE or set PHASEGATE_WORKER_LIMITS" in (
        result.stderr
    )


def test_validate_reads_the_limits_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = write_plan(tmp_path / "plan.yaml", plan_dict(flag_file=tmp_path / "f.json"))
    limits = write_limits(tmp_path, files={"flags": [str(tmp_path / "elsewhere")]})
    monkeypatch.setenv("PHASEGATE_WORKER_LIMITS", str(limits))

    result = phasegate("validate", str(plan))

    assert result.exit_code == 2, result.output
    assert (
        f"targets.router.flag_file: {tmp_path / 'f.json'} is not inside a folder of files.flags"
        in (result.stderr)
    )


def test_validate_refuses_a_broken_limits_file(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", plan_dict(flag_file=tmp_path / "f.json"))
    limits = tmp_path / "limits.yaml"
    limits.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")

    result = phasegate("validate", str(plan), "--limits", str(limits))

    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"{limits} (the worker's limits): 1 problem",
        "  (file): is not UTF-8 text",
    ]


def test_validate_and_admission_agree_on_a_plan_file(tmp_path: Path) -> None:
    """Relative paths are made absolute the same way for both: against the plan's folder."""
    (tmp_path / "flags").mkdir()
    plan_file = write_plan(tmp_path / "plan.yaml", plan_dict(flag_file="flags/f.json"))
    limits_file = write_limits(
        tmp_path, files={"flags": ["other"]}, network={"private": ["127.0.0.1"]}
    )
    result = phasegate("validate", str(plan_file), "--limits", str(limits_file))
    expected = plan_problems(load_plan(plan_file), load_limits(limits_file))
    assert expected == [
        f"targets.router.flag_file: {tmp_path / 'flags' / 'f.json'} is not inside a folder of "
        f"files.flags in {WHERE}"
    ]
    assert [line.strip() for line in result.stderr.splitlines()[1:]] == expected


# --- a launch on the dev server --------------------------------------------------------------


async def activity_types(handle: WorkflowHandle[Any, Any]) -> list[str]:
    return [
        event.activity_task_scheduled_event_attributes.activity_type.name
        async for event in handle.fetch_history_events()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


async def test_a_launch_naming_a_secret_outside_the_limits_is_refused_before_anything(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    flag_file = tmp_path / "flags.json"
    with webhook_receiver() as receiver:
        plan = LaunchPlan.model_validate(
            plan_dict(
                flag_file=flag_file,
                notifications=[
                    {
                        "name": "ops",
                        "url": f"{receiver.url}/hook",
                        "headers": {"Authorization": {"env": "AWS_SECRET_ACCESS_KEY"}},
                    }
                ],
            )
        )
        async with running_worker(dev_env.client) as task_queue:
            handle = await start_launch(dev_env.client, plan, task_queue)
            final = await wait_for(dev_env, handle, lambda s: s.status != LaunchStatusValue.RUNNING)
            await handle.result()
        assert receiver.posts == []

    assert final.status == LaunchStatusValue.REFUSED
    assert final.reason == (
        "not started, nothing changed: notifications[0].headers.Authorization: environment "
        "variable AWS_SECRET_ACCESS_KEY is not one this worker may read: add it to secrets.env "
        f"in {WHERE}"
    )
    assert await activity_types(handle) == ["admit_plan"]
    assert not flag_file.exists()
