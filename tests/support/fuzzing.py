"""Generated input for the fuzz tests: plans built from the plan schema's own fields, the same
plans broken the ways a careless or hostile author breaks them (as data, as YAML text and as
bytes), and random signal and update payloads; each run's seed is printed so a failure replays.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.strategies import DrawFn, SearchStrategy
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import Client, WorkflowHistory

from schemas.decision_messages import AbortRequest, DecisionRequest

Data = dict[str, Any]

SEED_VARIABLE = "PHASEGATE_FUZZ_SEED"

SHRINK_VARIABLE = "PHASEGATE_FUZZ_SHRINK"

# Shared by every fuzz test: no deadline (a shared 2-core machine), the blob that replays a
# failure, no example database (the printed seed replays a run; nothing is written to the
# tree). A failure is reported as found: shrinking it can take longer than the test may run,
# so it is done on request (PHASEGATE_FUZZ_SHRINK=1, with the seed of the failing run).
settings.register_profile(
    "phasegate-fuzz",
    deadline=None,
    print_blob=True,
    derandomize=False,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
    + ([Phase.shrink] if os.environ.get(SHRINK_VARIABLE) else []),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)
FUZZ = settings.get_profile("phasegate-fuzz")


def fuzz_seed() -> int:
    """This run's seed: `PHASEGATE_FUZZ_SEED` if set, else a fresh one; printed either way."""
    given_seed = os.environ.get(SEED_VARIABLE, "").strip()
    chosen = int(given_seed) if given_seed else random.SystemRandom().randrange(2**32)
    print(f"hypothesis seed: {chosen}; replay with {SEED_VARIABLE}={chosen}")
    return chosen


@contextmanager
def replayable(chosen: int) -> Iterator[None]:
    """Say how to replay the run on any failure raised inside."""
    try:
        yield
    except BaseException as err:
        err.add_note(
            f"hypothesis seed: {chosen}; replay with {SEED_VARIABLE}={chosen} "
            f"(and {SHRINK_VARIABLE}=1 for the smallest failing example)"
        )
        raise


def collect(strategy: SearchStrategy[Any], count: int, chosen: int) -> list[Any]:
    """`count` examples of `strategy`, drawn reproducibly from the seed `chosen`, for tests
    that use them outside Hypothesis (live launches, payloads sent to one running launch)."""
    drawn: list[Any] = []

    @seed(chosen)
    @settings(FUZZ, max_examples=count, phases=[Phase.generate])
    @given(strategy)
    def draw(example: Any) -> None:
        drawn.append(example)

    draw()
    return drawn


# --- valid plans, from the schema's fields ------------------------------------------------
# Strategies are made once: Hypothesis spends most of a plan's time drawing, not validating.

WORDS = ["checkout", "api", "web", "db", "canary", "edge", "ops", "pay", "search", "cart"]
names = st.builds(
    lambda word, number: f"{word}-{number}" if number else word,
    st.sampled_from(WORDS),
    st.sampled_from([0, 0, 1, 2, 7, 42]),
)
# The secret a test sets (its value must never be printed), one left unset, and names the
# test session's worker limits do not allow.
SECRET_ENV = "PHASEGATE_TEST_FUZZ_TOKEN"
env_names = st.sampled_from([SECRET_ENV, "PHASEGATE_TEST_FUZZ_UNSET", "HOME", "AWS_SECRET_KEY"])
secret_files = st.sampled_from(["/run/secrets/token", "secrets/hook-token", "/etc/phasegate/key"])
secret_refs = st.one_of(
    st.builds(lambda name: {"env": name}, env_names),
    st.builds(lambda path: {"file": path}, secret_files),
)
hosts = st.sampled_from(
    ["127.0.0.1:9", "hooks.example.com", "prometheus.example.com:9090", "[::1]:9", "10.0.0.7"]
)
_paths = st.sampled_from(["", "/", "/hook", "/api/v1/check?x=1"])
http_urls = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}{path}",
    st.sampled_from(["http", "https"]),
    hosts,
    _paths,
)
https_urls = st.builds(lambda host, path: f"https://{host}{path}", hosts, _paths)
# Where a URL may be a secret reference (webhooks, Prometheus), it sometimes is.
urls_or_secrets = st.one_of(http_urls, http_urls, secret_refs)
people = st.sampled_from(["alice", "bob", "carol", "group:release", "*"])
text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
flags = st.booleans()


def _spelled(seconds: float, form: int) -> Any:
    """`seconds` as a plan may write it: a number, `Ns`, `NmMs`, `Nms`."""
    whole = int(seconds)
    if form == 0:
        return round(seconds, 3)
    if form == 2 and whole >= 60:
        minutes, rest = divmod(whole, 60)
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if form == 3:
        return f"{int(seconds * 1000)}ms"
    return f"{whole}s"


def durations(low: float, high: float) -> SearchStrategy[Any]:
    """A duration in [low, high] seconds, as a plan spells it (`low` a whole second or more)."""
    return st.builds(_spelled, st.integers(int(low), int(high)).map(float), st.integers(0, 3))


pauses = durations(1, 3600)
short_waits = durations(1, 600)
gate_timeouts = durations(1, 7 * 86400)


