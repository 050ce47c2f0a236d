"""The decision-quality benchmark's machinery: queries evaluated from counters as Prometheus
evaluates them, trials judged as the workflow judges them, and the committed recording."""

from __future__ import annotations

import json
import math
import random
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from benchmarks.judge import (
    DETECT_WITHIN,
    RECORDING,
    REGIMES,
    SCRAPE_INTERVAL_S,
    QueryShape,
    RecordedRegime,
    Recording,
    RecordingError,
    Regime,
    Timeline,
    VariantCounts,
    background_rounds,
    bootstrap,
    evaluate,
    histogram_quantile,
    joined,
    judges,
    load_recording,
    replay,
    shape_of,
    silent,
    step_analysis,
    table,
    threshold_specs,
)
from schemas.analysis_spec import ContinuousAnalysis, MetricSpec

ERRORS = (
    'sum(rate(demo_request_errors_total{variant="{{variant}}"}[10s]))'
    ' / sum(rate(demo_requests_total{variant="{{variant}}"}[10s]))'
)
BOUNDS = [0.01, 0.05, 0.1]


def steady(scrapes: int, requests: int, errors: int, bucket: int = 0) -> VariantCounts:
    """`requests` a scrape, `errors` of them failing, all in latency bucket `bucket`."""
    row = [requests if i == bucket else 0 for i in range(len(BOUNDS) + 1)]
    return VariantCounts([requests] * scrapes, [errors] * scrapes, [row] * scrapes)


def test_shapes_of_the_example_plans_queries() -> None:
    specs = threshold_specs()
    assert shape_of(specs["error-rate"].query) == QueryShape("error_ratio", 10)
    assert shape_of(specs["p90-latency"].query) == QueryShape("quantile", 10, 0.9)
    with pytest.raises(ValueError, match="cannot answer"):
        shape_of("sum(rate(other_total[10s]))")
    with pytest.raises(ValueError, match="one rate window"):
        shape_of("sum(rate(demo_requests_total[10s])) / sum(rate(demo_requests_total[5s]))")


def test_histogram_quantile_as_prometheus_computes_it() -> None:
    cumulative = np.array(
        [
            [10, 10, 10, 10],  # all in the first bucket: 0 + 0.01 × 9/10
            [0, 5, 10, 10],  # rank 9 in (0.05, 0.1]: 0.05 + 0.05 × 4/5
            [0, 0, 0, 10],  # above the largest bound: that bound
            [0, 0, 0, 0],  # no observations
        ],
        dtype=float,
    )
    answers = histogram_quantile(0.9, cumulative, BOUNDS)
    assert answers[:3] == pytest.approx([0.009, 0.09, 0.1])
    assert math.isnan(answers[3])


def test_error_ratio_over_the_rate_window() -> None:
    # A 10 s window at one scrape a second holds 10 samples: the gains of the last 9 scrapes.
    counts = VariantCounts(
        requests=[10] * 20, errors=[0] * 10 + [5] * 10, buckets=[[10, 0, 0, 0]] * 20
    )
    ratio = evaluate(QueryShape("error_ratio", 10), counts, BOUNDS)
    assert ratio[9] == 0
    assert ratio[10] == pytest.approx(5 / 90)
    assert ratio[17] == pytest.approx(40 / 90)
    assert ratio[18] == pytest.approx(0.5)
    nobody = evaluate(QueryShape("error_ratio", 10), silent(5, len(BOUNDS) + 1), BOUNDS)
    assert np.isnan(nobody).all()


def test_bootstrap_keeps_the_variants_scrapes_together() -> None:
    scrapes = 40
    regime = RecordedRegime(
        Regime("r", 5, 1, 0, scrapes, "r"),
        {
            "canary": VariantCounts(
                list(range(scrapes)), [0] * scrapes, [[n, 0, 0, 0] for n in range(scrapes)]
            ),
            "stable": VariantCounts(
                [1000 + n for n in range(scrapes)],
                [0] * scrapes,
                [[1000 + n, 0, 0, 0] for n in range(scrapes)],
            ),
        },
        {},
    )
    drawn = bootstrap(regime, 95, random.Random(3), block=10)
    canary, stable = drawn["canary"].requests, drawn["stable"].requests
    assert len(canary) == len(stable) == 95
    assert all(s - c == 1000 for c, s in zip(canary, stable, strict=True))
    # Whole blocks of consecutive scrapes, the last one cut short.
    for first in range(0, 95, 10):
        block = canary[first : first + 10]
        assert block == list(range(block[0], block[0] + len(block)))


