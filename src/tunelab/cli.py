"""Command line: parses arguments and delegates; user errors become one line, exit code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tunelab.define.data import DATASETS
from tunelab.errors import UserError
from tunelab.define.specs import ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Tune Keras CNNs with Optuna and KerasTuner, record in MLflow, compare with the baseline.",
)
console = Console(stderr=True)


DatasetOption = Annotated[
    str, typer.Option("--dataset", "-d", help=f"one of: {', '.join(DATASETS)}")
]
DataFileOption = Annotated[
    Path | None,
    typer.Option("--data-file", help="an .npz (x_train, y_train, x_test, y_test) or IDX directory"),
]
TrackingOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///tracking/mlflow.db)",
    ),
]


def _skipped(line: str) -> None:
    """How commands report a data source that was tried and skipped."""
    console.print(f"[yellow]skipped[/] {line}")


def _epoch_progress(title: str, epochs: int) -> Any:
    """The per-epoch progress display of single trainings (baseline, retraining, export)."""
    from tunelab.training.progress import epoch_progress

    return epoch_progress(title, epochs, console)


@app.command()
def data(dataset: DatasetOption = "mnist", data_file: DataFileOption = None) -> None:
    """Fetch and verify a dataset, cache it, and print where it is."""
    from tunelab.define.data import fetch_dataset

    fetched = fetch_dataset(
        dataset,
        user_path=data_file,
        report=_skipped,
    )
    arrays = fetched.arrays
    console.print(
        f"[green]verified[/] {dataset} from {fetched.source}: train {arrays.x_train.shape}, "
        f"test {arrays.x_test.shape}, digest {fetched.digest}"
    )
    print(fetched.cache_file or "(not cached: cache directory not writable)")


@app.command()
def baseline(
    dataset: DatasetOption = "mnist",
    data_file: DataFileOption = None,
    tracking_uri: TrackingOption = None,
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    validation_size: Annotated[int, typer.Option(help="images held out for validation")] = 10_000,
    epochs: Annotated[
        int | None, typer.Option(help="fewer epochs for a quick look (not the reference baseline)")
    ] = None,
) -> None:
    """Train the classic Keras MNIST CNN, evaluate the test set, record it as the baseline."""
    from tunelab.define.cnn import CnnConfig, parse_config
    from tunelab.define.data import load_splits

    cfg = CnnConfig() if epochs is None else parse_config({"epochs": epochs})
    splits = (
        load_splits(
            dataset,
            validation_size,
            report=_skipped,
        )
        if data_file is None
        else load_splits(dataset, validation_size, user_path=data_file)
    )
    # TensorFlow and MLflow load only once the input is known to be good
    from tunelab.training.baseline import PUBLISHED_TEST_ACCURACY, run_baseline
    from tunelab.record.store import Tracker

    tracker = Tracker(tracking_uri)
    console.print(f"tracking to {tracker.tracking_uri}; data from {splits.source}")
    outcome = run_baseline(
        splits,
        tracker,
        cfg=cfg,
        seed=seed,
        progress=_epoch_progress,
    )
    best = outcome.validation.best_val_accuracy
    console.print(
        f"validation stage: best val_accuracy {best:.4f}" if best else "validation failed"
    )
    if outcome.test is None:
        reason = outcome.full_train.failure_reason
        console.print(f"[red]test stage failed:[/] {reason}")
        raise typer.Exit(1)
    delta = outcome.test.accuracy - PUBLISHED_TEST_ACCURACY
    console.print(
        f"[bold]test accuracy {outcome.test.accuracy:.4f}[/] ({delta * 100:+.2f} points vs the "
        f"published {PUBLISHED_TEST_ACCURACY:.2%}); "
        f"{outcome.full_train.wall_seconds + outcome.validation.wall_seconds:.0f} s of training; "
        f"run {outcome.run_id}" + ("" if outcome.reference else " (not the reference baseline)")
    )


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="experiment or search-space YAML files")],
) -> None:
    """Check experiment and search-space files without running anything."""
    from tunelab.define.specs import load_experiment, load_search_space, read_yaml

    for path in files:
        is_experiment = "search_space" in read_yaml(path)
        if is_experiment:
            spec = load_experiment(path)
            print(
                f"ok {path}: experiment {spec.name}, {spec.engine.name}/{spec.engine.sampler}, "
                f"{len(spec.search_space.parameters)} parameters"
            )
        else:
            space = load_search_space(path)
            print(f"ok {path}: search space, {len(space.parameters)} parameters")


@app.command()
def tune(
    experiment: Annotated[Path, typer.Argument(help="experiment file (experiments/*.yaml)")],
    trials: Annotated[int | None, typer.Option(help="trial budget (overrides the file's)")] = None,
    timeout: Annotated[
        str | None, typer.Option(help="wall-clock budget of this launch: 90s, 30m, 1h30m")
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="study name (default: the experiment's name)")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default: sqlite:///tracking/optuna.db)")
    ] = None,
    tracking_uri: TrackingOption = None,
    data_file: DataFileOption = None,
    quiet: Annotated[bool, typer.Option(help="no live progress display")] = False,
    workers: Annotated[
        int, typer.Option(help="local worker processes sharing the study (Optuna engine)")
    ] = 1,
) -> None:
    """Run a tuning sweep; the same command resumes an interrupted one."""
    from tunelab.engines.launch import resolve_storage, run_sweep
    from tunelab.define.specs import load_experiment, parse_duration

    spec = load_experiment(experiment)
    seconds = None if timeout is None else parse_duration(timeout, Path("--timeout"), "value")
    if trials is not None and trials < 1:
        raise ConfigError("--trials", "value", "must be a positive integer", trials)
    if workers < 1:
        raise ConfigError("--workers", "value", "must be a positive integer", workers)
    if workers > 1:
        if spec.engine.name != "optuna":
            raise ConfigError(
                "--workers", "value", "several workers need an Optuna experiment", workers
            )
        from tunelab.engines.optuna.workers import run_workers
        from tunelab.record.redact import redact_url

        url = resolve_storage(storage, spec)
        if url.startswith("sqlite"):
            console.print(
                "[yellow]note:[/] several workers on SQLite share one machine's disk; for "
                "more, use PostgreSQL (`make services`, then `source tracking/services/env`)"
            )
        console.print(f"{workers} workers on study storage {redact_url(url)}", highlight=False)
        passed = [
            *(["--trials", str(trials)] if trials is not None else []),
            *(["--timeout", timeout] if timeout is not None else []),
            *(["--study", study] if study is not None else []),
            *(["--tracking-uri", tracking_uri] if tracking_uri is not None else []),
            *(["--data-file", str(data_file)] if data_file is not None else []),
        ]
        codes = run_workers(experiment, workers, storage_url=url, arguments=passed)
        console.print(f"workers finished with exit codes {codes}")
        if any(codes):
            raise typer.Exit(max(codes))
        return
    _terminate_as_interrupt()
    summary = run_sweep(
        spec,
        trials=trials,
        timeout_seconds=seconds,
        study_name=study,
        storage_url=storage,
        tracking_uri=tracking_uri,
        data_file=data_file,
        console=console,
        show_progress=not quiet,
    )
    console.print(summary, highlight=False)


def _terminate_as_interrupt() -> None:
    """SIGTERM ends a sweep like Ctrl-C: the trial is closed as failed, the study resumable."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@app.command()
