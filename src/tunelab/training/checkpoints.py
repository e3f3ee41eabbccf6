"""Per-step checkpoints kept with the training's MLflow run, where every worker can reach them.

After each validation step that is not the last, a training saves one zip: the model's weights
(`model.weights.h5`), its optimizer's variables (`optimizer.npz`: moments and the step counter,
so the schedule goes on where it was) and `state.json` (the step, the history so far, the
seconds spent). Only numbers are stored, never code: a checkpoint is restored into a model the
experiment's factory builds again (architecture rule 10), whatever layers that model has. One
file holds all three, so they cannot disagree: a
process killed while a checkpoint is being written leaves the previous, complete one, and
`load_checkpoint` skips a zip that does not read back whole. The zip is an artifact of the
training's run (`checkpoint/step_00007.zip`); with a tracking server those are served to every
machine, on the embedded store they are local files beside the SQLite database. The previous
zip is deleted only after the new one is stored; `remove_checkpoints` deletes them all once the
training has ended. A checkpoint that cannot be stored (the artifact store's disk full, the
server gone past its retries) does not stop the training: the writer says so once, through
`on_failure`, and stores no more for that training, whose last stored checkpoint stays usable.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.record.names import Artifact
from tunelab.record.store import STORE_ERRORS, Tracker
from tunelab.text import describe_exception

WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE = "model.weights.h5", "optimizer.npz", "state.json"
FILES = (WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE)


def _zip_name(step: int) -> str:
    return f"step_{step:05d}.zip"


@dataclass(frozen=True)
class Checkpoint:
    """The last step a training finished: its saved model and its history up to that step."""

    run_id: str
    folder: Path  # where the zip was unpacked
    step: int
    history: dict[str, list[float]]
    seconds: float

    def restore(self, model: Any) -> None:
        """Put the saved weights and optimizer state into `model` (built by the factory)."""
        restore_state(model, self.folder)


def save_state(model: Any, folder: Path) -> None:
    """The model's weights and its optimizer's variables, as files in `folder`."""
    model.save_weights(folder / WEIGHTS_FILE)
    optimizer = getattr(model, "optimizer", None)
    values = [np.asarray(v) for v in optimizer.variables] if optimizer is not None else []
    np.savez(folder / OPTIMIZER_FILE, *values)


def restore_state(model: Any, folder: Path) -> None:
    """The inverse of `save_state`, into a model with the same layers (and optimizer)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        # built first: the weights file holds the optimizer's variables too, and Keras skips
        # them (with a warning) when the optimizer has none yet
        optimizer.build(model.trainable_variables)
    model.load_weights(folder / WEIGHTS_FILE)
    if optimizer is None:
        return
    with np.load(folder / OPTIMIZER_FILE, allow_pickle=False) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    variables = list(optimizer.variables)
    if len(values) != len(variables):
        raise ValueError(
            f"the checkpoint has {len(values)} optimizer variables, the model {len(variables)}"
        )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


class CheckpointWriter:
    """Saves a training's state after each step as one zip artifact of `run_id`."""

    def __init__(
        self,
        tracker: Tracker,
        run_id: str,
        on_failure: Callable[[str], None] = lambda why: None,
    ) -> None:
        self.tracker, self.run_id, self.on_failure = tracker, run_id, on_failure
        self.failed: str | None = None  # why a checkpoint could not be stored (then none is)

    def save(self, model: Any, step: int, history: dict[str, list[float]], seconds: float) -> None:
        if self.failed is not None:
            return
        try:
            self._store(model, step, history, seconds)
        except STORE_ERRORS as error:
            self.failed = describe_exception(error)
            self.on_failure(
                f"checkpoint of step {step} not stored ({self.failed}); training goes on without "
                "checkpoints (stopped now, it would continue from its last stored one)"
            )

    def _store(
        self, model: Any, step: int, history: dict[str, list[float]], seconds: float
    ) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            save_state(model, folder)
            state = {"step": step, "history": history, "seconds": seconds}
            (folder / STATE_FILE).write_text(json.dumps(state))
            archive = folder / _zip_name(step)
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as bundle:
                for name in FILES:
                    bundle.write(folder / name, name)
            self.tracker.client.log_artifact(self.run_id, str(archive), Artifact.CHECKPOINT_DIR)
        for older in self.tracker.list_artifacts(self.run_id, Artifact.CHECKPOINT_DIR):
            if not older.endswith(_zip_name(step)):
                self.tracker.delete_artifacts(self.run_id, older)


def load_checkpoint(tracker: Tracker, run_id: str, folder: Path) -> Checkpoint | None:
    """The newest complete checkpoint of `run_id`, unpacked under `folder`; None if it has none."""
    stored = sorted(tracker.list_artifacts(run_id, Artifact.CHECKPOINT_DIR), reverse=True)
    for path in stored:
        target = folder / Path(path).stem
        try:
            local = tracker.download_artifact(run_id, path, folder / "download")
            if local is None:
                continue
            with zipfile.ZipFile(local) as bundle:
                if bundle.testzip() is not None:
                    continue
                bundle.extractall(target)
            state = json.loads((target / STATE_FILE).read_text())
            if not all((target / name).is_file() for name in FILES):
                continue
            return Checkpoint(
                run_id, target, int(state["step"]), state["history"], float(state["seconds"])
            )
        except (zipfile.BadZipFile, json.JSONDecodeError, KeyError, OSError, ValueError):
            shutil.rmtree(target, ignore_errors=True)
            continue  # written by a process that was killed: the one before is whole
    return None


def keep_model(tracker: Tracker, run_id: str, model: Any) -> None:
    """Keep a finished training's weights with its run (`trained/model.weights.h5`): an
    ensemble member, rebuilt later by its factory from the run's config."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(Artifact.TRAINED_MODEL).name
        model.save_weights(path)
        tracker.client.log_artifact(run_id, str(path), str(Path(Artifact.TRAINED_MODEL).parent))


def remove_checkpoints(tracker: Tracker, *run_ids: str) -> None:
    """Delete the checkpoints of finished trainings (their runs keep everything else)."""
    for run_id in run_ids:
        if tracker.list_artifacts(run_id, Artifact.CHECKPOINT_DIR):
            tracker.delete_artifacts(run_id, Artifact.CHECKPOINT_DIR)