def _timeline(
    specs: dict[str, MetricSpec], canary: VariantCounts, stable: VariantCounts
) -> Timeline:
    return Timeline.of(specs, {"canary": canary, "stable": stable}, BOUNDS)


def test_threshold_judge_passes_a_healthy_canary_and_fails_a_bad_one_at_once() -> None:
    spec = MetricSpec.model_validate(
        {
            "query": ERRORS,
            "max": 0.05,
            "baseline": {"max_ratio": 1.0, "tolerance": 0.02},
            "initial_delay": "3s",
            "interval": "2s",
            "count": 4,
        }
    )
    specs = {"error-rate": spec}
    before, after = 30, 20
    stable = steady(before + after, 100, 1)
    healthy = joined(silent(before, 4), steady(after, 10, 0))
    outcome = step_analysis(specs, _timeline(specs, healthy, stable), exposed_at=before - 1)
    assert outcome.verdict == "successful"
    assert outcome.detected_s is None
    bad = joined(silent(before, 4), steady(after, 10, 5))
    outcome = step_analysis(specs, _timeline(specs, bad, stable), exposed_at=before - 1)
    assert outcome.verdict == "failed"
    assert outcome.measurement == 1
    assert outcome.detected_s == 3 * SCRAPE_INTERVAL_S


def test_statistical_judge_waits_for_enough_samples_then_fails_a_bad_canary() -> None:
    spec = MetricSpec.model_validate(
        {
            "query": ERRORS,
            "compare": {"min_samples": 5, "window": "20s", "step": "2s"},
            "initial_delay": "8s",
            "interval": "2s",
            "count": 4,
            "inconclusive_limit": 3,
        }
    )
    specs = {"error-rate": spec}
    before, after = 40, 20
    stable = steady(before + after, 100, 1)
    bad = joined(silent(before, 4), steady(after, 10, 5))
    outcome = step_analysis(specs, _timeline(specs, bad, stable), exposed_at=before - 1)
    # At 8 s the canary has 4 samples (2, 4, 6, 8 s): no data; at 10 s, 5: judged.
    assert outcome.verdict == "failed"
    assert outcome.measurement == 2
    assert outcome.detected_s == 10
    healthy = joined(silent(before, 4), steady(after, 10, 0))
    assert step_analysis(specs, _timeline(specs, healthy, stable), before - 1).verdict == (
        "successful"
    )
    # Never enough canary samples: inconclusive, not failed.
    nobody = silent(before + after, 4)
    assert step_analysis(specs, _timeline(specs, nobody, stable), before - 1).verdict == (
        "inconclusive"
    )


def test_background_rounds_roll_back_at_the_first_round_after_the_onset() -> None:
    spec = MetricSpec.model_validate({"query": ERRORS, "max": 0.05})
    specs = {"error-rate": spec}
    background = ContinuousAnalysis(
        metrics=["error-rate"], interval=timedelta(seconds=5), failure_limit=0
    )
    onset = 39  # the last healthy scrape
    canary = joined(steady(onset + 1, 10, 0), steady(30, 10, 10))
    stable = steady(onset + 31, 100, 0)
    rounds = list(range(onset - 12, onset + 30, 5))
    failed_at = background_rounds(specs, background, _timeline(specs, canary, stable), rounds)
    assert failed_at == min(r for r in rounds if r > onset)
    healthy = steady(onset + 31, 10, 0)
    assert background_rounds(specs, background, _timeline(specs, healthy, stable), rounds) is None


def test_the_committed_recording_is_well_formed() -> None:
    recording = load_recording()
    assert set(recording.regimes) == {regime.name for regime in REGIMES}
    assert recording.about["command"] == "python -m benchmarks.judge --record"
    assert RECORDING.stat().st_size < 400_000
    for regime in REGIMES:
        recorded = recording.regimes[regime.name]
        # One gain a scrape, a scrape a second, give or take a scrape at either end.
        assert abs(len(recorded) - regime.seconds / SCRAPE_INTERVAL_S) <= 3
        canary = sum(recorded.variants["canary"].requests)
        total = canary + sum(recorded.variants["stable"].requests)
        assert canary / total == pytest.approx(regime.weight / 100, abs=0.03 + regime.weight / 200)


