"""Every call into Optuna's non-public API, in one place, pinned to the versions tested.

tunelab drives trials with ask/tell and needs four things Optuna keeps private: a trial's storage
id (to read its frozen state), the storage's heartbeat and stale-trial callback (a worker
that dies must have its trial failed and retried), and direct state changes (a trial whose
process is gone, on this machine). `tests/test_optuna_adapter.py` exercises each of them against
the installed Optuna; pyproject bounds Optuna to the minor versions that test passed on.

The retry bookkeeping follows Optuna's own `RetryHeartbeatStaleTrialCallback` (system attributes
`failed_trial` and `retry_history`), so a trial continued after a pause and one retried after a
crash read back the same way.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

SUPPORTED = ((4, 9), (5, 0))  # (major, minor) of the Optuna releases this module was tested on
FAILED_TRIAL, RETRY_HISTORY = "failed_trial", "retry_history"


def frozen(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """The stored state of a trial being run."""
    return study._storage.get_trial(trial._trial_id)


def retry_history(trial: FrozenTrial) -> list[int]:
    """Numbers of the attempts before this one (crashed or paused), oldest first."""
    return list(trial.system_attrs.get(RETRY_HISTORY, []))


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Keep the trial's heartbeat beating while the block runs (no-op without heartbeats).

    Unlike Optuna's own heartbeat thread, which dies at the first failed write, a beat that
    fails (the database restarting, the network gone) is retried at the next interval: a short
    outage costs no trial, and one longer than the grace hands the trial to another worker.
    """
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        yield
        return
    assert isinstance(storage, BaseHeartbeat)
    interval = float(storage.get_heartbeat_interval() or 60)
    stop = threading.Event()

    def beat() -> None:
        while True:
            with suppress(Exception):  # a failed beat: the next one is the retry
                storage.record_heartbeat(trial._trial_id)
            if stop.wait(timeout=interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def set_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def fail(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Mark a running trial failed; False if another process finished it first."""
    try:
        study._storage.set_trial_state_values(trial._trial_id, OptunaState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


def requeue(study: optuna.Study, trial: FrozenTrial, *, drop_user_attrs: tuple[str, ...]) -> None:
    """Queue a failed trial's next attempt: the same parameters, its attempts in the history.

    Unlike Optuna's retry callback there is no retry limit: a trial paused at every deadline of
    a long budget must always be continued. Crash retries are limited by the caller.
    """
    system_attrs: dict[str, Any] = {FAILED_TRIAL: trial.number, RETRY_HISTORY: []}
    system_attrs.update(trial.system_attrs)
    system_attrs[RETRY_HISTORY] = [*system_attrs[RETRY_HISTORY], trial.number]
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in drop_user_attrs}
    study.add_trial(
        optuna.create_trial(
            state=OptunaState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )


def fail_stale(study: optuna.Study) -> None:
    """Fail trials whose heartbeat stopped and queue their retries (Optuna's own mechanism)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def supported(version: str = optuna.__version__) -> bool:
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) in SUPPORTED
