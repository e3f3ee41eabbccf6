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
input it refuses. Nothing is printed unless `show_progress=True`. The command line only parses
its arguments, calls these and prints what they return.

An experiment file that names a model factory (`model: {factory: ...}`) runs that factory's code
when it is validated, tuned or run; commands that start from the record (compare, confirm,
export, reproduce) import a user's factory only when given the experiment file that names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from tunelab.define.experiment import ExperimentSpec
from tunelab.define.experiment import load_experiment as _load_experiment
from tunelab.define.files import parse_duration
from tunelab.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd

    from tunelab.analysis.confirm import Confirmation
    from tunelab.define.data import FetchedData, Splits
    from tunelab.delivery.export import ExportResult
    from tunelab.engines.launch import SweepResult
    from tunelab.pipeline import PipelineResult
    from tunelab.record.recorded import SweepRecord
    from tunelab.record.store import Tracker
    from tunelab.training.baseline import BaselineOutcome
    from tunelab.training.progress import ProgressFactory
    from tunelab.training.retrain import Retraining

ExperimentRef = ExperimentSpec | str | Path


def load_experiment(path: str | Path) -> ExperimentSpec:
    """Read and validate an experiment file and its search space (raises ConfigError)."""
    return _load_experiment(path)


def _spec(experiment: ExperimentRef) -> ExperimentSpec:
    return experiment if isinstance(experiment, ExperimentSpec) else _load_experiment(experiment)


def _console(show: bool) -> Console:
    from tunelab.console import user_console

    return user_console(quiet=not show)


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
    console: Console | None = None,
    progress: ProgressFactory | None = None,
) -> PipelineResult:
    """Search, confirm and export under one budget (`tunelab run`); resumable."""
    from tunelab.pipeline import run_pipeline
    from tunelab.training.progress import no_progress

    return run_pipeline(
        _spec(experiment),
        budget=_seconds(budget, "--budget"),
        tracking_uri=tracking_uri,
        storage_url=storage,
        data_file=data_file,
        baseline=baseline,
        out=out,
        console=console or _console(show_progress),
        show_progress=show_progress,
        progress=progress or no_progress,
        splits=splits,
        full_splits=full_splits,
    )


