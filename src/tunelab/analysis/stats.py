"""The statistics tunelab reports: Wilson intervals, McNemar's exact test, t intervals.

Accuracy on 10,000 test images is a proportion, so its uncertainty is a binomial interval
(Wilson's, which stays inside [0, 1] and behaves near 100 %, unlike the normal approximation).
Two models evaluated on the *same* images are paired: McNemar's exact test looks only at the
images where exactly one of them is right, which is far more sensitive than comparing two
intervals. Retraining a configuration with several seeds gives a small sample of accuracies, so
its mean gets a Student-t interval. SciPy computes all three (`binomtest(...).proportion_ci`
with Wilson's method, `binomtest` for McNemar's exact test, `t.interval`); this module gives them
tunelab's names and refuses what cannot be computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    def bracket(self) -> str:
        """`[low, high]` to four decimals, as tables show it."""
        return f"[{self.low:.4f}, {self.high:.4f}]"


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a binomial proportion successes / trials."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0 ({successes}/{trials})")
    bounds = scipy_stats.binomtest(successes, trials).proportion_ci(
        confidence_level=confidence, method="wilson"
    )
    low, high = float(bounds.low), float(bounds.high)
    return Interval(successes / trials, max(0.0, low), min(1.0, high), confidence)


@dataclass(frozen=True)
class McNemar:
    """Paired comparison of two classifiers on the same images.

    `only_first` counts images the first model gets right and the second wrong, `only_second`
    the reverse; the exact two-sided p-value is that of a fair-coin binomial on those images.
    """

    only_first: int
    only_second: int
    p_value: float


def mcnemar_exact(first_correct: npt.ArrayLike, second_correct: npt.ArrayLike) -> McNemar:
    """McNemar's exact test from per-image correctness (booleans) of two models."""
    first, second = np.asarray(first_correct, bool), np.asarray(second_correct, bool)
    if first.shape != second.shape:
        raise ValueError(
            f"the two models were scored on different images ({first.shape} vs {second.shape})"
        )
    only_first = int(np.sum(first & ~second))
    only_second = int(np.sum(~first & second))
    n = only_first + only_second
    if n == 0:
        return McNemar(0, 0, 1.0)
    p_value = float(scipy_stats.binomtest(only_first, n, 0.5, alternative="two-sided").pvalue)
    return McNemar(only_first, only_second, min(1.0, p_value))


@dataclass(frozen=True)
class SeedSummary:
    """Accuracies of one configuration over several seeds."""

    values: tuple[float, ...]
    mean: float
    std: float
    interval: Interval


def seed_summary(values: Sequence[float], confidence: float = CONFIDENCE) -> SeedSummary:
    """Mean, sample standard deviation and Student-t interval of the mean.

    One value has no spread: its interval is the value itself, and std is NaN (say so rather
    than pretend the configuration is noise-free).
    """
    if not values:
        raise ValueError("no values to summarise")
    array = np.asarray(values, float)
    mean = float(array.mean())
    if len(array) == 1:
        return SeedSummary(tuple(values), mean, float("nan"), Interval(mean, mean, mean))
    std = float(array.std(ddof=1))
    low, high = scipy_stats.t.interval(
        confidence, len(array) - 1, loc=mean, scale=std / math.sqrt(len(array))
    )
    return SeedSummary(
        tuple(float(v) for v in values), mean, std, Interval(mean, float(low), float(high))
    )