def quorum(approvers: list[str], wanted: int) -> int:
    """At most as many approvals as the people `approvers` names (any number for a group)."""
    if any(person == "*" or person.startswith("group:") for person in approvers):
        return wanted
    return min(wanted, len(set(approvers)))


@st.composite
def gates(draw: DrawFn, *, shorthand: bool = True) -> Any:
    """A gate: `true` (the plan's defaults), or a spec overriding some of them."""
    if shorthand and draw(flags):
        return True
    spec: Data = {}
    approvers = draw(st.lists(people, min_size=1, max_size=3, unique=True))
    if draw(flags):
        spec["approvers"] = approvers
    if draw(flags):
        spec["timeout"] = draw(gate_timeouts)
    if draw(flags):
        spec["on_timeout"] = draw(st.sampled_from(["reject", "approve"]))
    if draw(flags):
        # Counted against the gate's own approvers or, without them, the plan's.
        spec["min_approvals"] = 1 if "approvers" not in spec else quorum(approvers, 2)
    if draw(flags):
        spec["description"] = draw(text)
    return spec


QUERIES = [
    'sum(rate(errors{variant="{{variant}}"}[1m]))',
    "histogram_quantile(0.99, rate(latency_bucket[5m]))",
    "vector(0)",
]
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def metrics(draw: DrawFn) -> Data:
    """An analysis: a query and one success condition, with some of its options."""
    condition = draw(st.sampled_from(["max", "min", "baseline"]))
    spec: Data = {
        "query": QUERIES[0] if condition == "baseline" else draw(st.sampled_from(QUERIES))
    }
    if condition == "baseline":
        direction = draw(st.sampled_from(["max_ratio", "min_ratio"]))
        spec["baseline"] = {
            direction: draw(st.floats(0.01, 100)),
            "tolerance": draw(st.floats(0, 1)),
        }
    else:
        spec[condition] = draw(finite)
    count = draw(st.integers(1, 10))
    if draw(flags):
        spec["count"] = count
        spec["failure_limit"] = draw(st.integers(0, count - 1))
    if draw(flags):
        spec["interval"] = draw(short_waits)
    if draw(flags):
        spec["initial_delay"] = draw(st.sampled_from([0, "0s", "2s", "1m"]))
    if draw(flags):
        spec["consecutive_error_limit"] = draw(st.integers(0, 5))
    return spec


@st.composite
def weights(draw: DrawFn, count: int, *, full: bool) -> list[float]:
    """`count` strictly increasing weights in (0, 100]: a full launch ends at 100, a soft one
    below it."""
    pool = st.one_of(st.integers(1, 99), st.integers(1, 999).map(lambda tenths: tenths / 10))
    wanted = count - 1 if full else count
    chosen = draw(st.lists(pool, min_size=wanted, max_size=wanted, unique_by=float))
    ordered: list[float] = sorted(chosen)
    return [*ordered, 100] if full else ordered


@st.composite
def exposure_phase(draw: DrawFn, name: str, kind: str, analyses: list[str]) -> Data:
    steps: list[Data] = []
    for weight in draw(weights(draw(st.integers(1, 4)), full=kind == "full_launch")):
        step: Data = {"weight": weight}
        if draw(flags):
            step["pause"] = draw(pauses)
        if draw(flags) and analyses:
            step["analysis"] = draw(st.lists(st.sampled_from(analyses), max_size=2, unique=True))
        if draw(st.integers(0, 3)) == 0:
            step["approval"] = draw(gates())
        steps.append(step)
    return {"name": name, "kind": kind, "steps": steps}


MANIFESTS = ["k8s/app.yaml", "/srv/k8s/service.yaml", "k8s/"]


@st.composite
def infra_setup_phase(draw: DrawFn, name: str, prometheus: bool) -> Data:
    spec: Data = {"name": name, "kind": "infra_setup", "namespace": draw(names)}
    manifests = draw(st.lists(st.sampled_from(MANIFESTS), max_size=2, unique=True))
    secret_names = draw(st.lists(names, max_size=2, unique=True))
    secrets = [
        {
            "name": secret,
            "data": {draw(st.sampled_from(["token", "password", "tls.key"])): draw(secret_refs)},
        }
        for secret in secret_names
    ]
    if manifests or not secrets:
        spec["manifests"] = manifests or MANIFESTS[:1]
    if secrets:
        spec["secrets"] = secrets
    if draw(flags):
        spec["rollout_timeout"] = draw(short_waits)
    if prometheus and draw(flags):
        spec["prometheus_jobs"] = draw(st.lists(names, min_size=1, max_size=2))
    return spec


@st.composite
def security_check(draw: DrawFn, kind: str, check_id: str) -> Data:
    check: Data = {"id": check_id, "severity": draw(st.sampled_from(["critical", "warning"]))}
    if kind == "tls":
        check["url"] = draw(https_urls)
    elif kind == "headers":
        check["url"] = draw(http_urls)
        check["csp_directives"] = draw(
            st.lists(st.sampled_from(["default-src", "frame-ancestors"]), max_size=2, unique=True)
        )
    elif kind == "authentication":
        check.update(url=draw(http_urls), token=draw(secret_refs))
    elif kind == "rate_limits":
        check.update(
            url=draw(http_urls), limit=draw(st.integers(1, 100)), margin=draw(st.integers(0, 10))
        )
    elif kind == "audit":
        check.update(url=draw(http_urls), query="sum(audit_events_total)", within="30s")
    elif kind == "authorization":
        verb = draw(st.sampled_from(["get", "list", "delete", "*"]))
        check.update(
            service_account=draw(names),
            namespace=draw(names),
            can=[{"verb": verb, "resource": "pods"}],
            cannot=[{"verb": verb, "resource": "secrets"}],
        )
    else:
        check.update(
            namespace=draw(names), required_secrets=draw(st.lists(names, max_size=2, unique=True))
        )
    return check


