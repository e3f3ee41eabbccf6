"""Screens (`engine.screens`): new configurations train a complete short schedule; the best
1/reduction_factor of each screen are trained again, from scratch, on the next longer one."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import optuna
import pytest

from conftest import quiet_sweep
from tunelab.define.data import Splits
from tunelab.define.experiment import load_experiment
from tunelab.engines.optuna.screens import PROMOTED_FROM, SCREEN_EPOCHS, promote
from tunelab.record.names import Artifact, MetricName, Role, TagKey, TrialState
from tunelab.record.query import Query
from tunelab.record.recorded import SweepRecord, finalists, find_sweep, load_recorded_run
from tunelab.record.store import Tracker


def screened(study: optuna.Study, value: float, epochs: int = 1, **attrs: int) -> None:
    x = optuna.distributions.FloatDistribution(0.0, 1.0)
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": value},
            distributions={"x": x},
            value=value,
            user_attrs={SCREEN_EPOCHS: epochs, **attrs},
        )
    )


def waiting(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(optuna.trial.TrialState.WAITING,))


def test_the_best_third_of_a_screen_is_promoted_once_each_longest_screen_first() -> None:
    study = optuna.create_study(direction="maximize")
    for value in (0.5, 0.9, 0.1):  # trials 0, 1, 2
        screened(study, value)
    assert promote(study, [1, 3, 9], 3) == 1  # three finished: the best one (trial 1) is due
    [queued] = waiting(study)  # trial 3
    assert queued.system_attrs["fixed_params"] == {"x": 0.9}  # asked next, with these
    assert queued.user_attrs == {SCREEN_EPOCHS: 3, PROMOTED_FROM: 1}
    assert promote(study, [1, 3, 9], 3) is None  # already queued: not twice
    for value in (0.7, 0.2):  # trials 4, 5
        screened(study, value)
    assert promote(study, [1, 3, 9], 3) is None  # five finished: still only one is due
    screened(study, 0.8)  # trial 6
    assert promote(study, [1, 3, 9], 3) == 6  # six: the second best is due too (trial 7 queued)
    for value, source in ((0.95, 1), (0.85, 6), (0.3, 4)):  # trials 8, 9, 10 at 3 epochs
        screened(study, value, epochs=3, **{PROMOTED_FROM: source})
    for value in (0.6, 0.65, 0.75):  # trials 11, 12, 13: nine finished at 1 epoch
        screened(study, value)
    # three finished at the 3-epoch screen: its best (trial 8) goes on to 9 epochs first,
    assert promote(study, [1, 3, 9], 3) == 8
    assert waiting(study)[-1].user_attrs[SCREEN_EPOCHS] == 9
    # then the third best at 1 epoch (0.75, trial 13; trial 4 was promoted, whatever its rank)
    assert promote(study, [1, 3, 9], 3) == 13
    assert promote(study, [1, 3, 9], 3) is None
    # a minimizing study promotes its lowest values; trials not its own are left alone
    low = optuna.create_study(direction="minimize")
    for value in (0.5, 0.9, 0.1):
        screened(low, value)
    assert promote(low, [1, 3], 3, own=lambda t: t.number != 2) is None  # two of its own
    assert promote(low, [1, 3], 3) == 2


SPACE = """
parameters:
  learning_rate: {type: categorical, values: [0.01, 0.003, 0.001, 0.0003, 0.0001]}
fixed: {optimizer: adam, filters: 8, dense_units: 16, epochs: 6, batch_size: 128,
        lr_schedule: cosine, warmup_epochs: 1.0}
"""
EXPERIMENT = """
name: screens
search_space: space.yaml
engine: {name: optuna, sampler: random, screens: [1, 2], reduction_factor: 2}
budget: {trials: 6}
seed: 3
"""


@pytest.mark.slow
def test_a_screened_sweep_promotes_its_best_configurations_to_longer_complete_schedules(
    tmp_path: Path, tiny_splits: Splits
) -> None:
    (tmp_path / "space.yaml").write_text(textwrap.dedent(SPACE))
    (tmp_path / "screens.yaml").write_text(textwrap.dedent(EXPERIMENT))
    uri, storage = f"sqlite:///{tmp_path / 'm.db'}", f"sqlite:///{tmp_path / 'o.db'}"
    quiet_sweep(
        load_experiment(tmp_path / "screens.yaml"),
        tiny_splits,
        tracking_uri=uri,
        storage_url=storage,
    )
    tracker = Tracker(uri)
    sweep: SweepRecord = find_sweep(tracker, "screens")
    runs = sweep.trial_runs(tracker)
    assert len(runs) == 6  # promotions use the trial budget: exactly six trials
    by_number = {int(r.data.tags[TagKey.TRIAL_NUMBER]): r for r in runs}
    assert all(r.data.tags[TagKey.TRIAL_STATE] == TrialState.COMPLETE for r in runs)

    def score(number: int) -> float:
        return float(by_number[number].data.metrics[MetricName.BEST_VAL_ACCURACY])

    promotions = {
        n: int(r.data.tags[TagKey.PROMOTED_FROM])
        for n, r in by_number.items()
        if TagKey.PROMOTED_FROM in r.data.tags
    }
    assert promotions, "no configuration was promoted"
    for number, run in by_number.items():
        recorded = load_recorded_run(tracker, run.info.run_id)
        epochs = 2 if number in promotions else 1
        assert run.data.tags[TagKey.SCREEN_EPOCHS] == str(epochs)
        # a complete schedule of that length: the whole warm-up and decay within it
        assert recorded.config.training.epochs == epochs
        assert recorded.config.training.warmup_epochs == pytest.approx(epochs / 6)
        steps = tracker.metric_steps(run.info.run_id, MetricName.VAL_ACCURACY)
        assert len(steps) == epochs
    for number, source in promotions.items():
        assert number > source
        assert (
            by_number[number].data.params["learning_rate"]
            == (by_number[source].data.params["learning_rate"])
        )
        # the source was among the best half of the one-epoch screens finished before it
        earlier = sorted(
            (score(n) for n in by_number if n < number and n not in promotions), reverse=True
        )
        assert score(source) >= earlier[len(earlier) // 2 - 1]
    # the crown goes to the longer schedule: the best promoted trial, not a one-epoch score
    best_id = sweep.tags[TagKey.BEST_RUN_ID]
    best_number = int(tracker.get_run(best_id).data.tags[TagKey.TRIAL_NUMBER])
    assert best_number == max(promotions, key=score)
    [top] = finalists(runs)[:1]
    assert top.info.run_id == best_id
    assert all(
        int(r.data.tags[TagKey.TRIAL_NUMBER]) not in promotions.values() for r in finalists(runs)
    )
    # and the sweep measured how the one-epoch screen ranked the promoted configurations
    [parent] = tracker.search("screens", Query.of(role=Role.SWEEP))
    path = tracker.download_artifact(parent.info.run_id, Artifact.RANK_AGREEMENT, tmp_path)
    assert path is not None
    found = {(a["first"], a["second"]): a for a in json.loads(path.read_text())}
    assert found[("screen 1 epoch(s)", "screen 2 epoch(s)")]["n"] == len(promotions)
