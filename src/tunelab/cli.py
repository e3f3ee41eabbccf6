"""Command line: parses arguments and delegates to `tunelab.api`; user errors are one line, exit 2.

Tables and results go to stdout, progress and notes to stderr. Every command that trains or
reads the record starts quietly: TensorFlow's start-up lines are kept out of the terminal
(`tunelab.quiet`), unless `--verbose`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tunelab import __version__
from tunelab.console import user_console
from tunelab.define.data import DATASETS
from tunelab.define.files import ConfigError
from tunelab.errors import UserError
from tunelab.quiet import quiet_environment, quiet_tensorflow_import

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Tune Keras CNNs with Optuna and KerasTuner, record in MLflow, compare with the baseline.",
)
console = user_console()


def _version(value: bool) -> None:
    if value:
        print(f"tunelab {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="show TensorFlow's and the libraries' own logs")
    ] = False,
) -> None:
    quiet_environment(verbose=verbose)


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
StudyOption = Annotated[
    str | None, typer.Option(help="the sweep's study (default: the one named like the experiment)")
]
StorageOption = Annotated[
    str | None,
    typer.Option(help="Optuna storage URL (default: $TUNELAB_OPTUNA_STORAGE or SQLite)"),
]


def _say(line: str) -> None:
    console.print(line, highlight=False)


def _epoch_progress(title: str, epochs: int) -> Any:
    """The per-epoch progress display of single trainings (baseline, retraining, export)."""
    from tunelab.training.progress import epoch_progress

    return epoch_progress(title, epochs, console)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(name, "value", "must be a positive integer", value)


@app.command()
def data(dataset: DatasetOption = "mnist", data_file: DataFileOption = None) -> None:
    """Fetch and verify a built-in dataset, cache it, and print where it is."""
    from tunelab import api

    fetched = api.data(dataset, data_file=data_file, report=_say)
    arrays = fetched.arrays
    _say(
        f"verified {dataset} from {fetched.source}: train {arrays.x_train.shape}, "
        f"test {arrays.x_test.shape}, digest {fetched.digest[:16]}"
    )
    print(fetched.cache_file or "(not cached: cache directory not writable)")


@app.command()
def baseline(
    experiment: Annotated[
        Path | None,
        typer.Argument(help="an experiment file: the baseline of its data (default: --dataset)"),
    ] = None,
    dataset: DatasetOption = "mnist",
    data_file: DataFileOption = None,
    tracking_uri: TrackingOption = None,
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    validation_size: Annotated[int, typer.Option(help="images held out for validation")] = 10_000,
    epochs: Annotated[
        int | None, typer.Option(help="fewer epochs for a quick look (not the reference baseline)")
    ] = None,
) -> None:
    """Train the classic CNN on a dataset (adapted to its shape), test it, record the baseline."""
    from tunelab import api
    from tunelab.define.data import published_accuracy

    outcome = api.baseline(
        experiment,
        dataset=dataset,
        epochs=epochs,
        seed=seed,
        validation_size=validation_size,
        tracking_uri=tracking_uri,
        data_file=data_file,
        progress=_epoch_progress,
        report=_say,
    )
    best = outcome.validation.best_val_accuracy
    _say(f"validation stage: best val_accuracy {best:.4f}" if best else "validation failed")
    if outcome.test is None:
        _say(f"test stage failed: {outcome.full_train.failure_reason}")
        raise typer.Exit(1)
    published = published_accuracy(outcome.dataset)
    against = (
        f" ({(outcome.test.accuracy - published) * 100:+.2f} points vs the published "
        f"{published:.2%})"
        if published is not None
        else ""
    )
    _say(
        f"test accuracy {outcome.test.accuracy:.4f}{against}; "
        f"{outcome.full_train.wall_seconds + outcome.validation.wall_seconds:.0f} s of training; "
        f"run {outcome.run_id}" + ("" if outcome.reference else " (not the reference baseline)")
    )


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="experiment or search-space YAML files")],
) -> None:
    """Check experiment and search-space files (their data and model factory) without training."""
    from tunelab import api

    for line in api.validate(files):
        print(line)


@app.command()
def tune(
    experiment: Annotated[Path, typer.Argument(help="experiment file (experiments/*.yaml)")],
    trials: Annotated[int | None, typer.Option(help="trial budget (overrides the file's)")] = None,
    timeout: Annotated[
        str | None,
        typer.Option(help="time budget of all launches together: 90s, 30m, 1h30m (a deadline)"),
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="study name (default: the experiment's name)")
    ] = None,
    storage: StorageOption = None,
    tracking_uri: TrackingOption = None,
    data_file: DataFileOption = None,
    warm_start_from: Annotated[
        str | None, typer.Option(help="give the sampler this finished study's fitting trials")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no live progress display")] = False,
    workers: Annotated[
        int, typer.Option(help="local worker processes sharing the study (Optuna engine)")
    ] = 1,
) -> None:
    """Run a tuning sweep; the same command resumes an interrupted one."""
    from tunelab import api
    from tunelab.define.files import parse_duration

    spec = api.load_experiment(experiment)
    if timeout is not None:
        parse_duration(timeout, "--timeout", "value")
    _positive("--trials", trials)
    _positive("--workers", workers)
    if workers > 1:
        _start_workers(
            spec, experiment, workers, trials, timeout, study, storage, tracking_uri, data_file
        )
        return
    _terminate_as_interrupt()
    result = api.tune(
        spec,
        trials=trials,
        timeout=timeout,
        study=study,
        storage=storage,
        tracking_uri=tracking_uri,
        data_file=data_file,
        warm_start_from=warm_start_from,
        show_progress=not quiet,
    )
    _say(result.summary())


def _start_workers(
    spec: Any,
    experiment: Path,
    workers: int,
    trials: int | None,
    timeout: str | None,
    study: str | None,
    storage: str | None,
    tracking_uri: str | None,
    data_file: Path | None,
) -> None:
    from tunelab.define.algorithms import ENGINES
    from tunelab.engines.launch import resolve_storage
    from tunelab.engines.optuna.workers import run_workers
    from tunelab.redact import redact_url

    if not ENGINES[spec.engine.name].workers:
        raise ConfigError(
            "--workers", "value", "several workers need an Optuna experiment", workers
        )
    url = resolve_storage(storage, spec)
    _say(f"{workers} workers on study storage {redact_url(url)}")
    codes = run_workers(
        experiment,
        workers,
        storage_url=url,
        tracking_uri=tracking_uri,
        arguments=[
            *(["--trials", str(trials)] if trials is not None else []),
            *(["--timeout", timeout] if timeout is not None else []),
            *(["--study", study] if study is not None else []),
            *(["--data-file", str(data_file)] if data_file is not None else []),
        ],
        spec=spec,
        study=study,
    )
    _say(f"workers finished with exit codes {codes}")
    if any(codes):
        raise typer.Exit(max(codes))


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="experiment file (experiments/*.yaml)")],
    budget: Annotated[
        str | None,
        typer.Option(help="wall clock for search + confirmation + final model: 30m, 1h"),
    ] = None,
    baseline: Annotated[
        bool,
        typer.Option(
            help="record the baseline first if missing (--no-baseline: compare "
            "with the published 99.25 % only)"
        ),
    ] = True,
    out: Annotated[
        Path | None, typer.Option(help="bundle folder (default: exports/<name>)")
    ] = None,
    storage: StorageOption = None,
    tracking_uri: TrackingOption = None,
    data_file: DataFileOption = None,
    quiet: Annotated[bool, typer.Option(help="no live progress display")] = False,
) -> None:
    """Search, confirm and export the champion under one budget; the same command resumes."""
    from tunelab import api

    spec = api.load_experiment(experiment)
    _terminate_as_interrupt()
    result = api.run(
        spec,
        budget=budget,
        tracking_uri=tracking_uri,
        storage=storage,
        data_file=data_file,
        baseline=baseline,
        out=out,
        console=console,
        show_progress=not quiet,
        progress=_epoch_progress if not quiet else None,
    )
    for line in result.lines():
        print(line)


def _terminate_as_interrupt() -> None:
    """SIGTERM ends a sweep like Ctrl-C: the trial is closed as failed, the study resumable."""
    from tunelab.interrupts import stop_on_signals

    stop_on_signals()


@app.command()
def reproduce(
    run_id: Annotated[str, typer.Argument(help="a trial run id (the sweep's best_run_id)")],
    experiment: Annotated[
        Path | None,
        typer.Option(help="the experiment file that names the run's model factory (user models)"),
    ] = None,
    tracking_uri: TrackingOption = None,
    data_file: DataFileOption = None,
) -> None:
    """Retrain a recorded trial with its recorded seed and compare it epoch by epoch."""
    from tunelab import api

    again = api.reproduce(
        run_id,
        experiment=experiment,
        tracking_uri=tracking_uri,
        data_file=data_file,
        progress=_epoch_progress,
        report=_say,
    )
    original = again.original
    if again.best_val_accuracy is None or original.best_val_accuracy is None:
        _say(f"retraining failed: {again.result.failure_reason}")
        raise typer.Exit(1)
    validation = original.data.validation_size
    print(
        f"{original.label} (run {run_id}, seed {original.seed}): recorded best val_accuracy "
        f"{original.best_val_accuracy:.4f}, retrained {again.best_val_accuracy:.4f} "
        f"({(again.difference or 0.0) * 100:+.2f} points, "
        f"{round(abs(again.difference or 0.0) * validation)} of {validation} "
        f"validation images); run {again.run_id}"
    )
    largest = ", ".join(f"{k} {v:.2g}" for k, v in again.epoch_differences.items())
    print(f"largest per-epoch difference from the record: {largest or 'no epochs to compare'}")
    if original.resumed:
        print(
            "the recorded trial was continued from a checkpoint: its dropout randomness "
            "restarted there, so an uninterrupted retraining is not expected to be bit-identical"
        )


@app.command()
def confirm(
    experiment: Annotated[str, typer.Argument(help="experiment file or MLflow experiment name")],
    study: StudyOption = None,
    top: Annotated[int, typer.Option(help="how many of the best configurations")] = 3,
    seeds: Annotated[int, typer.Option(help="fresh seeds per configuration")] = 3,
    keep_models: Annotated[
        bool, typer.Option(help="keep each retrained model (ensemble members for export)")
    ] = False,
    tracking_uri: TrackingOption = None,
    data_file: DataFileOption = None,
) -> None:
    """Retrain the top configurations with fresh seeds; the champion is the best mean."""
    from rich.table import Table

    from tunelab import api

    result = api.confirm(
        experiment,
        study=study,
        top=top,
        seeds=seeds,
        keep_models=keep_models,
        tracking_uri=tracking_uri,
        data_file=data_file,
        progress=_epoch_progress,
        report=_say,
    )
    table = Table(title=f"{result.sweep.experiment}: top {top} confirmed with {seeds} fresh seeds")
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
    epochs: Annotated[
        int | None, typer.Option(help="refit for this many epochs (the schedule spans them)")
    ] = None,
    ensemble: Annotated[
        int, typer.Option(help="also deliver the averaged softmax of this many trained members")
    ] = 0,
    model_name: Annotated[
        str | None, typer.Option(help="registered model name (default: tunelab-<dataset>)")
    ] = None,
    tracking_uri: TrackingOption = None,
    data_file: DataFileOption = None,
    experiment: Annotated[
        Path | None,
        typer.Option(help="with a run id: the experiment file that names its model factory"),
    ] = None,
    test_time_shifts: Annotated[
        int,
        typer.Option(
            help="average the image and its shifts by this many pixels, mirrored too for a "
            "model trained with augment_flip (0: off)"
        ),
    ] = 0,
    snapshot_cycles: Annotated[
        int,
        typer.Option(
            help="restart the refit's schedule this many times; earlier cycles' ends join "
            "--ensemble (1: off)"
        ),
    ] = 1,
) -> None:
    """Refit the champion, test it once, write and verify every format, register it."""
    from tunelab import api

    result = api.export(
        target,
        study=study,
        out=out,
        formats=tuple(part.strip() for part in formats.split(",")),
        refit=refit,
        epochs=epochs,
        ensemble=ensemble,
        model_name=model_name,
        tracking_uri=tracking_uri,
        data_file=data_file,
        experiment=experiment,
        test_time_shifts=test_time_shifts,
        snapshot_cycles=snapshot_cycles,
    )
    line = f"{result.label}: test accuracy {result.test.accuracy:.4f} {result.interval.bracket()}"
    if result.baseline is not None:
        line += (
            f", {(result.test.accuracy - result.baseline.accuracy) * 100:+.2f} points vs the "
            f"baseline (McNemar p = {result.baseline.p_value:.3g})"
        )
    if result.versus_single is not None:
        line += f", vs the single champion McNemar p = {result.versus_single.p_value:.3g}"
    if result.version is not None:
        line += f"; registered {result.model_name} v{result.version} as @champion"
        if result.previous_version:
            line += f" (was v{result.previous_version})"
    print(f"{line}; bundle {result.folder}; run {result.run_id}")


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
    from tunelab import api

    _check_writable(out)
    compared = api.comparison(
        experiment, study=study, top=top, fmt=fmt, log=log, tracking_uri=tracking_uri
    )
    _say(compared.headline)
    print(compared.text, end="")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(compared.text)
        _say(f"written to {out}")
    if compared.logged_to:
        _say(f"logged to run {compared.logged_to} (comparison/)")


def _check_writable(out: Path | None) -> None:
    """Refuse an output file that cannot be written, before any work (and writing nothing)."""
    if out is None:
        return
    if out.is_dir():
        raise ConfigError("--out", "value", "is a folder; name a file", str(out))
    existing = out.parent.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("--out", "value", f"cannot write under {existing}", str(out))


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
    from tunelab import api

    _check_writable(out)
    page = api.report(experiment, study=study, top=top, out=out, log=log, tracking_uri=tracking_uri)
    print(f"{page} ({page.stat().st_size / 1e6:.1f} MB)" + ("; logged to the sweep" if log else ""))


@app.command()
def ui(
    experiment: Annotated[
        str | None, typer.Argument(help="experiment file or name to open (default: the newest)")
    ] = None,
    tracking_uri: TrackingOption = None,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000,
) -> None:
    """Start the MLflow UI on 127.0.0.1 and print where a sweep's runs are, best first."""
    from tunelab.record.names import Role
    from tunelab.record.query import Query
    from tunelab.record.recorded import experiment_name
    from tunelab.record.store import Tracker
    from tunelab.services import exec_mlflow_ui, landing_url

    tracker = Tracker(tracking_uri)  # creates the local store folder if needed
    base = f"http://127.0.0.1:{port}"
    _say(f"MLflow UI on {base} (store {tracker.shown_uri}); Ctrl-C stops")
    if experiment is not None:
        found = tracker.client.get_experiment_by_name(experiment_name(experiment))
        experiment_id = found.experiment_id if found is not None else None
    else:
        sweeps = tracker.search_all(Query.of(role=Role.SWEEP), limit=1)
        experiment_id = sweeps[0].info.experiment_id if sweeps else None
    if experiment_id is not None:
        _say(f"the sweep's runs, best first: {landing_url(base, experiment_id)}")
    exec_mlflow_ui(tracker.tracking_uri, port)


