"""Opening a study: its storage, sampler and pruner, and what happens to a dead worker's trial.

A module of its own, without Keras or TensorFlow: `tunelab tune --workers N` creates the study
here before its workers start and trains nothing itself, so it does not pay the 6 s of CPU
TensorFlow's import costs. The sweep itself is `engine.py`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from tunelab.define.algorithms import (
    PRUNERS,
    SAMPLERS,
    MissingLibrary,
    PrunerContext,
    SamplerContext,
)
from tunelab.define.experiment import ExperimentSpec
from tunelab.define.urls import check_storage_url, is_proxy_url, missing_driver
from tunelab.engines.agreement import checked
from tunelab.engines.optuna import adapter
from tunelab.engines.optuna.lock import StudyLock
from tunelab.engines.optuna.retrying import RetryingRDBStorage
from tunelab.engines.optuna.space import grid
from tunelab.engines.sweep import SweepError, max_trial_epochs
from tunelab.redact import database_error_line, redact_url

# a worker records a heartbeat every HEARTBEAT_SECONDS; one silent for GRACE_SECONDS is dead and
# its trial is failed and retried (environment overrides, for tests and slow networks)
HEARTBEAT_SECONDS = int(os.environ.get("TUNELAB_HEARTBEAT_SECONDS", "10"))
GRACE_SECONDS = int(os.environ.get("TUNELAB_HEARTBEAT_GRACE_SECONDS", "60"))
MAX_RETRIES = 2  # a trial whose worker died runs again at most this many times
CONNECT_ATTEMPTS = 4  # opening the storage: tries, 1 s, 2 s, 4 s apart
CONNECT_FIRST_WAIT_SECONDS = 1.0
SCHEMA_LOCK = "__optuna_schema__"  # lock name while creating the storage's tables
# trial user attributes
HOST, PID, FAIL_REASON, BEAT_AT_EPOCH, BEAT_SECONDS = (
    "host",
    "pid",
    "fail_reason",
    "beat_epoch",
    "beat_s",
)
RUN_ID = "mlflow_run_id"
PAUSED = "paused"  # set on an attempt stopped by the deadline (Optuna calls it failed)
WARM_START = "warm_start_from"  # set on trials copied from another study (no run, no budget)
ATTEMPT_ATTRS = (RUN_ID, PAUSED, FAIL_REASON, HOST, PID, BEAT_AT_EPOCH, BEAT_SECONDS)


def make_sampler(spec: ExperimentSpec, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The experiment's sampler, seeded by its seed and the trials the study already holds
    (see `_ask`: the seed moves on with every trial asked, by any worker or launch)."""
    algorithm = SAMPLERS[spec.engine.sampler]
    context = SamplerContext(
        seed=spec.seed + (trials_so_far if algorithm.reseed_on_ask else 0),
        startup_trials=spec.engine.startup_trials,
        grid=lambda: grid(spec.search_space),
    )
    try:
        sampler: optuna.samplers.BaseSampler = algorithm.build(context)
    except MissingLibrary as error:
        raise SweepError(str(error)) from None
    return sampler


def make_pruner(spec: ExperimentSpec, train_size: int) -> optuna.pruners.BasePruner:
    """The experiment's pruner; its resource is training images seen. With
    `engine.fidelity_check`, it prunes at a rung only where that rung is measured to rank."""
    minimum = spec.engine.min_images or train_size
    context = PrunerContext(
        startup_trials=spec.engine.startup_trials,
        min_resource=minimum,
        max_resource=max_trial_epochs(spec) * train_size,
        reduction_factor=spec.engine.reduction_factor,
    )
    pruner: optuna.pruners.BasePruner = PRUNERS[spec.engine.pruner].build(context)
    return CheckedPruner(pruner) if spec.engine.fidelity_check else pruner


class CheckedPruner(optuna.pruners.BasePruner):
    """Prunes only where the rung's scores rank like the complete trials' ends (so far)."""

    def __init__(self, pruner: optuna.pruners.BasePruner) -> None:
        self.pruner = pruner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        pairs = [
            (float(done.intermediate_values[step]), float(done.values[0]))
            for done in study.get_trials(deepcopy=False, states=(OptunaState.COMPLETE,))
            if step in done.intermediate_values and done.values
        ]
        return checked(pairs) and bool(self.pruner.prune(study, trial))