CHECK_KINDS = ["tls", "headers", "authentication", "rate_limits", "authorization", "secret_hygiene"]


@st.composite
def security_phase(draw: DrawFn, name: str, prometheus: bool) -> Data:
    kinds = [*CHECK_KINDS, "audit"] if prometheus else CHECK_KINDS
    chosen = draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=3, unique=True))
    spec: Data = {"name": name, "kind": "security_validation"}
    for number, kind in enumerate(chosen):
        spec[kind] = [draw(security_check(kind, f"{kind.replace('_', '-')}-{number}"))]
    if draw(flags):
        spec["ca_file"] = draw(st.sampled_from(["certs/ca.pem", "/etc/ssl/ca.pem"]))
    if draw(flags):
        waivers = draw(gates(shorthand=False))
        waivers.pop("on_timeout", None)
        spec["waivers"] = waivers
    return spec


@st.composite
def migration_phase(draw: DrawFn, name: str, analyses: list[str], flag_file: str) -> Data:
    spec: Data = {
        "name": name,
        "kind": "migration_cutover",
        "source": draw(secret_refs),
        "migrations": draw(st.sampled_from(["migrations/checkout", "/srv/migrations"])),
        "backup_dir": draw(st.sampled_from(["backups", "/var/backups/phasegate"])),
    }
    if draw(flags):
        spec["target"] = draw(secret_refs)
    cutover: Data = {}
    if draw(flags):
        cutover["flag"] = {"flag_file": flag_file, "flag_key": "checkout-schema"}
    if not cutover or draw(flags):
        cutover["sql"] = {"forward": "SELECT 1", "backward": "SELECT 2"}
    if draw(flags):
        cutover["gate"] = draw(gates())
    spec["cutover"] = cutover
    if draw(flags):
        spec["verify"] = {
            "tables": [{"table": "orders", "columns": ["id", "total"]}],
            "invariants": [{"name": "no-orphans", "query": "SELECT 1 WHERE false"}],
        }
    if draw(flags) and analyses:
        watched = draw(st.lists(st.sampled_from(analyses), min_size=1, max_size=2, unique=True))
        spec["watch"] = {"analysis": watched}
    return spec


@st.composite
def routers(draw: DrawFn, flag_file: str) -> Data:
    kind = draw(st.sampled_from(["flagd", "flagd", "kube_replicas", "nginx_ingress"]))
    if kind == "flagd":
        return {"kind": "flagd", "flag_file": flag_file, "flag_key": draw(names)}
    if kind == "kube_replicas":
        return {
            "kind": kind,
            "namespace": draw(names),
            "stable": draw(names),
            "images": {"app": "registry.example/app:2"},
        }
    return {
        "kind": kind,
        "namespace": draw(names),
        "ingress": draw(names),
        "canary_service": draw(names),
    }


EVENTS = ["launch_started", "gate_opened", "completed", "rolled_back", "compensation_failed"]
PHASE_KINDS = (
    "infra_setup",
    "security_validation",
    "soft_launch",
    "full_launch",
    "migration_cutover",
)


@st.composite
def valid_plans(
    draw: DrawFn,
    *,
    flag_file: str = "flags/flags.json",
    kinds: tuple[str, ...] = PHASE_KINDS,
    router: Data | None = None,
) -> Data:
    """A plan the schema accepts, using every section: phases of the given `kinds`, gates,
    analyses, notifications, secret references, URLs as secret references, routers."""
    prometheus = draw(flags)
    analyses = draw(st.lists(names, max_size=3, unique=True)) if prometheus else []
    targets: Data = {"router": router or draw(routers(flag_file))}
    if prometheus:
        targets["prometheus"] = {"url": draw(urls_or_secrets)}
        if draw(flags):
            targets["prometheus"]["bearer_token"] = draw(secret_refs)
    approvers = draw(st.lists(people, min_size=1, max_size=3, unique=True))
    approvals: Data = {
        "identity": draw(
            st.one_of(st.just("none"), st.builds(lambda h: {"issuer": f"https://{h}"}, hosts))
        ),
        "approvers": approvers,
    }
    if draw(flags):
        approvals["timeout"] = draw(gate_timeouts)
    if draw(flags):
        approvals["min_approvals"] = quorum(approvers, draw(st.integers(1, 3)))
    phases: list[Data] = []
    for name in draw(st.lists(names, min_size=1, max_size=4, unique=True)):
        kind = draw(st.sampled_from(kinds))
        if kind in ("soft_launch", "full_launch"):
            phase = draw(exposure_phase(name, kind, analyses))
        elif kind == "infra_setup":
            phase = draw(infra_setup_phase(name, prometheus))
        elif kind == "security_validation":
            phase = draw(security_phase(name, prometheus))
        else:
            phase = draw(migration_phase(name, analyses, flag_file))
        if draw(st.integers(0, 3)) == 0:
            phase["gates"] = {"before": draw(gates())}
        phases.append(phase)
    plan: Data = {
        "service": draw(names),
        "version": draw(st.sampled_from(["1.0.0", "2.0.0-rc1", "2026.12.1", "v3"])),
        "targets": targets,
        "approvals": approvals,
        "phases": phases,
    }
    if draw(flags):
        plan["description"] = draw(text)
    if analyses:
        plan["analysis"] = {name: draw(metrics()) for name in analyses}
    hooks = draw(st.lists(names, max_size=2, unique=True))
    if hooks:
        plan["notifications"] = [
            {
                "name": hook,
                "url": draw(urls_or_secrets),
                "headers": draw(
                    st.dictionaries(
                        st.sampled_from(["Authorization", "X-Token"]), secret_refs, max_size=1
                    )
                ),
                "events": draw(st.lists(st.sampled_from(EVENTS), min_size=1, unique=True)),
            }
            for hook in hooks
        ]
    if approvals["identity"] == "none":
        _without_groups(plan)
    return plan


