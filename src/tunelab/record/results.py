"""What a training and a test evaluation produce, as plain data (no TensorFlow needed to read it).

`tunelab.training` fills these in; the record layer logs them and the analysis reads them back,
so they live here, below both, with nothing heavier than NumPy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tunelab.define.run_config import RunConfig

# Keys of the per-epoch logs as Keras names them; tunelab adds the clock's keys (see names.py).
LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY = "loss", "accuracy", "val_loss", "val_accuracy"
COMPLETED, FAILED, PAUSED = "completed", "failed", "paused"

EpochSink = Callable[[int, dict[str, float]], None]


@dataclass
class TrialResult:
    """What one training produced. `history[key][i]` belongs to epoch (validation step) i + 1.

    `status` is completed, failed (with `failure_reason`) or paused: stopped at a deadline before
    its last epoch, its checkpoint holding what it trained so far.
    """

    config: RunConfig
    status: str
    history: dict[str, list[float]]
    param_count: int
    wall_seconds: float
    seed: int
    failure_reason: str | None = None
    model: Any = field(default=None, repr=False)
    resumed_from_epoch: int = 0  # epochs restored from a checkpoint before this training ran
    measured_flop_rate: float | None = None  # training FLOP/s achieved (next estimates use it)
    # every weight at the end of each learning-rate cycle but the last (`snapshot_cycles`)
    snapshots: list[list[Any]] = field(default_factory=list, repr=False)

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
    def images_per_second(self) -> float | None:
        """Training images per second over the whole training (validation time excluded)."""
        seen = self.history.get("images_seen", [])
        seconds = self.history.get("epoch_seconds", [])
        validating = self.history.get("validation_seconds", [0.0] * len(seconds))
        training = sum(seconds) - sum(validating)
        return seen[-1] / training if seen and training > 0 else None

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED

    @property
    def paused(self) -> bool:
        return self.status == PAUSED


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
