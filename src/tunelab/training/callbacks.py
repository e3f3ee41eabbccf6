"""Keras callbacks shared by every training path: step clock, NaN guard, metric sinks.

Callbacks here know nothing of MLflow or search libraries: tracking and the engines hand in plain
functions (`on_epoch(epoch, logs)`) and this module calls them at the end of each step (a Keras
epoch; see `tunelab.training.inputs`).
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np

from tunelab.interrupts import asked
from tunelab.record.names import MetricName
from tunelab.record.results import EpochSink

LOSS = "loss"


class StepClock(keras.callbacks.Callback):  # type: ignore[misc]
    """Adds the step's timing and position to its logs.

    `epoch_seconds` (the whole step, validation included), `validation_seconds`,
    `images_per_second` (training only), `learning_rate` and `images_seen` (the pruning step).
    It must come first in the callback list: Keras hands the same logs dict to every callback
    in order, so the later ones (tracking, pruning, progress, History) see these values.
    """

    def __init__(self, images: int, images_seen: int) -> None:
        super().__init__()
        self.images, self.images_seen = images, images_seen
        self._start = self._test_start = time.perf_counter()
        self.validation_seconds = 0.0
        self.train_seconds = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._start = time.perf_counter()
        self.validation_seconds = 0.0

    def on_test_begin(self, logs: dict[str, float] | None = None) -> None:
        self._test_start = time.perf_counter()

    def on_test_end(self, logs: dict[str, float] | None = None) -> None:
        self.validation_seconds += time.perf_counter() - self._test_start

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        seconds = time.perf_counter() - self._start
        self.train_seconds = max(1e-9, seconds - self.validation_seconds)
        if logs is None:
            return
        logs[MetricName.EPOCH_SECONDS] = seconds
        logs[MetricName.VALIDATION_SECONDS] = self.validation_seconds
        logs[MetricName.IMAGES_PER_SECOND] = self.images / self.train_seconds
        logs[MetricName.IMAGES_SEEN] = float(self.images_seen)
        logs[MetricName.LEARNING_RATE] = float(np.asarray(self.model.optimizer.learning_rate))


class StopWhenAsked(keras.callbacks.Callback):  # type: ignore[misc]
    """Raises KeyboardInterrupt at the next batch once a signal asked this process to stop
    (`tunelab.interrupts`): the stop cannot be lost in a finaliser."""

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if asked():
            raise KeyboardInterrupt

    on_test_batch_end = on_train_batch_end


class NonFiniteLossGuard(keras.callbacks.Callback):  # type: ignore[misc]
    """Stops training at the first NaN/inf batch loss and remembers where it happened."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        loss = (logs or {}).get(LOSS)
        if loss is not None and not math.isfinite(float(loss)):
            self.reason = f"loss became {float(loss)} at epoch {self._epoch + 1}, batch {batch + 1}"
            self.model.stop_training = True


def fan_out(*sinks: EpochSink) -> EpochSink:
    """One sink that hands every epoch to each of `sinks` (a run's log and a progress line)."""

    def each(epoch: int, logs: dict[str, float]) -> None:
        for sink in sinks:
            sink(epoch, logs)

    return each


class EpochSinkCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Hands each finished epoch (1-based) and a copy of its numeric logs to a plain function."""

    def __init__(self, sink: EpochSink) -> None:
        super().__init__()
        self._sink = sink

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        numeric = {
            k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float, np.number))
        }
        self._sink(epoch + 1, numeric)
