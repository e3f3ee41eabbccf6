"""Per-epoch checkpoints, so that a trial killed mid-way resumes instead of starting over.

While a sweep trial trains, `EpochCheckpoint` saves the whole model (weights and optimizer
state, Keras' `.keras` format) and the history so far after every epoch, atomically (write,
then rename), under `tracking/checkpoints/<study>/trial_<number>/`. When the trial's worker dies,
Optuna retries the trial as a new trial; that trial finds the dead one's checkpoint with
`load_checkpoint`, continues from the next epoch, and `remove` deletes both folders once the
trial has finished (complete, pruned or failed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

DEFAULT_ROOT = Path("tracking/checkpoints")
MODEL_FILE, STATE_FILE = "model.keras", "state.json"


def trial_folder(root: Path, study: str, number: int) -> Path:
    return root / study / f"trial_{number}"


@dataclass(frozen=True)
class Checkpoint:
    """The last epoch a trial finished, its saved model and its history up to that epoch."""

    folder: Path
    epoch: int
    history: dict[str, list[float]]
    seconds: float

    @property
    def model_file(self) -> str:
        return str(self.folder / MODEL_FILE)


class EpochCheckpoint(keras.callbacks.Callback):  # type: ignore[misc]
    """Save model and history after every epoch (history includes a resumed run's earlier part)."""

    def __init__(self, folder: Path, earlier: Checkpoint | None = None) -> None:
        super().__init__()
        self.folder = folder
        self.history: dict[str, list[float]] = {
            k: list(v) for k, v in (earlier.history if earlier else {}).items()
        }
        self.seconds = earlier.seconds if earlier else 0.0

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.seconds += float((logs or {}).get("epoch_seconds", 0.0))
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{MODEL_FILE}.partial.keras"
        self.model.save(partial)
        os.replace(partial, self.folder / MODEL_FILE)
        state = {"epoch": epoch + 1, "history": self.history, "seconds": self.seconds}
        partial_state = self.folder / f".{STATE_FILE}.partial"
        partial_state.write_text(json.dumps(state))
        os.replace(partial_state, self.folder / STATE_FILE)


def load_checkpoint(folder: Path) -> Checkpoint | None:
    """The checkpoint in `folder`, or None if there is none (or it is incomplete)."""
    state_file, model_file = folder / STATE_FILE, folder / MODEL_FILE
    if not (state_file.is_file() and model_file.is_file()):
        return None
    try:
        state: dict[str, Any] = json.loads(state_file.read_text())
    except json.JSONDecodeError:
        return None
    return Checkpoint(folder, int(state["epoch"]), state["history"], float(state["seconds"]))


def remove(*folders: Path) -> None:
    """Delete trial checkpoint folders, and their study folder once it is empty."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # fails while other trials of the study keep checkpoints