def _without_groups(node: Any) -> None:
    """Groups need a proven identity: with `identity: none`, `*` stands in for each (it, too,
    allows any quorum)."""
    if isinstance(node, dict):
        if isinstance(node.get("approvers"), list):
            node["approvers"] = list(
                dict.fromkeys("*" if a.startswith("group:") else a for a in node["approvers"])
            )
        for value in node.values():
            _without_groups(value)
    elif isinstance(node, list):
        for item in node:
            _without_groups(item)


# --- broken plans: as data, as YAML text, as bytes ----------------------------------------

HOSTILE_STRINGS = [
    "99999999999d",
    "3000000d",
    "-3s",
    "-5",
    "1e400s",
    "0s",
    "0",
    "P99999999999Y",
    "P1000000D",
    "PT-5S",
    "1h-5m",
    ".nan",
    "nan",
    "inf",
    "",
    " ",
    "\x00",
    "\x1b[31m",
    "line\nbreak",
    "\u202egnp.exe",
    "{{variant}}",
    "${HOME}",
    "../../../../etc/passwd",
    "http://169.254.169.254/latest/meta-data/",
    "http://user:secret@127.0.0.1:9/hook",
    "postgresql://app:secret@db.example:5432/app",
]
HOSTILE_NUMBERS: list[Any] = [
    0,
    -1,
    -5,
    2**31,
    2**63,
    10**20,
    10**400,
    -(10**400),
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    -1e308,
    5e-324,
    -0.0,
]


