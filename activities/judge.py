"""The statistical judge: canary samples against stable's with a Mann-Whitney U test.

Kayenta's approach, for one metric and one window: the test says whether the canary differs
(p-value), the ratio of means says by how much (effect), and the canary fails only when both
are beyond what the metric allows. Means, not medians, measure the effect (as Kayenta's do):
samples of a low error rate are mostly 0 and a few small counts, where medians jump. Pure and deterministic: the activity reading
Prometheus, the workflow and the decision-quality benchmark all judge through
`compare_samples`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Literal

from scipy.stats import mannwhitneyu

from schemas.analysis_spec import Comparison
from schemas.metrics_messages import ComparisonResult

# Which one-sided test each direction asks for: is the canary greater than stable, or less.
_ALTERNATIVE: dict[str, Literal["greater", "less", "two-sided"]] = {
    "increase": "greater",
    "decrease": "less",
    "either": "two-sided",
}


def compare_samples(
    spec: Comparison, canary: Sequence[float], stable: Sequence[float]
) -> ComparisonResult:
    """Judge `canary`'s samples against `stable`'s; NaN and infinite samples are left out."""
    canary_kept = _finite(canary)
    stable_kept = _finite(stable)
    sizes = f"n={len(canary_kept)} canary, {len(stable_kept)} stable"
    seen = {
        "canary_samples": len(canary_kept),
        "stable_samples": len(stable_kept),
        "canary_median": _median(canary_kept),
        "stable_median": _median(stable_kept),
        "canary_mean": _mean(canary_kept),
        "stable_mean": _mean(stable_kept),
    }
    if min(len(canary_kept), len(stable_kept)) < spec.min_samples:
        return ComparisonResult.model_validate(
            {
                **seen,
                "outcome": "nodata",
                "detail": f"too few samples to judge: {sizes} (need {spec.min_samples} each)",
            }
        )
    canary_mean, stable_mean = statistics.fmean(canary_kept), statistics.fmean(stable_kept)
    p_value = _p_value(spec, canary_kept, stable_kept)
    effect = canary_mean / stable_mean if stable_mean != 0 else None
    significant = p_value < spec.alpha
    high_limit = stable_mean + abs(stable_mean) * (spec.allowed_increase - 1) + spec.tolerance
    low_limit = stable_mean - abs(stable_mean) * (1 - spec.allowed_decrease) - spec.tolerance
    outcome: Literal["pass", "high", "low"] = "pass"
    if significant and spec.direction != "decrease" and canary_mean > high_limit:
        outcome = "high"
    elif significant and spec.direction != "increase" and canary_mean < low_limit:
        outcome = "low"
    ratio = f" (×{effect:.3g})" if effect is not None else ""
    evidence = (
        f"canary mean {canary_mean:.4g} vs stable {stable_mean:.4g}{ratio}, medians "
        f"{statistics.median(canary_kept):.4g} vs {statistics.median(stable_kept):.4g}, "
        f"p={p_value:.2g} ({sizes})"
    )
    if outcome == "high":
        verdict = f"higher than allowed (above {high_limit:.4g}, p < {spec.alpha:.2g})"
    elif outcome == "low":
        verdict = f"lower than allowed (below {low_limit:.4g}, p < {spec.alpha:.2g})"
    elif significant:
        verdict = "a significant difference within the allowed change"
    else:
        verdict = f"no significant difference (p ≥ {spec.alpha:.2g})"
    return ComparisonResult.model_validate(
        {
            **seen,
            "p_value": p_value,
            "effect": effect,
            "outcome": outcome,
            "detail": f"{evidence}: {verdict}",
        }
    )


def _median(samples: list[float]) -> float | None:
    return statistics.median(samples) if samples else None


def _mean(samples: list[float]) -> float | None:
    return statistics.fmean(samples) if samples else None


def _finite(samples: Sequence[float]) -> list[float]:
    return [float(sample) for sample in samples if math.isfinite(sample)]


def _p_value(spec: Comparison, canary: list[float], stable: list[float]) -> float:
    """The test's p-value; 1 when every sample is equal (nothing can differ)."""
    if min(canary) == max(canary) == min(stable) == max(stable):
        return 1.0
    result = mannwhitneyu(canary, stable, alternative=_ALTERNATIVE[spec.direction])
    p_value = float(result.pvalue)
    return p_value if math.isfinite(p_value) else 1.0
