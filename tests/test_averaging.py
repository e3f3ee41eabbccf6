"""Accuracy at no extra training: weight averaging (EMA, SWA) delivers the average, not the last
weights, with parity; test-time shifts average what the exported model sees; a refit whose
schedule restarts delivers its earlier cycle ends as distinct ensemble members (snapshots)."""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from conftest import RecordedSweep, flat_config
from tunelab.define.data import Splits
from tunelab.define.training import TrainingConfig
from tunelab.delivery.formats import write_and_check
from tunelab.training.train import train_and_validate

SMALL = {
    "filters": 4,
    "dense_units": 16,
    "epochs": 3,
    "batch_size": 128,
    "optimizer": "adam",
    "batch_norm": True,
    "conv_bias": False,
    "learning_rate": 3e-3,
}


@pytest.mark.slow
@pytest.mark.parametrize("averaging", ["ema", "swa"])
def test_averaged_weights_differ_from_the_last_ones_and_export_with_parity(
    averaging: str, tiny_splits: Splits, tmp_path: Path
) -> None:
    plain = train_and_validate(flat_config(**SMALL), tiny_splits, seed=4)
    averaged_config = flat_config(
        **SMALL, weight_averaging=averaging, ema_momentum=0.95, swa_share=0.7
    )
    averaged = train_and_validate(averaged_config, tiny_splits, seed=4)
    assert plain.ok and averaged.ok
    last = [np.asarray(v) for v in plain.model.trainable_variables]
    mean = [np.asarray(v) for v in averaged.model.trainable_variables]
    assert any(not np.allclose(a, b) for a, b in zip(last, mean, strict=True))
    assert averaged.best_val_accuracy is not None and averaged.best_val_accuracy > 0.15
    images = tiny_splits.test.x[:200]
    reference = np.asarray(averaged.model.predict(images.astype("float32"), verbose=0))
    for fmt in ("keras", "onnx"):
        check = write_and_check(
            averaged.model, fmt, tmp_path, images, tiny_splits.test.y[:200], reference
        )
        assert check.ok, check.problem


