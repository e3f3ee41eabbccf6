"""Snapshot members: the weights at the end of each learning-rate cycle but the last.

With `snapshot_cycles: K` a training's schedule restarts K times (`training.model.Restarts`);
each cycle ends with a low rate at a different minimum, and the weights there are a model in
their own right (Huang et al. 2017, "Snapshot Ensembles: Train 1, get M for free"). The last
cycle's end is the trained model itself; the K - 1 earlier ends are kept here, in memory, and
become ensemble members after their batch-norm statistics are recomputed for their weights.

A training continued from a checkpoint keeps only the snapshots taken after it resumed.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import numpy.typing as npt

from tunelab.define.training import TrainingConfig
from tunelab.training.model import cycle_steps

Weights = list[npt.NDArray[Any]]


class SnapshotTaker(keras.callbacks.Callback):  # type: ignore[misc]
    """Copies every weight of the model when the optimizer completes a cycle (not the last).

    The optimizer's step count is read once per training step (`fit` call), not per batch:
    a read waits for the device, and batches only count up from there."""

    def __init__(self, training: TrainingConfig, steps_per_epoch: int) -> None:
        super().__init__()
        cycle = cycle_steps(training, steps_per_epoch)
        self.ends = {cycle * k for k in range(1, training.snapshot_cycles)}
        self.snapshots: list[Weights] = []
        self.done = 0  # optimizer steps completed

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.done = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.done += 1
        if self.done in self.ends:
            self.snapshots.append([np.array(w, copy=True) for w in self.model.get_weights()])
