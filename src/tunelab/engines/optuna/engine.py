"""Optuna engine: a persistent study driven by the experiment's sampler, pruner and budget.

The same command resumes an interrupted sweep: the study lives in storage (default
`sqlite:///tracking/optuna.db`) and is loaded if it exists. Trials are asked and told one at a
time under the study lock, so the trial budget is exact across workers; the time budget is a
deadline: no training step starts that cannot finish before it, and the running trial is paused
(failed in Optuna's terms, marked `paused`, queued again with its parameters) and continued from
its checkpoint by the next launch. A worker that dies has its trial failed and retried from the
checkpoint its run left in MLflow, on whichever machine picks it up.

Each trial trains through `train_and_validate` on validation data only and reports
`val_accuracy` to the pruner at every step, the step being the training images seen (nominal, so
that batch sizes compare); a missing metric stops the sweep loudly (optuna #1936). Known-good
points (`enqueue:`) are evaluated first, and `--warm-start-from STUDY` gives the sampler an
earlier study's finished trials that fit this space.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

import keras
import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from tunelab.define.experiment import ExperimentSpec
from tunelab.define.space import Scalar, SearchSpace
from tunelab.define.training import ConfigFieldError
from tunelab.engines.base import SweepOutcome, SweepRequest
from tunelab.engines.optuna import adapter
from tunelab.engines.optuna.lock import StudyLock
from tunelab.engines.optuna.retrying import lost_connection
from tunelab.engines.optuna.screens import PROMOTED_FROM, SCREEN_EPOCHS, promote, screen_of
from tunelab.engines.optuna.space import distribution, suggest
from tunelab.engines.optuna.study import (
    ATTEMPT_ATTRS,
    BEAT_AT_EPOCH,
    BEAT_SECONDS,
    FAIL_REASON,
    GRACE_SECONDS,
    HOST,
    PAUSED,
    PID,
    RUN_ID,
    WARM_START,
    connect_storage,
    make_sampler,
    open_study,
    retry_crashed,
)
from tunelab.engines.runner import TrialOutcome, TrialRunner, request_runner
from tunelab.engines.sweep import (
    SweepError,
    SweepTracker,
    TrialRecord,
    TrialTakenOver,
)
from tunelab.record.names import TagKey, TrialState
from tunelab.record.results import VAL_ACCURACY
from tunelab.record.store import RunHandle
from tunelab.redact import database_error_line, redact_url
from tunelab.training.checkpoints import remove_checkpoints
from tunelab.training.deadline import STARTUP_SECONDS, Deadline
from tunelab.training.inputs import StepPlan
from tunelab.training.progress import SweepProgress

DEFAULT_STORAGE = "sqlite:///tracking/optuna.db"
MONITOR = VAL_ACCURACY
IDLE_POLL_SECONDS = 2.0  # budget full but trials of other workers still running: look again


class TrialFailed(Exception):
    """This trial failed (NaN loss, impossible config, out of memory); the sweep goes on."""


class TrialPaused(Exception):
    """The deadline came before this trial's next step: continue it in the next launch."""


@contextmanager
def still_ours(trial: optuna.Trial) -> Iterator[None]:
    """Writes to a trial that another worker has failed (and queued for retry) while this one
    was out of reach raise TrialTakenOver: this attempt must stop, not finish it twice."""
    try:
        yield
    except optuna.exceptions.UpdateFinishedTrialError as error:
        raise TrialTakenOver(
            "taken over by another worker: this one was out of reach (no heartbeat) for more "
            f"than {GRACE_SECONDS} s, so the trial was retried elsewhere"
        ) from error


class StorageLost(SweepError):
    """The study's database stayed out of reach for longer than every retry of a call: the
    sweep stops (the trial is neither failed nor finished; the next launch retries it)."""


@contextmanager
def storage_lost_stops_the_sweep() -> Iterator[None]:
    """Inside a trial, a lost database is no failure of the trial: stop the sweep instead."""
    try:
        yield
    except StorageLost:
        raise
    except Exception as error:
        if lost_connection(error):
            raise StorageLost(database_error_line(error.__cause__ or error)) from error
        raise