def check_storage(storage_url: str) -> None:
    """Refuse a storage URL tunelab cannot keep its promises on, before anything connects."""
    shown = redact_url(storage_url)
    problem = check_storage_url(storage_url) or missing_driver(storage_url)
    if problem:
        raise SweepError(f"Optuna storage {shown}: {problem}")
    if storage_url.startswith("sqlite:///"):
        folder = Path(storage_url.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SweepError(
                f"Optuna storage {shown}: cannot create {folder} ({error.strerror or error}); "
                "choose a writable place with --storage"
            ) from None


def open_study(spec: ExperimentSpec, study_name: str, storage_url: str, train_size: int) -> Any:
    """Load the study if it exists, else create it (and enqueue the experiment's points)."""
    check_storage(storage_url)
    import sqlalchemy.exc

    # workers starting together on a fresh database would race to create Optuna's tables (a
    # gRPC proxy's server created them when it started)
    if is_proxy_url(storage_url):
        storage = connect_storage(storage_url)
    else:
        try:
            with StudyLock(storage_url, SCHEMA_LOCK)():
                storage = connect_storage(storage_url)
        except sqlalchemy.exc.OperationalError:
            storage = connect_storage(storage_url)  # unreachable: retries, then one line
    with StudyLock(storage_url, study_name)():
        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            load_if_exists=True,
            sampler=make_sampler(spec),
            pruner=make_pruner(spec, train_size),
            directions=[o.goal for o in spec.objectives],
        )
        if not study.trials:
            for point in spec.enqueue:
                study.enqueue_trial(dict(point), skip_if_exists=True)
    return study


def connect_storage(storage_url: str) -> optuna.storages.BaseStorage:
    """The study storage, with heartbeats, retries of dead workers' trials, and every call
    retried while the database restarts (`retrying.RetryingRDBStorage`); through Optuna's gRPC
    storage proxy for a `grpc://host:port` URL (`proxy.HeartbeatProxy`).

    A database that cannot be reached (or is restarting) is tried CONNECT_ATTEMPTS times with
    exponential backoff (tenacity), then refused in one line (the URL's password masked) instead
    of a stack of SQLAlchemy internals. Once connected, SQLAlchemy's `pool_pre_ping` replaces
    connections a restarted server dropped.
    """
    if is_proxy_url(storage_url):
        return _connect_proxy(storage_url)
    import sqlalchemy.exc
    import tenacity

    def connect() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RetryingRDBStorage(
                storage_url,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=retry_crashed,
                engine_kwargs={"pool_pre_ping": True}
                if not storage_url.startswith("sqlite")
                else None,
            )

    transient = (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.IntegrityError,  # another process created the tables meanwhile
    )
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(transient),
        stop=tenacity.stop_after_attempt(CONNECT_ATTEMPTS),
        wait=tenacity.wait_exponential(multiplier=CONNECT_FIRST_WAIT_SECONDS),
        reraise=True,
    )
    try:
        return retrying(connect)
    except transient as error:
        raise SweepError(
            f"cannot reach the Optuna storage {redact_url(storage_url)} after {CONNECT_ATTEMPTS} "
            f"attempts ({database_error_line(error)}); is the database running (`make services`)?"
        ) from None


def _connect_proxy(storage_url: str) -> optuna.storages.BaseStorage:
    from tunelab.engines.optuna.proxy import READY_SECONDS, connect_proxy

    try:
        return connect_proxy(
            storage_url,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            stale_trial_callback=retry_crashed,
        )
    except ConnectionError:
        raise SweepError(
            f"no gRPC storage proxy answered at {redact_url(storage_url)} in "
            f"{READY_SECONDS:.0f} s; is `tunelab storage-proxy` running there?"
        ) from None


def retry_crashed(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue another attempt of a trial whose worker died, unless it crashed too often already.

    Paused attempts do not count: a trial continued at every deadline is not a crashing trial.
    """
    trials = study.get_trials(deepcopy=False)
    attempts = [*adapter.retry_history(trial), trial.number]
    crashes = sum(not trials[n].user_attrs.get(PAUSED) for n in attempts if 0 <= n < len(trials))
    if crashes <= MAX_RETRIES:
        adapter.requeue(study, trial, drop_user_attrs=ATTEMPT_ATTRS)
