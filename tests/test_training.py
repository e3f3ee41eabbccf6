"""train_and_validate: per-epoch history with timings, NaN losses end a training as failed."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import flat_config
from tunelab.define.data import Splits
from tunelab.record.results import FAILED
from tunelab.training.callbacks import EpochSinkCallback
from tunelab.training.inputs import Augmenter
from tunelab.training.train import evaluate_test, train_and_validate

SMALL = flat_config(filters=8, dense_units=32, epochs=2, batch_size=64)


@pytest.mark.slow
def test_history_has_every_epoch_with_wall_time_and_learning_rate(tiny_splits: Splits) -> None:
    seen: list[tuple[int, dict[str, float]]] = []
    result = train_and_validate(
        SMALL,
        tiny_splits,
        callbacks=[EpochSinkCallback(lambda epoch, logs: seen.append((epoch, logs)))],
    )
    assert result.ok and result.failure_reason is None
    assert result.epochs_trained == 2
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "learning_rate"):
        assert len(result.history[key]) == 2, key
    assert [epoch for epoch, _ in seen] == [1, 2]
    assert all(logs["epoch_seconds"] > 0 for _, logs in seen)
    assert result.best_val_accuracy == max(result.history["val_accuracy"])
    assert result.best_val_accuracy > 0.5  # it learns: 10 classes, chance is 0.1
    assert result.param_count == result.model.count_params()


@pytest.mark.slow
def test_same_seed_same_result(tiny_splits: Splits) -> None:
    # a config no other test trains: its first training in this process also counts its cost
    cfg = flat_config(filters=7, dense_units=31, epochs=1, batch_size=64)
    first = train_and_validate(cfg, tiny_splits, seed=3)
    second = train_and_validate(cfg, tiny_splits, seed=3)
    assert first.history["val_accuracy"] == second.history["val_accuracy"]


class PoisonWeights(keras.callbacks.Callback):  # type: ignore[misc]
    """Sets the output layer's weights to NaN after batch 3, as a diverging optimiser would.

    (The output layer: ReLU after a conv layer turns NaN into 0 in TensorFlow's CPU kernels.)
    """

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if batch == 3:
            layer = [layer for layer in self.model.layers if layer.weights][-1]
            layer.set_weights([np.full(w.shape, np.nan, w.dtype) for w in layer.get_weights()])


@pytest.mark.slow
def test_nan_loss_ends_the_training_as_failed_with_its_reason(tiny_splits: Splits) -> None:
    result = train_and_validate(SMALL, tiny_splits, callbacks=[PoisonWeights()])
    assert result.status == FAILED
    assert result.failure_reason is not None
    assert result.failure_reason.startswith("loss became nan at epoch 1, batch")
    assert result.epochs_trained <= 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "values",
    [
        {"optimizer": "adam"},
        {"optimizer": "adamw", "weight_decay": 0.01, "weight_averaging": "ema",
         "label_smoothing": 0.1, "lr_schedule": "one_cycle", "augment_cutout": 0.3},
        {"optimizer": "sgd", "momentum": 0.9, "weight_averaging": "swa", "snapshot_cycles": 2,
         "lr_schedule": "cosine"},
    ],
    ids=["adam", "adamw-ema-smoothing", "sgd-swa-restarts"],
)  # fmt: skip
def test_no_variable_is_made_inside_a_traced_step(
    values: dict[str, Any], tiny_splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorFlow traces a step that makes variables twice: the optimizer's, the metrics' and
    the averages' are all made before the first traced step."""
    from keras.src.backend.tensorflow import core

    made_inside: list[str] = []
    initialize = core.Variable._initialize

    def watched(variable: Any, value: Any) -> None:
        if tf.inside_function():
            made_inside.append(variable.path)
        initialize(variable, value)

    monkeypatch.setattr(core.Variable, "_initialize", watched)
    config = flat_config(filters=4, dense_units=8, epochs=2, batch_size=256, **values)
    assert train_and_validate(config, tiny_splits).ok
    assert made_inside == []


@pytest.mark.slow
def test_evaluate_test_reports_per_image_predictions(tiny_splits: Splits) -> None:
    result = train_and_validate(SMALL.with_epochs(1), tiny_splits)
    test = evaluate_test(result.model, tiny_splits)
    assert test.predictions.shape == (1000,)
    assert test.accuracy == float(np.mean(test.predictions == tiny_splits.test.y))


@pytest.mark.slow
def test_a_refit_without_validation_counts_its_epochs(tiny_splits: Splits) -> None:
    cfg = flat_config(filters=4, dense_units=8, epochs=2, batch_size=256)
    result = train_and_validate(cfg, tiny_splits.for_refit(), seed=0)
    assert result.ok and result.epochs_trained == 2 and result.best_val_accuracy is None


def test_a_fresh_session_frees_the_last_model_and_walks_only_what_trainings_made() -> None:
    import gc
    import weakref

    from tunelab.training.session import fresh_session

    def trained_model() -> Any:
        model = keras.Sequential(
            [keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten()]
        )
        model.add(keras.layers.Dense(3))
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(np.zeros((4, 8, 8, 1)), np.zeros(4), verbose=0)
        return model

    fresh_session()
    last = weakref.ref(trained_model())
    assert last() is not None  # kept alive by its own reference cycles until collected
    fresh_session()
    assert last() is None  # the next model starts without the last one's memory
    # the objects the process held at its first fresh session (TensorFlow's, Keras', the
    # clients': hundreds of thousands) were set aside once: no collection walks them again
    assert gc.get_freeze_count() > 100_000


def augmented(
    images: np.ndarray[Any, Any], number: int = 5, seed: int = 3, **settings: Any
) -> np.ndarray[Any, Any]:
    """One training batch (`number` of the training) as the augmentation hands it to the model."""
    training = flat_config(**settings).training
    augment = Augmenter(training, images.shape[1:3], seed)
    x, _ = augment(tf.constant(number, tf.int64), (tf.constant(images), tf.zeros(len(images))))
    return np.asarray(x)


def digits(tiny_splits: Splits, count: int = 64) -> np.ndarray[Any, Any]:
    return np.asarray(tiny_splits.train.x[:count])


def test_mirroring_turns_about_half_the_images_and_leaves_the_shifts_as_they_were(
    tiny_splits: Splits,
) -> None:
    images, settings = digits(tiny_splits), {"augment_translation": 0.1, "augment_flip": True}
    shifted = augmented(images, augment_translation=0.1)
    both = augmented(images, **settings)
    mirrored = [
        bool(np.array_equal(b, s[:, ::-1])) and not np.array_equal(b, s)
        for b, s in zip(both, shifted, strict=True)
    ]
    kept = [bool(np.array_equal(b, s)) for b, s in zip(both, shifted, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))  # the same shift, or mirrored
    assert 16 <= sum(mirrored) <= 48  # about half of 64
    assert np.array_equal(both, augmented(images, **settings))  # a function of seed and batch
    assert not np.array_equal(both, augmented(images, 6, **settings))


def test_cutout_blacks_out_one_square_of_the_asked_side_in_each_image() -> None:
    white = np.full((64, 28, 28, 1), 255, dtype=np.uint8)
    cut = augmented(white, augment_cutout=0.25)[..., 0]  # a 7x7 square: 0.25 of 28
    for image in cut:
        rows, columns = np.nonzero(image == 0)
        assert len(rows) > 0
        top, bottom, left, right = rows.min(), rows.max(), columns.min(), columns.max()
        assert np.all(image[top : bottom + 1, left : right + 1] == 0)  # one solid rectangle
        assert len(rows) == (bottom - top + 1) * (right - left + 1) <= 49
        assert np.all(image[image != 0] == 255)  # the rest untouched
    whole = [int(np.sum(image == 0)) == 49 for image in cut]  # away from the borders
    assert sum(whole) >= 16
    places = {tuple(np.argwhere(image == 0)[0]) for image in cut}
    assert len(places) > 16  # the square moves from image to image


@pytest.mark.slow
def test_a_training_with_mirrors_and_cutout_learns(tiny_splits: Splits) -> None:
    config = flat_config(
        filters=8, dense_units=32, epochs=2, batch_size=64, augment_flip=True, augment_cutout=0.2
    )
    result = train_and_validate(config, tiny_splits, seed=1)
    assert result.ok and result.best_val_accuracy > 0.3
