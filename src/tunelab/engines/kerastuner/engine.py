"""KerasTuner engine: random, Bayesian and Hyperband tuners over the same search spaces.

The oracle gets the whole space declared up front (`keras_tuner_space.declare`) with new entries
disallowed. `TunelabHyperModel` builds with the same factory and fits through the same
`train_and_validate`; `TunelabTuner.run_trial` wraps each trial (Hyperband rounds included) in a
child run of the sweep's parent, exactly as the Optuna engine does. Tuner state lives under
`tracking/keras_tuner/<study>` and is reloaded by the same command.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from tunelab.training.callbacks import EpochSinkCallback
from tunelab.define.cnn import CnnConfig, CnnConfigError, build_cnn, parse_config, steps_per_epoch
from tunelab.define.data import Splits
from tunelab.engines.kerastuner.space import chosen_values, declare
from tunelab.engines.sweep import (
    SweepError,
    SweepTracker,
    TrialRecord,
    best_of,
    describe_exception,
)
from tunelab.training.progress import SweepProgress
from tunelab.define.specs import ExperimentSpec
from tunelab.record.store import RunHandle, TagKey, TrialState
from tunelab.training.train import VAL_ACCURACY, TrialResult, train_and_validate

DEFAULT_DIRECTORY = Path("tracking/keras_tuner")
OBJECTIVE = kt.Objective(VAL_ACCURACY, direction="max")
UNBOUNDED_TRIALS = 99_999
WEIGHTS_FILE = "tunelab.weights.h5"


class TunelabHyperModel(kt.HyperModel):  # type: ignore[misc]
    """HyperParameters -> CnnConfig -> the shared factory and training function."""

    def __init__(self, spec: ExperimentSpec, splits: Splits, max_epochs: int) -> None:
        super().__init__(name="tunelab_cnn", tunable=False)
        self.spec, self.splits, self.max_epochs = spec, splits, max_epochs

    def config(self, hp: kt.HyperParameters) -> CnnConfig:
        """The CnnConfig of the active parameters plus the space's fixed values."""
        values = self.spec.search_space.to_config_values(chosen_values(self.spec.search_space, hp))
        values["epochs"] = min(int(values.get("epochs", 12)), self.max_epochs)
        return parse_config(values)

    def build(self, hp: kt.HyperParameters) -> Any:
        keras.backend.clear_session()
        cfg = self.config(hp)
        return build_cnn(cfg, steps_per_epoch(len(self.splits.train), cfg.batch_size))

    def fit(self, hp: kt.HyperParameters, model: Any, *args: Any, **kwargs: Any) -> TrialResult:
        """Train through train_and_validate (which builds the model itself from the same config).

        Keyword arguments: callbacks (KerasTuner's and tunelab's, passed through), epochs,
        initial_epoch, initial_weights, seed.
        """
        return train_and_validate(
            self.config(hp),
            self.splits,
            callbacks=kwargs.get("callbacks", ()),
            seed=kwargs.get("seed", 0),
            epochs=kwargs.get("epochs"),
            initial_epoch=kwargs.get("initial_epoch", 0),
            initial_weights=kwargs.get("initial_weights"),
        )


