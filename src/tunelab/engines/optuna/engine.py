"""Optuna engine: a persistent study driven by the experiment's sampler, pruner and budget.

The same command resumes an interrupted sweep: the study lives in storage (default
`sqlite:///tracking/optuna.db`) and is loaded if it exists; trials left RUNNING by a dead process
on this machine are failed at start, and their MLflow runs closed. Each trial trains through
`train_and_validate` on validation data only, reports `val_accuracy` per epoch to the pruner and
fails loudly when that metric is missing (optuna #1936: the integration callback only warns).
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from tunelab.training.callbacks import EpochSinkCallback
from tunelab.training.checkpoints import (
    DEFAULT_ROOT as DEFAULT_CHECKPOINTS,
)
from tunelab.training.checkpoints import (
    Checkpoint,
    EpochCheckpoint,
    load_checkpoint,
    remove,
    trial_folder,
)
from tunelab.define.cnn import CnnConfigError, parse_config
from tunelab.define.data import Splits
from tunelab.engines.optuna.space import grid, suggest
from tunelab.engines.optuna.lock import StudyLock
from tunelab.engines.sweep import (
    SweepError,
    SweepTracker,
    TrialRecord,
    describe_exception,
    max_trial_epochs,
)
from tunelab.training.progress import SweepProgress
from tunelab.record.redact import redact_text, redact_url
from tunelab.define.specs import ExperimentSpec, Scalar
from tunelab.record.store import MetricName, RunHandle, TagKey, TrialState
from tunelab.training.train import VAL_ACCURACY, TrialResult, train_and_validate

DEFAULT_STORAGE = "sqlite:///tracking/optuna.db"
MONITOR = VAL_ACCURACY
# a worker records a heartbeat every HEARTBEAT_SECONDS; one silent for GRACE_SECONDS is dead and
# its trial is failed and retried (environment overrides, for tests and slow networks)
HEARTBEAT_SECONDS = int(os.environ.get("TUNELAB_HEARTBEAT_SECONDS", "10"))
GRACE_SECONDS = int(os.environ.get("TUNELAB_HEARTBEAT_GRACE_SECONDS", "60"))
MAX_RETRIES = 2  # a trial whose worker died runs again at most this many times
CONNECT_ATTEMPTS = 4  # opening the storage: tries, 1 s, 2 s, 4 s apart
SCHEMA_LOCK = "__optuna_schema__"  # lock name while creating the storage's tables
IDLE_POLL_SECONDS = 2.0  # budget full but trials of other workers still running: look again
# trial user attributes
HOST, PID, FAIL_REASON, BEAT_AT_EPOCH, BEAT_SECONDS = (
    "host",
    "pid",
    "fail_reason",
    "beat_epoch",
    "beat_s",
)
RUN_ID = "mlflow_run_id"


class TrialFailed(Exception):
    """This trial failed (NaN loss, impossible config, out of memory); the sweep goes on."""


class PruningMetricMissing(SweepError):
    """The monitored metric is absent from the epoch logs: never prune silently, stop the sweep."""


def make_sampler(spec: ExperimentSpec, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        # multivariate/group TPE and heartbeats are marked experimental; we choose them knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)  # TPE's own deprecated-default notice
        return _make_sampler(spec, trials_so_far)


def _make_sampler(spec: ExperimentSpec, trials_so_far: int) -> optuna.samplers.BaseSampler:
    """The experiment's sampler, seeded by its seed and the trials the study already holds.

    A resumed sweep must not replay the random suggestions of its first launch, so the seed moves
    on with the study; the same study history still gives the same suggestions.
    """
    engine, seed = spec.engine, spec.seed + trials_so_far
    if engine.sampler == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=engine.startup_trials,
            multivariate=True,
            group=True,
            warn_independent_sampling=False,
        )
    if engine.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if engine.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed, n_startup_trials=engine.startup_trials, warn_independent_sampling=False
        )
    if engine.sampler == "gp":
        try:
            import torch  # type: ignore[import-not-found]  # noqa: F401  (Optuna's GP needs it)
        except ImportError:
            raise SweepError(
                "sampler gp needs PyTorch: pip install torch (CPU build), or use tpe"
            ) from None
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=engine.startup_trials)
    if engine.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.GridSampler(grid(spec.search_space), seed=seed)


def make_pruner(spec: ExperimentSpec, max_epochs: int) -> optuna.pruners.BasePruner:
    pruner = spec.engine.pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.engine.startup_trials, n_warmup_steps=1
        )
    if pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max_epochs, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def open_study(spec: ExperimentSpec, study_name: str, storage_url: str) -> optuna.Study:
    """Load the study if it exists, else create it; storage with heartbeats for crash detection."""
    if storage_url.startswith("sqlite:///"):
        path = storage_url.removeprefix("sqlite:///")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    import sqlalchemy.exc

    # workers starting together on a fresh database would race to create Optuna's tables
    try:
        with StudyLock(storage_url, SCHEMA_LOCK)():
            storage = _connect(storage_url)
    except sqlalchemy.exc.OperationalError:
        storage = _connect(storage_url)  # unreachable: this retries, then explains in one line
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        load_if_exists=True,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec, max_trial_epochs(spec)),
        directions=[o.direction for o in spec.objectives],
    )
    if study.trials:
        study.sampler = make_sampler(spec, len(study.trials))
    return study


def _connect(storage_url: str) -> optuna.storages.RDBStorage:
    """The study storage, with heartbeats and retries of dead workers' trials.

    A database that cannot be reached is tried CONNECT_ATTEMPTS times, then refused in one line
    (the URL's password masked) instead of a stack of SQLAlchemy internals.
    """
    import sqlalchemy.exc

    delay, problem = 1.0, ""
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    storage_url,
                    heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=MAX_RETRIES, inherit_intermediate_values=True
                    ),
                    engine_kwargs={"pool_pre_ping": True}
                    if not storage_url.startswith("sqlite")
                    else None,
                )
        except (
            sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.InterfaceError,
            sqlalchemy.exc.IntegrityError,  # another process created the tables meanwhile
        ) as error:
            problem = _first_line(error)
            if attempt < CONNECT_ATTEMPTS:
                time.sleep(delay)
                delay *= 2
    raise SweepError(
        f"cannot reach the Optuna storage {redact_url(storage_url)} after {CONNECT_ATTEMPTS} "
        f"attempts ({problem}); is the database running (`make services`)?"
    )


def _first_line(error: Exception) -> str:
    """A database error's first line, passwords masked (the driver's own message if wrapped)."""
    return redact_text(str(getattr(error, "orig", error)).strip().splitlines()[0])


def make_pruning_reporter(trial: optuna.Trial, monitor: str, pruning: bool) -> Any:
    """A Keras callback: report `monitor` each epoch; stop training when the pruner says so."""

    class PruningReporter(keras.callbacks.Callback):  # type: ignore[misc]
        pruned_at: int | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            if monitor not in logs:
                raise PruningMetricMissing(
                    f"pruning monitors {monitor!r} but the epoch logs hold {sorted(logs)}"
                )
            if not pruning:
                return
            trial.report(float(logs[monitor]), step=epoch + 1)
            last_epoch = epoch + 1 >= self.params.get("epochs", 0)
            if not last_epoch and trial.should_prune():  # a finished training is not pruned
                self.pruned_at = epoch + 1
                self.model.stop_training = True

    return PruningReporter()


@dataclass
class SweepOutcome:
    study: optuna.Study
    parent_run_id: str
    records: list[TrialRecord]
    stopped_because: str


class OptunaSweep:
    """One launch (or resumption) of an Optuna sweep for an experiment."""

    def __init__(
        self,
        spec: ExperimentSpec,
        splits: Splits,
        sweep: SweepTracker,
        study: optuna.Study,
        progress: SweepProgress,
        checkpoint_root: Path = DEFAULT_CHECKPOINTS,
    ) -> None:
        self.spec, self.splits, self.sweep, self.study, self.progress = (
            spec,
            splits,
            sweep,
            study,
            progress,
        )
        self.max_epochs = max_trial_epochs(spec)
        self.checkpoints = checkpoint_root
        self.consecutive_failures = 0
        self.grid_exhausted = False
        self.last_failure = ""
        self.aborted: str | None = None

    # --- one trial --------------------------------------------------------------------

    def objective(self, trial: optuna.Trial) -> float | Sequence[float]:
        chosen = suggest(self.spec.search_space, trial)
        trial.set_user_attr(HOST, socket.gethostname())
        trial.set_user_attr(PID, os.getpid())
        # a retry (its worker died, or Ctrl-C) trains like the original trial and continues
        # from the last epoch checkpoint of the attempt before it, if that one left any
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(
                self.study._storage.get_trial(trial._trial_id)
            )
        seed = self.spec.seed + (history[0] if history else trial.number)
        own = trial_folder(self.checkpoints, self.study.study_name, trial.number)
        found = (
            load_checkpoint(trial_folder(self.checkpoints, self.study.study_name, history[-1]))
            if history
            else None
        )
        # a checkpoint at or past this launch's epoch cap (the budget changed): start over
        earlier = found if found is not None and found.epoch < self._epochs(chosen) else None
        with self.sweep.trial(trial.number, chosen, seed) as run:
            trial.set_user_attr(RUN_ID, run.run_id)
            if history:
                run.set_tags({TagKey.RETRIES_TRIAL: history[-1]})
            if earlier is not None:
                self._log_earlier_epochs(run, earlier)
            outcome = self._train_trial(trial, chosen, run, seed, own, earlier)
        remove(own, *([found.folder] if found else []))
        return self._finish(trial, *outcome)

    def _epochs(self, chosen: dict[str, Scalar]) -> int:
        """Epochs this trial trains: its config's, capped by the budget's max_epochs."""
        values = self.spec.search_space.to_config_values(chosen)
        return min(int(values.get("epochs", 12)), self.max_epochs)

    @staticmethod
    def _log_earlier_epochs(run: RunHandle, earlier: Checkpoint) -> None:
        """The resumed epochs' metrics on the retry's run too, so its curves are whole."""
        for index in range(earlier.epoch):
            run.log_metrics(
                {k: v[index] for k, v in earlier.history.items() if index < len(v)}, step=index + 1
            )
        run.log_metrics({MetricName.RESUMED_FROM_EPOCH: earlier.epoch})

    def _train_trial(
        self,
        trial: optuna.Trial,
        chosen: dict[str, Scalar],
        run: RunHandle,
        seed: int,
        own: Path,
        earlier: Checkpoint | None,
    ) -> tuple[str, TrialResult | None, str | None, int | None]:
        values = self.spec.search_space.to_config_values(chosen)
        values["epochs"] = self._epochs(chosen)
        try:
            cfg = parse_config(values)
        except CnnConfigError as error:
            problem = f"impossible config: {error}"
            self.sweep.record_trial(run, None, TrialState.FAILED, reason=problem)
            return TrialState.FAILED, None, problem, None
        reporter = make_pruning_reporter(trial, MONITOR, pruning=not self.spec.multi_objective)
        sink = EpochSinkCallback(self.sweep.epoch_sink(run, self.progress, self._on_beat(trial)))
        self.progress.start_trial(trial.number, cfg.epochs)
        checkpoint = EpochCheckpoint(own, earlier)
        try:
            result = train_and_validate(
                cfg,
                self.splits,
                callbacks=[sink, reporter, checkpoint],
                seed=seed,
                initial_epoch=earlier.epoch if earlier else 0,
                resume_model=earlier.model_file if earlier else None,
                earlier_history=earlier.history if earlier else None,
            )
        except PruningMetricMissing:
            raise
        except Exception as error:  # one trial's crash is recorded; the sweep goes on
            problem = describe_exception(error)
            self.sweep.record_trial(run, None, TrialState.FAILED, reason=problem)
            return TrialState.FAILED, None, problem, None
        reason: str | None = None
        pruned_at: int | None = None
        if not result.ok:
            state, reason = TrialState.FAILED, result.failure_reason
        elif reporter.pruned_at is not None:
            state, pruned_at = TrialState.PRUNED, reporter.pruned_at
        else:
            state = TrialState.COMPLETE
        self.sweep.record_trial(run, result, state, reason=reason, pruned_at=pruned_at)
        return state, result, reason, pruned_at

    def _on_beat(self, trial: optuna.Trial) -> Callable[[int, float], None]:
        """Keep when the trial beat the baseline in the study too (time_to_beat reads it)."""

        def record(epoch: int, seconds: float) -> None:
            trial.set_user_attr(BEAT_AT_EPOCH, epoch)
            trial.set_user_attr(BEAT_SECONDS, seconds)

        return record

    def _finish(
        self,
        trial: optuna.Trial,
        state: str,
        result: TrialResult | None,
        reason: str | None,
        pruned_at: int | None,
    ) -> float | Sequence[float]:
        if state == TrialState.FAILED:
            trial.set_user_attr(FAIL_REASON, reason)
            raise TrialFailed(reason)
        if state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"pruned at epoch {pruned_at}")
        assert result is not None and result.best_val_accuracy is not None
        measured = {
            "val_accuracy": result.best_val_accuracy,
            "param_count": float(result.param_count),
            "wall_seconds": result.wall_seconds,
        }
        values = [measured[o.metric] for o in self.spec.objectives]
        return values[0] if len(values) == 1 else values

    # --- after each trial ---------------------------------------------------------------

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: parent summary, progress, consecutive-failure stop."""
        if trial.state == OptunaState.FAIL:
            self.consecutive_failures += 1
            self.last_failure = str(trial.user_attrs.get(FAIL_REASON, "an exception"))
            limit = self.spec.budget.max_consecutive_failures
            if self.consecutive_failures >= limit:
                self.aborted = (
                    f"{limit} trials failed in a row; the last: {self.last_failure}. "
                    "Check the search space, then run the same command to resume"
                )  # the trial loop stops on it
        else:
            self.consecutive_failures = 0
        records = study_records(study)
        best = best_record(study, records)
        self.sweep.update_summary(
            records,
            best=best,
            beat=time_to_beat(study),
            trial_seconds=sum(_duration(t) for t in study.trials),
        )
        self.progress.finish_trial(records, best)


