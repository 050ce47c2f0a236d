"""Plan admission: before a launch changes anything, the worker checks everything the plan
would make it touch against its own limits (`activities/limits.py`), and that every secret the
plan names can be read now. `phasegate validate --limits` runs the same checks.

Each problem is one `path: why` line, the path as the plan's author wrote it. No line holds a
secret's value: a URL or DSN given as a secret is judged by what it points at, and a DSN that
does not parse is not quoted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydantic import BaseModel
from temporalio import activity

from activities.errors import ConfigurationError
from activities.limits import IPAddress, WorkerLimits, url_origin
from activities.options import MINUTE, SECOND, activity_options
from activities.secrets import resolve_secret
from schemas.admission_messages import Admission, AdmissionRequest
from schemas.basics import SecretRef
from schemas.health_profile import HealthProfile
from schemas.migration_cutover_spec import MigrationCutoverPhase
from schemas.plan import LaunchPlan
from schemas.security_validation_spec import AccessRule

# Admission only reads; an attempt that fails unexpectedly is tried again before the launch
# is refused with its error.
ADMISSION_OPTIONS = activity_options(2 * MINUTE, attempts=3, first_retry=SECOND)
# A plan with more problems than this is shown the first ones and a count.
MAX_PROBLEMS = 50
# A restore recreates the target database from this one on the same server.
MAINTENANCE_DATABASE = "postgres"
# Fields naming files or folders the worker reads.
_READ_FIELDS = frozenset({"manifests", "migrations", "ca_file"})


@dataclass(frozen=True)
class _Node:
    path: str  # as the author wrote it: `phases[2].authentication[0].token`
    field: str  # the model field it is (or is an item of)
    value: object
    owner: BaseModel | None


def _walk(
    value: object, path: str = "", name: str = "", owner: BaseModel | None = None
) -> Iterator[_Node]:
    """Every value inside a plan or profile, models, list items and dict values included."""
    yield _Node(path, name, value, owner)
    if isinstance(value, SecretRef):
        return
    if isinstance(value, BaseModel):
        for child in type(value).model_fields:
            yield from _walk(
                getattr(value, child), f"{path}.{child}" if path else child, child, value
            )
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]", name, owner)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}", name, owner)


@dataclass
class _Checker:
    limits: WorkerLimits
    resolve: bool  # read secrets now (the worker) or only check they are allowed (validate)
    problems: list[str] = field(default_factory=list)
    _hosts: dict[tuple[str, int], list[IPAddress] | None] = field(default_factory=dict)

    def check(self, document: BaseModel) -> list[str]:
        for node in _walk(document):
            self._node(node)
        if len(self.problems) > MAX_PROBLEMS:
            hidden = len(self.problems) - MAX_PROBLEMS
            return [*self.problems[:MAX_PROBLEMS], f"(plan): {hidden} more problem(s) not shown"]
        return self.problems

    def _say(self, path: str, problem: str | None) -> None:
        if problem is not None:
            self.problems.append(f"{path}: {problem}")

    def _node(self, node: _Node) -> None:
        value, name = node.value, node.field
        if isinstance(value, SecretRef):
            secret = self._secret(node.path, value)
            if secret is None:
                return
            if name == "url":
                self._url(node.path, secret, shown="the URL in this secret")
            elif name in ("source", "target") and isinstance(node.owner, MigrationCutoverPhase):
                also = [MAINTENANCE_DATABASE] if value == node.owner.target_dsn else []
                self._say(node.path, self.limits.database_problem(secret, also=also))
            return
        if not isinstance(value, str):
            return
        if name == "url":
            self._url(node.path, value)
        elif name == "flag_file":
            self._say(node.path, self.limits.flag_file_problem(value))
        elif name in _READ_FIELDS:
            self._say(node.path, self.limits.read_problem(value))
        elif name == "backup_dir":
            self._say(node.path, self.limits.backup_problem(value))
        elif name == "namespace" and not isinstance(node.owner, AccessRule):
            self._say(node.path, self.limits.kubernetes.problem(value))

    def _secret(self, path: str, ref: SecretRef) -> str | None:
        """The secret's value when it is allowed and `resolve`; a problem line otherwise."""
        problem = self.limits.secret_problem(ref)
        if problem is not None:
            self._say(path, problem)
            return None
        if not self.resolve:
            return None
        try:
            return resolve_secret(ref, where=path, limits=self.limits)
        except ConfigurationError as err:
            self.problems.append(str(err))
            return None

    def _url(self, path: str, url: str, *, shown: str | None = None) -> None:
        network = self.limits.network
        try:
            host, port = url_origin(url)
        except ValueError as err:
            self._say(path, str(err) if shown is None else f"{shown} {err}")
            return
        problem = network.name_problem(host, shown=shown)
        if problem is not None:
            self._say(path, problem)
            return
        if (host, port) not in self._hosts:
            try:
                self._hosts[(host, port)] = network.resolve(host, port)
            except (OSError, UnicodeError, ValueError):
                # Not resolvable yet (a service the launch creates): the worker's HTTP client
                # checks the addresses when it connects.
                self._hosts[(host, port)] = None
        addresses = self._hosts[(host, port)]
        if addresses is not None:
            self._say(path, network.problem(host, addresses, shown=shown))


def plan_problems(plan: LaunchPlan, limits: WorkerLimits, *, resolve: bool = True) -> list[str]:
    """Everything in `plan` outside `limits`, one `path: why` line each; with `resolve`, also
    every secret that cannot be read now, and what URLs and DSNs given as secrets point at."""
    return _Checker(limits, resolve).check(plan)


def profile_problems(
    profile: HealthProfile, limits: WorkerLimits, *, resolve: bool = True
) -> list[str]:
    """`plan_problems` for a health profile."""
    return _Checker(limits, resolve).check(profile)


class AdmissionActivities:
    def __init__(self, limits: WorkerLimits) -> None:
        self._limits = limits

    @activity.defn(name="admit_plan")
    async def admit_plan(self, request: AdmissionRequest) -> Admission:
        """Every problem the plan has with this worker's limits; empty admits it. Runs on a
        thread: it reads secret files and resolves host names."""
        problems = await asyncio.to_thread(plan_problems, request.plan, self._limits)
        if problems:
            activity.logger.info(
                "launch %s refused: %d problem(s) with the worker's limits",
                request.launch_id,
                len(problems),
            )
        return Admission(problems=problems)