class PruningMetricMissing(SweepError):
    """The monitored metric is absent from the epoch logs: never prune silently, stop the sweep."""


def warm_start(study: optuna.Study, source: optuna.Study, space: SearchSpace) -> int:
    """Give `study` the finished trials of `source` that are points of `space`; how many.

    A trial fits when every parameter it has is one of this space's, with the same distribution,
    and together they name one configuration of this space. The copies are marked (user attr
    `warm_start_from`): they inform the sampler but have no MLflow run and use no trial budget.
    """
    distributions = {p.name: distribution(p) for p in space.parameters}
    added = 0
    for trial in source.get_trials(deepcopy=False, states=(OptunaState.COMPLETE,)):
        fits = all(
            name in distributions and trial.distributions[name] == distributions[name]
            for name in trial.params
        )
        if not fits or space.check_point(trial.params) is not None:
            continue
        if len(trial.values) != len(study.directions):
            continue
        study.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=trial.distributions,
                values=trial.values,
                user_attrs={WARM_START: source.study_name, "source_trial": trial.number},
            )
        )
        added += 1
    study.set_user_attr(WARM_START, source.study_name)
    return added


class PruningReporter(keras.callbacks.Callback):  # type: ignore[misc]
    """Report `monitor` at every step (step = nominal images seen); stop when pruned."""

    def __init__(
        self, trial: optuna.Trial, plan: StepPlan | None, last_step: int, *, pruning: bool
    ) -> None:
        super().__init__()
        self.trial, self.plan, self.last_step, self.pruning = trial, plan, last_step, pruning
        self.monitor = MONITOR
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            raise PruningMetricMissing(
                f"pruning monitors {self.monitor!r} but the epoch logs hold {sorted(logs)}"
            )
        if not self.pruning or self.plan is None:
            return
        number = epoch + 1
        with storage_lost_stops_the_sweep(), still_ours(self.trial):
            self.trial.report(float(logs[self.monitor]), step=self.plan.step(number).report_images)
            pruned = number < self.last_step and self.trial.should_prune()
        if pruned:  # (a finished trial is not pruned)
            self.pruned_at = number
            self.model.stop_training = True


