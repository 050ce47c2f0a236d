"""How well the two canary judges decide: detection, false rollbacks, time to detect.

    python -m benchmarks.judge                 # replay the committed recording (minutes)
    python -m benchmarks.judge --json          # the same figures as one JSON document
    python -m benchmarks.judge --record        # re-record benchmarks/data/judge-recording.json
    python -m benchmarks.judge --traffic 10    # as if the service had 10x the recorded load
    python -m benchmarks.judge --e2e 20        # confirm with real launches on the dev server

The recording is the demo service's own counters as Prometheus scraped them (requests, errors
and latency buckets per variant, once a scrape) under steady load, one regime after another:
healthy canaries and injected regressions at 1%, 5% and 50% exposure. Replay builds many
trials from it by block bootstrap (runs of consecutive scrapes, both variants together),
evaluates the example plan's queries on them as Prometheus does (`rate` over the query's
window, `histogram_quantile`), and judges the answers with the code the workflow runs:
`workflows.analysis.classify`, `record` and `judge` (the threshold judge: the MetricSpecs of
examples/plans/checkout.yaml; the statistical judge: the same measures with `compare`, through
`activities.judge.compare_samples`) and the background rounds' rule of
`workflows.continuous`. Figures and how to read them: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import math
import platform
import random
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import yaml
from temporalio.client import Client
from temporalio.worker import Worker

from activities.flags import FlagdFileRouter
from activities.judge import compare_samples
from activities.limits import FileLimits, NetworkLimits, WorkerLimits
from devstack.demo import FLAG_KEY, DemoStack, example_plan
from devstack.demo_service.app import DURATION_BUCKETS
from devstack.demo_service.load import MAX_RPS
from devstack.processes import (
    ManagedProcess,
    serve_demo,
    start_load,
    start_prometheus,
    start_temporal_dev_server,
    wait_for_first_scrape,
)
from schemas.analysis_spec import ContinuousAnalysis, MetricSpec
from schemas.launch_messages import LaunchStatusValue, MetricResult
from schemas.metrics_messages import MetricReading
from schemas.plan import LaunchPlan, load_plan
from schemas.targets import FlagdRouter
from starters import launches
from workers.client import connect
from workers.main import WORKFLOWS, activities
from workers.sealing import SealInterceptor, load_keys
from workers.settings import Settings
from workflows.analysis import Verdict, classify, judge, record

DATA = Path(__file__).resolve().parent / "data"
RECORDING = DATA / "judge-recording.json"
JUDGES = DATA / "judges.yaml"
FORMAT = 1
VARIANTS = ("canary", "stable")
# Load on the demo service while recording, and its own error rate on both paths: a
# regression "2x the error rate" is twice this, on the canary only.
RECORD_RPS = 200
BASE_ERROR_RATE = 0.01
SCRAPE_INTERVAL_S = 1
# After a change of weight or faults, before counting: the flag file is re-read every 200 ms.
SETTLE_S = 2.0
# The measurements a step's analysis takes that count as "within 3 analysis intervals".
DETECT_WITHIN = 3
# Background rounds after the onset that count as "within 2 background intervals".
DETECT_WITHIN_BACKGROUND = 2


@dataclass(frozen=True)
class Regime:
    """One stretch of the recording: the canary's weight and what is wrong with it."""

    name: str
    weight: float
    error_multiplier: float
    latency_ms: float
    seconds: int
    description: str

    @property
    def fault_error_rate(self) -> float:
        """The canary fault that makes its error rate `error_multiplier` × the base rate."""
        return (self.error_multiplier - 1) * BASE_ERROR_RATE / (1 - BASE_ERROR_RATE)


REGIMES = (
    Regime("healthy-5", 5, 1.0, 0, 120, "healthy canary at 5%"),
    Regime("errors-2x-5", 5, 2.0, 0, 120, "2x error rate at 5%"),
    Regime("latency-50ms-5", 5, 1.0, 50, 90, "+50 ms at 5%"),
    Regime("errors-1.5x-1", 1, 1.5, 0, 120, "1.5x error rate at 1%"),
    Regime("healthy-1", 1, 1.0, 0, 120, "healthy canary at 1%"),
    Regime("healthy-50", 50, 1.0, 0, 90, "healthy canary at 50% (the gate waits)"),
    Regime("errors-2x-50", 50, 2.0, 0, 90, "2x error rate at 50%, starting while the gate waits"),
)


# --- the recording ------------------------------------------------------------------------


@dataclass
class VariantCounts:
    """Per scrape, what one variant's counters gained since the scrape before."""

    requests: list[int]
    errors: list[int]
    # Per scrape, per latency bucket (not cumulative; the last is above the largest bound).
    buckets: list[list[int]]

    def __post_init__(self) -> None:
        if not len(self.requests) == len(self.errors) == len(self.buckets):
            raise ValueError("requests, errors and buckets must cover the same scrapes")

    def __len__(self) -> int:
        return len(self.requests)


@dataclass
class RecordedRegime:
    regime: Regime
    variants: dict[str, VariantCounts]
    # The judged queries as Prometheus answered them once a second (None: no data), by
    # metric and variant: what the recording is checked against.
    answers: dict[str, dict[str, list[float | None]]]

    def __len__(self) -> int:
        return min(len(counts) for counts in self.variants.values())


@dataclass
class Recording:
    bounds: list[float]  # the latency buckets' upper bounds, +Inf left out
    regimes: dict[str, RecordedRegime]
    about: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "about": self.about,
            "bounds": self.bounds,
            "regimes": {
                name: {
                    "regime": {
                        "weight": r.regime.weight,
                        "error_multiplier": r.regime.error_multiplier,
                        "latency_ms": r.regime.latency_ms,
                        "seconds": r.regime.seconds,
                        "description": r.regime.description,
                    },
                    "variants": {
                        variant: {
                            "requests": counts.requests,
                            "errors": counts.errors,
                            "buckets": counts.buckets,
                        }
                        for variant, counts in r.variants.items()
                    },
                    "answers": r.answers,
                }
                for name, r in self.regimes.items()
            },
        }


# A regime shorter than this leaves too few blocks to draw from.
MIN_SCRAPES = 30


class RecordingError(ValueError):
    """The recording file is missing or malformed; the message names where."""


