"""Screens: asynchronous successive halving over complete schedules (`engine.screens`).

Every configuration the sampler proposes first trains the shortest schedule of `engine.screens`,
its warm-up and decay compressed into those epochs: a complete short schedule, which ranks
configurations far better than the first epochs of a long one does (docs/results.md). Before a
new configuration is asked for, under the study lock, the sweep looks for a configuration that
is among the best 1/reduction_factor of those finished at a screen and has not been promoted yet;
if there is one, it is queued again on the next, longer schedule and trained from scratch with
its own seed (ASHA's promotion rule, Li et al. 2020, with schedules as rungs). Higher screens are
promoted first, so the best configurations reach the longest schedule early.

A promotion is a trial like any other: it counts against `budget.trials`, is paused and continued
at a deadline, and is retried when its worker dies (the queued attempt keeps its screen). The
trial's user attributes say which screen it trains (`screen_epochs`) and which trial promoted it
(`promoted_from`); the MLflow run carries the same as tags.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

SCREEN_EPOCHS = "screen_epochs"
PROMOTED_FROM = "promoted_from"


def screen_of(trial: FrozenTrial | optuna.Trial, screens: Sequence[int]) -> int:
    """The epochs of the complete schedule this trial trains (the shortest for a new one)."""
    return int(trial.user_attrs.get(SCREEN_EPOCHS, screens[0]))


def promote(
    study: optuna.Study,
    screens: Sequence[int],
    reduction_factor: int,
    own: Callable[[FrozenTrial], bool] = lambda trial: True,
) -> int | None:
    """Queue the next promotion, if one is due; returns the promoted trial's number.

    At each screen but the last (longest first), the study's `own` complete trials there are
    ranked by their value; the best len/reduction_factor of them are due a promotion, and the
    first of those not yet promoted is queued on the next screen. Call under the study lock, so
    that two workers never promote the same trial.
    """
    trials = study.get_trials(deepcopy=False)
    promoted = {int(t.user_attrs[PROMOTED_FROM]) for t in trials if PROMOTED_FROM in t.user_attrs}
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    for index in reversed(range(len(screens) - 1)):
        finished = [
            t
            for t in trials
            if t.state == OptunaState.COMPLETE
            and t.values
            and screen_of(t, screens) == screens[index]
            and own(t)
        ]
        finished.sort(key=lambda t: t.values[0], reverse=maximize)
        for trial in finished[: len(finished) // reduction_factor]:
            if trial.number not in promoted:
                study.enqueue_trial(
                    trial.params,
                    user_attrs={
                        SCREEN_EPOCHS: screens[index + 1],
                        PROMOTED_FROM: trial.number,
                    },
                )
                return trial.number
    return None