def reproduce(
    run_id: Annotated[str, typer.Argument(help="a trial run id (the sweep's best_run_id)")],
    tracking_uri: TrackingOption = None,
    data_file: DataFileOption = None,
) -> None:
    """Retrain a recorded trial with its recorded seed and compare its validation accuracy."""
    from tunelab.record.recorded import load_recorded_run
    from tunelab.training.retrain import reproduce as retrain_with_recorded_seed
    from tunelab.record.store import Tracker

    tracker = Tracker(tracking_uri)
    original = load_recorded_run(tracker, run_id)
    splits = original.data.load(data_file=data_file, report=_skipped)
    again = retrain_with_recorded_seed(
        tracker,
        original,
        splits,
        progress=_epoch_progress,
    )
    if again.best_val_accuracy is None or original.best_val_accuracy is None:
        console.print(f"[red]retraining failed:[/] {again.result.failure_reason}")
        raise typer.Exit(1)
    print(
        f"{original.label} (run {run_id}, seed {original.seed}): recorded best val_accuracy "
        f"{original.best_val_accuracy:.4f}, retrained {again.best_val_accuracy:.4f} "
        f"({(again.difference or 0.0) * 100:+.2f} points, "
        f"{round(abs(again.difference or 0.0) * len(splits.val))} of {len(splits.val)} "
        f"validation images); run {again.run_id}"
    )