def hostile_values() -> SearchStrategy[Any]:
    """What a field gets instead of what it should: the wrong type, special and huge numbers,
    absurd durations, long strings, containers."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from(HOSTILE_NUMBERS),
        st.sampled_from(HOSTILE_STRINGS),
        st.integers(),
        st.floats(),
        st.text(max_size=20),
    )
    return st.one_of(
        scalars,
        # Past the schema's string caps; the largest past the size cap a plan file may have.
        st.sampled_from([300, 5_000, 70_000, 600_000]).map(lambda size: "x" * size),
        st.lists(scalars, max_size=3),
        st.dictionaries(st.text(max_size=8), scalars, max_size=3),
    )


def _places(data: Any, budget: int = 2_000) -> list[tuple[Any, Any]]:
    """(container, key or index) of every value inside `data`, breadth first, at most `budget`."""
    found: list[tuple[Any, Any]] = []
    queue: list[Any] = [data]
    while queue and len(found) < budget:
        node = queue.pop(0)
        keys: list[Any] = list(node) if isinstance(node, dict) else list(range(len(node)))
        for key in keys:
            found.append((node, key))
            if isinstance(node[key], dict | list):
                queue.append(node[key])
    return found


def _laughs(depth: int) -> list[Any]:
    """A list of `depth` levels, each holding the one below nine times: 9**depth leaves when
    expanded, a few lines of YAML with anchors and aliases."""
    level: list[Any] = ["lol"]
    for _ in range(depth):
        level = [level] * 9
    return level


DURATION_FIELDS = frozenset(
    {"pause", "timeout", "interval", "initial_delay", "rollout_timeout", "targets_timeout"}
    | {"within", "max_duration", "expiry_warning", "hsts_min_max_age"}
)
ABSURD_DURATIONS: list[Any] = [
    "99999999999d",
    "3000000d",
    "-3s",
    -5,
    -3,
    0,
    "0s",
    "1e400s",
    "P99999999999Y",
    "P1000000D",
    "-PT5S",
    "PT0S",
    10**30,
    1e400,
    math.nan,
    "31d",
    "8d",
]
NUMBER_FIELDS = frozenset(
    {"weight", "max", "min", "max_ratio", "min_ratio", "tolerance", "count", "failure_limit"}
    | {"inconclusive_limit", "consecutive_error_limit", "min_approvals", "limit", "margin"}
    | {"status", "min_length", "min_entropy", "min_server_version"}
)
ABSURD_NUMBERS: list[Any] = [math.nan, math.inf, -math.inf, -1, 0, 0.0, 100.5, 1e308, 10**400]


# Fields no model has; the last ones would reach a terminal as control characters if a
# problem line quoted them as they are.
UNKNOWN_KEYS = ["colour", "Phases", "kind ", "__class__", "1", "\x1b[31mred", "two\nlines"]
DATA_BREAKS = (
    *("replace", "replace", "drop", "unknown", "rename", "repeat", "wrap", "laughs"),
    *("retime", "retime", "renumber", "renumber"),
)


@st.composite
def broken_data(draw: DrawFn, plan: Data) -> Data:
    """`plan` with one to three things broken: a value replaced or dropped, a duration or
    number made absurd, an unknown or misspelt field, an item repeated (up to past any cap),
    an anchor-and-alias bomb."""
    broken = copy.deepcopy(plan)
    for _ in range(draw(st.integers(1, 3))):
        places = _places(broken)
        if not places:
            break
        how = draw(st.sampled_from(DATA_BREAKS))
        fields = {"retime": DURATION_FIELDS, "renumber": NUMBER_FIELDS}.get(how)
        if fields is not None:
            places = [place for place in places if place[1] in fields] or places
        container, key = draw(st.sampled_from(places))
        if how == "retime":
            container[key] = draw(st.sampled_from(ABSURD_DURATIONS))
        elif how == "renumber":
            container[key] = draw(st.sampled_from(ABSURD_NUMBERS))
        elif how == "replace":
            container[key] = draw(hostile_values())
        elif how == "drop":
            del container[key]
        elif how == "unknown" and isinstance(container, dict):
            container[draw(st.sampled_from(UNKNOWN_KEYS))] = 1
        elif how == "rename" and isinstance(container, dict) and isinstance(key, str):
            container[key.upper() if key.islower() else key + "s"] = container.pop(key)
        elif how == "repeat" and isinstance(container[key], list) and container[key]:
            times = draw(st.sampled_from([1, 2, 70, 10_000]))
            last = container[key][-1]
            container[key] = container[key] + [copy.deepcopy(last) for _ in range(times)]
        elif how == "wrap":
            container[key] = draw(st.sampled_from([[container[key]], {"value": container[key]}]))
        elif how == "laughs":
            container[key] = _laughs(draw(st.integers(2, 8)))
    return broken


def plan_text(data: Any) -> str:
    return yaml.dump(
        data, Dumper=yaml.CSafeDumper, sort_keys=False, allow_unicode=True, width=1_000_000
    )


# YAML that is not data: tags PyYAML's safe loader refuses or turns into odd Python types.
YAML_TAGS = [
    '!!python/object/apply:os.system ["true"]',
    "!!binary aGVsbG8=",
    "!!set {a: null, b: null}",
    "!!timestamp 2001-12-14t21:59:43.10-05:00",
    "!!float .nan",
    "!!int 0x7fffffffffffffffffff",
    "!Custom value",
]


@st.composite
def broken_text(draw: DrawFn, plan: Data) -> str:
    """`plan` as YAML with its text broken: a key given twice, a tag, deep nesting, a number
    too long to read, anchors merged in, the text cut short, or not a mapping at all."""
    lines = plan_text(plan).splitlines()
    how = draw(
        st.sampled_from(
            ["duplicate", "duplicate", "tag", "nesting", "digits", "merge", "cut", "document"]
        )
    )
    where = draw(st.integers(0, max(len(lines) - 1, 0)))
    line = lines[where] if lines else ""
    key = re.match(r"^(\s*(?:- )?)([^:\s][^:]*):", line)
    if how == "duplicate" and key:
        lines.insert(where + 1, line.replace("- ", "  ", 1))
    elif how in ("tag", "nesting", "digits") and key:
        if how == "tag":
            value = draw(st.sampled_from(YAML_TAGS))
        elif how == "nesting":
            depth = draw(st.sampled_from([50, 500, 5_000]))
            value = "[" * depth + "]" * depth
        else:
            value = "1" + "0" * draw(st.sampled_from([50, 5_000]))
        lines[where] = f"{key.group(0)} {value}"
    elif how == "merge":
        lines = ["base: &base {kind: soft_launch, name: merged}", *lines]
        lines.append("extra: {<<: *base, steps: []}")
    elif how == "cut":
        return "\n".join(lines)[: draw(st.integers(0, max(len("\n".join(lines)) - 1, 0)))]
    elif how == "document":
        return draw(
            st.sampled_from(["", "~", "just words", "- a\n- b", "42", "---\na: 1\n---\nb: 2", "{"])
        )
    return "\n".join(lines) + "\n"


@st.composite
def broken_bytes(draw: DrawFn, plan: Data) -> bytes:
    """`plan` as a file that is not (only) UTF-8 text: invalid bytes, NUL, UTF-16, a binary
    blob, a byte-order mark, or a file past the size a plan may have."""
    raw = plan_text(plan).encode()
    at = draw(st.integers(0, len(raw)))
    how = draw(st.sampled_from(["invalid", "nul", "utf16", "binary", "bom", "huge"]))
    if how == "invalid":
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + raw[at:]
    if how == "nul":
        return raw[:at] + b"\x00" + raw[at:]
    if how == "utf16":
        return plan_text(plan).encode("utf-16")
    if how == "binary":
        return draw(st.binary(min_size=1, max_size=4_000))
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    return raw + b"# " + b"x" * draw(st.sampled_from([300_000, 3_000_000])) + b"\n"


@st.composite
def plan_files(draw: DrawFn, *, flag_file: str = "flags/flags.json") -> tuple[str, bytes]:
    """A plan file's bytes and how it was made: `valid`, or broken as `data`, `text` or
    `bytes`."""
    plan = draw(valid_plans(flag_file=flag_file))
    how = draw(st.sampled_from(["valid", "data", "data", "data", "text", "text", "bytes"]))
    if how == "valid":
        return how, plan_text(plan).encode()
    if how == "data":
        return how, plan_text(draw(broken_data(plan))).encode()
    if how == "text":
        return how, draw(broken_text(plan)).encode("utf-8", "surrogatepass")
    return how, draw(broken_bytes(plan))


# --- what a problem line must be ----------------------------------------------------------

WHOLE_DOCUMENT = re.compile(r"^\((yaml|file|plan)\):? \S")


def _key_texts(key: Any, first: bool) -> list[str]:
    """How a problem's path spells a mapping key: `name` (`.name` after the first), or
    `[1]` for a key that is a number."""
    spelled = [str(key) if first else f".{key}"]
    if isinstance(key, int):
        spelled.append(f"[{key}]")
    return spelled


def named_field(problem: str, data: Any) -> tuple[str, Any]:
    """Why `problem` is not one `path: message` line whose path names something in `data`
    (or one field below it: a required field left out), or "", with the value the path names
    (None for a field left out). `(yaml)`, `(file)` and `(plan)` stand for the whole
    document; a key cut short ends in `…`; `(the key)` names a mapping's key itself."""
    if any(ord(char) < 32 and char != "\t" for char in problem):
        return "has a line break or control character", None
    if WHOLE_DOCUMENT.match(problem):
        return "", data
    node, rest, first = data, problem, True
    while not rest.startswith(": "):
        step = re.match(r"\[(\d+)\]", rest)
        if step and isinstance(node, list) and int(step.group(1)) < len(node):
            node, rest, first = node[int(step.group(1))], rest[step.end() :], False
            continue
        if not first and rest.startswith(" (the key): "):
            rest = rest.removeprefix(" (the key)")
            continue
        found = _key_at(node, rest, first)
        if found is None:
            missing, colon, message = rest.partition(": ")
            segment = missing if first else missing.removeprefix(".")
            if not colon or not segment or "." in segment:
                return f"names {missing!r}, which is not in the plan", None
            return ("" if message.strip() else "has no message"), None
        key, length = found
        node, rest, first = node[key], rest[length:], False
    if first:
        return "does not start with a field path", None
    return ("" if rest[2:].strip() else "has no message"), node


