"""The engine interface: what every search library adapter takes and gives back.

An engine turns a `SweepRequest` (the experiment, its data, the MLflow record of the sweep, the
budget as a trial count and a deadline) into a `SweepOutcome` (the parent run, every finished
trial as an engine-neutral `TrialRecord`, why it stopped). Engines are found by name in
`ENGINES`, whose keys are exactly those of `tunelab.define.algorithms.ENGINES` (tested), so an
experiment that validates always finds its engine.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tunelab.define.data import Splits
from tunelab.define.experiment import ExperimentSpec
from tunelab.engines.sweep import SweepTracker, TrialRecord
from tunelab.training.deadline import Deadline
from tunelab.training.factory import Factory
from tunelab.training.progress import SweepProgress


@dataclass(frozen=True)
class SweepRequest:
    """Everything an engine needs for one launch of a sweep."""

    spec: ExperimentSpec
    splits: Splits
    factory: Factory  # the experiment's, imported and checked (`tunelab.training.prepare`)
    sweep: SweepTracker
    progress: SweepProgress
    study: str
    trials: int | None
    deadline: Deadline | None
    storage_url: str
    state_dir: Path  # where an engine keeps files of its own (KerasTuner's project folder)
    warm_start_from: str | None = None
    keep_models: bool = False  # complete trials keep their model (ensemble members)
    complete_trials: bool = False  # start no trial whose schedule cannot end before the deadline


@dataclass(frozen=True)
class SweepOutcome:
    """What one launch leaves: the parent run, the trials, why it stopped."""

    parent_run_id: str
    records: list[TrialRecord] = field(default_factory=list)
    stopped_because: str = ""


class Engine(Protocol):
    """A search library behind tunelab's sweep: runs trials until the request's budget ends."""

    name: str

    def run(self, request: SweepRequest) -> SweepOutcome: ...


# name -> "module:class"; imported only when used (an engine's library is heavy)
ENGINES: dict[str, str] = {
    "optuna": "tunelab.engines.optuna.engine:OptunaEngine",
    "kerastuner": "tunelab.engines.kerastuner.engine:KerasTunerEngine",
}


def engine(name: str) -> Engine:
    """The engine registered under `name`."""
    module, _, attribute = ENGINES[name].partition(":")
    cls = getattr(importlib.import_module(module), attribute)
    built: Engine = cls()
    return built