def study_records(study: optuna.Study) -> list[TrialRecord]:
    """Finished trials as engine-neutral records."""
    states = {
        OptunaState.COMPLETE: TrialState.COMPLETE,
        OptunaState.PRUNED: TrialState.PRUNED,
        OptunaState.FAIL: TrialState.FAILED,
    }
    return [
        TrialRecord(
            t.number,
            states[t.state],
            t.values[0] if t.values else None,
            str(t.user_attrs.get(RUN_ID, "")),
            t.params,
        )
        for t in study.get_trials(deepcopy=False)
        if t.state in states
    ]


def best_record(study: optuna.Study, records: list[TrialRecord]) -> TrialRecord | None:
    """Best complete trial on the first objective (val_accuracy)."""
    complete = [r for r in records if r.state == TrialState.COMPLETE and r.value is not None]
    if not complete:
        return None
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
        if trial.user_attrs.get(HOST) != host or _alive(int(trial.user_attrs.get(PID, -1))):
            continue
        study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, "its process died")
        try:
            study._storage.set_trial_state_values(trial._trial_id, OptunaState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first (and queued the retry)
        _retry(study, trial)
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


def run_optuna_sweep(
    spec: ExperimentSpec,
    splits: Splits,
    sweep: SweepTracker,
    progress: SweepProgress,
    *,
    study_name: str,
    storage_url: str,
    trials: int | None,
    timeout_seconds: float | None,
    checkpoint_root: Path = DEFAULT_CHECKPOINTS,
) -> SweepOutcome:
    """Run (or resume) the sweep until its budget, its timeout, Ctrl-C or repeated failures.

    Any number of workers (processes, machines) may run this on the same study at once: the
    budget check and the trial's creation happen under the study lock, so the trials counted
    (complete, pruned, running) never exceed the budget; a worker whose budget is full waits
    while other workers' trials run, in case one dies and its trial must be retried.
    """
    # tunelab reports each trial itself; Optuna's per-failure tracebacks would only repeat it
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with _storage_errors_in_one_line(storage_url):
        study = open_study(spec, study_name, storage_url)
        lock = StudyLock(storage_url, study_name)
        runner = OptunaSweep(spec, splits, sweep, study, progress, checkpoint_root)
        with sweep.parent(splits, lock=lock) as parent:
            study.set_user_attr("mlflow_parent_run_id", parent.run_id)
            reaped = reap_dead_trials(study)
            closed = sweep.close_orphans(_failed_in(study))
            if reaped or closed:
                progress.note(
                    f"resumed: failed {reaped} trial(s) of a dead process (to be retried), "
                    f"closed {closed} MLflow run(s) left RUNNING"
                )
            before = study_records(study)
            progress.begin(
                before, best_record(study, before), total=trials, timeout=timeout_seconds
            )
            try:
                stopped = _drive(study, runner, lock, trials=trials, timeout=timeout_seconds)
            finally:
                # other workers still training keep the shared parent open; the last closes it
                parent.keep_open = bool(_running(study))
            if runner.aborted:
                parent.status_on_exit = "FAILED"
            from tunelab.engines.optuna.plots import log_study_plots

            log_study_plots(
                study, parent, baseline=sweep.baseline.val_accuracy if sweep.baseline else None
            )
        records = study_records(study)
        if runner.aborted:
            raise SweepError(runner.aborted)
        return SweepOutcome(study, parent.run_id, records, stopped)


@contextmanager
def _storage_errors_in_one_line(storage_url: str) -> Iterator[None]:
    """A storage lost mid-sweep ends it with one line (password masked), not SQLAlchemy's stack."""
    import sqlalchemy.exc

    try:
        yield
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as error:
        raise SweepError(
            f"lost the Optuna storage {redact_url(storage_url)} ({_first_line(error)}); "
            "finished trials are recorded: run the same command to resume"
        ) from None


COUNTED = (OptunaState.COMPLETE, OptunaState.PRUNED, OptunaState.RUNNING)


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
    timeout: float | None,
) -> str:
    """Ask, train and tell trials until a stop condition; returns why it stopped."""
    started = time.monotonic()
    while True:
        if runner.aborted:
            return runner.aborted
        if timeout is not None and time.monotonic() - started >= timeout:
            return f"the timeout ({timeout:.0f} s) was reached"
        if reap_dead_trials(study):  # their MLflow runs are still RUNNING: close them
            runner.sweep.close_orphans(_failed_in(study))
        if runner.grid_exhausted:
            return "every point of the grid was tried"
        with lock():
            counted = len(study.get_trials(deepcopy=False, states=COUNTED))
            trial = _ask(study) if trials is None or counted < trials else None
        if trial is None:
            if not _running(study):
                return f"the trial budget ({trials}) is spent"
            time.sleep(IDLE_POLL_SECONDS)  # others' trials run: one may die and need a retry
            continue
        _run_trial(study, runner, trial)