def load_recording(path: Path = RECORDING) -> Recording:
    """The recording at `path`, checked: every count a non-negative integer, every variant
    covering the same scrapes, every bucket row as long as the bounds."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RecordingError(
            f"{path}: {err}; re-record with `python -m benchmarks.judge --record`"
        ) from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecordingError(f"{path}: not a format-{FORMAT} judge recording")
    bounds = data.get("bounds")
    if not (
        isinstance(bounds, list)
        and bounds
        and all(isinstance(b, int | float) for b in bounds)
        and bounds == sorted(bounds)
    ):
        raise RecordingError(f"{path}: bounds must be increasing numbers")
    regimes: dict[str, RecordedRegime] = {}
    for name, entry in _mapping(data.get("regimes"), f"{path}: regimes").items():
        where = f"{path}: regimes.{name}"
        entry = _mapping(entry, where)
        about = _mapping(entry.get("regime"), f"{where}.regime")
        try:
            regime = Regime(
                name=name,
                weight=float(about["weight"]),
                error_multiplier=float(about["error_multiplier"]),
                latency_ms=float(about["latency_ms"]),
                seconds=int(about["seconds"]),
                description=str(about["description"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise RecordingError(f"{where}.regime: missing or not a number: {err}") from None
        variants: dict[str, VariantCounts] = {}
        for variant in VARIANTS:
            raw = _mapping(
                _mapping(entry.get("variants"), f"{where}.variants").get(variant),
                f"{where}.variants.{variant}",
            )
            counts = VariantCounts(
                requests=_counts(raw.get("requests"), f"{where}.variants.{variant}.requests"),
                errors=_counts(raw.get("errors"), f"{where}.variants.{variant}.errors"),
                buckets=[
                    _counts(row, f"{where}.variants.{variant}.buckets[{i}]")
                    for i, row in enumerate(_list(raw.get("buckets"), f"{where}.buckets"))
                ],
            )
            if any(len(row) != len(bounds) + 1 for row in counts.buckets):
                raise RecordingError(
                    f"{where}.variants.{variant}.buckets: rows of {len(bounds) + 1}"
                )
            if not len(counts.requests) == len(counts.errors) == len(counts.buckets):
                raise RecordingError(f"{where}.variants.{variant}: series of unequal length")
            if any(e > r for e, r in zip(counts.errors, counts.requests, strict=True)):
                raise RecordingError(f"{where}.variants.{variant}: more errors than requests")
            if any(sum(row) != r for row, r in zip(counts.buckets, counts.requests, strict=True)):
                raise RecordingError(
                    f"{where}.variants.{variant}: buckets do not add up to requests"
                )
            variants[variant] = counts
        if len(variants["canary"]) != len(variants["stable"]):
            raise RecordingError(f"{where}: canary and stable cover different scrapes")
        if len(variants["canary"]) < MIN_SCRAPES:
            raise RecordingError(
                f"{where}: {len(variants['canary'])} scrapes, at least {MIN_SCRAPES}"
            )
        answers = {
            metric: {
                variant: _answers_list(values, f"{where}.answers.{metric}.{variant}")
                for variant, values in _mapping(by_variant, f"{where}.answers.{metric}").items()
            }
            for metric, by_variant in _mapping(entry.get("answers", {}), f"{where}.answers").items()
        }
        regimes[name] = RecordedRegime(regime, variants, answers)
    missing = sorted({regime.name for regime in REGIMES} - set(regimes))
    if missing:
        raise RecordingError(f"{path}: regimes: missing {', '.join(missing)}")
    return Recording(
        bounds=[float(b) for b in bounds], regimes=regimes, about=data.get("about", {})
    )


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecordingError(f"{where}: expected a mapping")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise RecordingError(f"{where}: expected a list")
    return value


def _answers_list(value: object, where: str) -> list[float | None]:
    items = _list(value, where)
    if not all(
        v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in items
    ):
        raise RecordingError(f"{where}: expected numbers or null")
    return [None if v is None else float(v) for v in items]


def _counts(value: object, where: str) -> list[int]:
    items = _list(value, where)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in items):
        raise RecordingError(f"{where}: expected non-negative integers")
    return items


# --- recording from the real demo service -----------------------------------------------


@contextlib.contextmanager
def recording_stack(workdir: Path, rps: float) -> Iterator[DemoStack]:
    """The demo service with its base error rate, under `rps` of load, scraped every second."""
    flag_file = workdir / "flags" / "checkout.json"
    flag_file.parent.mkdir(parents=True, exist_ok=True)
    router = FlagdRouter(flag_file=str(flag_file), flag_key=FLAG_KEY)
    FlagdFileRouter().set_weight(router, 0.0, "")
    started: list[ManagedProcess] = []
    try:
        service = serve_demo(
            "demo-service",
            ["--base-error-rate", str(BASE_ERROR_RATE)],
            flag_file=flag_file,
            flag_key=FLAG_KEY,
            workdir=workdir,
        )
        started.append(service)
        prometheus = start_prometheus(
            scrape_targets={"demo-service": [f"127.0.0.1:{service.port}"]},
            workdir=workdir / "prometheus",
            scrape_interval=f"{SCRAPE_INTERVAL_S}s",
        )
        started.append(prometheus)
        load = start_load(target=service.url, rps=rps, duration=3600, workdir=workdir)
        started.append(load)
        wait_for_first_scrape(prometheus)
        yield DemoStack(workdir, flag_file, service, prometheus, load)
    finally:
        for process in reversed(started):
            process.stop()


def _prometheus(stack: DemoStack, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{stack.prometheus.url}/api/v1/{path}", params=params, timeout=30, trust_env=False
    )
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def _raw_increments(
    stack: DemoStack, metric: str, labels: Sequence[str], seconds: int, at: float
) -> dict[tuple[str, ...], dict[float, int]]:
    """Per label set (summed over the others), the counter's gain at each scrape in the last
    `seconds` before `at`, from the raw samples."""
    series = _prometheus(stack, "query", {"query": f"{metric}[{seconds + 1}s]", "time": f"{at}"})
    gains: dict[tuple[str, ...], dict[float, int]] = {}
    for one in series:
        key = tuple(one["metric"].get(label, "") for label in labels)
        values = [(float(t), float(v)) for t, v in one["values"]]
        into = gains.setdefault(key, {})
        for (_, before), (t, after) in itertools.pairwise(values):
            into[t] = into.get(t, 0) + round(after - before if after >= before else after)
    return gains


def _answers(
    stack: DemoStack, specs: dict[str, MetricSpec], start: float, end: float
) -> dict[str, dict[str, list[float | None]]]:
    answers: dict[str, dict[str, list[float | None]]] = {}
    for name, spec in specs.items():
        answers[name] = {}
        for variant in VARIANTS:
            query = spec.query.replace("{{variant}}", variant)
            result = _prometheus(
                stack,
                "query_range",
                {"query": query, "start": f"{start}", "end": f"{end}", "step": "1s"},
            )
            by_time = {float(t): float(v) for t, v in result[0]["values"]} if result else {}
            steps = range(int(end - start) + 1)
            values = [by_time.get(start + s) for s in steps]
            answers[name][variant] = [
                None if v is None or not math.isfinite(v) else round(v, 6) for v in values
            ]
    return answers


def record_regime(
    stack: DemoStack, regime: Regime, bounds: list[float], specs: dict[str, MetricSpec]
) -> RecordedRegime:
    FlagdFileRouter().set_weight(stack.router, regime.weight, "judge-recording")
    stack.set_faults(error_rate=regime.fault_error_rate, latency_ms=int(regime.latency_ms))
    time.sleep(SETTLE_S)
    start = float(math.ceil(time.time()))
    time.sleep(start - time.time())
    time.sleep(regime.seconds + 2 * SCRAPE_INTERVAL_S)  # the last scrape of the span lands
    end = start + regime.seconds
    requests = _raw_increments(stack, "demo_requests_total", ["variant"], regime.seconds, end)
    errors = _raw_increments(stack, "demo_request_errors_total", ["variant"], regime.seconds, end)
    buckets = _raw_increments(
        stack, "demo_request_duration_seconds_bucket", ["variant", "le"], regime.seconds, end
    )
    variants: dict[str, VariantCounts] = {}
    for variant in VARIANTS:
        scrapes = sorted(requests.get((variant,), {}))
        by_bound = {float(le): gains for (v, le), gains in buckets.items() if v == variant}
        if sorted(by_bound) != [*bounds, math.inf]:
            raise RecordingError(f"{variant}: latency buckets {sorted(by_bound)}, not {bounds}")
        cumulative = [[by_bound[bound].get(t, 0) for bound in sorted(by_bound)] for t in scrapes]
        variants[variant] = VariantCounts(
            requests=[requests[(variant,)][t] for t in scrapes],
            errors=[errors.get((variant,), {}).get(t, 0) for t in scrapes],
            buckets=[[row[0]] + [b - a for a, b in itertools.pairwise(row)] for row in cumulative],
        )
    # Both variants come from the same scrapes; a counter first seen mid-span is cut off.
    length = min(len(counts) for counts in variants.values())
    for counts in variants.values():
        del counts.requests[length:], counts.errors[length:], counts.buckets[length:]
    return RecordedRegime(regime, variants, _answers(stack, specs, start, end))


def record_series(path: Path, rps: float) -> Recording:
    specs = threshold_specs()
    began = time.monotonic()
    bounds = [float(b) for b in DURATION_BUCKETS]
    regimes: dict[str, RecordedRegime] = {}
    with (
        tempfile.TemporaryDirectory(prefix="phasegate-judge-") as workdir,
        recording_stack(Path(workdir), rps) as stack,
    ):
        for regime in REGIMES:
            print(f"recording {regime.name} ({regime.seconds} s)", file=sys.stderr, flush=True)
            regimes[regime.name] = record_regime(stack, regime, bounds, specs)
    taken = time.monotonic() - began
    recording = Recording(
        bounds=bounds,
        regimes=regimes,
        about={
            "command": "python -m benchmarks.judge --record",
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "recording_took_s": round(taken, 1),
            "rps": rps,
            "base_error_rate": BASE_ERROR_RATE,
            "scrape_interval_s": SCRAPE_INTERVAL_S,
            "machine": machine(),
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recording.to_json(), separators=(",", ":")) + "\n")
    return recording


def machine() -> dict[str, Any]:
    import os

    return {"cpus": os.cpu_count(), "python": platform.python_version()}


# --- the judges' specs --------------------------------------------------------------------


def threshold_specs() -> dict[str, MetricSpec]:
    """The example plan's metrics, as its steps analyse them."""
    return dict(load_plan(example_plan()).analysis)