StudyOption = Annotated[
    str | None, typer.Option(help="the sweep's study (default: the one named like the experiment)")
]


@app.command()
def confirm(
    experiment: Annotated[str, typer.Argument(help="experiment file or MLflow experiment name")],
    study: StudyOption = None,
    top: Annotated[int, typer.Option(help="how many of the best configurations")] = 3,
    seeds: Annotated[int, typer.Option(help="fresh seeds per configuration")] = 3,
    tracking_uri: TrackingOption = None,
    data_file: DataFileOption = None,
) -> None:
    """Retrain the top configurations with fresh seeds; the champion is the best mean."""
    from rich.table import Table

    from tunelab.analysis.confirm import confirm_sweep
    from tunelab.record.recorded import find_sweep
    from tunelab.record.store import Tracker

    if top < 1 or seeds < 1:
        raise ConfigError("--top/--seeds", "value", "must be at least 1", min(top, seeds))
    tracker = Tracker(tracking_uri)
    sweep = find_sweep(tracker, experiment, study)
    splits = sweep.data.load(data_file=data_file, report=_skipped)
    result = confirm_sweep(
        tracker,
        sweep,
        splits,
        top=top,
        seeds=seeds,
        progress=_epoch_progress,
        report=lambda line: console.print(line, highlight=False),
    )
    table = Table(title=f"{sweep.experiment}: top {top} confirmed with {seeds} fresh seeds")
    for column in ("rank", "trial", "recorded best", "mean", "std", "95 % CI", "run id"):
        table.add_column(column)
    for rank, item in enumerate(result.confirmed, start=1):
        summary = item.summary
        table.add_row(
            str(rank) + (" champion" if rank == 1 else ""),
            item.original.label,
            f"{item.original.best_val_accuracy or float('nan'):.4f}",
            f"{summary.mean:.4f}",
            f"{summary.std:.4f}",
            summary.interval.bracket(),
            item.original.run_id,
        )
    Console().print(table)


@app.command()
def export(
    target: Annotated[
        str, typer.Argument(help="experiment file or name (its champion), or a trial run id")
    ],
    study: StudyOption = None,
    out: Annotated[
        Path | None, typer.Option(help="bundle folder (default: exports/<name>)")
    ] = None,
    formats: Annotated[
        str, typer.Option(help="comma-separated: keras,savedmodel,tflite,onnx")
    ] = "keras,savedmodel,tflite,onnx",
    refit: Annotated[
        bool, typer.Option(help="refit on all training images (--no-refit: the trial's own split)")
    ] = True,
    model_name: Annotated[
        str | None, typer.Option(help="registered model name (default: tunelab-<dataset>)")
    ] = None,
    tracking_uri: TrackingOption = None,
    data_file: DataFileOption = None,
) -> None:
    """Refit the champion, test it once, write and verify every format, register it."""
    from tunelab.delivery.export import export_model, resolve_source
    from tunelab.delivery.formats import FormatError, parse_formats
    from tunelab.record.store import Tracker

    try:
        chosen_formats = parse_formats(formats)
    except FormatError as error:
        raise ConfigError("--formats", "value", str(error), formats) from None
    tracker = Tracker(tracking_uri)
    source, _ = resolve_source(tracker, target, study)
    splits = source.data.load(
        data_file=data_file,
        report=_skipped,
        whole_training_set=refit,
    )
    folder = out or Path("exports") / f"{source.experiment}-{source.run_id[:8]}"
    console.print(f"exporting {source.label} (run {source.run_id}) to {folder}", highlight=False)
    result = export_model(
        tracker,
        source,
        splits,
        out=folder,
        formats=chosen_formats,
        refit=refit,
        model_name=model_name,
        progress=_epoch_progress,
        report=lambda line: console.print(line, highlight=False),
    )
    test = result.card.test
    line = f"test accuracy {test['accuracy']:.4f} [{test['ci95_low']:.4f}, {test['ci95_high']:.4f}]"
    if result.baseline is not None:
        line += (
            f", {(result.test.accuracy - result.baseline.accuracy) * 100:+.2f} points vs the "
            f"baseline (McNemar p = {result.baseline.p_value:.3g})"
        )
    if result.version is not None:
        line += f"; registered {result.model_name} v{result.version} as @champion"
        if result.previous_version:
            line += f" (was v{result.previous_version})"
    print(f"{line}; bundle {folder}; run {result.run_id}")


