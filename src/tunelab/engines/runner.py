"""One trial, from a chosen point to its outcome, the same for every engine: `TrialRunner`.

An engine asks its library for a point, opens the trial's MLflow run (`SweepTracker.trial`) and
hands both here; the runner builds the run config (the point, the space's fixed values, the
experiment's precision and schedule, the data's shape), refuses what cannot be trained, picks up
the newest usable checkpoint an earlier attempt left (on any worker), trains through
`train_and_validate` with the engine's callbacks, records the outcome on the run and returns it
as a `TrialOutcome`. The engine only translates that outcome into its library's states: Optuna's
complete / pruned / failed, KerasTuner's completed / failed; a deadline or a schedule that cannot
end in time stops either library's search the same way.

Outcomes, the same words on every run (`tunelab.trial_state`):
- complete: trained its whole schedule (the pruner may have let it go early: `pruned`);
- pruned: the pruner stopped it, or it was not started because it costs more per image than
  `budget.max_training_mflop` or (under `tunelab run`) its schedule cannot end before the
  deadline (`not_started` says so);
- failed: an impossible configuration, a NaN loss, exhausted memory, the factory raising;
- paused: the deadline came between two steps; its checkpoint waits for the next launch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunelab.define.data import Splits
from tunelab.define.experiment import ExperimentSpec
from tunelab.define.run_config import RunConfig
from tunelab.define.space import Scalar
from tunelab.define.training import ConfigFieldError
from tunelab.engines.base import SweepRequest
from tunelab.engines.sweep import (
    SweepError,
    SweepTracker,
    TrialTakenOver,
    over_cost_cap,
    training_seconds,
    unfinishable,
)
from tunelab.record.names import TrialState
from tunelab.record.results import TrialResult
from tunelab.record.store import RunHandle
from tunelab.text import describe_exception
from tunelab.training.callbacks import EpochSinkCallback
from tunelab.training.checkpoints import (
    Checkpoint,
    CheckpointWriter,
    keep_model,
    load_checkpoint,
    remove_checkpoints,
)
from tunelab.training.deadline import Deadline
from tunelab.training.factory import Factory
from tunelab.training.inputs import StepPlan
from tunelab.training.progress import SweepProgress
from tunelab.training.train import Fidelity, step_plan, train_and_validate


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial came to; the engine translates `state` into its library's."""

    state: str  # a TrialState
    result: TrialResult | None = None
    reason: str | None = None
    pruned_at: int | None = None  # the step a pruner stopped it at (0: not started)
    not_started: bool = False  # its schedule could not end before the deadline

    @property
    def value(self) -> float | None:
        return self.result.best_val_accuracy if self.result is not None else None


@dataclass(frozen=True)
class Round:
    """A part of a trial's schedule (KerasTuner's Hyperband rounds): epochs up to `epochs`,
    starting after `initial_epoch` from `initial_weights`."""

    epochs: int | None = None
    initial_epoch: int = 0
    initial_weights: str | None = None


