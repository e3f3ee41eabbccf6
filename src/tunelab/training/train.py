"""The one training function every path uses (baseline, Optuna, KerasTuner, refit).

`train_and_validate` builds the model from its config, feeds the training and validation splits
through tf.data, and returns a typed `TrialResult`: per-epoch history (with wall time and
learning rate per epoch), best and last validation accuracy, and a failure reason if the loss
went NaN/inf or memory ran out. It never reads the test split; `evaluate_test` does, and only the
baseline and export call it (architecture rule 1).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from tunelab.training.callbacks import EpochClock, NonFiniteLossGuard
from tunelab.define.cnn import CnnConfig, build_cnn, count_parameters, steps_per_epoch
from tunelab.define.data import Split, Splits

# Keys of the per-epoch logs as Keras names them (EpochClock adds epoch_seconds, learning_rate).
LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY = "loss", "accuracy", "val_loss", "val_accuracy"
COMPLETED, FAILED = "completed", "failed"


@dataclass
class TrialResult:
    """What one training produced. `history[key][i]` belongs to epoch i + 1."""

    config: CnnConfig
    status: str
    history: dict[str, list[float]]
    param_count: int
    wall_seconds: float
    seed: int
    failure_reason: str | None = None
    model: Any = field(default=None, repr=False)

    @property
    def epochs_trained(self) -> int:
        """Epochs in the history (a refit without validation has only training metrics)."""
        return len(self.history.get(VAL_ACCURACY) or self.history.get(LOSS, []))

    @property
    def best_epoch(self) -> int | None:
        """1-based epoch of the highest validation accuracy (first one on ties)."""
        values = self.history.get(VAL_ACCURACY, [])
        return int(np.argmax(values)) + 1 if values else None

    @property
    def best_val_accuracy(self) -> float | None:
        values = self.history.get(VAL_ACCURACY, [])
        return max(values) if values else None

    @property
    def last_val_accuracy(self) -> float | None:
        values = self.history.get(VAL_ACCURACY, [])
        return values[-1] if values else None

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED


@dataclass(frozen=True)
class TestEvaluation:
    """Test-set accuracy, per-image class probabilities and predicted classes (for McNemar)."""

    accuracy: float
    loss: float
    probabilities: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]

    @property
    def predictions(self) -> npt.NDArray[np.int64]:
        return np.asarray(np.argmax(self.probabilities, axis=1), dtype=np.int64)

    @property
    def correct(self) -> int:
        return int(np.sum(self.predictions == self.labels))

    @property
    def errors(self) -> int:
        return len(self.labels) - self.correct


def make_dataset(split: Split, batch_size: int, *, shuffle: bool, seed: int) -> Any:
    """uint8 images -> float32 (N, 28, 28, 1) batches: cache, shuffle, batch, prefetch."""
    data = tf.data.Dataset.from_tensor_slices((split.x[..., np.newaxis], split.y))
    data = data.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if shuffle:
        data = data.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _to_float(x: Any, y: Any) -> tuple[Any, Any]:
    return tf.cast(x, tf.float32), y


def train_and_validate(
    cfg: CnnConfig,
    splits: Splits,
    callbacks: Sequence[Any] = (),
    seed: int = 0,
    *,
    epochs: int | None = None,
    initial_epoch: int = 0,
    initial_weights: str | None = None,
    resume_model: str | None = None,
    earlier_history: dict[str, list[float]] | None = None,
    verbose: int = 0,
) -> TrialResult:
    """Train `cfg` on splits.train, validating on splits.val after every epoch.

    Args:
        cfg: the model and training configuration.
        splits: the data; its test split is never touched here. An empty validation split
            (`Splits.for_refit()`) trains on everything without validating.
        callbacks: Keras callbacks (tracking, pruning, progress); they receive per-epoch logs
            that include `epoch_seconds` and `learning_rate`.
        seed: seeds Python, NumPy and TensorFlow, and the shuffle order.
        epochs: train this many epochs instead of cfg.epochs (Hyperband rounds).
        initial_epoch: resume numbering from here (epochs already trained elsewhere).
        initial_weights: a `.weights.h5` file to start from (a Hyperband round continuing an
            earlier round's model), instead of fresh initial weights.
        resume_model: a `.keras` checkpoint (weights and optimizer state) to continue training
            from at `initial_epoch`, instead of building the model afresh.
        earlier_history: the history of the epochs before `initial_epoch` (a resumed trial),
            prepended to the result's history so that best/last accuracy cover every epoch.
        verbose: Keras' own progress output (0: none; tunelab shows its own).

    Returns:
        A TrialResult; status "failed" with a reason for a NaN/inf loss or exhausted memory.
        Exceptions raised by callbacks (for example a pruning signal) propagate.
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    guard = NonFiniteLossGuard()
    status, reason, history, model = COMPLETED, None, {}, None
    try:
        if resume_model is not None:
            model = keras.saving.load_model(resume_model)
        else:
            model = build_cnn(cfg, steps_per_epoch(len(splits.train), cfg.batch_size))
        if initial_weights is not None:
            model.load_weights(initial_weights)
        fit = model.fit(
            make_dataset(splits.train, cfg.batch_size, shuffle=True, seed=seed),
            validation_data=(
                make_dataset(splits.val, max(cfg.batch_size, 512), shuffle=False, seed=seed)
                if len(splits.val)
                else None
            ),
            epochs=epochs if epochs is not None else cfg.epochs,
            initial_epoch=initial_epoch,
            shuffle=False,  # the tf.data pipeline shuffles, seeded
            callbacks=[EpochClock(), guard, *callbacks],
            verbose=verbose,
        )
        earlier = earlier_history or {}
        history = {
            key: [*earlier.get(key, []), *(float(v) for v in fit.history.get(key, []))]
            for key in {**earlier, **fit.history}
        }
    except tf.errors.ResourceExhaustedError as error:
        status, reason = FAILED, f"out of memory: {str(error).splitlines()[0][:200]}"
    if guard.reason is not None:
        status, reason = FAILED, guard.reason
    return TrialResult(
        config=cfg,
        status=status,
        history=history,
        param_count=count_parameters(cfg),
        wall_seconds=time.perf_counter() - started,
        seed=seed,
        failure_reason=reason,
        model=model,
    )


def evaluate_test(model: Any, splits: Splits, batch_size: int = 1024) -> TestEvaluation:
    """Evaluate on the test split. Only the baseline and export may call this (rule 1)."""
    dataset = make_dataset(splits.test, batch_size, shuffle=False, seed=0)
    loss, _ = model.evaluate(dataset, verbose=0)
    probabilities = np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == splits.test.y))
    return TestEvaluation(
        accuracy=accuracy, loss=float(loss), probabilities=probabilities, labels=splits.test.y
    )
