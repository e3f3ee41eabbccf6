"""Progress display: a rich progress bar per training, fed by EpochSinkCallback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tunelab.callbacks import EpochSink


@contextmanager
def epoch_progress(title: str, epochs: int, console: Console | None = None) -> Iterator[EpochSink]:
    """A progress bar over epochs; yields the sink that advances it and shows the last metrics."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(title, total=epochs, metrics="")

        def advance(epoch: int, logs: dict[str, float]) -> None:
            shown = " ".join(
                f"{key} {logs[key]:.4f}" for key in ("loss", "val_accuracy") if key in logs
            )
            bar.update(task, completed=epoch, metrics=shown)
            bar.console.log(
                f"epoch {epoch}/{epochs}: {shown} ({logs.get('epoch_seconds', 0):.1f} s)"
            )

        yield advance
