"""Per-step checkpoints kept with the training's MLflow run, where every worker can reach them.

After each validation step that is not the last, a training saves one zip: the whole model
(`model.keras`: weights and optimizer state, schedule position included) and `state.json` (the
step, the history so far, the seconds spent). One file holds both, so they cannot disagree: a
process killed while a checkpoint is being written leaves the previous, complete one, and
`load_checkpoint` skips a zip that does not read back whole. The zip is an artifact of the
training's run (`checkpoint/step_00007.zip`); with a tracking server those are served to every
machine, on the embedded store they are local files beside the SQLite database. The previous
zip is deleted only after the new one is stored; `remove_checkpoints` deletes them all once the
training has ended.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.record.names import Artifact
from tunelab.record.store import Tracker

MODEL_FILE, STATE_FILE = "model.keras", "state.json"


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

    @property
    def model_file(self) -> str:
        return str(self.folder / MODEL_FILE)


class CheckpointWriter:
    """Saves a training's state after each step as one zip artifact of `run_id`."""

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker, self.run_id = tracker, run_id

    def save(self, model: Any, step: int, history: dict[str, list[float]], seconds: float) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            model.save(folder / MODEL_FILE)
            state = {"step": step, "history": history, "seconds": seconds}
            (folder / STATE_FILE).write_text(json.dumps(state))
            archive = folder / _zip_name(step)
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as bundle:
                bundle.write(folder / MODEL_FILE, MODEL_FILE)
                bundle.write(folder / STATE_FILE, STATE_FILE)
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
            if not (target / MODEL_FILE).is_file():
                continue
            return Checkpoint(
                run_id, target, int(state["step"]), state["history"], float(state["seconds"])
            )
        except (zipfile.BadZipFile, json.JSONDecodeError, KeyError, OSError, ValueError):
            shutil.rmtree(target, ignore_errors=True)
            continue  # written by a process that was killed: the one before is whole
    return None


def keep_model(tracker: Tracker, run_id: str, model: Any) -> None:
    """Keep a finished training's model with its run (`trained/model.keras`): an ensemble member."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(Artifact.TRAINED_MODEL).name
        model.save(path)
        tracker.client.log_artifact(run_id, str(path), str(Path(Artifact.TRAINED_MODEL).parent))


def remove_checkpoints(tracker: Tracker, *run_ids: str) -> None:
    """Delete the checkpoints of finished trainings (their runs keep everything else)."""
    for run_id in run_ids:
        if tracker.list_artifacts(run_id, Artifact.CHECKPOINT_DIR):
            tracker.delete_artifacts(run_id, Artifact.CHECKPOINT_DIR)