class TrialRunner:
    """Trains the trials of one launch of a sweep (see the module doc)."""

    def __init__(
        self,
        spec: ExperimentSpec,
        splits: Splits,
        sweep: SweepTracker,
        progress: SweepProgress,
        deadline: Deadline | None,
        factory: Factory,
        *,
        complete_trials: bool = False,
        keep_models: bool = False,
        fidelity: bool = True,
    ) -> None:
        self.spec, self.splits, self.sweep = spec, splits, sweep
        self.progress, self.deadline, self.factory = progress, deadline, factory
        self.complete_trials, self.keep_models = complete_trials, keep_models
        self.fidelity = (
            Fidelity(spec.engine.min_images, spec.engine.reduction_factor) if fidelity else None
        )
        self.flop_rate = sweep.recorded_flop_rate()
        self.shortest_need: float | None = None  # seconds of the cheapest trial not started

    def config(self, chosen: Mapping[str, Scalar], screen_epochs: int | None = None) -> RunConfig:
        """The run config of a chosen point, on the complete schedule of `screen_epochs` if
        given (raises ConfigFieldError when it cannot be built)."""
        return self.spec.run_config(
            chosen,
            self.splits.input_shape,
            self.splits.num_classes,
            screen_epochs=screen_epochs,
        )

    def plan(self, config: RunConfig, part: Round = Round()) -> StepPlan:
        """The validation steps the trial (or its round) trains."""
        plan = step_plan(config, len(self.splits.train), self.fidelity)
        if part.epochs is None:
            return plan
        return replace(plan, steps=plan.steps[: plan.steps_for_epochs(part.epochs)])

    def run(
        self,
        number: int,
        chosen: Mapping[str, Scalar],
        seed: int,
        run: RunHandle,
        earlier_runs: Sequence[str] = (),
        *,
        callbacks: Sequence[Any] = (),
        pruned_at: Callable[[], int | None] = lambda: None,
        on_beat: Callable[[int, float], None] = lambda epoch, seconds: None,
        part: Round = Round(),
        screen_epochs: int | None = None,
    ) -> TrialOutcome:
        """Train trial `number` (a point of the space) on its open MLflow run; record the outcome.

        `earlier_runs` are the runs of its earlier attempts, newest first (a retried or continued
        trial continues from the newest usable checkpoint among them); `screen_epochs`: the
        trial is a screen, its whole schedule compressed into that many epochs.
        """
        outcome = self._train(
            number,
            chosen,
            seed,
            run,
            earlier_runs,
            callbacks,
            pruned_at,
            on_beat,
            part,
            screen_epochs,
        )
        self.sweep.record_trial(
            run, outcome.result, outcome.state, reason=outcome.reason, pruned_at=outcome.pruned_at
        )
        if outcome.state != TrialState.PAUSED and not outcome.not_started:
            remove_checkpoints(self.sweep.tracker, run.run_id, *earlier_runs)
        return outcome

    def _train(
        self,
        number: int,
        chosen: Mapping[str, Scalar],
        seed: int,
        run: RunHandle,
        earlier_runs: Sequence[str],
        callbacks: Sequence[Any],
        pruned_at: Callable[[], int | None],
        on_beat: Callable[[int, float], None],
        part: Round,
        screen_epochs: int | None,
    ) -> TrialOutcome:
        try:
            config = self.config(chosen, screen_epochs)
        except ConfigFieldError as error:
            return TrialOutcome(TrialState.FAILED, reason=f"impossible config: {error}")
        over = over_cost_cap(config, self.spec.budget.max_training_mflop)
        if over is not None:
            return TrialOutcome(TrialState.PRUNED, reason=over, pruned_at=0)
        plan = self.plan(config, part)
        first = plan.steps_for_epochs(part.initial_epoch) + 1
        with tempfile.TemporaryDirectory() as tmp:
            resume = self._checkpoint(earlier_runs, plan, Path(tmp))
            if resume is not None:
                first = resume.step + 1
            too_long = self._too_long(config, plan, first)
            if too_long is not None:
                return TrialOutcome(
                    TrialState.PRUNED, reason=too_long, pruned_at=0, not_started=True
                )
            if resume is not None:
                self.sweep.log_resumed(run, resume)
            self.progress.start_trial(
                number,
                len(plan.steps),
                seconds=self._seconds(config, plan, first),
                first_step=first,
            )
            sink = EpochSinkCallback(self.sweep.epoch_sink(run, self.progress, on_beat))
            try:
                result = train_and_validate(
                    config,
                    self.splits,
                    callbacks=[sink, *callbacks],
                    seed=seed,
                    epochs=part.epochs,
                    initial_epoch=part.initial_epoch,
                    initial_weights=None if resume else part.initial_weights,
                    resume=resume,
                    fidelity=self.fidelity,
                    deadline=self.deadline,
                    flop_rate=self.flop_rate,
                    checkpoint=CheckpointWriter(
                        self.sweep.tracker,
                        run.run_id,
                        lambda why: self.progress.note(f"trial {number}: {why}"),
                    ),
                    factory=self.factory,
                )
            except (SweepError, TrialTakenOver):
                raise  # the sweep cannot go on, or the trial is no longer this worker's
            except Exception as error:  # one trial's crash is recorded; the sweep goes on
                return TrialOutcome(TrialState.FAILED, reason=describe_exception(error))
        self.flop_rate = result.measured_flop_rate or self.flop_rate
        return self._outcome(run, result, plan, pruned_at())

    def _outcome(
        self, run: RunHandle, result: TrialResult, plan: StepPlan, pruned: int | None
    ) -> TrialOutcome:
        if result.paused:
            return TrialOutcome(
                TrialState.PAUSED,
                result,
                f"paused at the deadline after {result.epochs_trained} of {len(plan.steps)} steps",
            )
        if not result.ok:
            return TrialOutcome(TrialState.FAILED, result, result.failure_reason or "failed")
        if pruned is not None:
            return TrialOutcome(TrialState.PRUNED, result, pruned_at=pruned)
        if self.keep_models:
            keep_model(self.sweep.tracker, run.run_id, result.model)
        return TrialOutcome(TrialState.COMPLETE, result)

    def _checkpoint(self, runs: Sequence[str], plan: StepPlan, folder: Path) -> Checkpoint | None:
        """The newest usable checkpoint of the earlier attempts (newest attempt first).

        One at or past this trial's last step (the epoch cap or schedule changed) means: start
        over.
        """
        for run_id in runs:
            found = load_checkpoint(self.sweep.tracker, run_id, folder)
            if found is not None:
                return found if found.step < len(plan.steps) else None
        return None

    def _seconds(self, config: RunConfig, plan: StepPlan, first: int) -> float:
        return training_seconds(
            config,
            plan,
            first_step=first,
            validation_images=len(self.splits.val),
            flop_rate=self.flop_rate,
        )

    def _too_long(self, config: RunConfig, plan: StepPlan, first: int) -> str | None:
        """Why the trial is not started under `complete_trials` (None: it can finish)."""
        if not self.complete_trials or self.deadline is None:
            return None
        verdict = unfinishable(
            config,
            plan,
            first_step=first,
            validation_images=len(self.splits.val),
            flop_rate=self.flop_rate,
            deadline=self.deadline,
        )
        if verdict is None:
            return None
        reason, need = verdict
        self.shortest_need = min(need, self.shortest_need or need)
        return reason

    def nothing_fits(self) -> bool:
        """Whether the time left is shorter than the cheapest trial that was not started."""
        return (
            self.deadline is not None
            and self.shortest_need is not None
            and self.deadline.remaining() < self.shortest_need
        )


def request_runner(request: SweepRequest, *, fidelity: bool = True) -> TrialRunner:
    """The trial runner of one launch of a sweep (`fidelity`: the engine's data-size rungs)."""
    return TrialRunner(
        request.spec,
        request.splits,
        request.sweep,
        request.progress,
        request.deadline,
        request.factory,
        complete_trials=request.complete_trials,
        keep_models=request.keep_models,
        fidelity=fidelity,
    )