@app.command()
def compare(
    experiment: Annotated[
        str | None, typer.Argument(help="experiment file or MLflow experiment name")
    ] = None,
    study: StudyOption = None,
    top: Annotated[int, typer.Option(help="how many of the best trials")] = 5,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, markdown or html")] = "table",
    out: Annotated[Path | None, typer.Option(help="also write the table to this file")] = None,
    log: Annotated[bool, typer.Option(help="also log it to the sweep's parent run")] = False,
    tracking_uri: TrackingOption = None,
) -> None:
    """The best trials and finalists against the baseline, with intervals and McNemar p."""
    from tunelab.analysis.compare import (
        TABLE_FORMATS,
        comparison_table,
        render,
        sweep_line,
        write_table,
    )
    from tunelab.record.recorded import find_sweep, find_sweep_by_study
    from tunelab.record.store import RunHandle, Tracker

    if fmt not in TABLE_FORMATS:
        raise ConfigError("--format", "value", f"choose from {', '.join(TABLE_FORMATS)}", fmt)
    if top < 1:
        raise ConfigError("--top", "value", "must be at least 1", top)
    if experiment is None and study is None:
        raise UserError("name an experiment (file or MLflow name) or a --study to compare")
    tracker = Tracker(tracking_uri)
    sweep = (
        find_sweep(tracker, experiment, study)
        if experiment is not None
        else find_sweep_by_study(tracker, study or "")
    )
    text = render(comparison_table(tracker, sweep, top=top), fmt)
    console.print(sweep_line(sweep), highlight=False)
    print(text, end="")
    if out is not None:
        write_table(text, out)
        console.print(f"written to {out}")
    if log:
        RunHandle(tracker.client, sweep.parent_run_id).log_text(
            text, f"comparison/comparison.{_EXTENSIONS[fmt]}"
        )
        console.print(f"logged to run {sweep.parent_run_id} (comparison/)")


_EXTENSIONS = {"table": "txt", "csv": "csv", "markdown": "md", "html": "html"}


@app.command()
def report(
    experiment: Annotated[str, typer.Argument(help="experiment file or MLflow experiment name")],
    study: StudyOption = None,
    out: Annotated[Path, typer.Option(help="where to write the page")] = Path("report.html"),
    top: Annotated[int, typer.Option(help="trials in the table and the learning curves")] = 5,
    log: Annotated[bool, typer.Option(help="also attach it to the sweep's parent run")] = True,
    tracking_uri: TrackingOption = None,
) -> None:
    """One self-contained HTML page for a sweep: table, history, importances, curves, champion."""
    from tunelab.record.recorded import find_sweep
    from tunelab.analysis.report import REPORT_ARTIFACT, build_report
    from tunelab.record.store import RunHandle, Tracker

    if top < 1:
        raise ConfigError("--top", "value", "must be at least 1", top)
    tracker = Tracker(tracking_uri)
    sweep = find_sweep(tracker, experiment, study)
    page = build_report(tracker, sweep, top=top)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    if log:
        RunHandle(tracker.client, sweep.parent_run_id).log_text(page, REPORT_ARTIFACT)
    print(
        f"{out} ({len(page) / 1e6:.1f} MB)"
        + (f"; logged to run {sweep.parent_run_id}" if log else "")
    )


@app.command()
def ui(
    tracking_uri: TrackingOption = None,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000,
) -> None:
    """Start the MLflow UI on 127.0.0.1 against the tracking store."""
    from tunelab.record.store import Tracker

    tracker = Tracker(tracking_uri)  # creates the local store folder if needed
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracker.tracking_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    console.print(
        f"MLflow UI on http://127.0.0.1:{port} (store {tracker.tracking_uri}); Ctrl-C stops"
    )
    os.execv(sys.executable, command)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: quiet TensorFlow's C++ logs, turn user errors into one line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # with a tracking server MLflow prints "View run ... at" on stdout, where tables go
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        return app(args=argv, standalone_mode=False)
    except UserError as error:
        console.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] finished work is recorded; the same command resumes")
        raise SystemExit(130) from None
    except typer.Exit as done:
        raise SystemExit(done.exit_code) from None
    except Exception as error:
        import click

        if isinstance(error, click.exceptions.ClickException):
            error.show()
            raise SystemExit(error.exit_code) from None
        if isinstance(error, click.exceptions.Abort):
            raise SystemExit(1) from None
        raise