class OptunaSweep:
    """One launch (or resumption) of an Optuna sweep for an experiment."""

    def __init__(
        self,
        spec: ExperimentSpec,
        sweep: SweepTracker,
        study: optuna.Study,
        progress: SweepProgress,
        runner: TrialRunner,
    ) -> None:
        self.spec, self.sweep, self.study, self.progress = spec, sweep, study, progress
        self.runner = runner
        self.tracker = sweep.tracker
        self.consecutive_failures = 0
        self.grid_exhausted = False
        self.last_failure = ""
        self.aborted: str | None = None
        self.paused: int | None = None  # number of the trial this launch paused

    # --- one trial --------------------------------------------------------------------

    def objective(self, trial: optuna.Trial) -> float | Sequence[float]:
        chosen = suggest(self.spec.search_space, trial)
        # PID first: a worker that sees HOST (ours) judges the trial by its PID
        trial.set_user_attr(PID, os.getpid())
        trial.set_user_attr(HOST, socket.gethostname())
        # a retried or continued trial trains like the original and continues from the last
        # checkpoint an earlier attempt left (on its MLflow run, wherever that worker ran)
        history = adapter.retry_history(adapter.frozen(self.study, trial))
        seed = self.spec.seed + (history[0] if history else trial.number)
        earlier_runs = self._attempt_runs(history)
        screen = self._screen(trial)
        with self.sweep.trial(trial.number, chosen, seed, tags=self._screen_tags(trial)) as run:
            trial.set_user_attr(RUN_ID, run.run_id)
            if history:
                run.set_tags({TagKey.RETRIES_TRIAL: history[-1]})
            outcome = self._train_trial(trial, chosen, run, seed, earlier_runs, screen)
        if outcome.state == TrialState.PAUSED:
            trial.set_user_attr(PAUSED, True)
            self.paused = trial.number
            raise TrialPaused(f"trial {trial.number} paused at the deadline")
        return self._finish(trial, outcome)

    def _screen(self, trial: optuna.Trial) -> int | None:
        """The epochs of the complete schedule this trial screens (None: no screens)."""
        screens = self.spec.engine.screens
        if not screens:
            return None
        epochs = screen_of(trial, screens)
        trial.set_user_attr(SCREEN_EPOCHS, epochs)
        return epochs

    @staticmethod
    def _screen_tags(trial: optuna.Trial) -> dict[str, str]:
        attrs = trial.user_attrs
        tags = {}
        if SCREEN_EPOCHS in attrs:
            tags[TagKey.SCREEN_EPOCHS] = str(attrs[SCREEN_EPOCHS])
        if PROMOTED_FROM in attrs:
            tags[TagKey.PROMOTED_FROM] = str(attrs[PROMOTED_FROM])
        return tags

    def _attempt_runs(self, history: list[int]) -> list[str]:
        """MLflow run ids of the earlier attempts of a trial, newest first."""
        trials = self.study.get_trials(deepcopy=False)
        runs = [str(trials[n].user_attrs.get(RUN_ID, "")) for n in reversed(history)]
        return [run_id for run_id in runs if run_id]

    def _train_trial(
        self,
        trial: optuna.Trial,
        chosen: dict[str, Scalar],
        run: RunHandle,
        seed: int,
        earlier_runs: list[str],
        screen: int | None,
    ) -> TrialOutcome:
        """The runner trains it; Optuna hears every step (images seen) and may prune it."""
        try:
            plan = self.runner.plan(self.runner.config(chosen, screen))
        except ConfigFieldError:
            plan = None  # the runner records why it cannot be built
        reporter = PruningReporter(
            trial,
            plan,
            len(plan.steps) if plan else 0,
            pruning=not self.spec.multi_objective,
        )
        return self.runner.run(
            trial.number,
            chosen,
            seed,
            run,
            earlier_runs,
            callbacks=[reporter],
            pruned_at=lambda: reporter.pruned_at,
            on_beat=self._on_beat(trial),
            screen_epochs=screen,
        )

    def _on_beat(self, trial: optuna.Trial) -> Callable[[int, float], None]:
        """Keep when the trial beat the baseline in the study too (time_to_beat reads it)."""

        def record(epoch: int, seconds: float) -> None:
            with storage_lost_stops_the_sweep(), still_ours(trial):
                trial.set_user_attr(BEAT_AT_EPOCH, epoch)
                trial.set_user_attr(BEAT_SECONDS, seconds)

        return record

    def _finish(self, trial: optuna.Trial, outcome: TrialOutcome) -> float | Sequence[float]:
        """The runner's outcome in Optuna's terms: a value, TrialPruned, or a failure."""
        if outcome.state == TrialState.FAILED:
            with still_ours(trial):
                trial.set_user_attr(FAIL_REASON, outcome.reason)
            raise TrialFailed(outcome.reason)
        if outcome.state == TrialState.PRUNED:
            raise optuna.TrialPruned(outcome.reason or f"pruned at step {outcome.pruned_at}")
        result = outcome.result
        assert result is not None and result.best_val_accuracy is not None
        measured = {
            "val_accuracy": result.best_val_accuracy,
            "param_count": float(result.param_count),
            "wall_seconds": result.wall_seconds,
        }
        values = [measured[o.metric] for o in self.spec.objectives]
        return values[0] if len(values) == 1 else values

    def handed_over(self, trial: optuna.Trial, why: str) -> None:
        """This attempt was failed and retried by another worker: say so; its checkpoints go
        once no attempt may still continue from them (a retry removes them when it ends)."""
        self.progress.note(f"trial {trial.number} stopped on this worker: {why}")
        trials = self.study.get_trials(deepcopy=False)
        retries = [t for t in trials if trial.number in adapter.retry_history(t)]
        if retries and all(t.state.is_finished() for t in retries):
            run_id = str(trials[trial.number].user_attrs.get(RUN_ID, ""))
            if run_id:
                remove_checkpoints(self.tracker, run_id)

    # --- after each trial ---------------------------------------------------------------

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Parent summary, progress, consecutive-failure stop (paused trials are not failures)."""
        if trial.state == OptunaState.FAIL and not trial.user_attrs.get(PAUSED):
            self.consecutive_failures += 1
            self.last_failure = str(trial.user_attrs.get(FAIL_REASON, "an exception"))
            limit = self.spec.budget.max_consecutive_failures
            if self.consecutive_failures >= limit:
                self.aborted = (
                    f"{limit} trials failed in a row; the last: {self.last_failure}. "
                    "Check the search space, then run the same command to resume"
                )  # the trial loop stops on it
        elif trial.state != OptunaState.FAIL:
            self.consecutive_failures = 0
        records = study_records(study)
        best = best_record(study, records)
        self.sweep.update_summary(
            records,
            best=best,
            beat=time_to_beat(study),
            trial_seconds=sum(_duration(t) for t in study.trials if WARM_START not in t.user_attrs),
            flop_rate=self.runner.flop_rate,
        )
        self.progress.finish_trial(records, best)


def study_records(study: optuna.Study) -> list[TrialRecord]:
    """Finished and paused trials of this study's own runs, as engine-neutral records."""
    states = {
        OptunaState.COMPLETE: TrialState.COMPLETE,
        OptunaState.PRUNED: TrialState.PRUNED,
        OptunaState.FAIL: TrialState.FAILED,
    }
    return [
        TrialRecord(
            t.number,
            TrialState.PAUSED if t.user_attrs.get(PAUSED) else states[t.state],
            t.values[0] if t.values else None,
            str(t.user_attrs.get(RUN_ID, "")),
            t.params,
            int(t.user_attrs.get(SCREEN_EPOCHS, 0)),
        )
        for t in study.get_trials(deepcopy=False)
        if t.state in states and WARM_START not in t.user_attrs
    ]