# --- evaluating the queries as Prometheus does ---------------------------------------------


@dataclass(frozen=True)
class QueryShape:
    """What a judged query computes from the demo's counters, and over how long a window."""

    kind: Literal["error_ratio", "quantile"]
    window_s: int
    quantile: float = 0.0


def shape_of(query: str) -> QueryShape:
    """The recorded counters answer two shapes of query: an error ratio and a latency
    quantile, each over one `rate` window (the example plan's two metrics)."""
    windows = set(re.findall(r"\[(\d+)s\]", query))
    if len(windows) != 1:
        raise ValueError(f"expected one rate window in seconds, like [10s], in {query!r}")
    window_s = int(windows.pop())
    found = re.search(r"histogram_quantile\(\s*([0-9.]+)", query)
    if found and "demo_request_duration_seconds_bucket" in query:
        return QueryShape("quantile", window_s, float(found.group(1)))
    if "demo_request_errors_total" in query and "demo_requests_total" in query:
        return QueryShape("error_ratio", window_s)
    raise ValueError(f"the recording cannot answer {query!r}: not an error ratio or a quantile")


def evaluate(shape: QueryShape, counts: VariantCounts, bounds: Sequence[float]) -> np.ndarray:
    """The query's answer after every scrape (NaN: no requests in its window).

    `rate(x[w])` at a scrape reads the samples in the last `w` seconds, one a scrape, so their
    gains over the last w/scrape - 1 scrapes; Prometheus extrapolates both sides of a ratio
    and every bucket of a quantile by the same factor, which cancels out.
    """
    span = max(1, shape.window_s // SCRAPE_INTERVAL_S - 1)
    if shape.kind == "error_ratio":
        requests = _window_sums(np.asarray(counts.requests, dtype=float), span)
        errors = _window_sums(np.asarray(counts.errors, dtype=float), span)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio: np.ndarray = np.where(requests > 0, errors / requests, np.nan)
        return ratio
    per_bucket = _window_sums(np.asarray(counts.buckets, dtype=float), span)
    return histogram_quantile(shape.quantile, np.cumsum(per_bucket, axis=1), bounds)


def _window_sums(values: np.ndarray, span: int) -> np.ndarray:
    """For each index i, the sum of values[i - span + 1 .. i] (fewer at the start)."""
    total = np.cumsum(values, axis=0)
    shifted = np.zeros_like(total)
    shifted[span:] = total[:-span]
    sums: np.ndarray = total - shifted
    return sums


def histogram_quantile(q: float, cumulative: np.ndarray, bounds: Sequence[float]) -> np.ndarray:
    """Prometheus' `histogram_quantile` for each row of cumulative bucket counts (the last
    column is the +Inf bucket): linear within the bucket the rank falls in, the largest
    finite bound when it falls above it, NaN without observations."""
    upper = np.asarray(bounds, dtype=float)
    observations = cumulative[:, -1]
    rank = q * observations
    finite = cumulative[:, :-1]
    # The first finite bucket holding the rank; len(bounds) when none does (the +Inf bucket).
    reached = finite >= rank[:, None]
    index = np.where(reached.any(axis=1), reached.argmax(axis=1), len(upper))
    inside = np.minimum(index, len(upper) - 1)
    below = np.where(index > 0, finite[np.arange(len(index)), np.maximum(inside - 1, 0)], 0.0)
    start = np.where(index > 0, upper[np.maximum(inside - 1, 0)], 0.0)
    count = finite[np.arange(len(index)), inside] - below
    with np.errstate(divide="ignore", invalid="ignore"):
        value = start + (upper[inside] - start) * (rank - below) / count
    value = np.where(index >= len(upper), upper[-1], value)
    answer: np.ndarray = np.where(observations > 0, value, np.nan)
    return answer


# --- trials -------------------------------------------------------------------------------


def bootstrap(
    regime: RecordedRegime, length: int, rng: random.Random, block: int, traffic: int = 1
) -> dict[str, VariantCounts]:
    """`length` scrapes of both variants drawn from `regime` in blocks of `block` consecutive
    scrapes, the same scrapes for both (what happens to the one happens beside the other).

    With `traffic` > 1, that many independent draws are added up: the same service under
    `traffic` times the recorded load, every request as the recorded ones behave.
    """
    width = len(regime.variants["canary"].buckets[0])
    drawn = {variant: silent(length, width) for variant in regime.variants}
    last = len(regime) - block
    for _ in range(traffic):
        picked: list[int] = []
        while len(picked) < length:
            first = rng.randint(0, last)
            picked.extend(range(first, first + block))
        del picked[length:]
        for variant, counts in regime.variants.items():
            into = drawn[variant]
            for position, i in enumerate(picked):
                into.requests[position] += counts.requests[i]
                into.errors[position] += counts.errors[i]
                into.buckets[position] = [
                    a + b for a, b in zip(into.buckets[position], counts.buckets[i], strict=True)
                ]
    return drawn


def silent(length: int, buckets: int) -> VariantCounts:
    """A variant nobody is routed to."""
    return VariantCounts([0] * length, [0] * length, [[0] * buckets for _ in range(length)])


def joined(*parts: VariantCounts) -> VariantCounts:
    return VariantCounts(
        requests=[v for part in parts for v in part.requests],
        errors=[v for part in parts for v in part.errors],
        buckets=[v for part in parts for v in part.buckets],
    )


@dataclass
class Timeline:
    """Both variants' answers to each judged query after every scrape of one trial."""

    answers: dict[str, dict[str, np.ndarray]]

    @classmethod
    def of(
        cls,
        specs: dict[str, MetricSpec],
        variants: dict[str, VariantCounts],
        bounds: Sequence[float],
    ) -> Timeline:
        return cls(
            {
                name: {
                    variant: evaluate(shape_of(spec.query), counts, bounds)
                    for variant, counts in variants.items()
                }
                for name, spec in specs.items()
            }
        )

    def reading(self, name: str, spec: MetricSpec, at: int) -> MetricReading:
        """What `query_metric` answers after scrape `at`: one value per variant, or for a
        `compare` spec each variant's samples over its window, judged."""
        canary, stable = self.answers[name]["canary"], self.answers[name]["stable"]
        if spec.compare is None:
            return MetricReading(
                value=_finite_or_none(canary[at]),
                baseline=_finite_or_none(stable[at]) if spec.baseline is not None else None,
            )
        step = max(1, round(spec.compare.step.total_seconds() / SCRAPE_INTERVAL_S))
        picked = [i for i in range(at - (spec.compare.points - 1) * step, at + 1, step) if i >= 0]
        comparison = compare_samples(
            spec.compare, [float(canary[i]) for i in picked], [float(stable[i]) for i in picked]
        )
        return MetricReading(
            value=comparison.canary_median, baseline=comparison.stable_median, comparison=comparison
        )


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _seconds(delta: timedelta) -> int:
    return round(delta.total_seconds() / SCRAPE_INTERVAL_S)


def lookback(specs: dict[str, MetricSpec]) -> int:
    """Scrapes of history the specs' readings look at."""
    return max(
        shape_of(spec.query).window_s
        + (_seconds(spec.compare.window) if spec.compare is not None else 0)
        for spec in specs.values()
    )


@dataclass(frozen=True)
class StepOutcome:
    verdict: Verdict
    # Seconds from the exposure change to the failing measurement, and its number (1 = first).
    detected_s: float | None = None
    measurement: int | None = None


def step_analysis(specs: dict[str, MetricSpec], timeline: Timeline, exposed_at: int) -> StepOutcome:
    """A step's analysis as `run_analysis` runs it: every metric on its own schedule, each
    measurement classified, recorded and judged, all stopped at the first failure."""
    schedule = sorted(
        (_seconds(spec.initial_delay) + k * _seconds(spec.interval), name, k)
        for name, spec in specs.items()
        for k in range(spec.count)
    )
    results = {name: MetricResult(phase="bench", step=1, metric=name) for name in specs}
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for offset, name, k in schedule:
        spec, result = specs[name], results[name]
        if result.verdict != "running":
            continue
        reading = timeline.reading(name, spec, exposed_at + offset)
        record(result, classify(spec, reading, at + timedelta(seconds=offset)))
        verdict = judge(spec, result, finished=k + 1 == spec.count)
        if verdict is not None:
            result.verdict = verdict
        if verdict == "failed":
            return StepOutcome("failed", float(offset * SCRAPE_INTERVAL_S), k + 1)
    verdicts = {result.verdict for result in results.values()}
    return StepOutcome("inconclusive" if "inconclusive" in verdicts else "successful")


def background_rounds(
    specs: dict[str, MetricSpec],
    background: ContinuousAnalysis,
    timeline: Timeline,
    rounds: Sequence[int],
) -> int | None:
    """The first round (a scrape index) at which background analysis asks for a rollback,
    by the rule of `workflows.continuous`: a metric failing more than `failure_limit` times."""
    results = {name: MetricResult(phase="background", step=0, metric=name) for name in specs}
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for index in rounds:
        for name, spec in specs.items():
            reading = timeline.reading(name, spec, index)
            record(results[name], classify(spec, reading, at + timedelta(seconds=index)))
        if any(result.failures > background.failure_limit for result in results.values()):
            return index
    return None


def first_failure(
    specs: dict[str, MetricSpec], timeline: Timeline, rounds: Sequence[int]
) -> list[bool]:
    """For each round, whether any metric's measurement alone would fail it."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        any(
            classify(spec, timeline.reading(name, spec, index), at).outcome == "failure"
            for name, spec in specs.items()
        )
        for index in rounds
    ]


# --- the figures --------------------------------------------------------------------------

Judges = dict[str, dict[str, MetricSpec]]


def judges(path: Path = JUDGES) -> tuple[Judges, ContinuousAnalysis]:
    """The two judges' MetricSpecs by metric, and the background analysis settings."""
    threshold = threshold_specs()
    config = yaml.safe_load(path.read_text())
    statistical: dict[str, MetricSpec] = {}
    for name, fields in config["statistical"].items():
        base = threshold[name].model_dump(exclude={"max", "min", "baseline"}, exclude_unset=True)
        statistical[name] = MetricSpec.model_validate({**base, **fields})
    return (
        {"threshold": threshold, "statistical": statistical},
        ContinuousAnalysis.model_validate(config["background"]),
    )


def is_regression(regime: Regime) -> bool:
    return regime.error_multiplier > 1 or regime.latency_ms > 0


@dataclass
class StepFigures:
    trials: int = 0
    rolled_back: int = 0
    inconclusive: int = 0
    caught_in_time: int = 0
    measurements: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, outcome: StepOutcome) -> None:
        self.trials += 1
        if outcome.verdict == "failed":
            self.rolled_back += 1
            assert outcome.measurement is not None
            assert outcome.detected_s is not None
            self.measurements.append(outcome.measurement)
            self.seconds.append(outcome.detected_s)
            if outcome.measurement <= DETECT_WITHIN:
                self.caught_in_time += 1
        elif outcome.verdict == "inconclusive":
            self.inconclusive += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "rolled_back": self.rolled_back,
            "rolled_back_rate": _rate(self.rolled_back, self.trials),
            "caught_within_3": self.caught_in_time,
            "caught_within_3_rate": _rate(self.caught_in_time, self.trials),
            "inconclusive_rate": _rate(self.inconclusive, self.trials),
            "median_measurements_to_detect": _median(self.measurements),
            "median_seconds_to_detect": _median(self.seconds),
        }


