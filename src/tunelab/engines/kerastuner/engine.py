"""KerasTuner engine: random, Bayesian and Hyperband tuners over the same search spaces.

The oracle gets the whole space declared up front (`kerastuner.space.declare`) with new entries
disallowed. `TunelabHyperModel` builds with the same factory; `TunelabTuner.run_trial` trains
each trial (Hyperband rounds included) through the same `train_and_validate`, in a child run of
the sweep's parent, exactly as the Optuna engine does. Tuner state lives under
`<state_dir>/<study>` and is reloaded by the same command.

A deadline pauses the running trial at a step boundary: the launch ends with the trial still
"ongoing" in the oracle's saved state, KerasTuner retries it under the same trial id when the
next launch reloads, and the retry continues from the checkpoint the paused run left in MLflow.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from tunelab.define.algorithms import TUNERS, TunerContext
from tunelab.define.cnn import CnnConfig, CnnConfigError, parse_config
from tunelab.define.data import Splits
from tunelab.define.experiment import ExperimentSpec
from tunelab.engines.base import SweepOutcome, SweepRequest
from tunelab.engines.kerastuner.space import chosen_values, declare
from tunelab.engines.sweep import (
    SweepError,
    SweepTracker,
    TrialRecord,
    best_of,
    describe_exception,
    max_trial_epochs,
    over_cost_cap,
    training_seconds,
    unfinishable,
)
from tunelab.record.names import Role, TagKey, TrialState
from tunelab.record.query import Query
from tunelab.record.results import VAL_ACCURACY, TrialResult
from tunelab.record.store import RunHandle
from tunelab.training.callbacks import EpochSinkCallback
from tunelab.training.checkpoints import (
    Checkpoint,
    CheckpointWriter,
    load_checkpoint,
    remove_checkpoints,
)
from tunelab.training.deadline import STARTUP_SECONDS, Deadline
from tunelab.training.model import build_cnn, steps_per_epoch
from tunelab.training.progress import SweepProgress
from tunelab.training.train import step_plan, train_and_validate

OBJECTIVE = kt.Objective(VAL_ACCURACY, direction="max")
UNBOUNDED_TRIALS = 99_999
WEIGHTS_FILE = "tunelab.weights.h5"


class DeadlineReached(BaseException):
    """The deadline came before the running trial's next step; it stays ongoing for the next launch.

    A BaseException, so KerasTuner's per-trial error handling (which marks trials failed) lets
    it through and the oracle keeps the trial as ongoing.
    """


class TunelabHyperModel(kt.HyperModel):  # type: ignore[misc]
    """HyperParameters -> CnnConfig -> the shared model factory."""

    def __init__(self, spec: ExperimentSpec, splits: Splits, max_epochs: int) -> None:
        super().__init__(name="tunelab_cnn", tunable=False)
        self.spec, self.splits, self.max_epochs = spec, splits, max_epochs

    def config(self, hp: kt.HyperParameters) -> CnnConfig:
        """The CnnConfig of the active parameters, the space's fixed values, the experiment's."""
        return parse_config(self.spec.config_values(chosen_values(self.spec.search_space, hp)))

    def build(self, hp: kt.HyperParameters) -> Any:
        keras.backend.clear_session()
        cfg = self.config(hp)
        return build_cnn(cfg, steps_per_epoch(len(self.splits.train), cfg.batch_size))


class TunelabTuner(kt.Tuner):  # type: ignore[misc]
    """Runs each trial through `train_and_validate` and records it in MLflow like every engine."""

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
        self.stopped_because = "the tuner finished its search"
        self.flop_rate = sweep.recorded_flop_rate()
        self.paused: int | None = None
        self.complete_trials = False  # `tunelab run`: start only trials that can finish
        self.not_started: str | None = None  # why this launch's last trial was not started

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
        with tempfile.TemporaryDirectory() as tmp, self.sweep.trial(number, chosen, seed) as run:
            if "tuner/epochs" in hp.values:
                run.log_params({k: hp.values[k] for k in hp.values if k.startswith("tuner/")})
            if previous is not None:
                run.set_tags({TagKey.CONTINUES_TRIAL: str(previous)})
            if earlier:
                run.set_tags({TagKey.RETRIES_TRIAL: str(number)})
            result, reason = self._train(trial, hp, run, seed, previous, earlier, Path(tmp))
        if self.not_started is not None or (result is not None and result.paused):
            self.paused = number
            raise DeadlineReached(f"trial {number} paused at the deadline")
        remove_checkpoints(self.sweep.tracker, run.run_id, *earlier)
        if reason is not None:
            raise kt.errors.FailedTrialError(reason)
        assert result is not None and result.best_val_accuracy is not None
        return {VAL_ACCURACY: result.best_val_accuracy}

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

    def _train(
        self,
        trial: Any,
        hp: kt.HyperParameters,
        run: RunHandle,
        seed: int,
        previous: str | None,
        earlier: list[str],
        folder: Path,
    ) -> tuple[TrialResult | None, str | None]:
        model: TunelabHyperModel = self.hypermodel
        try:
            cfg = model.config(hp)
        except CnnConfigError as error:
            reason = f"impossible config: {error}"
            self.sweep.record_trial(run, None, TrialState.FAILED, reason=reason)
            return None, reason
        over = over_cost_cap(cfg, self.spec.budget.max_training_mflop)
        if over is not None:
            self.sweep.record_trial(run, None, TrialState.FAILED, reason=over)
            return None, over
        epochs = int(hp.values.get("tuner/epochs", cfg.epochs))
        initial_epoch = int(hp.values.get("tuner/initial_epoch", 0))
        too_long = self._too_long(cfg, epochs, initial_epoch)
        if too_long is not None:  # the search ends here; the trial waits for a later launch
            self.sweep.record_trial(run, None, TrialState.PAUSED, reason=too_long)
            self.not_started = too_long
            return None, None
        weights = None if previous is None else self._weights(previous)
        if weights is not None and not Path(weights).is_file():
            weights, initial_epoch = None, 0  # the earlier round left no weights: start afresh
        resume = self._checkpoint(earlier, folder)
        if resume is not None:
            self.sweep.log_resumed(run, resume)
        self.progress.start_trial(
            int(trial.trial_id), epochs, seconds=self._estimate(cfg, epochs, initial_epoch)
        )
        sink = EpochSinkCallback(self.sweep.epoch_sink(run, self.progress))
        try:
            result = train_and_validate(
                cfg,
                self.splits_,
                callbacks=[sink],
                seed=seed,
                epochs=epochs,
                initial_epoch=initial_epoch,
                initial_weights=None if resume else weights,
                resume=resume,
                deadline=self.deadline,
                flop_rate=self.flop_rate,
                checkpoint=CheckpointWriter(self.sweep.tracker, run.run_id),
            )
        except Exception as error:  # one trial's crash is recorded; the search goes on
            reason = describe_exception(error)
            self.sweep.record_trial(run, None, TrialState.FAILED, reason=reason)
            return None, reason
        self.flop_rate = result.measured_flop_rate or self.flop_rate
        if result.paused:
            planned = step_plan(cfg, len(self.splits_.train)).steps_for_epochs(epochs)
            reason = f"paused at the deadline after {result.epochs_trained} of {planned} steps"
            self.sweep.record_trial(run, result, TrialState.PAUSED, reason=reason)
            return result, None
        if not result.ok:
            self.sweep.record_trial(run, result, TrialState.FAILED, reason=result.failure_reason)
            return result, result.failure_reason or "failed"
        result.model.save_weights(self._weights(trial.trial_id))
        self.sweep.record_trial(run, result, TrialState.COMPLETE)
        return result, None

    def _round_plan(self, cfg: CnnConfig, epochs: int, initial_epoch: int) -> tuple[Any, int]:
        """The steps of this round (up to `epochs`) and the first one it trains."""
        plan = step_plan(cfg, len(self.splits_.train))
        last = plan.steps_for_epochs(epochs)
        return replace(plan, steps=plan.steps[:last]), plan.steps_for_epochs(initial_epoch) + 1

    def _estimate(self, cfg: CnnConfig, epochs: int, initial_epoch: int) -> float:
        plan, first = self._round_plan(cfg, epochs, initial_epoch)
        return training_seconds(
            cfg,
            plan,
            first_step=first,
            validation_images=len(self.splits_.val),
            flop_rate=self.flop_rate,
        )

    def _too_long(self, cfg: CnnConfig, epochs: int, initial_epoch: int) -> str | None:
        """Why this trial is not started under `complete_trials` (None: it can finish)."""
        if not self.complete_trials or self.deadline is None:
            return None
        plan, first = self._round_plan(cfg, epochs, initial_epoch)
        verdict = unfinishable(
            cfg,
            plan,
            first_step=first,
            validation_images=len(self.splits_.val),
            flop_rate=self.flop_rate,
            deadline=self.deadline,
        )
        return None if verdict is None else verdict[0]

    @property
    def splits_(self) -> Splits:
        hypermodel: TunelabHyperModel = self.hypermodel
        return hypermodel.splits

    def _checkpoint(self, runs: list[str], folder: Path) -> Checkpoint | None:
        for run_id in runs:
            found = load_checkpoint(self.sweep.tracker, run_id, folder)
            if found is not None:
                return found
        return None

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
            flop_rate=self.flop_rate,
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
        "max_consecutive_failed_trials": spec.budget.max_consecutive_failures,
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
    hypermodel = TunelabHyperModel(spec, splits, max_epochs)
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
        tuner.complete_trials = request.complete_trials
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
        except RuntimeError as error:
            if "consecutive" not in str(error):
                raise
            parent.status_on_exit = "FAILED"
            last = next((r for r in reversed(tuner_records(tuner.oracle))), None)
            raise SweepError(
                f"{spec.budget.max_consecutive_failures} trials failed in a row"
                + (f" (last: trial {last.number})" if last else "")
                + "; check the search space, then run the same command to resume"
            ) from None
        records = tuner_records(tuner.oracle, sweep.run_ids(), tuner.paused)
        return SweepOutcome(parent.run_id, records, tuner.stopped_because)
