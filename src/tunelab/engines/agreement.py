"""Rank agreement: does a cheap rung rank configurations as the full training does?

A pruner or a sampler that reads an early rung (a validation after a few thousand images, or
after an epoch of a long schedule) trusts that the order of configurations there is their order
at the end. That is measured here, on every sweep, not assumed (architecture rule 9): Spearman's
rho and Kendall's tau, with their p-values, between each rung and the next, between each rung and
the end of the training (complete trials), and between the end and the confirmed mean of fresh
seeds; and with `engine.screens`, between each screen and the next over the configurations
promoted (a promoted set is the best of its screen: a narrow range, where a rank correlation
is harder to show than over all configurations). Below `TOO_FEW` configurations the figures are
reported as too few to tell (the 5 % critical value of rho is about 0.74 for 8, 0.65 for 10).

`rung_curves` reads the record (any engine); `checked` is the same test on an Optuna study's
intermediate values, so a pruner can refuse to prune at a rung that does not rank
(`engine.fidelity_check`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TOO_FEW = 8
SIGNIFICANCE = 0.05
FINAL = "end"
SCREEN = "screen"
CONFIRMED = "confirmed"


@dataclass(frozen=True)
class Agreement:
    """How two fidelities rank the same configurations."""

    first: str
    second: str
    n: int
    spearman: float | None = None
    spearman_p: float | None = None
    kendall: float | None = None
    kendall_p: float | None = None

    @property
    def too_few(self) -> bool:
        return self.n < TOO_FEW

    @property
    def significant(self) -> bool:
        """A positive rank correlation unlikely by chance (Spearman, two-sided 5 %)."""
        return (
            not self.too_few
            and self.spearman is not None
            and self.spearman > 0
            and self.spearman_p is not None
            and self.spearman_p < SIGNIFICANCE
        )

    @property
    def key(self) -> str:
        """A metric-key-safe name: `rung_1_5120_images__end`."""

        def safe(name: str) -> str:
            return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_")

        return f"{safe(self.first)}__{safe(self.second)}"

    def line(self) -> str:
        """One line for people."""
        head = f"{self.first} -> {self.second}"
        if self.spearman is None or self.kendall is None:
            return f"{head}: n {self.n}, no ranking to compare (ties or too few)"
        figures = (
            f"Spearman {self.spearman:.2f} (p {self.spearman_p:.2g}), "
            f"Kendall {self.kendall:.2f} (p {self.kendall_p:.2g}), n {self.n}"
        )
        if self.too_few:
            return f"{head}: {figures}: too few to tell"
        verdict = "ranks alike" if self.significant else "NOT significant: no better than chance"
        return f"{head}: {figures}: {verdict}"

    def metrics(self) -> dict[str, float]:
        values = {
            f"rank_n__{self.key}": float(self.n),
            f"rank_spearman__{self.key}": self.spearman,
            f"rank_spearman_p__{self.key}": self.spearman_p,
            f"rank_kendall__{self.key}": self.kendall,
            f"rank_kendall_p__{self.key}": self.kendall_p,
        }
        return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def agreement(first: str, second: str, pairs: Sequence[tuple[float, float]]) -> Agreement:
    """Spearman and Kendall of `pairs` (one per configuration: its two scores)."""
    from scipy import stats

    n = len(pairs)
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    if n < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return Agreement(first, second, n)
    rho = stats.spearmanr(xs, ys)
    tau = stats.kendalltau(xs, ys)
    return Agreement(
        first,
        second,
        n,
        float(rho.statistic),
        float(rho.pvalue),
        float(tau.statistic),
        float(tau.pvalue),
    )


def rung_agreements(
    curves: Mapping[int, Sequence[float]],
    finals: Mapping[int, float],
    confirmed: Mapping[int, float],
    rung_images: Mapping[int, int] | None = None,
) -> list[Agreement]:
    """Every comparison the module doc lists, from each trial's per-step validation scores.

    Args:
        curves: trial number -> its validation score after step 1, 2, ... (as far as it got).
        finals: trial number -> its score at the end of a complete schedule.
        confirmed: trial number -> the mean of its fresh-seed retrainings.
        rung_images: step -> training images seen there (for the names).
    """
    steps = max((len(c) for c in curves.values()), default=0)
    named = rung_images or {}

    def name(step: int) -> str:
        seen = named.get(step)
        return f"rung {step}" + (f" ({seen} images)" if seen else "")

    found: list[Agreement] = []
    for step in range(1, steps):
        pairs = [(c[step - 1], c[step]) for c in curves.values() if len(c) > step]
        found.append(agreement(name(step), name(step + 1), pairs))
    for step in range(1, steps):  # a complete trial's last step is its end: not compared
        pairs = [
            (c[step - 1], finals[t]) for t, c in curves.items() if t in finals and len(c) > step
        ]
        found.append(agreement(name(step), FINAL, pairs))
    pairs = [(finals[t], confirmed[t]) for t in confirmed if t in finals]
    if pairs:
        found.append(agreement(FINAL, CONFIRMED, pairs))
    return found


def screen_agreements(
    screens: Mapping[int, tuple[int, int | None]], finals: Mapping[int, float]
) -> list[Agreement]:
    """How each screen ranks the configurations it promoted against the next, longer screen
    (`engine.screens`): one pair per promotion whose two trials both completed.

    Args:
        screens: trial number -> (the epochs of its screen, the trial that promoted it or None).
        finals: trial number -> its score at the end of its schedule (complete trials).
    """
    pairs: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for number, (epochs, source) in screens.items():
        if source is None or source not in finals or number not in finals:
            continue
        shorter = screens.get(source, (0, None))[0]
        pairs.setdefault((shorter, epochs), []).append((finals[source], finals[number]))
    return [
        agreement(f"{SCREEN} {short} epoch(s)", f"{SCREEN} {long} epoch(s)", found)
        for (short, long), found in sorted(pairs.items())
    ]


def checked(values_at_step: Sequence[tuple[float, float]]) -> bool:
    """Whether a rung may prune: its scores rank like the finals of the complete trials so far."""
    return agreement("rung", FINAL, values_at_step).significant