def _rate(count: int, trials: int) -> dict[str, float]:
    """The share with its 95% Wilson interval."""
    if trials == 0:
        return {"share": math.nan, "low": math.nan, "high": math.nan}
    z = 1.959964
    share = count / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    half /= 1 + z * z / trials
    return {
        "share": round(share, 4),
        "low": round(max(0.0, centre - half), 4),
        "high": round(min(1.0, centre + half), 4),
    }


def _median(values: Sequence[float]) -> float | None:
    return round(float(statistics.median(values)), 2) if values else None


def step_figures(
    recording: Recording,
    specs: dict[str, MetricSpec],
    regime: RecordedRegime,
    trials: int,
    rng: random.Random,
    block: int,
    traffic: int = 1,
) -> StepFigures:
    """Trials of a step that sets the canary's weight to the regime's: nobody on the canary
    before the change, the regime's scrapes after it."""
    before = lookback(specs) + 2
    after = (
        max(
            _seconds(spec.initial_delay) + (spec.count - 1) * _seconds(spec.interval)
            for spec in specs.values()
        )
        + 1
    )
    width = len(recording.bounds) + 1
    figures = StepFigures()
    for _ in range(trials):
        history = bootstrap(regime, before, rng, block, traffic)
        exposed = bootstrap(regime, after, rng, block, traffic)
        variants = {
            "canary": joined(silent(before, width), exposed["canary"]),
            "stable": joined(history["stable"], exposed["stable"]),
        }
        timeline = Timeline.of(specs, variants, recording.bounds)
        figures.add(step_analysis(specs, timeline, exposed_at=before - 1))
    return figures