def shifted(images: np.ndarray, down: int, right: int) -> np.ndarray:
    """Images moved by (down, right) pixels, the uncovered border zero."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    out[:, max(down, 0) : h + min(down, 0), max(right, 0) : w + min(right, 0)] = images[
        :, max(-down, 0) : h + min(-down, 0), max(-right, 0) : w + min(-right, 0)
    ]
    return out


@pytest.mark.slow
def test_test_time_shifts_average_the_image_and_its_shifts_in_every_format(
    tiny_splits: Splits, tmp_path: Path
) -> None:
    """Shifts alone, and shifts of the image and of its mirror (a model trained with
    `augment_flip`): the exported model averages exactly those views, in every format."""
    from tunelab.delivery.formats import FORMATS
    from tunelab.delivery.tta import SHIFTS, views_per_image, with_test_time_shifts

    config = flat_config(filters=4, dense_units=8, epochs=1, optimizer="adam")
    model = train_and_validate(config, tiny_splits, seed=1).model
    images = tiny_splits.test.x[:100].astype("float32")
    views = [images] + [shifted(images, down, right) for down, right in SHIFTS]
    mirror = images[:, :, ::-1]
    views_mirrored = views + [mirror] + [shifted(mirror, down, right) for down, right in SHIFTS]
    for mirrored, seen in ((False, views), (True, views_mirrored)):
        assert views_per_image(1, mirrored) == len(seen)
        tta = with_test_time_shifts(model, 1, mirrored=mirrored)
        expected = np.mean([np.asarray(model.predict(v, verbose=0)) for v in seen], axis=0)
        got = np.asarray(tta.predict(images, verbose=0))
        np.testing.assert_allclose(got, expected, atol=1e-5)
    for fmt in FORMATS:  # the mirrored model holds every kind of view layer
        check = write_and_check(tta, fmt, tmp_path, images, tiny_splits.test.y[:100], got)
        assert check.ok, (fmt, check.problem)


def rates(schedule: object, steps: range) -> np.ndarray:
    return np.array([float(schedule(step)) for step in steps])  # type: ignore[operator]


def test_restarts_run_the_whole_schedule_warm_up_included_once_per_cycle() -> None:
    import keras

    from tunelab.training.model import learning_rate

    base = {"optimizer": "adam", "learning_rate": 0.01, "lr_schedule": "cosine", "epochs": 6}
    single = learning_rate(TrainingConfig(**base, warmup_epochs=0.6), 10)
    restarted = learning_rate(TrainingConfig(**base, warmup_epochs=0.6, snapshot_cycles=3), 10)
    cycle = rates(restarted, range(0, 20))
    np.testing.assert_allclose(rates(restarted, range(20, 60)), np.tile(cycle, 2), atol=1e-7)
    # each cycle is the one-cycle schedule compressed: warm-up 2 of 20 steps, then a decay to ~0
    assert cycle[0] == 0.0 and cycle[2] == pytest.approx(0.01) and cycle[-1] < 1e-4
    shrunk = learning_rate(TrainingConfig(**{**base, "epochs": 2}, warmup_epochs=0.2), 10)
    np.testing.assert_allclose(cycle, rates(shrunk, range(20)), atol=1e-7)
    assert not np.allclose(rates(single, range(20)), cycle)
    # saved with an optimizer and loaded back, it is the same schedule
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(restarted))
    np.testing.assert_allclose(rates(again, range(60)), rates(restarted, range(60)), atol=1e-7)
    # fewer epochs than cycles: a shortened refit keeps at most one cycle per epoch
    assert TrainingConfig(**base, snapshot_cycles=3).with_epochs(2).snapshot_cycles == 2
    # a constant rate has nothing to restart: refused in a file, left alone for a refit
    with pytest.raises(ValueError, match="snapshot_cycles: restarts need a schedule"):
        TrainingConfig(**{**base, "lr_schedule": "constant"}, snapshot_cycles=3)
    constant = flat_config(optimizer="adam", learning_rate=0.01, epochs=6)
    assert constant.with_snapshot_cycles(3) == constant


@pytest.mark.slow
def test_a_refit_with_restarts_delivers_its_cycle_ends_as_distinct_ensemble_members(
    recorded_sweep: RecordedSweep, tiny_splits: Splits, tmp_path: Path
) -> None:
    from tunelab.delivery.export import export_model, resolve_source
    from tunelab.pipeline import ensemble_members
    from tunelab.record.recorded import load_recorded_run
    from tunelab.record.store import Tracker
    from tunelab.training.factory import serving_model

    tracker = Tracker(recorded_sweep.tracking_uri)
    source, sweep = resolve_source(tracker, "recorded")
    assert sweep is not None
    training = source.config.training.model_copy(update={"lr_schedule": "cosine"})
    source = replace(source, config=source.config.with_training(training))
    single = export_model(
        tracker,
        source,
        tiny_splits,
        out=tmp_path / "single",
        formats=("keras",),
        epochs=3,
        register=False,
        snapshot_cycles=3,
    )
    label = f"{source.label} refit"
    assert [m.label for m in single.snapshots] == [f"{label} snapshot 2/3", f"{label} snapshot 1/3"]
    # the record says how the refit trained
    assert load_recorded_run(tracker, single.run_id).config.training.snapshot_cycles == 3
    members = ensemble_members(tracker, sweep, source, single, 3)
    assert [m.label for m in members] == [label, *(m.label for m in single.snapshots)]
    images = tiny_splits.test.x[:300].astype(np.float32)
    labels = tiny_splits.test.y[:300]
    predicted = [
        np.asarray(serving_model(m.model, m.config).predict(images, verbose=0)) for m in members
    ]
    for first, second in combinations(predicted, 2):  # three different models of one training
        assert np.abs(first - second).max() > 1e-3
    for probabilities in predicted:  # each one trained (chance: 0.1), with settled statistics
        assert np.mean(probabilities.argmax(axis=1) == labels) > 0.3
