"""Launch (or resume) a sweep: load the data once, find the baseline, set the deadline, run.

The time budget (`--timeout`, else the experiment's `budget.timeout`) is the running time of
all launches of the sweep together, read from the ledger on its parent run: a launch gets what
earlier launches left, as a deadline no training step may run past. The engine is found by name
in `tunelab.engines.base.ENGINES`. The result is one `SweepResult`, the same for the command
line, the Python API and `tunelab run`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab.console import user_console
from tunelab.define.data import Splits
from tunelab.define.experiment import ExperimentSpec
from tunelab.define.urls import check_storage_url, check_tracking_uri, missing_driver
from tunelab.engines.base import SweepRequest, engine
from tunelab.engines.numerics import Numerics, follow_record, measure_numerics
from tunelab.engines.sweep import (
    SWEEP_LEDGER,
    BaselineBar,
    RecordedDefinition,
    SweepError,
    SweepTracker,
    TrialRecord,
    best_of,
    count_states,
    find_baseline_bar,
)
from tunelab.record.ledger import Ledger
from tunelab.record.store import Tracker, resolve_tracking_uri
from tunelab.redact import redact_url
from tunelab.training.deadline import Deadline
from tunelab.training.factory import Factory
from tunelab.training.prepare import Prepared, load_splits_of, prepare
from tunelab.training.progress import SweepProgress

STORAGE_ENV = "TUNELAB_OPTUNA_STORAGE"
DEFAULT_STORAGE = "sqlite:///tracking/optuna.db"
DEFAULT_STATE_DIR = Path("tracking/keras_tuner")


def resolve_storage(explicit: str | None, spec: ExperimentSpec) -> str:
    """--storage, else the experiment's storage, else $TUNELAB_OPTUNA_STORAGE, else SQLite."""
    return explicit or spec.storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


@dataclass(frozen=True)
class SweepResult:
    """One launch of a sweep, engine-neutral: what `tunelab tune` and `tunelab.api.tune` return."""

    experiment: str
    study: str
    engine: str
    parent_run_id: str
    records: tuple[TrialRecord, ...]
    stopped_because: str
    baseline: BaselineBar | None
    launch_seconds: float  # this launch's wall time, data loading and set-up included
    spent_seconds: float  # every launch of the sweep together (what the time budget counts)
    spent_before: float = 0.0  # of spent_seconds, by earlier launches

    @property
    def best(self) -> TrialRecord | None:
        return best_of(list(self.records))

    @property
    def counts(self) -> dict[str, int]:
        return count_states(list(self.records))

    def trials(self) -> Any:
        """A pandas DataFrame: one row per trial (number, state, value, run id, parameters)."""
        import pandas as pd

        rows = [
            {
                "trial": r.number,
                "state": r.state,
                "val_accuracy": r.value,
                "run_id": r.run_id,
                **dict(r.params),
            }
            for r in self.records
        ]
        return pd.DataFrame(rows)

    def summary(self) -> str:
        counts = self.counts
        text = (
            f"stopped: {self.stopped_because}. trials: {counts['complete']} complete, "
            f"{counts['pruned']} pruned, {counts['failed']} failed"
            + (f", {counts['paused']} paused" if counts["paused"] else "")
            + f"; {self.launch_seconds:.0f} s this launch "
            f"({self.spent_seconds - self.spent_before:.0f} s of it on the budget's clock, "
            f"{self.spent_seconds:.0f} s there in all)."
        )
        best = self.best
        if best is not None and best.value is not None:
            text += f" best: trial {best.number}, val_accuracy {best.value:.4f}"
            if self.baseline is not None:
                gain = (best.value - self.baseline.val_accuracy) * 100
                text += f" ({gain:+.2f} points vs the baseline)"
            text += f", MLflow run {best.run_id}."
        return text + f" Parent run {self.parent_run_id} in MLflow experiment {self.experiment!r}."


def sweep_deadline(
    tracker: Tracker, spec: ExperimentSpec, study: str, budget_seconds: float | None
) -> tuple[Deadline | None, float]:
    """The deadline of this launch (None without a time budget) and the seconds earlier
    launches spent (0 for a new sweep)."""
    parent = SweepTracker(tracker, spec, study, spec.engine.name, None).find_parent()
    spent = Ledger(tracker, parent, SWEEP_LEDGER).spent() if parent else 0.0
    if budget_seconds is None:
        return None, spent
    return Deadline.after(budget_seconds - spent), spent