@dataclass
class BackgroundFigures:
    trials: int = 0
    before_onset: int = 0
    caught_in_time: int = 0
    caught: int = 0
    rounds: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "rolled_back_before_onset_rate": _rate(self.before_onset, self.trials),
            "caught_within_2_rate": _rate(self.caught_in_time, self.trials),
            "caught_within_6_rate": _rate(self.caught, self.trials),
            "median_rounds_to_detect": _median(self.rounds),
            "median_seconds_to_detect": _median(self.seconds),
        }


BACKGROUND_ROUNDS_BEFORE = 3
BACKGROUND_ROUNDS_AFTER = 6


def background_figures(
    recording: Recording,
    specs: dict[str, MetricSpec],
    background: ContinuousAnalysis,
    healthy: RecordedRegime,
    faulty: RecordedRegime,
    trials: int,
    rng: random.Random,
    block: int,
    traffic: int = 1,
) -> BackgroundFigures:
    """Background rounds while a gate waits at the regimes' weight: healthy, then the
    regression starts between two rounds (at a random point of the interval)."""
    every = _seconds(background.interval)
    before = lookback(specs) + (BACKGROUND_ROUNDS_BEFORE + 1) * every
    after = BACKGROUND_ROUNDS_AFTER * every + 1
    figures = BackgroundFigures()
    for _ in range(trials):
        first = bootstrap(healthy, before, rng, block, traffic)
        second = bootstrap(faulty, after, rng, block, traffic)
        variants = {v: joined(first[v], second[v]) for v in VARIANTS}
        timeline = Timeline.of(specs, variants, recording.bounds)
        onset = before - 1  # the last healthy scrape; the regression's requests come after it
        phase = rng.randrange(1, every + 1)  # seconds from the onset to the next round
        rounds = [
            onset + phase + j * every
            for j in range(-BACKGROUND_ROUNDS_BEFORE, BACKGROUND_ROUNDS_AFTER)
        ]
        figures.trials += 1
        failed_at = background_rounds(specs, background, timeline, rounds)
        if failed_at is None:
            continue
        if failed_at <= onset:
            figures.before_onset += 1
            continue
        after_rounds = rounds.index(failed_at) - BACKGROUND_ROUNDS_BEFORE + 1
        delay = (failed_at - onset) * SCRAPE_INTERVAL_S
        figures.caught += 1
        figures.rounds.append(after_rounds)
        figures.seconds.append(delay)
        if delay <= DETECT_WITHIN_BACKGROUND * every * SCRAPE_INTERVAL_S:
            figures.caught_in_time += 1
    return figures


