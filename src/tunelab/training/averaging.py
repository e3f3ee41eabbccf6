"""Weight averaging at almost no extra training: EMA and SWA of the trainable weights.

`weight_averaging: ema` keeps an exponential moving average of the trainable weights, updated
after every batch (`ema_momentum`); `swa` averages the weights at the end of each epoch of the
last `swa_share` of the schedule (Izmailov et al. 2018: +0.3 points on CIFAR-10 at the same
budget). Either way the average replaces the weights just before the training's last
validation (or at its end, for a refit that does not validate), and the batch-norm statistics
are then recomputed for the averaged weights (`tunelab.training.batch_norm`): the model a trial
is scored with, and the one export delivers, is the averaged one.

The averages live in memory: a training continued from a checkpoint starts them again at the
step it resumes (its schedule and data order continue exactly; the average covers fewer steps).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import numpy.typing as npt

from tunelab.define.training import TrainingConfig
from tunelab.training.batch_norm import recompute_batch_norm


class WeightAverage(keras.callbacks.Callback):  # type: ignore[misc]
    """EMA after every batch, or SWA at epoch ends inside the averaging window; the average
    replaces the trainable weights before the last step's validation (or at its end).

    The training loop says what each step is (`begin_step`); the callback must come before the
    batch-norm recomputation in the callback list, which then settles the statistics for the
    averaged weights.
    """

    def __init__(self, training: TrainingConfig, images: npt.NDArray[Any]) -> None:
        super().__init__()
        self.kind = training.weight_averaging
        self.momentum = training.ema_momentum
        self.first_swa_epoch = first_swa_epoch(training)
        self.images = images  # for the batch-norm statistics of a training that does not validate
        self.average: list[npt.NDArray[Any]] | None = None
        self.count = 0
        self.epoch: int | None = None  # the epoch this step ends, if it ends one
        self.last = False
        self.taken = False

    def begin_step(self, ends_epoch: int | None, last: bool) -> None:
        """The loop's next step ends epoch `ends_epoch` (None: a rung inside an epoch)."""
        self.epoch, self.last, self.taken = ends_epoch, last, False

    def _weights(self) -> list[npt.NDArray[Any]]:
        return [np.asarray(v) for v in self.model.trainable_variables]

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.kind != "ema":
            return
        weights = self._weights()
        if self.average is None:
            self.average = weights
            return
        m = self.momentum
        self.average = [m * a + (1 - m) * w for a, w in zip(self.average, weights, strict=True)]

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._step_trained()
        if self.last:
            self._swap_in()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._step_trained()  # a training without validation: here, after its batches
        if self.last and self._swap_in():
            recompute_batch_norm(self.model, self.images)

    def _step_trained(self) -> None:
        """SWA takes the weights of an epoch end inside its window (once per step)."""
        if self.taken or self.kind != "swa" or self.epoch is None:
            return
        self.taken = True
        if self.epoch < self.first_swa_epoch:
            return
        weights = self._weights()
        self.count += 1
        if self.average is None:
            self.average = weights
            return
        share = 1.0 / self.count
        self.average = [a + share * (w - a) for a, w in zip(self.average, weights, strict=True)]

    def _swap_in(self) -> bool:
        if self.average is None:
            return False
        for variable, value in zip(self.model.trainable_variables, self.average, strict=True):
            variable.assign(value)
        self.average = None  # swapped once
        return True


def first_swa_epoch(training: TrainingConfig) -> int:
    """The first epoch whose end SWA averages (the last `swa_share` of the schedule)."""
    window = max(1, round(training.swa_share * training.epochs))
    return training.epochs - window + 1