def _key_at(node: Any, rest: str, first: bool) -> tuple[Any, int] | None:
    """The key of mapping `node` that `rest` starts with (the longest), and its length as
    spelled; a key longer than a path shows is cut and ends in `…`."""
    if not isinstance(node, dict):
        return None
    found: tuple[Any, int] | None = None
    for key in node:
        for spelled in _key_texts(key, first):
            cut = re.match(r"^(\.?[^.\[]*?)…", rest)
            ends = rest[len(spelled) : len(spelled) + 1]
            if rest.startswith(spelled) and ends in (".", "[", ":", " "):
                length = len(spelled)
            elif cut and spelled.startswith(cut.group(1)) and len(cut.group(1)) > 8:
                length = cut.end()
            else:
                continue
            if found is None or length > found[1]:
                found = (key, length)
    return found


def unnamed_field(problem: str, data: Any) -> str:
    """`named_field`'s reason alone: "" for a good problem line."""
    return named_field(problem, data)[0]


def read_back(raw: bytes) -> Any:
    """The plan data as a YAML reader sees `raw`, or None if it cannot be read (then only
    whole-document problems can be checked against it)."""
    try:
        return yaml.load(raw.decode("utf-8"), Loader=yaml.CSafeLoader)
    except (UnicodeDecodeError, yaml.YAMLError, ValueError, RecursionError):
        return None


# --- the hostile plans every run tries, whatever the seed draws ---------------------------


def _base_plan() -> Data:
    return {
        "service": "checkout",
        "version": "2.0.0",
        "targets": {
            "prometheus": {"url": "http://127.0.0.1:9090"},
            "router": {"kind": "flagd", "flag_file": "flags.json", "flag_key": "checkout"},
        },
        "approvals": {"identity": "none", "approvers": ["alice"], "timeout": "1h"},
        "analysis": {
            "errors": {"query": 'sum(errors{variant="{{variant}}"})', "max": 0.05, "count": 3}
        },
        "phases": [
            {
                "name": "soft",
                "kind": "soft_launch",
                "gates": {"before": {"approvers": ["bob"]}},
                "steps": [{"weight": 5, "pause": "1m", "analysis": ["errors"]}, {"weight": 20}],
            },
            {"name": "full", "kind": "full_launch", "steps": [{"weight": 100}]},
        ],
    }


