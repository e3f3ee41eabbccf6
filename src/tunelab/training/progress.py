"""Progress display: per-epoch bars for single trainings and a live summary for sweeps."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tunelab.console import user_console
from tunelab.record.results import EpochSink
from tunelab.training.deadline import Deadline

ProgressFactory = Callable[[str, int], AbstractContextManager[EpochSink]]


def no_progress(title: str, epochs: int) -> AbstractContextManager[EpochSink]:
    """A ProgressFactory that shows nothing."""
    return nullcontext(lambda epoch, logs: None)


@contextmanager
def epoch_progress(title: str, epochs: int, console: Console | None = None) -> Iterator[EpochSink]:
    """A progress bar over epochs (in a terminal; a line per epoch elsewhere); yields the sink
    that advances it and shows the last metrics."""
    console = console or user_console()
    if not console.is_terminal:

        def line(epoch: int, logs: dict[str, float]) -> None:
            shown = " ".join(
                f"{key} {logs[key]:.4f}" for key in ("loss", "val_accuracy") if key in logs
            )
            console.print(
                f"{title}: epoch {epoch}/{epochs}: {shown} ({logs.get('epoch_seconds', 0):.1f} s)",
                highlight=False,
                markup=False,
            )

        yield line
        return
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


class SweepProgress:
    """Live sweep display: trials done / pruned / failed / paused, best value, time left.

    Engines call begin(), start_trial(), epoch(), finish_trial() and note(); `show=False` keeps
    the same bookkeeping silent (tests, workers without a terminal).
    """

    def __init__(self, console: Console | None = None, *, show: bool = True) -> None:
        self.console = console or user_console()
        self.show = show
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._trial = ""
        self._summary = ""
        self._epochs = 0
        self._step_seconds: list[float] = []
        self._deadline: Deadline | None = None

    def __enter__(self) -> SweepProgress:
        if self.show and self.console.is_terminal:  # a log file gets the lines, not a live bar
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[trial]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[budget]}"),
                console=self.console,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None

    def begin(
        self, records: Sequence[Any], best: Any, *, total: int | None, deadline: Deadline | None
    ) -> None:
        self._deadline = deadline
        if self._progress is not None:
            self._task = self._progress.add_task("sweep", total=total, trial="", budget="")
        self._update(records, best)

    def start_trial(
        self, number: int, epochs: int, *, seconds: float | None = None, first_step: int = 1
    ) -> None:
        """A trial starts (at `first_step` if continued); `seconds`: its estimated duration."""
        self._trial, self._epochs = f"trial {number}", epochs
        self._step_seconds = []
        estimate = "" if seconds is None else f" (about {_minutes(seconds)} here)"
        self._refresh(trial=f"{self._trial}: starting at step {first_step}{estimate}")

    def epoch(self, epoch: int, logs: dict[str, float]) -> None:
        accuracy = logs.get("val_accuracy")
        shown = f"{self._trial}: step {epoch}/{self._epochs}"
        if accuracy is not None:
            shown += f" val {accuracy:.4f}"
        if "epoch_seconds" in logs:  # what is left of this trial, at the pace it measured
            self._step_seconds.append(logs["epoch_seconds"])
            recent = self._step_seconds[-2:]
            left = (self._epochs - epoch) * sum(recent) / len(recent)
            shown += f", about {_minutes(left)} left" if left > 0 else ""
        self._refresh(trial=shown)

    def finish_trial(self, records: Sequence[Any], best: Any) -> None:
        last = max(records, key=lambda r: r.number) if records else None
        if last is not None and self.show:
            value = "" if last.value is None else f" val_accuracy {last.value:.4f}"
            self.console.print(f"trial {last.number}: {last.state}{value}", highlight=False)
        self._update(records, best)

    def note(self, text: str) -> None:
        if self.show:
            self.console.print(text, highlight=False)

    def _update(self, records: Sequence[Any], best: Any) -> None:
        states = [r.state for r in records]
        best_text = (
            "-" if best is None or best.value is None else f"{best.value:.4f} (trial {best.number})"
        )
        complete, pruned, failed, paused = (
            states.count(s) for s in ("complete", "pruned", "failed", "paused")
        )
        waiting = f" · paused {paused}" if paused else ""
        self._summary = (
            f"done {complete} · pruned {pruned} · failed {failed}{waiting} · best {best_text}"
        )
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, completed=complete + pruned, description=self._summary
            )
        self._refresh()

    def _refresh(self, trial: str | None = None) -> None:
        if self._progress is None or self._task is None:
            return
        budget = ""
        if self._deadline is not None:
            budget = f"{max(0.0, self._deadline.remaining()) / 60:.1f} min of budget left"
        if trial is None:
            self._progress.update(self._task, budget=budget)
        else:
            self._progress.update(self._task, budget=budget, trial=trial)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