def best_record(study: optuna.Study, records: list[TrialRecord]) -> TrialRecord | None:
    """Best complete trial on the first objective (val_accuracy), among those that trained the
    longest screen any trial has finished (`engine.screens`; all of them without screens): the
    order `tunelab.record.recorded.finalists` crowns in."""
    complete = [r for r in records if r.state == TrialState.COMPLETE and r.value is not None]
    if not complete:
        return None
    longest = max(r.screen_epochs for r in complete)
    complete = [r for r in complete if r.screen_epochs == longest]
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    return (max if maximize else min)(complete, key=lambda r: r.value or 0.0)


def _duration(trial: FrozenTrial) -> float:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def time_to_beat(study: optuna.Study) -> dict[str, float] | None:
    """Trial time and epochs the sweep spent before a trial first beat the baseline on validation.

    Counts whole earlier trials (in trial-number order) plus the beating trial's epochs up to
    the one that beat the bar; derived from the study, so it survives resumption.
    """
    seconds, epochs = 0.0, 0
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if WARM_START in trial.user_attrs:
            continue
        if BEAT_AT_EPOCH in trial.user_attrs:
            return {
                "seconds": seconds + float(trial.user_attrs[BEAT_SECONDS]),
                "epochs": epochs + int(trial.user_attrs[BEAT_AT_EPOCH]),
                "trial": trial.number,
            }
        seconds += _duration(trial)
        epochs += len(trial.intermediate_values)
    return None


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose process on this machine is gone (killed with SIGKILL, say).

    Trials of other machines are left to Optuna's heartbeat, which fails them after the grace
    period. Returns the numbers of the trials failed here.
    """
    failed = []
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get(HOST) != host or PID not in attrs or _alive(int(attrs[PID])):
            continue  # another machine's (the heartbeat's to judge), being set up, or alive
        adapter.set_user_attr(study, trial, FAIL_REASON, "its process died")
        if not adapter.fail(study, trial):
            continue  # another worker failed it first (and queued the retry)
        retry_crashed(study, trial)
        failed.append(trial.number)
    return failed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


class OptunaEngine:
    """The Optuna engine behind tunelab's Engine interface."""

    name = "optuna"

    def run(self, request: SweepRequest) -> SweepOutcome:
        return run_optuna_sweep(request)