def _changed(path: str, value: Any) -> bytes:
    """The base plan with the field at `path` (dots; numbers index lists) set to `value`."""
    plan = _base_plan()
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    node: Any = plan
    for part in parents:
        node = node[part]
    node[last] = value
    return plan_text(plan).encode()


def known_hostile_files() -> list[tuple[str, bytes]]:
    """(what, file) for plans every run must see refused, each with a problem naming its
    field: negative, absurd and non-finite values, bad weights, an empty approver list,
    duplicate keys, files that are not UTF-8 text, a billion laughs, a huge plan."""
    text = plan_text(_base_plan())
    laughs = "\n".join(
        [
            'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
            *(f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 9)),
            "notifications: *a8",
        ]
    )
    baseline_inf = {"query": "x{{variant}}", "baseline": {"max_ratio": math.inf}}
    twice = text.replace("version: 2.0.0\n", "version: 2.0.0\nversion: 3.0.0\n")
    many_steps = [{"weight": 100} for _ in range(10_000)]
    return [
        ("pause -5", _changed("phases.0.steps.0.pause", -5)),
        ("initial_delay -3", _changed("analysis.errors.initial_delay", -3)),
        ("max NaN", _changed("analysis.errors.max", math.nan)),
        ("max_ratio inf", _changed("analysis.errors", baseline_inf)),
        ("timeout 3000000d", _changed("approvals.timeout", "3000000d")),
        ("timeout 99999999999d", _changed("approvals.timeout", "99999999999d")),
        ("weight 0", _changed("phases.0.steps.0.weight", 0)),
        ("equal weights", _changed("phases.0.steps.1.weight", 5)),
        ("no approvers", _changed("phases.0.gates.before.approvers", [])),
        ("10,000 steps", _changed("phases.1.steps", many_steps)),
        ("duplicate key", twice.encode()),
        ("not UTF-8", text.encode("utf-16")),
        ("binary", bytes(range(256)) * 4),
        ("NUL byte", text.encode().replace(b"2.0.0", b"2.0\x000")),
        ("billion laughs", (text + laughs + "\n").encode()),
        ("5 MB", text.encode() + b"description: " + b"x" * 5_000_000 + b"\n"),
    ]


# --- signal and update payloads -----------------------------------------------------------

SIGNALS = (
    "approve",
    "reject",
    "abort",
    "retry_compensation",
    "skip_compensation",
    "keep_writes",
    "drop_writes",
    "phase_progress",
)
RELAY = "relay_decision"  # sent to the phase, not the launch
UPDATE = "decide"
HANDLERS = (*SIGNALS, RELAY, UPDATE)


