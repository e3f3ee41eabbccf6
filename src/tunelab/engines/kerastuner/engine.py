"""KerasTuner engine: random, Bayesian and Hyperband tuners over the same search spaces.

The oracle gets the whole space declared up front (`kerastuner.space.declare`) with new entries
disallowed. `TunelabHyperModel` builds with the experiment's factory; `TunelabTuner.run_trial`
trains each trial (Hyperband rounds included) through the same `TrialRunner` as the Optuna
engine, in a child run of the sweep's parent, and only translates its outcome: KerasTuner knows
completed and failed trials (a pruned one, over the cost cap, is failed for the oracle and
recorded as pruned, as with Optuna). Tuner state lives under
`<state_dir>/<study>` and is reloaded by the same command.

A deadline pauses the running trial at a step boundary: the launch ends with the trial still
"ongoing" in the oracle's saved state, KerasTuner retries it under the same trial id when the
next launch reloads, and the retry continues from the checkpoint the paused run left in MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras_tuner as kt

from tunelab.define.algorithms import TUNERS, TunerContext
from tunelab.define.experiment import ExperimentSpec
from tunelab.define.run_config import RunConfig
from tunelab.engines.base import SweepOutcome, SweepRequest
from tunelab.engines.kerastuner.space import chosen_values, declare
from tunelab.engines.runner import Round, TrialOutcome, TrialRunner, request_runner
from tunelab.engines.sweep import (
    SweepError,
    SweepTracker,
    TrialRecord,
    best_of,
    max_trial_epochs,
)
from tunelab.record.names import Role, TagKey, TrialState
from tunelab.record.query import Query
from tunelab.record.results import VAL_ACCURACY
from tunelab.training.deadline import STARTUP_SECONDS, Deadline
from tunelab.training.factory import build_model
from tunelab.training.model import steps_per_epoch
from tunelab.training.progress import SweepProgress
from tunelab.training.session import fresh_session

OBJECTIVE = kt.Objective(VAL_ACCURACY, direction="max")
UNBOUNDED_TRIALS = 99_999
WEIGHTS_FILE = "tunelab.weights.h5"


class TooManyFailures(BaseException):
    """`budget.max_consecutive_failures` trials failed in a row: the search stops (a
    BaseException, so KerasTuner's per-trial error handling lets it through)."""


class DeadlineReached(BaseException):
    """The deadline came before the running trial's next step; it stays ongoing for the next launch.

    A BaseException, so KerasTuner's per-trial error handling (which marks trials failed) lets
    it through and the oracle keeps the trial as ongoing.
    """


class TunelabHyperModel(kt.HyperModel):  # type: ignore[misc]
    """HyperParameters -> the trial runner's run config -> the experiment's model factory."""

    def __init__(self, spec: ExperimentSpec, runner: TrialRunner) -> None:
        super().__init__(name="tunelab_model", tunable=False)
        self.spec, self.runner = spec, runner

    def config(self, hp: kt.HyperParameters) -> RunConfig:
        """The run config of the active parameters, the space's fixed values, the experiment's."""
        return self.runner.config(chosen_values(self.spec.search_space, hp))

    def build(self, hp: kt.HyperParameters) -> Any:
        fresh_session()
        cfg = self.config(hp)
        train = len(self.runner.splits.train)
        return build_model(
            cfg, steps_per_epoch(train, cfg.training.batch_size), self.runner.factory
        )


class TunelabTuner(kt.Tuner):  # type: ignore[misc]
    """Runs each trial (Hyperband rounds included) through the trial runner, recorded in MLflow
    like every engine's."""

    def __init__(
        self,
        oracle: kt.Oracle,
        hypermodel: TunelabHyperModel,
        *,
        sweep: SweepTracker,
        progress: SweepProgress,
        spec: ExperimentSpec,
        trials: int | None,
        deadline: Deadline | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(oracle=oracle, hypermodel=hypermodel, **kwargs)
        self.sweep, self.progress, self.spec = sweep, progress, spec
        self.trial_budget, self.deadline = trials, deadline
        self.runner = hypermodel.runner
        self.stopped_because = "the tuner finished its search"
        self.paused: int | None = None
        self.not_started: str | None = None  # why this launch's last trial was not started
        self.failures_in_a_row = 0
        self.last_failure = ""

    # --- budget ---------------------------------------------------------------------

    def pre_create_trial(self) -> None:
        """Stop the oracle once the trial budget is spent or the deadline is near."""
        finished = [t for t in self.oracle.trials.values() if t.status == "COMPLETED"]
        reason = None
        if self.trial_budget is not None and len(finished) >= self.trial_budget:
            reason = f"the trial budget ({self.trial_budget}) is spent"
        elif self.deadline is not None and self.deadline.remaining() < 2 * STARTUP_SECONDS:
            reason = "the time budget is spent"
        if reason is not None:
            self.stopped_because = reason
            self.oracle.max_trials = len(self.oracle.trials)

    # --- one trial --------------------------------------------------------------------

    def run_trial(
        self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any
    ) -> dict[str, float]:
        hp = trial.hyperparameters
        number = int(trial.trial_id)
        seed = self.spec.seed + number
        chosen = chosen_values(self.spec.search_space, hp)
        previous = hp.values.get("tuner/trial_id")
        earlier = self._paused_runs(number)
        with self.sweep.trial(number, chosen, seed) as run:
            if "tuner/epochs" in hp.values:
                run.log_params({k: hp.values[k] for k in hp.values if k.startswith("tuner/")})
            if previous is not None:
                run.set_tags({TagKey.CONTINUES_TRIAL: str(previous)})
            if earlier:
                run.set_tags({TagKey.RETRIES_TRIAL: str(number)})
            outcome = self.runner.run(
                number, chosen, seed, run, earlier, part=self._round(hp, previous)
            )
        return self._translate(trial, outcome)

    def _round(self, hp: kt.HyperParameters, previous: str | None) -> Round:
        """A Hyperband round: its epochs, and the weights of the round it continues."""
        if "tuner/epochs" not in hp.values:
            return Round()
        initial_epoch = int(hp.values.get("tuner/initial_epoch", 0))
        weights = None if previous is None else self._weights(previous)
        if weights is not None and not Path(weights).is_file():
            weights, initial_epoch = None, 0  # the earlier round left no weights: start afresh
        return Round(int(hp.values["tuner/epochs"]), initial_epoch, weights)

    def _translate(self, trial: Any, outcome: TrialOutcome) -> dict[str, float]:
        """The runner's outcome in KerasTuner's terms (it knows completed and failed only)."""
        number = int(trial.trial_id)
        if outcome.state == TrialState.PAUSED or outcome.not_started:
            self.paused = number
            self.not_started = outcome.reason if outcome.not_started else None
            raise DeadlineReached(f"trial {number} paused at the deadline")
        if outcome.state != TrialState.COMPLETE:
            self.failures_in_a_row += 1
            self.last_failure = outcome.reason or outcome.state
            if self.failures_in_a_row >= self.spec.budget.max_consecutive_failures:
                raise TooManyFailures(self.last_failure)
            raise kt.errors.FailedTrialError(outcome.reason or outcome.state)
        self.failures_in_a_row = 0
        assert outcome.result is not None and outcome.value is not None
        outcome.result.model.save_weights(self._weights(trial.trial_id))
        return {VAL_ACCURACY: outcome.value}

    def _paused_runs(self, number: int) -> list[str]:
        """Runs of earlier paused attempts of this trial number, newest first."""
        runs = self.sweep.tracker.search(
            self.sweep.experiment,
            Query.of(role=Role.TRIAL, parent=self.sweep.parent_run_id).and_tags(
                **{TagKey.TRIAL_NUMBER: str(number), TagKey.TRIAL_STATE: TrialState.PAUSED}
            ),
            newest_first=True,
        )
        return [run.info.run_id for run in runs]

    def _weights(self, trial_id: str) -> str:
        folder = Path(self.get_trial_dir(trial_id))
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder / WEIGHTS_FILE)

    def on_trial_end(self, trial: Any) -> None:
        super().on_trial_end(trial)
        records = tuner_records(self.oracle, self.sweep.run_ids())
        best = best_of(records)
        self.sweep.update_summary(
            records,
            best=best,
            beat=self.sweep.time_to_beat_from_runs(),
            trial_seconds=self.sweep.trial_seconds_from_runs(),
            flop_rate=self.runner.flop_rate,
        )
        self.progress.finish_trial(records, best)


def tuner_records(
    oracle: kt.Oracle, run_ids: dict[int, str] | None = None, paused: int | None = None
) -> list[TrialRecord]:
    """KerasTuner trials as engine-neutral records (with their MLflow run ids if given)."""
    run_ids = run_ids or {}
    states = {
        "COMPLETED": TrialState.COMPLETE,
        "FAILED": TrialState.FAILED,
        "INVALID": TrialState.FAILED,
    }
    records = []
    for trial in oracle.trials.values():
        number = int(trial.trial_id)
        state = TrialState.PAUSED if number == paused else states.get(trial.status)
        if state is not None:
            records.append(
                TrialRecord(
                    number,
                    state,
                    trial.score if state == TrialState.COMPLETE else None,
                    run_ids.get(number, ""),
                    dict(trial.hyperparameters.values),
                )
            )
    return sorted(records, key=lambda r: r.number)


def make_oracle(spec: ExperimentSpec, max_epochs: int) -> kt.Oracle:
    """The experiment's tuner as a KerasTuner oracle, the space declared and frozen."""
    common: dict[str, Any] = {
        "objective": OBJECTIVE,
        "seed": spec.seed,
        "hyperparameters": declare(spec.search_space),
        "allow_new_entries": False,
        "tune_new_entries": False,
        # tunelab counts failures in a row itself (TunelabTuner), with its own one-line stop
        "max_consecutive_failed_trials": UNBOUNDED_TRIALS,
    }
    # the trial budget counts completed trials (failed ones are retried with new values), so the
    # oracle's own max_trials, which counts failures too, is only a backstop; the tuner stops it
    context = TunerContext(common, max_epochs, spec.engine.startup_trials, UNBOUNDED_TRIALS)
    oracle: kt.Oracle = TUNERS[spec.engine.tuner].build(context)
    return oracle


class KerasTunerEngine:
    """The KerasTuner engine behind tunelab's Engine interface."""

    name = "kerastuner"

    def run(self, request: SweepRequest) -> SweepOutcome:
        return run_keras_tuner_sweep(request)


def run_keras_tuner_sweep(request: SweepRequest) -> SweepOutcome:
    """Run (or resume) a KerasTuner search until its budget, its deadline or Ctrl-C."""
    spec, splits, sweep, progress = request.spec, request.splits, request.sweep, request.progress
    max_epochs = max_trial_epochs(spec)
    hypermodel = TunelabHyperModel(spec, request_runner(request, fidelity=False))
    with sweep.parent(splits) as parent:
        tuner = TunelabTuner(
            make_oracle(spec, max_epochs),
            hypermodel,
            sweep=sweep,
            progress=progress,
            spec=spec,
            trials=request.trials,
            deadline=request.deadline,
            directory=str(request.state_dir),
            project_name=request.study,
            overwrite=False,
        )
        # one KerasTuner worker per search: every trial run still RUNNING at start is orphaned
        closed = sweep.close_orphans(lambda number: True)
        if closed:
            progress.note(f"resumed: closed {closed} MLflow run(s) left RUNNING by a dead process")
        records = tuner_records(tuner.oracle)
        progress.begin(records, best_of(records), total=request.trials, deadline=request.deadline)
        try:
            tuner.search(verbose=0)
        except DeadlineReached:
            tuner.stopped_because = (
                f"no complete trial fits in the time left (trial {tuner.paused} "
                f"{tuner.not_started})"
                if tuner.not_started
                else f"the time budget ran out: trial {tuner.paused} is paused and continues from "
                "its checkpoint in the next launch"
            )
        except TooManyFailures as failed:
            parent.status_on_exit = "FAILED"
            raise SweepError(
                f"{spec.budget.max_consecutive_failures} trials failed in a row; the last: "
                f"{failed}. Check the search space, then run the same command to resume"
            ) from None
        records = tuner_records(tuner.oracle, sweep.run_ids(), tuner.paused)
        return SweepOutcome(parent.run_id, records, tuner.stopped_because)