def run_optuna_sweep(request: SweepRequest) -> SweepOutcome:
    """Run (or resume) the sweep until its budget, its deadline, Ctrl-C or repeated failures.

    Any number of workers (processes, machines) may run this on the same study at once: the
    budget check and the trial's creation happen under the study lock, so the trials counted
    (complete, pruned, running) never exceed the budget; a worker whose budget is full waits
    while other workers' trials run, in case one dies and its trial must be retried.
    """
    spec, splits, sweep, progress = request.spec, request.splits, request.sweep, request.progress
    # tunelab reports each trial itself; Optuna's per-failure tracebacks would only repeat it
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with _storage_errors_in_one_line(request.storage_url):
        study = open_study(spec, request.study, request.storage_url, len(splits.train))
        if request.warm_start_from and WARM_START not in study.user_attrs:
            source = _load_source(request.warm_start_from, request.storage_url)
            added = warm_start(study, source, spec.search_space)
            progress.note(f"warm start: {added} finished trial(s) of study {source.study_name}")
        lock = StudyLock(request.storage_url, request.study)
        runner = OptunaSweep(spec, sweep, study, progress, request_runner(request))
        with sweep.parent(splits, lock=lock) as parent:
            adapter_attr = "mlflow_parent_run_id"
            study.set_user_attr(adapter_attr, parent.run_id)
            reaped = reap_dead_trials(study)
            closed = sweep.close_orphans(_failed_in(study))
            if reaped or closed:
                progress.note(
                    f"resumed: failed {reaped} trial(s) of a dead process (to be retried), "
                    f"closed {closed} MLflow run(s) left RUNNING"
                )
            before = study_records(study)
            progress.begin(
                before, best_record(study, before), total=request.trials, deadline=request.deadline
            )
            try:
                stopped = _drive(
                    study, runner, lock, trials=request.trials, deadline=request.deadline
                )
            finally:
                # other workers still training keep the shared parent open; the last closes it
                # (with the database out of reach, this launch's error closes it: FAILED)
                with suppress(StorageLost), storage_lost_stops_the_sweep():
                    parent.keep_open = bool(_running(study))
            if runner.aborted:
                parent.status_on_exit = "FAILED"
            if not parent.keep_open:  # the launch that closes the parent draws the whole study
                from tunelab.engines.optuna.plots import log_study_plots

                log_study_plots(
                    study, parent, baseline=sweep.baseline.val_accuracy if sweep.baseline else None
                )
        records = study_records(study)
        if runner.aborted:
            raise SweepError(runner.aborted)
        return SweepOutcome(parent.run_id, records, stopped)


def _load_source(name: str, storage_url: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=connect_storage(storage_url))
    except KeyError:
        raise SweepError(
            f"--warm-start-from: no study {name!r} in {redact_url(storage_url)}"
        ) from None


@contextmanager
def _storage_errors_in_one_line(storage_url: str) -> Iterator[None]:
    """A storage lost mid-sweep (after every retry) ends it with one line, password masked,
    not SQLAlchemy's or Optuna's stack."""
    try:
        with storage_lost_stops_the_sweep():
            yield
    except StorageLost as lost:
        raise SweepError(
            f"lost the Optuna storage {redact_url(storage_url)} ({lost}); "
            "finished trials are recorded: run the same command to resume"
        ) from None


COUNTED = (OptunaState.COMPLETE, OptunaState.PRUNED, OptunaState.RUNNING)


def _counted(study: optuna.Study) -> int:
    """Trials that use the trial budget: this study's complete, pruned and running ones."""
    return sum(
        WARM_START not in t.user_attrs for t in study.get_trials(deepcopy=False, states=COUNTED)
    )


def _failed_in(study: optuna.Study) -> Callable[[int], bool]:
    """Whether a trial number is failed in the study now (a dead worker's trial was)."""

    def failed(number: int) -> bool:
        trials = study.get_trials(deepcopy=False)
        return 0 <= number < len(trials) and trials[number].state == OptunaState.FAIL

    return failed


def _running(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,))


