"""Retraining a recorded trial with its recorded seed gives back its validation accuracy."""

from __future__ import annotations

import pytest

from conftest import RecordedSweep, copy_recorded
from tunelab.define.data import Splits
from tunelab.errors import UserError
from tunelab.record.names import PARENT_RUN_TAG, MetricName, Role, TagKey
from tunelab.record.recorded import RunNotFound, load_recorded_run
from tunelab.record.store import Tracker
from tunelab.training.retrain import Retraining, reproduce


@pytest.fixture(scope="module")
def recorded_sweep(
    _recorded_once: RecordedSweep, tmp_path_factory: pytest.TempPathFactory
) -> RecordedSweep:
    """This module's own copy of the recording: its tests all read the retraining made once here."""
    return copy_recorded(_recorded_once, tmp_path_factory.mktemp("module") / "recorded")


@pytest.fixture(scope="module")
def reproduced(recorded_sweep: RecordedSweep, tiny_splits: Splits) -> Retraining:
    """The best trial retrained once with its recorded seed (each test here needs one)."""
    tracker = Tracker(recorded_sweep.tracking_uri)
    return reproduce(tracker, load_recorded_run(tracker, recorded_sweep.best_run_id), tiny_splits)


@pytest.mark.slow
def test_reproducing_the_best_trial_gives_its_recorded_validation_accuracy(
    recorded_sweep: RecordedSweep, reproduced: Retraining
) -> None:
    tracker = Tracker(recorded_sweep.tracking_uri)
    original = load_recorded_run(tracker, recorded_sweep.best_run_id)
    assert original.trial_number is not None and original.seed == 5 + original.trial_number
    assert original.config.params["filters"] == 8 and original.config.training.epochs == 2
    assert original.data.validation_size == 500
    again = reproduced
    # same seed, same data, same CPU kernels: the same numbers (seen bit-identical here; one
    # validation image of slack in case a multi-threaded reduction orders sums differently)
    assert again.best_val_accuracy == pytest.approx(original.best_val_accuracy, abs=1 / 500)
    run = tracker.client.get_run(again.run_id)
    assert run.data.tags[TagKey.ROLE] == Role.REPRODUCTION
    assert run.data.tags[TagKey.RETRAINS_RUN_ID] == original.run_id
    assert run.data.tags[PARENT_RUN_TAG] == recorded_sweep.parent_run_id
    assert run.data.metrics[MetricName.RECORDED_BEST_VAL_ACCURACY] == pytest.approx(
        original.best_val_accuracy
    )
    # the per-epoch comparison `tunelab reproduce` prints: loss, val_loss, val_accuracy
    assert set(again.epoch_differences) == {"loss", "val_loss", "val_accuracy"}
    assert all(value <= 1e-3 for value in again.epoch_differences.values())
    assert not original.resumed  # so bit-identity is what to expect


def test_a_retraining_does_not_count_as_a_trial_of_the_sweep(
    recorded_sweep: RecordedSweep, reproduced: Retraining
) -> None:
    from tunelab.define.experiment import load_experiment
    from tunelab.engines.sweep import SweepTracker

    tracker = Tracker(recorded_sweep.tracking_uri)
    spec = load_experiment(recorded_sweep.folder / "recorded.yaml")
    sweep = SweepTracker(tracker, spec, "recorded", "optuna", None)
    sweep.parent_run_id = recorded_sweep.parent_run_id
    retraining = tracker.client.get_run(reproduced.run_id)
    assert retraining.data.tags[PARENT_RUN_TAG] == recorded_sweep.parent_run_id  # nested there
    assert sorted(sweep.run_ids()) == [0, 1, 2]  # ... and still not one of its trials
    assert reproduced.run_id not in sweep.run_ids().values()


def test_unknown_run_and_a_parent_run_are_refused_in_one_line(
    recorded_sweep: RecordedSweep,
) -> None:
    tracker = Tracker(recorded_sweep.tracking_uri)
    with pytest.raises(RunNotFound, match="run 'nope' not found in sqlite"):
        load_recorded_run(tracker, "nope")
    with pytest.raises(UserError, match=r"no recorded model config .*pick a trial run"):
        load_recorded_run(tracker, recorded_sweep.parent_run_id)


def test_data_other_than_the_recorded_is_refused(
    recorded_sweep: RecordedSweep, tiny_splits: Splits
) -> None:
    from dataclasses import replace

    tracker = Tracker(recorded_sweep.tracking_uri)
    original = load_recorded_run(tracker, recorded_sweep.best_run_id)
    with pytest.raises(UserError, match="the data differs from the recorded run"):
        reproduce(tracker, original, replace(tiny_splits, digest="0" * 64))