class TunelabTuner(kt.Tuner):  # type: ignore[misc]
    """Runs each trial through the hypermodel and records it in MLflow like every engine."""

    def __init__(
        self,
        oracle: kt.Oracle,
        hypermodel: TunelabHyperModel,
        *,
        sweep: SweepTracker,
        progress: SweepProgress,
        spec: ExperimentSpec,
        trials: int | None,
        timeout_seconds: float | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(oracle=oracle, hypermodel=hypermodel, **kwargs)
        self.sweep, self.progress, self.spec = sweep, progress, spec
        self.trial_budget, self.timeout_seconds = trials, timeout_seconds
        self.started = time.monotonic()
        self.stopped_because = "the tuner finished its search"

    # --- budget ---------------------------------------------------------------------

    def pre_create_trial(self) -> None:
        """Stop the oracle once the trial budget or the timeout is reached."""
        finished = [t for t in self.oracle.trials.values() if t.status == "COMPLETED"]
        reason = None
        if self.trial_budget is not None and len(finished) >= self.trial_budget:
            reason = f"the trial budget ({self.trial_budget}) is spent"
        elif (
            self.timeout_seconds is not None
            and time.monotonic() - self.started >= self.timeout_seconds
        ):
            reason = f"the timeout ({self.timeout_seconds:.0f} s) was reached"
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
        with self.sweep.trial(number, chosen, seed) as run:
            if "tuner/epochs" in hp.values:
                run.log_params({k: hp.values[k] for k in hp.values if k.startswith("tuner/")})
            if previous is not None:
                run.set_tags({TagKey.CONTINUES_TRIAL: str(previous)})
            result, reason = self._train(
                trial, hp, run, seed, previous, kwargs.get("callbacks", [])
            )
        if reason is not None:
            raise kt.errors.FailedTrialError(reason)
        assert result is not None and result.best_val_accuracy is not None
        return {VAL_ACCURACY: result.best_val_accuracy}

    def _train(
        self,
        trial: Any,
        hp: kt.HyperParameters,
        run: RunHandle,
        seed: int,
        previous: str | None,
        callbacks: list[Any],
    ) -> tuple[TrialResult | None, str | None]:
        model: TunelabHyperModel = self.hypermodel
        try:
            cfg = model.config(hp)
        except CnnConfigError as error:
            reason = f"impossible config: {error}"
            self.sweep.record_trial(run, None, TrialState.FAILED, reason=reason)
            return None, reason
        epochs = int(hp.values.get("tuner/epochs", cfg.epochs))
        initial_epoch = int(hp.values.get("tuner/initial_epoch", 0))
        weights = None if previous is None else self._weights(previous)
        if weights is not None and not Path(weights).is_file():
            weights, initial_epoch = None, 0  # the earlier round left no weights: start afresh
        self.progress.start_trial(int(trial.trial_id), epochs)
        sink = EpochSinkCallback(self.sweep.epoch_sink(run, self.progress))
        try:
            result = model.fit(
                hp,
                None,
                callbacks=[sink, *callbacks],
                seed=seed,
                epochs=epochs,
                initial_epoch=initial_epoch,
                initial_weights=weights,
            )
        except Exception as error:  # one trial's crash is recorded; the search goes on
            reason = describe_exception(error)
            self.sweep.record_trial(run, None, TrialState.FAILED, reason=reason)
            return None, reason
        if not result.ok:
            self.sweep.record_trial(run, result, TrialState.FAILED, reason=result.failure_reason)
            return result, result.failure_reason or "failed"
        result.model.save_weights(self._weights(trial.trial_id))
        self.sweep.record_trial(run, result, TrialState.COMPLETE)
        return result, None

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
        )
        self.progress.finish_trial(records, best)


def tuner_records(oracle: kt.Oracle, run_ids: dict[int, str] | None = None) -> list[TrialRecord]:
    """Finished KerasTuner trials as engine-neutral records (with their MLflow run ids if given)."""
    run_ids = run_ids or {}
    states = {
        "COMPLETED": TrialState.COMPLETE,
        "FAILED": TrialState.FAILED,
        "INVALID": TrialState.FAILED,
    }
    records = []
    for trial in oracle.trials.values():
        if trial.status in states:
            records.append(
                TrialRecord(
                    int(trial.trial_id),
                    states[trial.status],
                    trial.score,
                    run_ids.get(int(trial.trial_id), ""),
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
    backstop = UNBOUNDED_TRIALS
    tuner = spec.engine.tuner
    if tuner == "random":
        return kt.oracles.RandomSearchOracle(max_trials=backstop, **common)
    if tuner == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(
            max_trials=backstop, num_initial_points=max(2, spec.engine.startup_trials), **common
        )
    return kt.oracles.HyperbandOracle(
        max_epochs=max_epochs, factor=3, hyperband_iterations=1, **common
    )


def run_keras_tuner_sweep(
    spec: ExperimentSpec,
    splits: Splits,
    sweep: SweepTracker,
    progress: SweepProgress,
    *,
    study_name: str,
    directory: Path = DEFAULT_DIRECTORY,
    trials: int | None,
    timeout_seconds: float | None,
    max_epochs: int,
) -> tuple[str, list[TrialRecord], str]:
    """Run (or resume) a KerasTuner search; returns (parent run id, records, why it stopped)."""
    hypermodel = TunelabHyperModel(spec, splits, max_epochs)
    with sweep.parent(splits) as parent:
        tuner = TunelabTuner(
            make_oracle(spec, max_epochs),
            hypermodel,
            sweep=sweep,
            progress=progress,
            spec=spec,
            trials=trials,
            timeout_seconds=timeout_seconds,
            directory=str(directory),
            project_name=study_name,
            overwrite=False,
        )
        # one KerasTuner worker per search: every trial run still RUNNING at start is orphaned
        closed = sweep.close_orphans(lambda number: True)
        if closed:
            progress.note(f"resumed: closed {closed} MLflow run(s) left RUNNING by a dead process")
        records = tuner_records(tuner.oracle)
        progress.begin(records, best_of(records), total=trials, timeout=timeout_seconds)
        try:
            tuner.search(verbose=0)
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
        return parent.run_id, tuner_records(tuner.oracle, sweep.run_ids()), tuner.stopped_because