@app.command()
def dashboard(
    experiment: Annotated[
        Path | None, typer.Argument(help="experiment file (its storage), or give --storage")
    ] = None,
    storage: StorageOption = None,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 8080,
) -> None:
    """Watch studies live in optuna-dashboard on 127.0.0.1 (trials, history, importances)."""
    from tunelab.redact import redact_url
    from tunelab.services import serve_dashboard

    if experiment is not None:
        from tunelab.define.experiment import load_experiment
        from tunelab.engines.launch import resolve_storage

        url = _checked_storage(resolve_storage(storage, load_experiment(experiment)))
    else:
        url = _checked_storage(storage)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no study storage at {url} yet: run `tunelab tune` first")
    from tunelab.engines.optuna.study import connect_storage

    _say(f"optuna-dashboard on http://127.0.0.1:{port} (storage {redact_url(url)}); Ctrl-C stops")
    serve_dashboard(connect_storage(url), port)


@app.command("storage-proxy")
def storage_proxy(
    storage: StorageOption = None,
    host: Annotated[
        str, typer.Option(help="address to listen on (0.0.0.0: every interface)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 13000,
) -> None:
    """Serve a study storage to workers on other hosts through Optuna's gRPC proxy.

    Workers then give --storage grpc://HOST:PORT. The database URL comes from --storage or
    $TUNELAB_OPTUNA_STORAGE (put a password there, not on a command line)."""
    from tunelab.define.urls import is_proxy_url
    from tunelab.engines.optuna.proxy import serve
    from tunelab.interrupts import wait_for_stop_signal
    from tunelab.redact import redact_url

    url = _checked_storage(storage)
    if is_proxy_url(url):
        raise ConfigError(
            "--storage", "value", "the proxy serves a database, not another proxy: give one"
        )
    server = serve(url, host, port)
    _say(f"Optuna storage proxy on grpc://{host}:{port} for {redact_url(url)}; Ctrl-C stops")
    try:
        wait_for_stop_signal(server.wait_for_termination)  # its result: True while it runs
    finally:
        server.stop(grace=5)


def _checked_storage(storage: str | None) -> str:
    """`storage`, else $TUNELAB_OPTUNA_STORAGE, else the embedded SQLite; one line if unusable."""
    from tunelab.define.urls import check_storage_url, missing_driver
    from tunelab.engines.launch import DEFAULT_STORAGE, STORAGE_ENV

    url = storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    problem = check_storage_url(url) or missing_driver(url)
    if problem:
        raise ConfigError("--storage", "value", problem)
    return url


INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C or SIGTERM


def main(argv: list[str] | None = None) -> Any:
    """Entry point: quiet start-up, user errors as one line (exit 2), Ctrl-C as a note."""
    arguments = argv if argv is not None else sys.argv[1:]
    quiet_environment(verbose="--verbose" in arguments)
    quiet_tensorflow_import()  # loaded when a command first needs it, its start-up lines kept out
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as error:
        console.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        code = INTERRUPTED
    except typer.Exit as done:
        raise SystemExit(done.exit_code) from None
    except Exception as error:
        usage = usage_error(error)
        if usage is not None:
            console.print(f"[red]error:[/] {usage}", highlight=False, soft_wrap=True)
            raise SystemExit(2) from None
        if type(error).__name__ == "Abort":
            raise SystemExit(1) from None
        lost = lost_store(error)
        if lost is not None:
            console.print(f"[red]error:[/] {lost}", highlight=False, soft_wrap=True)
            raise SystemExit(2) from None
        raise
    # Typer turns Ctrl-C (and SIGTERM, see tunelab.interrupts) into exit code 130 and, outside
    # its standalone mode, returns the code instead of raising: an interrupted command must
    # still say so and end with that status (a job controller reads it)
    if code == INTERRUPTED:
        console.print("[yellow]interrupted:[/] finished work is recorded; the same command resumes")
    if isinstance(code, int) and code != 0:
        raise SystemExit(code)
    return code


def usage_error(error: Exception) -> str | None:
    """A command-line usage error (unknown option, bad value) as one line; None if not one.

    Typer carries its own copy of click, so the check is on the shape, not the class.
    """
    module = type(error).__module__
    if not module.startswith(("click", "typer")) or not hasattr(error, "format_message"):
        return None
    message = " ".join(str(error.format_message()).split())
    context = getattr(error, "ctx", None)
    command = getattr(context, "command_path", "tunelab") if context is not None else "tunelab"
    return f"{message} (see `{command} --help`)"


def lost_store(error: Exception) -> str | None:
    """A tracking store or database that stopped answering, as one line (None: not that)."""
    from tunelab.redact import redact_text

    module = type(error).__module__.split(".")[0]
    if module not in ("mlflow", "requests", "urllib3", "sqlalchemy"):
        return None
    text = str(error).strip().splitlines()
    first = redact_text(text[0][:300] if text else type(error).__name__)
    return (
        f"the tracking store or database stopped answering ({type(error).__name__}: {first}); "
        "what finished is recorded: run the same command again to resume"
    )