def run_sweep(
    spec: ExperimentSpec,
    *,
    trials: int | None = None,
    timeout_seconds: float | None = None,
    deadline: Deadline | None = None,
    study_name: str | None = None,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    data_file: Path | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    splits: Splits | None = None,
    state_dir: Path | None = None,
    warm_start_from: str | None = None,
    keep_models: bool = False,
    numerics: Numerics | None = None,
    complete_trials: bool = False,
    factory: Factory | None = None,
) -> SweepResult:
    """Run the experiment's sweep within its budget (or the overrides); see the module doc.

    `splits` replaces the experiment's data (tests pass the tiny fixture); `deadline` replaces
    the time budget (`tunelab run` gives its search stage one). `numerics` is this machine's
    measured speed and precision decision (measured here if not given); the sweep's recorded
    precision and schedule, if it has them, win. `complete_trials` (`tunelab run`) starts no
    trial whose schedule cannot end before the deadline, instead of pausing it there.
    `factory`: the caller prepared the experiment already (its spec carries the factory's
    digest; `tunelab.training.prepare`).
    """
    started = time.monotonic()
    console = console or user_console()
    study = study_name or spec.name
    storage = resolve_storage(storage_url, spec)
    if spec.engine.name == "optuna":  # refused before anything is created or fetched
        problem = check_storage_url(storage) or missing_driver(storage)
        if problem:
            raise SweepError(f"Optuna storage {redact_url(storage)}: {problem}")
    problem = check_tracking_uri(resolve_tracking_uri(tracking_uri))
    if problem:
        raise SweepError(f"tracking URI: {problem}")

    def say(line: str) -> None:
        console.print(line, highlight=False)

    if splits is None:  # data that does not check is refused before any store exists
        splits = load_splits_of(spec, data_file=data_file, report=say)
    tracker = Tracker(tracking_uri)
    recorded = SweepTracker(tracker, spec, study, spec.engine.name, None).recorded_definition()
    recorded.check_data(splits)
    prepared = (
        prepare(spec, splits, expected_sha256=recorded.factory_sha256)
        if factory is None
        else Prepared(spec, splits, factory)
    )
    spec, numerics = decide_numerics(prepared, recorded, numerics, say)
    baseline, note = find_baseline_bar(tracker, splits)
    budget = timeout_seconds if timeout_seconds is not None else spec.budget.timeout
    own_deadline, spent_before = sweep_deadline(tracker, spec, study, budget)
    deadline = deadline or own_deadline
    trial_budget = trials if trials is not None else spec.budget.trials
    console.print(
        f"sweep {study}: {spec.engine.name} ({_algorithms(spec)}), {len(splits.train)} training "
        f"/ {len(splits.val)} validation images; {note}" + _budget_note(budget, spent_before),
        highlight=False,
    )
    sweep = SweepTracker(tracker, spec, study, spec.engine.name, baseline, numerics)
    if deadline is not None and deadline.passed():
        return _spent(spec, study, sweep, baseline, budget, spent_before, started)
    request = SweepRequest(
        spec=spec,
        splits=splits,
        factory=prepared.factory,
        sweep=sweep,
        progress=SweepProgress(console, show=show_progress),
        study=study,
        trials=trial_budget,
        deadline=deadline,
        storage_url=storage,
        state_dir=state_dir or DEFAULT_STATE_DIR,
        warm_start_from=warm_start_from,
        keep_models=keep_models,
        complete_trials=complete_trials,
    )
    with request.progress:
        outcome = engine(spec.engine.name).run(request)
    sweep.parent_run_id = outcome.parent_run_id
    sweep.log_rank_agreements(say)
    spent = Ledger(tracker, outcome.parent_run_id, SWEEP_LEDGER).spent()
    return SweepResult(
        spent_before=spent_before,
        experiment=spec.name,
        study=study,
        engine=spec.engine.name,
        parent_run_id=outcome.parent_run_id,
        records=tuple(outcome.records),
        stopped_because=outcome.stopped_because,
        baseline=baseline,
        launch_seconds=time.monotonic() - started,
        spent_seconds=spent,
    )


def decide_numerics(
    prepared: Prepared,
    recorded: RecordedDefinition,
    numerics: Numerics | None,
    report: Callable[[str], None],
) -> tuple[ExperimentSpec, Numerics]:
    """The experiment with its precision and schedule as the sweep recorded them (a new sweep:
    as this machine decides), and this machine's speed."""
    measured = numerics or measure_numerics(prepared.spec, prepared.splits, prepared.factory)
    numerics = follow_record(measured, recorded.precision, report)
    spec = prepared.spec.with_precision(numerics.precision)
    return (spec.with_schedule(recorded.schedule_epochs) if recorded.exists else spec), numerics


def _algorithms(spec: ExperimentSpec) -> str:
    engine_spec = spec.engine
    if engine_spec.name == "kerastuner":
        return f"tuner {engine_spec.tuner}"
    fidelity = f", first rung {engine_spec.min_images} images" if engine_spec.min_images else ""
    return f"{engine_spec.sampler}, pruner {engine_spec.pruner}{fidelity}"


def _budget_note(budget: float | None, spent: float) -> str:
    if budget is None:
        return ""
    left = max(0.0, budget - spent)
    return (
        f"; time budget {budget / 60:.1f} min, {spent / 60:.1f} spent by earlier launches, "
        f"{left / 60:.1f} left"
    )


def _spent(
    spec: ExperimentSpec,
    study: str,
    sweep: SweepTracker,
    baseline: BaselineBar | None,
    budget: float | None,
    spent: float,
    started: float,
) -> SweepResult:
    """The result of a launch that found its time budget already used up (it trains nothing)."""
    from tunelab.errors import UserError

    parent = sweep.find_parent()
    if parent is None:
        raise UserError(f"the time budget ({budget} s) leaves no time for a first trial")
    return SweepResult(
        experiment=spec.name,
        study=study,
        engine=spec.engine.name,
        parent_run_id=parent,
        records=(),
        stopped_because=(
            f"the time budget ({(budget or 0) / 60:.1f} min) was spent by earlier launches; "
            "raise it with --timeout to continue"
        ),
        baseline=baseline,
        launch_seconds=time.monotonic() - started,
        spent_seconds=spent,
    )