def json_values(max_leaves: int = 12) -> SearchStrategy[Any]:
    """Any JSON value, NaN and infinities included."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=30),
        st.sampled_from(HOSTILE_STRINGS),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def nested(depth: int) -> Any:
    value: Any = "deep"
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


STAMPS = st.sampled_from(["2020-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "now", ""])


@functools.lru_cache
def _message_fields(gate: str, run: str, phase: str) -> dict[str, dict[str, SearchStrategy[Any]]]:
    """For each handler, the fields of its real message with plausible values (never a
    genuine approver's decision) and hostile ones."""
    claimed = st.one_of(st.sampled_from(["mallory", "", " ", "ALICE", "*", "root"]), text)
    gates_named = st.sampled_from([gate, f"{phase}.after", "launch", "", gate + " ", gate.upper()])
    ids = st.sampled_from(["id-1", "id-1", "", "x" * 200])
    proofs = st.sampled_from(["", "e30.e30.AAAA", "not-a-proof", "x" * 9_000])
    seals = st.sampled_from(["verified", "", "0" * 64, "x" * 200, "vérifié"])
    decision = {
        "gate": gates_named,
        "approver": claimed,
        "decision": st.sampled_from(["approve", "reject", "APPROVE", "maybe"]),
        "comment": text,
        "id": ids,
        "evidence": st.sampled_from(["", "ev-1", "ev-999"]),
        "proof": proofs,
    }
    compensation = {
        "compensation": st.sampled_from([f"{phase}.1", "", "nope"]),
        "by": claimed,
        "comment": text,
        "id": ids,
        "proof": proofs,
    }
    record = st.fixed_dictionaries(
        {
            "id": st.sampled_from([f"{phase}.1", "forged"]),
            "phase": st.just(phase),
            "activity": st.sampled_from(["restore_exposure", "delete_everything", ""]),
            "input": st.just({}),
            "description": text,
        }
    )
    verdict = st.fixed_dictionaries(
        {
            "gate": gates_named,
            "outcome": st.sampled_from(["approved", "rejected"]),
            "by": claimed,
            "at": STAMPS,
            "source": st.sampled_from(["signal", "timeout"]),
        }
    )
    return {
        "decision": decision,
        "abort": {
            "reason": st.sampled_from(["stop", "", "x" * 3_000]),
            # A named sender's abort is genuine with `identity: none`: only blank names here.
            "by": st.sampled_from(["", " ", "\t"]),
            "id": ids,
            "proof": proofs,
            "sent_at": STAMPS,
            "seal": seals,
        },
        "compensation": compensation,
        "report": {
            "phase": st.sampled_from([phase, "other", "x" * 200]),
            "seq": st.sampled_from([0, 1, 10**9, -1, 2**63]),
            "launch_run": st.sampled_from([run, "", "another-run"]),
            "status": st.sampled_from(["completed", "running", "waiting", "failed", "bogus"]),
            "step": st.sampled_from([0, 1, -1, 10**9]),
            "exposure": st.sampled_from([100.0, 0.0, -1.0, math.nan, math.inf]),
            "open_gate": st.none(),
            "decisions_from": st.sampled_from([0, 5, -1]),
            "decisions": st.lists(verdict, max_size=2),
            "compensations_from": st.sampled_from([0, 1, -1]),
            "compensations": st.lists(record, max_size=2),
            "refusals": st.just([]),
            "seal": seals,
        },
        "relay": {
            "gate": gates_named,
            "verb": st.sampled_from(["approve", "reject", "abstain"]),
            "launch_run": st.sampled_from([run, "", "another-run"]),
            "person": st.sampled_from(["alice", "mallory", ""]),
            "proof": proofs,
            "comment": text,
            "at": STAMPS,
            "source": st.sampled_from(["signal", "update", "timeout"]),
            "seal": seals,
        },
    }


MESSAGE_OF = {
    "approve": "decision",
    "reject": "decision",
    UPDATE: "decision",
    "abort": "abort",
    "retry_compensation": "compensation",
    "skip_compensation": "compensation",
    "keep_writes": "compensation",
    "drop_writes": "compensation",
    "phase_progress": "report",
    RELAY: "relay",
}


@st.composite
def payloads(draw: DrawFn, *, gate: str, run: str, phase: str) -> tuple[str, Any]:
    """(handler, payload): a look-alike of the handler's real message with forged or hostile
    fields, unknown fields and wrong types, or any JSON at all (deep, huge, NaN, null)."""
    handler = draw(st.sampled_from(HANDLERS))
    shape = draw(st.sampled_from(["lookalike"] * 5 + ["json", "huge", "deep"]))
    if shape == "json":
        return handler, draw(json_values())
    if shape == "huge":
        return handler, {"gate": gate, "approver": "x" * draw(st.sampled_from([10_000, 100_000]))}
    if shape == "deep":
        return handler, nested(draw(st.integers(20, 120)))
    fields = _message_fields(gate, run, phase)[MESSAGE_OF[handler]]
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=8, unique=True))
    payload: dict[str, Any] = {}
    for name in chosen:
        wrong_type = draw(st.integers(0, 5)) == 0
        payload[name] = draw(json_values(4)) if wrong_type else draw(fields[name])
    if draw(st.integers(0, 5)) == 0:
        payload[draw(st.sampled_from(["extra", "Gate", "__proto__", "", "seal "]))] = 1
    return handler, payload


# Sent to every handler in every run, whatever the seed draws: no message at all, and seals
# no worker could have made.
NOT_A_MESSAGE: list[Any] = [
    *(None, [], "", 0, math.nan, True, "approve", {}, {"gate": None}),
    *({"seal": "vérifié"}, {"seal": 7}, {"reason": "x", "seal": "verified"}),
]


def acts_for_real(handler: str, payload: Any, approvers: list[str]) -> bool:
    """Whether `payload` is a genuine request a launch with `identity: none` must act on: a
    decision by one of its approvers, or an abort by anyone who names themself. The fuzz
    payloads leave these out; everything else must be refused."""
    try:
        if handler in ("approve", "reject", UPDATE):
            request = DecisionRequest.model_validate(payload)
            return request.approver.strip() in approvers
        if handler == "abort":
            return bool(AbortRequest.model_validate(payload).by.strip())
    except (ValueError, TypeError):
        return False
    return False


# --- what a launch wrote ------------------------------------------------------------------


async def every_run(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """The history of every run of `workflow_id`, first to latest, through continue-as-new."""
    described = await client.get_workflow_handle(workflow_id).describe()
    run = described.raw_description.workflow_execution_info.first_run_id or described.run_id
    histories: list[WorkflowHistory] = []
    while run:
        history = await client.get_workflow_handle(workflow_id, run_id=run).fetch_history()
        histories.append(history)
        last = history.events[-1]
        continued = last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        attributes = last.workflow_execution_continued_as_new_event_attributes
        run = attributes.new_execution_run_id if continued else ""
    return histories


async def failed_workflow_tasks(client: Client, workflow_ids: list[str]) -> dict[str, list[str]]:
    """Why workflow tasks failed, in every run of each workflow, by workflow id: a task that
    fails in Phasegate's code is retried by the server for ever, so any at all is a code path
    that could hang a launch. Left out: the server's own refusal of a task that would have
    closed the workflow while a signal arrived (`UnhandledCommand`), which is retried at once
    with the signal in it."""
    failures: dict[str, list[str]] = {}
    for workflow_id in workflow_ids:
        failures[workflow_id] = [
            attributes.failure.message or WorkflowTaskFailedCause.Name(attributes.cause)
            for history in await every_run(client, workflow_id)
            for event in history.events
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
            for attributes in [event.workflow_task_failed_event_attributes]
            if attributes.cause
            != WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND
        ]
    return failures
