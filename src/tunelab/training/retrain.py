"""Retrain a recorded configuration and record the retraining next to the original.

Two commands need this: `tunelab reproduce RUN_ID` (the recorded seed again: does the reported
best model come back?) and `tunelab confirm` / `tunelab run` (other seeds: is the winner better,
or lucky?). Both train the recorded config on the recorded split with `train_and_validate`,
validation only, and record a run nested under the original sweep's parent run, with a role
that keeps it out of the sweep's trial counts (`tunelab.role` = reproduction or confirmation)
and a tag naming the run it retrains.

A retraining checkpoints after every step on its own run, stops at a deadline (paused), and an
interrupted or paused one is continued in the same run by the next call with the same original
and seed. A confirmation can keep its trained model (`trained/model.keras`) to serve later as a
member of an ensemble, so that no configuration is trained twice for the same purpose.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.define.data import Splits
from tunelab.define.run_config import RunConfig
from tunelab.record.names import MetricName, Role, TagKey
from tunelab.record.query import Query
from tunelab.record.recorded import RecordedRun, load_recorded_run
from tunelab.record.results import LOSS, VAL_ACCURACY, VAL_LOSS, TrialResult
from tunelab.record.store import RunHandle, Tracker
from tunelab.training.callbacks import EpochSinkCallback, fan_out
from tunelab.training.checkpoints import (
    CheckpointWriter,
    load_checkpoint,
    remove_checkpoints,
)
from tunelab.training.checkpoints import keep_model as keep_trained_model
from tunelab.training.deadline import Deadline
from tunelab.training.progress import ProgressFactory, no_progress
from tunelab.training.train import train_and_validate

COMPARED_KEYS = (LOSS, VAL_LOSS, VAL_ACCURACY)


@dataclass(frozen=True)
class Retraining:
    """One retraining of a recorded run: its result, its run, and the recorded score."""

    original: RecordedRun
    result: TrialResult
    run_id: str
    role: str
    epoch_differences: dict[str, float]  # largest per-epoch |retrained - recorded|, by metric

    @property
    def best_val_accuracy(self) -> float | None:
        return self.result.best_val_accuracy

    @property
    def difference(self) -> float | None:
        """Retrained minus recorded best validation accuracy."""
        recorded, retrained = self.original.best_val_accuracy, self.best_val_accuracy
        if recorded is None or retrained is None:
            return None
        return retrained - recorded


def epochs_to_retrain(tracker: Tracker, original: RecordedRun) -> int:
    """Epochs the recorded model had trained when it was scored.

    A Hyperband round that continued an earlier round numbers its epochs on; retraining from
    scratch trains up to its last epoch number. A pruned trial trained only up to its pruning.
    Steps inside the first epoch (data-size fidelity) do not count as epochs.
    """
    seen = tracker.metric_steps(original.run_id, MetricName.IMAGES_SEEN)
    steps = tracker.metric_steps(original.run_id, VAL_ACCURACY)
    train_size = original.data.train_size
    if seen and train_size:
        return max(1, round(seen[-1][1] / train_size))
    return steps[-1][0] if steps else original.config.training.epochs


def earlier_round(tracker: Tracker, original: RecordedRun) -> RecordedRun | None:
    """The recorded run of the Hyperband round that `original` continued, if any."""
    if original.continues_trial is None or original.parent_run_id is None:
        return None
    runs = tracker.search(
        original.experiment,
        Query.of(role=Role.TRIAL, parent=original.parent_run_id).and_tags(
            **{TagKey.TRIAL_NUMBER: str(original.continues_trial)}
        ),
    )
    return load_recorded_run(tracker, runs[-1].info.run_id) if runs else None


def train_as_recorded(
    tracker: Tracker,
    original: RecordedRun,
    splits: Splits,
    *,
    seed: int,
    callbacks: list[Any],
    replay_rounds: bool,
    epochs: int | None = None,
) -> TrialResult:
    """Train the recorded config up to the recorded epoch (`epochs`, if the caller has it).

    With `replay_rounds`, a Hyperband round that continued an earlier round is replayed the way
    the tuner ran it: the earlier round first (with its own recorded seed), then this round from
    its weights, numbering epochs on. Without, the config trains from scratch (confirmation
    judges the configuration, not the tuner's schedule).
    """
    epochs = epochs or epochs_to_retrain(tracker, original)
    earlier = earlier_round(tracker, original) if replay_rounds else None
    if earlier is None:
        return train_and_validate(
            original.config, splits, callbacks=callbacks, seed=seed, epochs=epochs
        )
    first = train_as_recorded(
        tracker, earlier, splits, seed=earlier.seed, callbacks=[], replay_rounds=True
    )
    if not first.ok:
        return first
    initial_epoch = int(
        original.chosen.get("tuner/initial_epoch", epochs_to_retrain(tracker, earlier))
    )
    with tempfile.TemporaryDirectory() as folder:
        weights = str(Path(folder) / "earlier_round.weights.h5")
        first.model.save_weights(weights)
        return train_and_validate(
            original.config,
            splits,
            callbacks=callbacks,
            seed=seed,
            epochs=epochs,
            initial_epoch=initial_epoch,
            initial_weights=weights,
        )


def unfinished_retraining(
    tracker: Tracker, original: RecordedRun, seed: int, role: str
) -> str | None:
    """The run of an earlier retraining of this original and seed that did not finish."""
    runs = tracker.search(
        original.experiment,
        Query.of(role=role).and_tags(
            **{TagKey.RETRAINS_RUN_ID: original.run_id, TagKey.SEED: str(seed)}
        ),
    )
    unfinished = [run for run in runs if run.info.status != "FINISHED"]
    return unfinished[-1].info.run_id if unfinished else None


def retrain(
    tracker: Tracker,
    original: RecordedRun,
    splits: Splits,
    *,
    seed: int,
    role: str,
    progress: ProgressFactory = no_progress,
    deadline: Deadline | None = None,
    config: RunConfig | None = None,
    keep_model: bool = False,
) -> Retraining:
    """Train `original`'s config (or `config`) on `splits` with `seed`; record a run of `role`.

    An earlier retraining of the same original, seed and role that was interrupted or paused is
    continued in its own run from its last checkpoint. The result is paused when the deadline
    came first (the run then ends KILLED and keeps its checkpoint).
    """
    original.data.check(splits)
    cfg = config or original.config
    replay = role == Role.REPRODUCTION
    epochs = epochs_to_retrain(tracker, original) if config is None else cfg.training.epochs
    tags = {
        TagKey.ROLE: role,
        TagKey.RETRAINS_RUN_ID: original.run_id,
        TagKey.SEED: str(seed),
        TagKey.DATASET: splits.dataset,
        **({TagKey.STUDY: original.study} if original.study else {}),
        **({TagKey.ENGINE: original.engine} if original.engine else {}),
        **(
            {TagKey.TRIAL_NUMBER: str(original.trial_number)}
            if original.trial_number is not None
            else {}
        ),
    }
    name = f"{role} of {original.label} seed {seed}"
    again = None if replay else unfinished_retraining(tracker, original, seed, role)
    with (
        tempfile.TemporaryDirectory() as tmp,
        tracker.run(
            original.experiment,
            name,
            tags=tags,
            parent_run_id=original.parent_run_id,
            resume_run_id=again,
        ) as run,
    ):
        resume = load_checkpoint(tracker, again, Path(tmp)) if again else None
        if again is None:
            run.log_params(dict(original.chosen))
            trained = cfg.training.model_copy(update={"epochs": epochs})
            run.log_config(cfg.with_training(trained) if replay else cfg)
        with progress(name, epochs) as show:
            sink = EpochSinkCallback(fan_out(run.epoch_sink(), show))
            if replay:
                result = train_as_recorded(
                    tracker,
                    original,
                    splits,
                    seed=seed,
                    callbacks=[sink],
                    replay_rounds=True,
                    epochs=epochs,
                )
            else:
                result = train_and_validate(
                    cfg,
                    splits,
                    callbacks=[sink],
                    seed=seed,
                    epochs=epochs,
                    resume=resume,
                    deadline=deadline,
                    checkpoint=CheckpointWriter(tracker, run.run_id),
                )
        differences = _record(tracker, run, original, result, name, keep_model)
    if not result.paused:
        remove_checkpoints(tracker, run.run_id)
    return Retraining(original, result, run.run_id, role, differences)


def _record(
    tracker: Tracker,
    run: RunHandle,
    original: RecordedRun,
    result: TrialResult,
    name: str,
    keep_model: bool,
) -> dict[str, float]:
    run.log_training(result, title=name, reference=original.best_val_accuracy)
    if result.paused:
        run.status_on_exit = "KILLED"
        return {}
    if not result.ok:
        run.status_on_exit = "FAILED"
        return {}
    differences = epoch_differences(tracker, original, result)
    metrics = {f"{MetricName.LARGEST_EPOCH_DIFFERENCE}_{k}": v for k, v in differences.items()}
    if result.best_val_accuracy is not None and original.best_val_accuracy is not None:
        metrics[MetricName.RECORDED_BEST_VAL_ACCURACY] = original.best_val_accuracy
        metrics[MetricName.VAL_ACCURACY_VS_RECORDED] = (
            result.best_val_accuracy - original.best_val_accuracy
        )
    run.log_metrics(metrics)
    if keep_model:
        keep_trained_model(tracker, run.run_id, result.model)
    return differences


def epoch_differences(
    tracker: Tracker, original: RecordedRun, result: TrialResult
) -> dict[str, float]:
    """Largest per-epoch |retrained - recorded| of loss, val_loss and val_accuracy."""
    differences: dict[str, float] = {}
    for key in COMPARED_KEYS:
        recorded = dict(tracker.metric_steps(original.run_id, key))
        retrained = result.history.get(key, [])
        pairs = [
            (value, recorded[step])
            for step, value in enumerate(retrained, start=1)
            if step in recorded
        ]
        if pairs:
            differences[key] = float(max(abs(a - b) for a, b in pairs))
    return differences


def reproduce(
    tracker: Tracker,
    original: RecordedRun,
    splits: Splits,
    *,
    progress: ProgressFactory = no_progress,
) -> Retraining:
    """Retrain with the recorded seed: the reported model should come back."""
    return retrain(
        tracker, original, splits, seed=original.seed, role=Role.REPRODUCTION, progress=progress
    )


def fresh_seeds(original: RecordedRun, count: int) -> list[int]:
    """`count` seeds for confirmation, none of them the recorded one.

    The recorded run was selected for being the best, so its own score is biased upwards
    (winner's curse); confirmation judges a configuration only by new, independent trainings.
    """
    return [10_000 * (offset + 1) + original.seed for offset in range(count)]


def steps_agree(differences: dict[str, float]) -> bool:
    """Whether every compared per-epoch metric came back identical."""
    return bool(differences) and all(np.isclose(v, 0.0, atol=0.0) for v in differences.values())
