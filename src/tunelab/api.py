"""tunelab from Python: the functions the command line calls, for notebooks and scripts.

    import tunelab.api as tl

    spec = tl.load_experiment("experiments/mnist_quick.yaml")
    result = tl.tune(spec, trials=4)            # SweepResult: best trial, DataFrame of trials
    print(result.best, result.trials().head())
    table = tl.compare(spec.name)               # DataFrame: baseline, top trials, finalists
    bundle = tl.export(spec.name)               # ExportResult: test accuracy, formats, card

Every function takes plain arguments (paths, names, numbers), records to the same MLflow store
and Optuna storage as the command line (the embedded SQLite defaults, `MLFLOW_TRACKING_URI`,
`TUNELAB_OPTUNA_STORAGE`), and raises `tunelab.errors.UserError` with a one-line message for
input it refuses. Nothing is printed unless `show_progress=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from tunelab.define.experiment import ExperimentSpec
from tunelab.define.experiment import load_experiment as _load_experiment
from tunelab.define.files import parse_duration
from tunelab.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

    from tunelab.analysis.confirm import Confirmation
    from tunelab.define.data import Splits
    from tunelab.delivery.export import ExportResult
    from tunelab.engines.launch import SweepResult
    from tunelab.pipeline import PipelineResult
    from tunelab.record.recorded import SweepRecord
    from tunelab.record.store import Tracker
    from tunelab.training.baseline import BaselineOutcome
    from tunelab.training.retrain import Retraining

ExperimentRef = ExperimentSpec | str | Path


def load_experiment(path: str | Path) -> ExperimentSpec:
    """Read and validate an experiment file and its search space (raises ConfigError)."""
    return _load_experiment(path)


def _spec(experiment: ExperimentRef) -> ExperimentSpec:
    return experiment if isinstance(experiment, ExperimentSpec) else _load_experiment(experiment)


def _console(show: bool) -> Console:
    return Console(stderr=True) if show else Console(quiet=True)


def _seconds(value: str | float | None, where: str) -> float | None:
    return None if value is None else parse_duration(value, where, "value")


def tune(
    experiment: ExperimentRef,
    *,
    trials: int | None = None,
    timeout: str | float | None = None,
    study: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    data_file: Path | None = None,
    warm_start_from: str | None = None,
    show_progress: bool = False,
    splits: Splits | None = None,
) -> SweepResult:
    """Run (or resume) a sweep; `timeout` is the time budget of all its launches together."""
    from tunelab.engines.launch import run_sweep

    if trials is not None and trials < 1:
        raise UserError(f"trials: must be a positive integer (got {trials})")
    return run_sweep(
        _spec(experiment),
        trials=trials,
        timeout_seconds=_seconds(timeout, "--timeout"),
        study_name=study,
        storage_url=storage,
        tracking_uri=tracking_uri,
        data_file=data_file,
        console=_console(show_progress),
        show_progress=show_progress,
        splits=splits,
        warm_start_from=warm_start_from,
    )


def run(
    experiment: ExperimentRef,
    *,
    budget: str | float | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    data_file: Path | None = None,
    baseline: bool = True,
    out: Path | None = None,
    show_progress: bool = False,
    splits: Splits | None = None,
    full_splits: Splits | None = None,
) -> PipelineResult:
    """Search, confirm and export under one budget (`tunelab run`); resumable."""
    from tunelab.pipeline import run_pipeline

    return run_pipeline(
        _spec(experiment),
        budget=_seconds(budget, "--budget"),
        tracking_uri=tracking_uri,
        storage_url=storage,
        data_file=data_file,
        baseline=baseline,
        out=out,
        console=_console(show_progress),
        show_progress=show_progress,
        splits=splits,
        full_splits=full_splits,
    )


def baseline(
    *,
    dataset: str = "mnist",
    epochs: int | None = None,
    seed: int = 0,
    validation_size: int = 10_000,
    tracking_uri: str | None = None,
    data_file: Path | None = None,
) -> BaselineOutcome:
    """Train and record the classic Keras MNIST CNN (the reference baseline by default)."""
    from tunelab.define.cnn import CnnConfig, parse_config
    from tunelab.define.data import load_splits
    from tunelab.record.store import Tracker
    from tunelab.training.baseline import run_baseline

    cfg = CnnConfig() if epochs is None else parse_config({"epochs": epochs})
    splits = load_splits(dataset, validation_size, user_path=data_file)
    return run_baseline(splits, Tracker(tracking_uri), cfg=cfg, seed=seed)


def compare(
    experiment: ExperimentRef | None = None,
    *,
    study: str | None = None,
    top: int = 5,
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """The baseline, the best trials and every confirmed or exported model, one row each."""
    from tunelab.analysis.compare import comparison_table

    tracker, sweep = _sweep(experiment, study, tracking_uri)
    if top < 1:
        raise UserError(f"top: must be at least 1 (got {top})")
    return comparison_table(tracker, sweep, top=top)


def confirm(
    experiment: ExperimentRef,
    *,
    study: str | None = None,
    top: int = 3,
    seeds: int = 3,
    keep_models: bool = False,
    tracking_uri: str | None = None,
    data_file: Path | None = None,
) -> Confirmation:
    """Retrain the top configurations with fresh seeds; the champion is the best mean."""
    from tunelab.analysis.confirm import confirm_sweep

    tracker, sweep = _sweep(experiment, study, tracking_uri)
    splits = sweep.data.load(data_file=data_file)
    return confirm_sweep(tracker, sweep, splits, top=top, seeds=seeds, keep_models=keep_models)


def export(
    target: ExperimentRef,
    *,
    study: str | None = None,
    out: Path | None = None,
    formats: tuple[str, ...] = ("keras", "savedmodel", "tflite", "onnx"),
    refit: bool = True,
    epochs: int | None = None,
    ensemble: int = 0,
    model_name: str | None = None,
    tracking_uri: str | None = None,
    data_file: Path | None = None,
) -> ExportResult:
    """Refit the champion, test it once, write and verify every format, register it.

    With `ensemble=K` (K >= 2), the champion's refit and K - 1 confirmation retrainings that
    kept their models are delivered as one averaged model as well; the ensemble is returned.
    """
    from tunelab.delivery.export import (
        ExportError,
        check_out_folder,
        export_ensemble,
        export_model,
        resolve_source,
    )
    from tunelab.delivery.formats import FormatError, parse_formats
    from tunelab.pipeline import ensemble_members
    from tunelab.record.store import Tracker

    try:
        chosen = parse_formats(",".join(formats))
    except FormatError as error:
        raise UserError(f"--formats: {error}") from None
    if ensemble == 1 or ensemble < 0:
        raise UserError(f"--ensemble: 0 for the single champion, or at least 2 (got {ensemble})")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs: must be a positive integer (got {epochs})")
    tracker = Tracker(tracking_uri, must_exist=True)
    name = target.name if isinstance(target, ExperimentSpec) else str(target)
    source, sweep = resolve_source(tracker, name, study)
    folder = out or Path("exports") / f"{source.experiment}-{source.run_id[:8]}"
    check_out_folder(folder)
    splits = source.data.load(data_file=data_file, whole_training_set=refit)
    single = export_model(
        tracker,
        source,
        splits,
        out=folder / "single" if ensemble else folder,
        formats=chosen,
        refit=refit,
        epochs=epochs,
        model_name=model_name,
        register=ensemble < 2,
    )
    if ensemble < 2:
        return single
    if sweep is None:
        raise ExportError("an ensemble is exported from an experiment's sweep, not a run id")
    members = ensemble_members(tracker, sweep, source, single, ensemble)
    if len(members) < 2:
        raise ExportError(
            f"only {len(members)} trained member(s) found: confirm with --keep-models first"
        )
    return export_ensemble(
        tracker,
        sweep,
        members,
        splits,
        out=folder / "ensemble",
        formats=chosen,
        single=single,
        model_name=model_name,
    )


def reproduce(
    run_id: str, *, tracking_uri: str | None = None, data_file: Path | None = None
) -> Retraining:
    """Retrain a recorded trial with its recorded seed and compare it epoch by epoch."""
    from tunelab.record.recorded import load_recorded_run
    from tunelab.record.store import Tracker
    from tunelab.training.retrain import reproduce as retrain_with_recorded_seed

    tracker = Tracker(tracking_uri, must_exist=True)
    original = load_recorded_run(tracker, run_id)
    splits = original.data.load(data_file=data_file)
    return retrain_with_recorded_seed(tracker, original, splits)


def _sweep(
    experiment: ExperimentRef | None, study: str | None, tracking_uri: str | None
) -> tuple[Tracker, SweepRecord]:
    from tunelab.record.recorded import find_sweep, find_sweep_by_study
    from tunelab.record.store import Tracker

    tracker = Tracker(tracking_uri, must_exist=True)
    if experiment is None:
        if study is None:
            raise UserError("name an experiment (file or MLflow name) or a study")
        return tracker, find_sweep_by_study(tracker, study)
    name = experiment.name if isinstance(experiment, ExperimentSpec) else str(experiment)
    return tracker, find_sweep(tracker, name, study)
