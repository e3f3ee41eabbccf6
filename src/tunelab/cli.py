"""Command line: parses arguments and delegates; user errors become one line, exit code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tunelab.cnn import CnnConfigError
from tunelab.data import DATASETS, DataError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Tune Keras CNNs with Optuna and KerasTuner, record in MLflow, compare with the baseline.",
)
console = Console(stderr=True)

USER_ERRORS = (DataError, CnnConfigError)

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


@app.command()
def data(dataset: DatasetOption = "mnist", data_file: DataFileOption = None) -> None:
    """Fetch and verify a dataset, cache it, and print where it is."""
    from tunelab.data import fetch_dataset

    fetched = fetch_dataset(
        dataset,
        user_path=data_file,
        report=lambda line: console.print(f"[yellow]skipped[/] {line}"),
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
    from tunelab.baseline import PUBLISHED_TEST_ACCURACY, run_baseline
    from tunelab.cnn import CnnConfig, parse_config
    from tunelab.data import load_splits
    from tunelab.progress import epoch_progress
    from tunelab.tracking import Tracker

    cfg = CnnConfig() if epochs is None else parse_config({"epochs": epochs})
    splits = (
        load_splits(
            dataset,
            validation_size,
            report=lambda line: console.print(f"[yellow]skipped[/] {line}"),
        )
        if data_file is None
        else load_splits(dataset, validation_size, user_path=data_file)
    )
    tracker = Tracker(tracking_uri)
    console.print(f"tracking to {tracker.tracking_uri}; data from {splits.source}")
    outcome = run_baseline(
        splits,
        tracker,
        cfg=cfg,
        seed=seed,
        progress=lambda title, n: epoch_progress(title, n, console),
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
def ui(
    tracking_uri: TrackingOption = None,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000,
) -> None:
    """Start the MLflow UI on 127.0.0.1 against the tracking store."""
    from tunelab.tracking import Tracker

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
    try:
        return app(args=argv, standalone_mode=False)
    except USER_ERRORS as error:
        console.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
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
