"""Retrain a recorded configuration and record the retraining next to the original.

Two commands need this: `tunelab reproduce RUN_ID` (the recorded seed again: does the reported
best model come back?) and `tunelab confirm` (other seeds: is the winner better, or lucky?).
Both train the recorded config on the recorded split with `train_and_validate`, validation only,
and record a run nested under the original sweep's parent run, with a role that keeps it out of
the sweep's trial counts (`tunelab.role` = reproduction or confirmation) and a tag naming the run
it retrains.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.training.baseline import ProgressFactory, no_progress
from tunelab.training.callbacks import EpochSinkCallback, fan_out
from tunelab.define.data import Splits
from tunelab.record.recorded import RecordedRun, load_recorded_run
from tunelab.record.store import PARENT_RUN_TAG, MetricName, Role, TagKey, Tracker
from tunelab.training.train import TrialResult, train_and_validate


@dataclass(frozen=True)
class Retraining:
    """One retraining of a recorded run: its result, its run, and the recorded score."""

    original: RecordedRun
    result: TrialResult
    run_id: str
    role: str

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
    """
    steps = tracker.metric_steps(original.run_id, MetricName.VAL_ACCURACY)
    return steps[-1][0] if steps else original.config.epochs


def earlier_round(tracker: Tracker, original: RecordedRun) -> RecordedRun | None:
    """The recorded run of the Hyperband round that `original` continued, if any."""
    if original.continues_trial is None or original.parent_run_id is None:
        return None
    runs = tracker.search(
        original.experiment,
        f"tags.`{PARENT_RUN_TAG}` = '{original.parent_run_id}' "
        f"and tags.`{TagKey.ROLE}` = '{Role.TRIAL}' "
        f"and tags.`{TagKey.TRIAL_NUMBER}` = '{original.continues_trial}'",
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


def retrain(
    tracker: Tracker,
    original: RecordedRun,
    splits: Splits,
    *,
    seed: int,
    role: str,
    progress: ProgressFactory = no_progress,
) -> Retraining:
    """Train `original`'s config on `splits` with `seed`; record it as a run of `role`."""
    original.data.check(splits)
    epochs = epochs_to_retrain(tracker, original)
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
    with tracker.run(
        original.experiment, name, tags=tags, parent_run_id=original.parent_run_id
    ) as run:
        run.log_params(
            {**original.chosen, **{f"cfg.{k}": v for k, v in original.config.as_params().items()}}
        )
        with progress(name, epochs) as show:
            result = train_as_recorded(
                tracker,
                original,
                splits,
                seed=seed,
                callbacks=[EpochSinkCallback(fan_out(run.epoch_sink(), show))],
                replay_rounds=role == Role.REPRODUCTION,
                epochs=epochs,
            )
        run.log_training(result, title=name, reference=original.best_val_accuracy)
        if result.best_val_accuracy is not None and original.best_val_accuracy is not None:
            run.log_metrics(
                {
                    MetricName.RECORDED_BEST_VAL_ACCURACY: original.best_val_accuracy,
                    MetricName.VAL_ACCURACY_VS_RECORDED: result.best_val_accuracy
                    - original.best_val_accuracy,
                }
            )
        if not result.ok:
            run.status_on_exit = "FAILED"
        return Retraining(original, result, run.run_id, role)


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