def baseline(
    experiment: ExperimentRef | None = None,
    *,
    dataset: str = "mnist",
    epochs: int | None = None,
    seed: int = 0,
    validation_size: int = 10_000,
    tracking_uri: str | None = None,
    data_file: Path | None = None,
    progress: ProgressFactory | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> BaselineOutcome:
    """Train and record the classic CNN on a dataset: a built-in one, or an experiment's data
    (the seed CNN adapted to its shape and classes). The reference baseline by default."""
    if epochs is not None and epochs < 1:  # refused before TensorFlow loads (seconds)
        raise UserError(f"--epochs: must be a positive integer (got {epochs})")
    if seed < 0:
        raise UserError(f"--seed: must be zero or positive (got {seed})")
    from tunelab.define.data import load_splits
    from tunelab.record.store import Tracker
    from tunelab.training.baseline import baseline_config, run_baseline
    from tunelab.training.prepare import load_splits_of
    from tunelab.training.progress import no_progress

    if experiment is not None:
        splits = load_splits_of(
            _spec(experiment), data_file=data_file, whole_training_set=True, report=report
        )
    else:
        splits = load_splits(dataset, validation_size, user_path=data_file, report=report)
    return run_baseline(
        splits,
        Tracker(tracking_uri),
        cfg=baseline_config(splits, epochs),
        seed=seed,
        progress=progress or no_progress,
    )


def validate(paths: list[Path]) -> list[str]:
    """Check experiment and search-space files without training anything; one line each.

    An experiment's data is loaded and checked, and its model factory imported and called once
    (naming a factory runs its code).
    """
    from tunelab.define.files import read_yaml
    from tunelab.define.space import load_search_space
    from tunelab.training.prepare import load_splits_of, prepare

    lines = []
    for path in paths:
        if "search_space" not in read_yaml(path):
            space = load_search_space(path)
            lines.append(f"ok {path}: search space, {len(space.parameters)} parameters")
            continue
        spec = _load_experiment(path)
        prepared = prepare(spec, load_splits_of(spec))
        engine, splits = spec.engine, prepared.splits
        algorithm = engine.tuner if engine.name == "kerastuner" else engine.sampler
        lines.append(
            f"ok {path}: experiment {spec.name}, {engine.name}/{algorithm}, "
            f"{len(spec.search_space.parameters)} parameters; data {splits.dataset} "
            f"({len(splits.train)} training / {len(splits.val)} validation / "
            f"{len(splits.test)} test images of {'x'.join(map(str, splits.input_shape))}, "
            f"{splits.num_classes} classes); model {spec.factory.factory}"
        )
    return lines


def data(
    dataset: str = "mnist",
    *,
    data_file: Path | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> FetchedData:
    """Fetch and verify a built-in dataset into the cache (where it is: `.cache_file`)."""
    from tunelab.define.data import fetch_dataset

    return fetch_dataset(dataset, user_path=data_file, report=report)


def report(
    experiment: ExperimentRef,
    *,
    study: str | None = None,
    top: int = 5,
    out: Path = Path("report.html"),
    log: bool = True,
    tracking_uri: str | None = None,
) -> Path:
    """One self-contained HTML page for a sweep (table, history, importances, curves)."""
    from tunelab.analysis.report import build_report
    from tunelab.record.names import Artifact
    from tunelab.record.store import RunHandle

    if top < 1:
        raise UserError(f"--top: must be at least 1 (got {top})")
    tracker, sweep = _sweep(experiment, study, tracking_uri)
    page = build_report(tracker, sweep, top=top)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    if log:
        RunHandle(tracker.client, sweep.parent_run_id).log_text(page, Artifact.REPORT)
    return out


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


@dataclass(frozen=True)
class Comparison:
    """A sweep's comparison table rendered: one line about the sweep, the table as text."""

    headline: str
    text: str
    table: pd.DataFrame
    logged_to: str | None  # the parent run it was logged to, if asked


def comparison(
    experiment: ExperimentRef | None = None,
    *,
    study: str | None = None,
    top: int = 5,
    fmt: str = "table",
    log: bool = False,
    tracking_uri: str | None = None,
) -> Comparison:
    """`compare`, rendered as `fmt` (table, csv, markdown, html), optionally logged to the
    sweep's parent run (`comparison/`)."""
    from tunelab.analysis.compare import (
        TABLE_FORMATS,
        agreement_lines,
        comparison_table,
        render,
        sweep_line,
    )
    from tunelab.record.store import RunHandle

    if fmt not in TABLE_FORMATS:
        raise UserError(f"--format: choose from {', '.join(TABLE_FORMATS)} (got {fmt!r})")
    if top < 1:
        raise UserError(f"--top: must be at least 1 (got {top})")
    tracker, sweep = _sweep(experiment, study, tracking_uri)
    table = comparison_table(tracker, sweep, top=top)
    text = render(table, fmt)
    headline = "\n".join([sweep_line(sweep), *agreement_lines(tracker, sweep)])
    logged = None
    if log:
        extension = {"table": "txt", "csv": "csv", "markdown": "md", "html": "html"}[fmt]
        RunHandle(tracker.client, sweep.parent_run_id).log_text(
            text, f"comparison/comparison.{extension}"
        )
        logged = sweep.parent_run_id
    return Comparison(headline, text, table, logged)


def confirm(
    experiment: ExperimentRef,
    *,
    study: str | None = None,
    top: int = 3,
    seeds: int = 3,
    keep_models: bool = False,
    tracking_uri: str | None = None,
    data_file: Path | None = None,
    progress: ProgressFactory | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> Confirmation:
    """Retrain the top configurations with fresh seeds; the champion is the best mean."""
    from tunelab.analysis.confirm import confirm_sweep
    from tunelab.training.progress import no_progress

    if top < 1 or seeds < 1:
        raise UserError(f"--top and --seeds: must be at least 1 (got {top} and {seeds})")
    _import_factory(experiment)
    tracker, sweep = _sweep(experiment, study, tracking_uri)
    splits = sweep.data.load(data_file=data_file, report=report)
    return confirm_sweep(
        tracker,
        sweep,
        splits,
        top=top,
        seeds=seeds,
        keep_models=keep_models,
        progress=progress or no_progress,
        report=report,
    )


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
    experiment: ExperimentRef | None = None,
    test_time_shifts: int = 0,
    snapshot_cycles: int = 1,
) -> ExportResult:
    """Refit the champion, test it once, write and verify every format, register it.

    With `ensemble=K` (K >= 2), the champion's refit and K - 1 more models are delivered as one
    averaged model as well, and the ensemble is returned: the refit's own snapshots first
    (`snapshot_cycles=C` restarts its schedule C times and keeps the C - 1 earlier cycles'
    ends), then confirmation retrainings and trials that kept their models.
    A run of a user's factory is exported through its experiment file (`target`, or
    `experiment` with a run id as `target`): only an experiment file names code to import.
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
    if not 1 <= snapshot_cycles <= 20:
        raise UserError(f"--snapshot-cycles: 1 (off) to 20 (got {snapshot_cycles})")
    tracker = Tracker(tracking_uri, must_exist=True)
    name = target.name if isinstance(target, ExperimentSpec) else str(target)
    _import_factory(target, experiment)
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
        test_time_shifts=test_time_shifts,
        snapshot_cycles=snapshot_cycles,
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
        test_time_shifts=test_time_shifts,
    )


def reproduce(
    run_id: str,
    *,
    experiment: ExperimentRef | None = None,
    tracking_uri: str | None = None,
    data_file: Path | None = None,
    progress: ProgressFactory | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> Retraining:
    """Retrain a recorded trial with its recorded seed and compare it epoch by epoch (a user
    factory's trial: give the `experiment` file that names the factory)."""
    from tunelab.record.recorded import load_recorded_run
    from tunelab.record.store import Tracker
    from tunelab.training.progress import no_progress
    from tunelab.training.retrain import reproduce as retrain_with_recorded_seed

    _import_factory(experiment)
    tracker = Tracker(tracking_uri, must_exist=True)
    original = load_recorded_run(tracker, run_id)
    splits = original.data.load(data_file=data_file, report=report)
    return retrain_with_recorded_seed(tracker, original, splits, progress=progress or no_progress)


def _import_factory(*experiments: ExperimentRef | None) -> None:
    """Import the model factory the first experiment file among `experiments` names (runs of a
    user's factory are rebuilt with it; see `tunelab.training.factory.factory_of`)."""
    from tunelab.training.factory import load_factory

    for experiment in experiments:
        if isinstance(experiment, ExperimentSpec) or (
            experiment is not None and Path(str(experiment)).suffix in (".yaml", ".yml")
        ):
            load_factory(_spec(experiment).factory)
            return


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