def test_the_recording_reproduces_prometheus_own_answers() -> None:
    """Evaluated from the recorded counters, the queries give what Prometheus answered."""
    recording = load_recording()
    specs = threshold_specs()
    for name, regime in recording.regimes.items():
        for metric, spec in specs.items():
            for variant in ("canary", "stable"):
                ours = evaluate(shape_of(spec.query), regime.variants[variant], recording.bounds)
                theirs = regime.answers[metric][variant]
                # Prometheus answers once a second from the span's start; our scrapes start
                # one scrape in. Compare where both windows lie inside the span.
                pairs = [
                    (float(ours[i - 1]), answer)
                    for i in range(12, min(len(theirs), len(ours) + 1))
                    if (answer := theirs[i]) is not None and math.isfinite(ours[i - 1])
                ]
                assert pairs, f"{name} {metric} {variant}: nothing to compare"
                close = sum(math.isclose(a, b, rel_tol=0.02, abs_tol=1e-4) for a, b in pairs)
                assert close / len(pairs) >= 0.9, (name, metric, variant, pairs[:5])


def test_load_recording_names_what_is_wrong(tmp_path: Path) -> None:
    good = json.loads(RECORDING.read_text())
    broken = json.loads(json.dumps(good))
    first = next(iter(broken["regimes"]))
    broken["regimes"][first]["variants"]["canary"]["errors"][0] = -1
    path = tmp_path / "recording.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(RecordingError, match=rf"regimes\.{first}\.variants\.canary\.errors"):
        load_recording(path)
    path.write_text("{}")
    with pytest.raises(RecordingError, match="not a format-1"):
        load_recording(path)
    broken = json.loads(json.dumps(good))
    broken["regimes"][first]["answers"]["error-rate"]["stable"][3] = "0.1"
    path.write_text(json.dumps(broken))
    with pytest.raises(RecordingError, match=rf"{first}\.answers\.error-rate\.stable: expected"):
        load_recording(path)
    broken = json.loads(json.dumps(good))
    del broken["regimes"]["healthy-50"]
    path.write_text(json.dumps(broken))
    with pytest.raises(RecordingError, match="regimes: missing healthy-50"):
        load_recording(path)


def test_a_small_replay_reports_every_scenario_and_target() -> None:
    recording = load_recording()
    figures = replay(recording, trials=3, seed=7)
    assert set(figures["step_analysis"]) == set(recording.regimes)
    for scenario in figures["step_analysis"].values():
        assert set(scenario["judges"]) == {"threshold", "statistical"}
        for judged in scenario["judges"].values():
            assert judged["trials"] == 3
            assert judged["caught_within_3"] <= judged["rolled_back"] <= 3
            if judged["median_measurements_to_detect"] is not None:
                assert judged["median_measurements_to_detect"] >= 1
    assert set(figures["targets"]) == {"threshold", "statistical"}
    assert "2x error rate at 5%" in table(figures)
    assert DETECT_WITHIN == 3


def test_the_statistical_judge_measures_what_the_example_plan_measures() -> None:
    by_judge, background = judges()
    threshold, statistical = by_judge["threshold"], by_judge["statistical"]
    assert set(statistical) == set(threshold)
    for name, spec in statistical.items():
        # The same measure over windows that do not overlap at the comparison's step.
        assert spec.query == threshold[name].query.replace("[10s]", "[5s]")
        assert spec.compare is not None
        assert spec.compare.step.total_seconds() >= shape_of(spec.query).window_s
        assert spec.max is None
        assert spec.baseline is None
    assert set(background.metrics) == set(threshold)


def test_a_recording_of_unequal_series_is_refused() -> None:
    with pytest.raises(ValueError, match="same scrapes"):
        VariantCounts([1, 2], [0], [[1, 0, 0, 0], [2, 0, 0, 0]])
    assert isinstance(Recording(bounds=BOUNDS, regimes={}), Recording)
