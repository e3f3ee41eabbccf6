"""The statistics against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunelab.analysis.stats import mcnemar_exact, seed_summary, wilson_interval


def test_wilson_interval_of_8_in_10() -> None:
    # z = 1.96: centre (0.8 + 1.9208/10) / 1.38416 = 0.71675,
    # half 1.96 * sqrt(0.016 + 0.0096040) / 1.38416 = 0.22658
    interval = wilson_interval(8, 10)
    assert interval.estimate == 0.8
    assert interval.low == pytest.approx(0.4902, abs=1e-4)
    assert interval.high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_interval_at_the_edges_stays_inside_0_1() -> None:
    none, every = wilson_interval(0, 10), wilson_interval(10, 10)
    assert none.low == pytest.approx(0.0, abs=1e-12) and none.high == pytest.approx(
        0.2775, abs=1e-4
    )
    assert every.low == pytest.approx(0.7225, abs=1e-4) and every.high == pytest.approx(1.0)
    assert none.low >= 0.0 and every.high <= 1.0


def test_wilson_interval_of_the_published_baseline_is_about_a_tenth_of_a_point() -> None:
    # centre 0.992692 / 1.000384 = 0.992311; half 1.96 * sqrt(7.44375e-7 + 9.60e-9) / 1.000384
    interval = wilson_interval(9925, 10_000)
    assert interval.low == pytest.approx(0.99061, abs=1e-5)
    assert interval.high == pytest.approx(0.99401, abs=1e-5)


def test_wilson_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(11, 10)


def test_mcnemar_exact_counts_only_the_discordant_images() -> None:
    # 1 image only the first gets right, 9 only the second; 90 both right
    first = np.array([True] * 90 + [True] + [False] * 9)
    second = np.array([True] * 90 + [False] + [True] * 9)
    result = mcnemar_exact(first, second)
    assert (result.only_first, result.only_second) == (1, 9)
    # two-sided: 2 * P(X <= 1 | n = 10, p = 1/2) = 2 * (1 + 10) / 1024
    assert result.p_value == pytest.approx(22 / 1024)


def test_mcnemar_exact_one_sided_six_and_balanced() -> None:
    assert mcnemar_exact([False] * 6, [True] * 6).p_value == pytest.approx(2 / 64)
    balanced = mcnemar_exact([True] * 5 + [False] * 5, [False] * 5 + [True] * 5)
    assert balanced.p_value == 1.0
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0  # no disagreement


def test_mcnemar_refuses_different_image_sets() -> None:
    with pytest.raises(ValueError, match="different images"):
        mcnemar_exact([True, False], [True])


def test_seed_summary_uses_the_student_t_interval() -> None:
    summary = seed_summary([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2 degrees of freedom) * std 1 / sqrt(3)
    assert (summary.mean, summary.std) == (2.0, 1.0)
    assert summary.interval.low == pytest.approx(2 - half, abs=1e-5)
    assert summary.interval.high == pytest.approx(2 + half, abs=1e-5)


def test_one_seed_has_no_spread_to_report() -> None:
    summary = seed_summary([0.99])
    assert math.isnan(summary.std) and summary.interval.low == summary.interval.high == 0.99