def _drive(
    study: optuna.Study,
    runner: OptunaSweep,
    lock: StudyLock,
    *,
    trials: int | None,
    deadline: Deadline | None,
) -> str:
    """Ask, train and tell trials until a stop condition; returns why it stopped."""
    while True:
        if runner.aborted:
            return runner.aborted
        if runner.paused is not None:
            return (
                f"the time budget ran out: trial {runner.paused} is paused and continues from its "
                "checkpoint in the next launch"
            )
        if deadline is not None and deadline.remaining() < 2 * STARTUP_SECONDS:
            return "the time budget is spent"
        if runner.runner.nothing_fits():
            return (
                "no complete trial fits in the time left (trials that could not finish were not "
                "started)"
            )
        if reap_dead_trials(study):  # their MLflow runs are still RUNNING: close them
            runner.sweep.close_orphans(_failed_in(study))
        if runner.grid_exhausted:
            return "every point of the grid was tried"
        with lock():
            trial = _ask(study, runner.spec) if trials is None or _counted(study) < trials else None
        if trial is None:
            if not _running(study):
                return f"the trial budget ({trials}) is spent"
            time.sleep(IDLE_POLL_SECONDS)  # others' trials run: one may die and need a retry
            continue
        _run_trial(study, runner, trial)


def _run_trial(study: optuna.Study, runner: OptunaSweep, trial: optuna.Trial) -> None:
    """One trial with a heartbeat; its outcome told to the study, then the summary updated."""
    state: OptunaState | None = None
    values: float | Sequence[float] | None = None
    paused = False
    with adapter.heartbeat(study, trial):
        try:
            values = runner.objective(trial)
        except TrialTakenOver as taken:
            runner.handed_over(trial, str(taken))
            return
        except optuna.TrialPruned:
            state = OptunaState.PRUNED
        except TrialFailed:
            state = OptunaState.FAIL
        except TrialPaused:
            state, paused = OptunaState.FAIL, True
        except BaseException:
            # Ctrl-C, or a fatal error: fail it and queue its retry (the same command resumes
            # it); with the database out of reach, the next launch finds its process dead
            with suppress(StorageLost), storage_lost_stops_the_sweep():
                study.tell(trial, state=OptunaState.FAIL)
                retry_crashed(study, adapter.frozen(study, trial))
            raise
    try:
        study.tell(trial, values, state=state)
    except RuntimeError:  # the grid sampler stops the study when its grid is done
        if not _grid_done(study):
            raise
        runner.grid_exhausted = True  # (the trial's state was stored before the sampler spoke)
    finished = adapter.frozen(study, trial)
    if paused:
        adapter.requeue(study, finished, drop_user_attrs=ATTEMPT_ATTRS)
    runner.after_trial(study, finished)


def _grid_done(study: optuna.Study) -> bool:
    """Whether the study's grid sampler has tried every point (it then stops the study)."""
    sampler = study.sampler
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


def _ask(study: optuna.Study, spec: ExperimentSpec) -> optuna.Trial:
    """The next trial: a promotion to a longer screen if one is due (`engine.screens`), else
    from a sampler seeded by the experiment's seed and the trials the study holds now: asks are
    serialized by the study lock, so workers that ask at the same moment (or launches that
    resume) never replay one another's random draws nor promote a trial twice, and the same
    study history still gives the same suggestion."""
    if spec.engine.screens:
        promote(
            study,
            spec.engine.screens,
            spec.engine.reduction_factor,
            own=lambda trial: WARM_START not in trial.user_attrs,
        )
    study.sampler = make_sampler(spec, len(study.get_trials(deepcopy=False)))
    with warnings.catch_warnings():  # heartbeats are ours (see _run_trial), not optimize()'s
        warnings.filterwarnings("ignore", "Heartbeat of storage")
        return study.ask()


def reap_dead_trials(study: optuna.Study) -> int:
    """Fail (and queue for retry) trials of dead workers: stale heartbeats, dead local PIDs.

    Returns how many running trials were failed (by this worker or, meanwhile, by another).
    """
    before = len(_running(study))
    if not before:
        return 0
    adapter.fail_stale(study)
    recover_dead_trials(study)
    return max(0, before - len(_running(study)))
