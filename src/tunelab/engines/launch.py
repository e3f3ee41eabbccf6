"""Launch (or resume) a sweep: load the data once, find the baseline, hand over to the engine."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from tunelab.define.data import Splits, load_splits
from tunelab.engines.sweep import SweepTracker, best_of, find_baseline_bar, max_trial_epochs
from tunelab.training.progress import SweepProgress
from tunelab.define.specs import ExperimentSpec
from tunelab.record.store import Tracker, TrialState

TRIAL_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED)

STORAGE_ENV = "TUNELAB_OPTUNA_STORAGE"
DEFAULT_KERAS_TUNER_DIR = Path("tracking/keras_tuner")


def resolve_storage(explicit: str | None, spec: ExperimentSpec) -> str:
    """--storage, else the experiment's storage, else $TUNELAB_OPTUNA_STORAGE, else SQLite."""
    from tunelab.engines.optuna.engine import DEFAULT_STORAGE

    return explicit or spec.storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def run_sweep(
    spec: ExperimentSpec,
    *,
    trials: int | None = None,
    timeout_seconds: float | None = None,
    study_name: str | None = None,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    data_file: Path | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    splits: Splits | None = None,
    keras_tuner_dir: Path | None = None,
) -> str:
    """Run the experiment's sweep within its budget (or the overrides); returns a summary line.

    `splits` replaces the experiment's data (tests pass the tiny fixture); by default the
    dataset is fetched, verified and split as the experiment says, once per sweep.
    """
    console = console or Console(stderr=True)
    if splits is None:
        splits = load_splits(
            spec.dataset,
            spec.validation_size,
            spec.split_seed,
            train_size=spec.train_size,
            user_path=data_file,
            report=lambda line: console.print(f"[yellow]skipped[/] {line}"),
        )
    tracker = Tracker(tracking_uri)
    baseline, note = find_baseline_bar(tracker, splits)
    study = study_name or spec.name
    budget_trials = trials if trials is not None else spec.budget.trials
    budget_seconds = timeout_seconds if timeout_seconds is not None else spec.budget.timeout_seconds
    console.print(
        f"sweep {study}: {spec.engine.name} ({spec.engine.sampler}, pruner {spec.engine.pruner}), "
        f"{len(splits.train)} training / {len(splits.val)} validation images; {note}",
        highlight=False,
    )
    sweep = SweepTracker(tracker, spec, study, spec.engine.name, baseline)
    with SweepProgress(console, show=show_progress) as progress:
        if spec.engine.name == "kerastuner":
            from tunelab.engines.kerastuner.engine import run_keras_tuner_sweep

            parent_run_id, records, stopped = run_keras_tuner_sweep(
                spec,
                splits,
                sweep,
                progress,
                study_name=study,
                trials=budget_trials,
                timeout_seconds=budget_seconds,
                max_epochs=max_trial_epochs(spec),
                directory=keras_tuner_dir or DEFAULT_KERAS_TUNER_DIR,
            )
        else:
            from tunelab.engines.optuna.engine import run_optuna_sweep

            outcome = run_optuna_sweep(
                spec,
                splits,
                sweep,
                progress,
                study_name=study,
                storage_url=resolve_storage(storage_url, spec),
                trials=budget_trials,
                timeout_seconds=budget_seconds,
            )
            parent_run_id, records, stopped = (
                outcome.parent_run_id,
                outcome.records,
                outcome.stopped_because,
            )
    best = best_of(records)
    counts = {s: sum(r.state == s for r in records) for s in TRIAL_STATES}
    text = (
        f"stopped: {stopped}. trials: {counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['failed']} failed."
    )
    if best is not None and best.value is not None:
        text += f" best: trial {best.number}, val_accuracy {best.value:.4f}"
        if baseline is not None:
            text += f" ({(best.value - baseline.val_accuracy) * 100:+.2f} points vs the baseline)"
        text += f", MLflow run {best.run_id}."
    return text + f" Parent run {parent_run_id} in MLflow experiment {spec.name!r}."