def quiet_rounds(
    recording: Recording,
    specs: dict[str, MetricSpec],
    background: ContinuousAnalysis,
    regime: RecordedRegime,
    rounds: int,
    rng: random.Random,
    block: int,
    traffic: int = 1,
) -> dict[str, Any]:
    """Background rounds on a healthy canary: how often one round alone would fail, and so
    how long a launch waits at a gate before a false rollback (failure_limit 0)."""
    every = _seconds(background.interval)
    per_timeline = 50
    length = lookback(specs) + per_timeline * every + 1
    failed = 0
    done = 0
    while done < rounds:
        variants = bootstrap(regime, length, rng, block, traffic)
        timeline = Timeline.of(specs, variants, recording.bounds)
        indices = [lookback(specs) + j * every for j in range(per_timeline)]
        outcomes = first_failure(specs, timeline, indices)
        failed += sum(outcomes)
        done += len(outcomes)
    share = failed / done
    seconds = every * SCRAPE_INTERVAL_S
    return {
        "rounds": done,
        "failing_round_rate": _rate(failed, done),
        "expected_minutes_to_false_rollback": (
            round(seconds / share / 60, 1) if share > 0 else None
        ),
    }


def replay(
    recording: Recording, trials: int, seed: int, block: int = 10, traffic: int = 1
) -> dict[str, Any]:
    """Every figure, from `trials` bootstrap trials per scenario and judge, at `traffic`
    times the recorded load."""
    specs_by_judge, background = judges()
    rng = random.Random(seed)
    began = time.monotonic()
    steps: dict[str, dict[str, Any]] = {}
    for name, regime in recording.regimes.items():
        steps[name] = {
            "description": regime.regime.description,
            "weight": regime.regime.weight,
            "regression": is_regression(regime.regime),
            "requests_per_s": {
                v: round(traffic * sum(c.requests) / len(c) / SCRAPE_INTERVAL_S, 1)
                for v, c in regime.variants.items()
            },
            "judges": {
                judge_name: step_figures(
                    recording, specs, regime, trials, rng, block, traffic
                ).as_dict()
                for judge_name, specs in specs_by_judge.items()
            },
        }
    gate = {
        judge_name: background_figures(
            recording,
            specs,
            background,
            recording.regimes["healthy-50"],
            recording.regimes["errors-2x-50"],
            trials,
            rng,
            block,
            traffic,
        ).as_dict()
        for judge_name, specs in specs_by_judge.items()
    }
    quiet = {
        regime: {
            judge_name: quiet_rounds(
                recording, specs, background, recording.regimes[regime], trials, rng, block, traffic
            )
            for judge_name, specs in specs_by_judge.items()
        }
        for regime in ("healthy-5", "healthy-50")
    }
    figures = {
        "recording": recording.about,
        "trials_per_scenario": trials,
        "seed": seed,
        "block_scrapes": block,
        "traffic_multiplier": traffic,
        "background": background.model_dump(mode="json"),
        "step_analysis": steps,
        "during_gate": gate,
        "background_on_healthy": quiet,
        "replay_took_s": round(time.monotonic() - began, 1),
    }
    figures["targets"] = targets(figures)
    return figures