def _run_trial(study: optuna.Study, runner: OptunaSweep, trial: optuna.Trial) -> None:
    """One trial with a heartbeat; its outcome told to the study, then the summary updated."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    state: OptunaState | None = None
    values: float | Sequence[float] | None = None
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            values = runner.objective(trial)
        except optuna.TrialPruned:
            state = OptunaState.PRUNED
        except TrialFailed:
            state = OptunaState.FAIL
        except BaseException:
            # Ctrl-C, or a fatal error: fail it and queue its retry (the same command resumes it)
            study.tell(trial, state=OptunaState.FAIL)
            _retry(study, study._storage.get_trial(trial._trial_id))
            raise
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as error:  # the grid sampler stops the study when its grid is done
        if "Study.stop" not in str(error):
            raise
        runner.grid_exhausted = True  # (the trial's state was stored before the sampler spoke)
    runner.after_trial(study, study._storage.get_trial(trial._trial_id))


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():  # heartbeats are ours (see _run_trial), not optimize()'s
        warnings.filterwarnings("ignore", "Heartbeat of storage")
        return study.ask()


def _retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed trial's retry the way Optuna does for trials whose heartbeat stopped."""
    callback = study._storage.get_heartbeat_stale_trial_callback()  # type: ignore[attr-defined]
    if callback is not None:
        callback(study, trial)


def reap_dead_trials(study: optuna.Study) -> int:
    """Fail (and queue for retry) trials of dead workers: stale heartbeats, dead local PIDs.

    Returns how many running trials were failed (by this worker or, meanwhile, by another).
    """
    before = len(_running(study))
    if not before:
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    recover_dead_trials(study)
    return max(0, before - len(_running(study)))