def targets(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's three targets, per judge: the measured share and whether it is met."""
    steps = figures["step_analysis"]
    healthy = [name for name, s in steps.items() if not s["regression"]]
    met: dict[str, dict[str, Any]] = {}
    for judge_name in ("threshold", "statistical"):
        caught = steps["errors-2x-5"]["judges"][judge_name]["caught_within_3_rate"]["share"]
        false = max(steps[n]["judges"][judge_name]["rolled_back_rate"]["share"] for n in healthy)
        gate = figures["during_gate"][judge_name]["caught_within_2_rate"]["share"]
        met[judge_name] = {
            "2x errors at 5% caught within 3 intervals (>= 95%)": [caught, caught >= 0.95],
            "healthy canaries rolled back, worst scenario (<= 1%)": [false, false <= 0.01],
            "during-gate regression caught within 2 background intervals (>= 95%)": [
                gate,
                gate >= 0.95,
            ],
        }
    return met


def table(figures: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    lines = [
        "| scenario | canary / stable req/s | judge | trials | rolled back | caught within 3 "
        "| inconclusive | median to detect |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for scenario in figures["step_analysis"].values():
        rps = scenario["requests_per_s"]
        for judge_name, f in scenario["judges"].items():
            caught = _pct(f["caught_within_3_rate"]) if scenario["regression"] else ""
            detect = (
                f"{f['median_measurements_to_detect']:g} meas. / {f['median_seconds_to_detect']:g} s"
                if f["median_seconds_to_detect"] is not None
                else ""
            )
            lines.append(
                f"| {scenario['description']} | {rps['canary']:g} / {rps['stable']:g} "
                f"| {judge_name} | {f['trials']} | {_pct(f['rolled_back_rate'])} | {caught} "
                f"| {_pct(f['inconclusive_rate'])} | {detect} |"
            )
    lines += [
        "",
        "| regression starting while the 50% gate waits | trials | rolled back before it "
        "| caught within 2 rounds | within 6 | median to detect |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for judge_name, f in figures["during_gate"].items():
        detect = (
            f"{f['median_rounds_to_detect']:g} rounds / {f['median_seconds_to_detect']:g} s"
            if f["median_seconds_to_detect"] is not None
            else ""
        )
        lines.append(
            f"| {judge_name} | {f['trials']} | {_pct(f['rolled_back_before_onset_rate'])} "
            f"| {_pct(f['caught_within_2_rate'])} | {_pct(f['caught_within_6_rate'])} | {detect} |"
        )
    lines += [
        "",
        "| background rounds on a healthy canary | judge | rounds | rounds failing "
        "| minutes to a false rollback |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for regime, by_judge in figures["background_on_healthy"].items():
        for judge_name, f in by_judge.items():
            minutes = f["expected_minutes_to_false_rollback"]
            lines.append(
                f"| {regime} | {judge_name} | {f['rounds']} | {_pct(f['failing_round_rate'])} "
                f"| {'never seen' if minutes is None else minutes} |"
            )
    lines += ["", "| target | threshold | statistical |", "| --- | --- | --- |"]
    by_target: dict[str, list[str]] = {}
    for judge_name in ("threshold", "statistical"):
        for target, (share, ok) in figures["targets"][judge_name].items():
            by_target.setdefault(target, []).append(
                f"{100 * share:.1f}% {'met' if ok else 'missed'}"
            )
    lines += [f"| {target} | {' | '.join(cells)} |" for target, cells in by_target.items()]
    return "\n".join(lines)


def _pct(rate: dict[str, float]) -> str:
    return f"{100 * rate['share']:.1f}% ({100 * rate['low']:.1f} to {100 * rate['high']:.1f})"


# --- real launches ------------------------------------------------------------------------

E2E_TASK_QUEUE = "phasegate-judge-bench"
E2E_WEIGHT = 5
E2E_APPROVER = "release-manager"
# A launch that has not ended by then is stuck, not slow.
E2E_LAUNCH_TIMEOUT_S = 180.0


def e2e_plan(stack: DemoStack, specs: dict[str, MetricSpec]) -> LaunchPlan:
    """The example plan cut to one step: the canary at 5%, analysed by `specs`."""
    data = stack.plan_for(load_plan(example_plan())).model_dump(mode="json")
    data["analysis"] = {name: spec.model_dump(mode="json") for name, spec in specs.items()}
    data["phases"] = [
        {
            "name": "soft-launch",
            "kind": "soft_launch",
            "steps": [{"weight": E2E_WEIGHT, "analysis": list(specs)}],
        }
    ]
    return LaunchPlan.model_validate(data)


# What the canary does in each real launch, in turn: healthy, then each regression at 5%.
E2E_SCENARIOS = ("healthy-5", "errors-2x-5", "latency-50ms-5")


@dataclass
class E2ERun:
    judge: str
    scenario: str
    outcome: Literal["rolled_back", "completed", "inconclusive"]
    # Seconds from the flag file giving the canary its weight to the flag file back at 0.
    detected_s: float | None
    took_s: float


@dataclass
class ExposureTimes:
    """When the flag file first gave the canary its weight, and when it was back at 0."""

    exposed: float | None = None
    restored: float | None = None


async def watch_exposure(stack: DemoStack, times: ExposureTimes) -> None:
    """Read the flag file every 20 ms until the canary has had its weight and lost it."""
    flags = FlagdFileRouter()
    while times.restored is None:
        weight = await asyncio.to_thread(flags.current_weight, stack.router)
        now = time.perf_counter()
        if times.exposed is None and weight >= E2E_WEIGHT:
            times.exposed = now
        elif times.exposed is not None and weight == 0:
            times.restored = now
        await asyncio.sleep(0.02)


async def e2e_launch(
    client: Client,
    settings: Settings,
    stack: DemoStack,
    plan: LaunchPlan,
    judge_name: str,
    scenario: str,
) -> E2ERun:
    """One launch against the demo stack; an inconclusive analysis's gate is rejected."""
    began = time.perf_counter()
    times = ExposureTimes()
    watcher = asyncio.create_task(watch_exposure(stack, times))
    handle = await launches.start_launch(client, plan, settings=settings, started_by="bench")
    inconclusive = False
    try:
        while True:
            if time.perf_counter() - began > E2E_LAUNCH_TIMEOUT_S:
                raise TimeoutError(
                    f"launch {handle.id} did not end within {E2E_LAUNCH_TIMEOUT_S:g}s"
                )
            status = await launches.get_status(client, handle.id)
            if status.open_gate is not None and not inconclusive:
                inconclusive = True
                await launches.decide(
                    client,
                    handle.id,
                    status.open_gate.gate,
                    E2E_APPROVER,
                    "reject",
                    "inconclusive analysis: the benchmark counts it and stops",
                )
            if status.status in (LaunchStatusValue.COMPLETED, LaunchStatusValue.ROLLED_BACK):
                break
            if status.status in (LaunchStatusValue.NEEDS_ATTENTION, LaunchStatusValue.REFUSED):
                raise RuntimeError(f"launch {handle.id} ended {status.status}: {status.reason}")
            await asyncio.sleep(0.1)
        if status.status == LaunchStatusValue.ROLLED_BACK:
            # The rollback's flag write may land just after the status says so; a rollback
            # the watcher missed entirely is reported without a time.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(watcher), timeout=10)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    rolled_back = status.status == LaunchStatusValue.ROLLED_BACK
    outcome: Literal["rolled_back", "completed", "inconclusive"] = (
        "inconclusive" if inconclusive else "rolled_back" if rolled_back else "completed"
    )
    detected = (
        times.restored - times.exposed
        if outcome == "rolled_back" and times.exposed is not None and times.restored is not None
        else None
    )
    return E2ERun(judge_name, scenario, outcome, detected, time.perf_counter() - began)


def wait_until_canary_forgotten(stack: DemoStack, seconds: int, timeout: float = 180.0) -> None:
    """Until no canary request is left in the last `seconds`: the next launch's analysis must
    not read the previous launch's canary."""
    query = f'sum(increase(demo_requests_total{{variant="canary"}}[{seconds}s]))'
    deadline = time.monotonic() + timeout
    while True:
        result = _prometheus(stack, "query", {"query": query})
        if result and float(result[0]["value"][1]) == 0.0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"canary requests still within the last {seconds}s: {result}")
        time.sleep(0.5)


async def e2e(runs: int, rps: float) -> dict[str, Any]:
    """`runs` real launches, alternating judges, the canary at 5% healthy or regressed in
    turn (`E2E_SCENARIOS`)."""
    specs_by_judge, _ = judges()
    regimes = {regime.name: regime for regime in REGIMES}
    results: list[E2ERun] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="phasegate-judge-e2e-") as name:
        workdir = Path(name)
        key_file = workdir / "worker.key"
        key_file.write_text(secrets.token_hex(32) + "\n")
        key_file.chmod(0o600)
        server = start_temporal_dev_server(workdir=workdir / "temporal")
        try:
            settings = Settings(TEMPORAL_ADDRESS=server.address, task_queue=E2E_TASK_QUEUE)
            client = await connect(settings)
            limits = WorkerLimits(
                network=NetworkLimits(private=["127.0.0.1/32"]),
                files=FileLimits(flags=[str(workdir)]),
            )
            with (
                recording_stack(workdir / "stack", rps) as stack,
                concurrent.futures.ThreadPoolExecutor(max_workers=20) as executor,
            ):
                async with (
                    httpx.AsyncClient() as http,
                    Worker(
                        client,
                        task_queue=E2E_TASK_QUEUE,
                        workflows=WORKFLOWS,
                        activities=activities(http, client, limits=limits),
                        activity_executor=executor,
                        interceptors=[SealInterceptor(load_keys(str(key_file)))],
                    ),
                ):
                    for number in range(runs):
                        judge_name = ("threshold", "statistical")[number % 2]
                        regime = regimes[E2E_SCENARIOS[(number // 2) % len(E2E_SCENARIOS)]]
                        specs = specs_by_judge[judge_name]
                        await asyncio.to_thread(
                            wait_until_canary_forgotten, stack, lookback(specs) + 5
                        )
                        await asyncio.to_thread(
                            stack.set_faults,
                            error_rate=regime.fault_error_rate,
                            latency_ms=int(regime.latency_ms),
                        )
                        run = await e2e_launch(
                            client, settings, stack, e2e_plan(stack, specs), judge_name, regime.name
                        )
                        results.append(run)
                        print(
                            f"run {number + 1}/{runs}: {judge_name}, {regime.description}: "
                            f"{run.outcome}"
                            + (f" after {run.detected_s:.1f} s" if run.detected_s else ""),
                            file=sys.stderr,
                            flush=True,
                        )
                        await asyncio.to_thread(stack.set_faults)
                        stack.reset_exposure()
        finally:
            server.stop()
    summary: dict[str, Any] = {"runs": runs, "rps": rps, "took_s": round(time.monotonic() - began)}
    for judge_name in ("threshold", "statistical"):
        summary[judge_name] = {}
        for scenario in E2E_SCENARIOS:
            mine = [r for r in results if r.judge == judge_name and r.scenario == scenario]
            rolled = [r for r in mine if r.outcome == "rolled_back"]
            summary[judge_name][scenario] = {
                "runs": len(mine),
                "rolled_back": len(rolled),
                "inconclusive": sum(r.outcome == "inconclusive" for r in mine),
                "completed": sum(r.outcome == "completed" for r in mine),
                "median_seconds_to_roll_back": _median(
                    [r.detected_s for r in rolled if r.detected_s is not None]
                ),
                "seconds_to_roll_back": [
                    round(r.detected_s, 2) for r in rolled if r.detected_s is not None
                ],
            }
    return summary


# --- command line -------------------------------------------------------------------------

MAX_TRIALS = 100_000
MAX_TRAFFIC = 100
MAX_E2E_RUNS = 200


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.judge", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--record", action="store_true", help="re-record the demo's series")
    parser.add_argument("--rps", type=float, default=RECORD_RPS, help="load while recording")
    parser.add_argument("--recording", type=Path, default=RECORDING)
    parser.add_argument("--trials", type=int, default=1000, help="per scenario and judge")
    parser.add_argument(
        "--traffic",
        type=int,
        default=1,
        help="replay at this many times the recorded load (independent draws added up)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--e2e", type=int, default=0, metavar="N", help="N real launches on the dev server"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.trials <= MAX_TRIALS:
        parser.error(f"--trials: between 1 and {MAX_TRIALS}")
    if not 1 <= args.traffic <= MAX_TRAFFIC:
        parser.error(f"--traffic: between 1 and {MAX_TRAFFIC}")
    if not 0 < args.rps <= MAX_RPS:
        parser.error(f"--rps: above 0 and at most {MAX_RPS:g}")
    if not 0 <= args.e2e <= MAX_E2E_RUNS:
        parser.error(f"--e2e: at most {MAX_E2E_RUNS} runs")
    if args.record:
        recording = record_series(args.recording, args.rps)
        print(json.dumps(recording.about, indent=2))
        return
    if args.e2e:
        if args.e2e < 2 * len(E2E_SCENARIOS):
            parser.error(f"--e2e: at least {2 * len(E2E_SCENARIOS)} runs (each judge, each case)")
        print(json.dumps(asyncio.run(e2e(args.e2e, args.rps)), indent=2))
        return
    try:
        recording = load_recording(args.recording)
    except RecordingError as err:
        raise SystemExit(f"python -m benchmarks.judge: --recording {err}") from None
    figures = replay(recording, args.trials, args.seed, traffic=args.traffic)
    if args.json:
        json.dump(figures, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(table(figures))


if __name__ == "__main__":
    main()
