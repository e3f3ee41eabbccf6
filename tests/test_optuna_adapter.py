"""Optuna's private API, as `engines/optuna/adapter.py` uses it, against the installed Optuna.

Each function of the adapter is exercised on a real SQLite storage, so an Optuna release that
moves or changes one of them fails here (not in the middle of a user's sweep); and the version
bound in pyproject is the adapter's list of supported minors, so nobody installs an untested one.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tunelab.engines.optuna import adapter

ROOT = Path(__file__).resolve().parent.parent


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """What the engine's stale-trial callback does: queue the next attempt."""
    adapter.requeue(study, trial, drop_user_attrs=())


def study_at(tmp_path: Path, heartbeat: int | None = None) -> optuna.Study:
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'optuna.db'}",
        heartbeat_interval=heartbeat,
        grace_period=2 * heartbeat if heartbeat else None,
        heartbeat_stale_trial_callback=retry if heartbeat else None,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name="adapter", storage=storage)


def test_the_installed_optuna_is_a_supported_minor_and_pyproject_allows_only_those() -> None:
    assert adapter.supported(), f"Optuna {optuna.__version__} is not in {adapter.SUPPORTED}"
    assert not adapter.supported("4.8.0") and not adapter.supported("5.1.0")
    pyproject = (ROOT / "pyproject.toml").read_text()
    [(low, high)] = re.findall(r'"optuna>=([\d.]+),<([\d.]+)"', pyproject)
    lowest, highest = min(adapter.SUPPORTED), max(adapter.SUPPORTED)
    assert tuple(int(p) for p in low.split(".")[:2]) == lowest
    assert tuple(int(p) for p in high.split(".")[:2]) == (highest[0], highest[1] + 1)


def test_frozen_user_attrs_fail_and_requeue_on_a_real_storage(tmp_path: Path) -> None:
    study = study_at(tmp_path)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    frozen = adapter.frozen(study, trial)
    assert (frozen.number, frozen.state) == (trial.number, TrialState.RUNNING)
    assert frozen.params == trial.params
    adapter.set_user_attr(study, frozen, "checkpoint_run", "abc")
    adapter.set_user_attr(study, frozen, "keep", 1)
    assert study.trials[0].user_attrs == {"checkpoint_run": "abc", "keep": 1}

    assert adapter.fail(study, frozen) is True
    assert study.trials[0].state == TrialState.FAIL
    assert adapter.fail(study, frozen) is False  # already finished: not an error, just False

    adapter.requeue(study, study.trials[0], drop_user_attrs=("checkpoint_run",))
    waiting = study.trials[1]
    assert waiting.state == TrialState.WAITING and waiting.params == trial.params
    assert waiting.user_attrs == {"keep": 1}
    assert adapter.retry_history(waiting) == [0]
    again = study.ask()  # the queued attempt comes first, with the same parameters
    assert again.number == 1 and again.params == trial.params
    assert adapter.fail(study, adapter.frozen(study, again))
    adapter.requeue(study, study.trials[1], drop_user_attrs=())
    assert adapter.retry_history(study.trials[2]) == [0, 1]  # every attempt, oldest first
    assert study.trials[2].system_attrs[adapter.FAILED_TRIAL] == 0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*heartbeat:optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_the_heartbeat_keeps_a_trial_alive_and_a_stopped_one_is_failed_and_retried(
    tmp_path: Path,
) -> None:
    study = study_at(tmp_path, heartbeat=1)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    with adapter.heartbeat(study, trial):
        time.sleep(3.5)  # past the 2 s grace period, but beating
        adapter.fail_stale(study)
        assert study.trials[0].state == TrialState.RUNNING
    time.sleep(3.5)  # no beat any more: what a killed worker leaves
    adapter.fail_stale(study)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].params == trial.params
    assert adapter.retry_history(study.trials[1]) == [0]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*heartbeat:optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_the_heartbeat_goes_on_beating_after_the_storage_fails_a_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that restarts fails a few beats; the beats after it must still come."""
    study = study_at(tmp_path, heartbeat=1)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage = study._storage
    real, calls = storage.record_heartbeat, []

    def flaky(trial_id: int) -> None:
        calls.append(trial_id)
        if len(calls) <= 2:  # the first two beats meet a database that is down
            raise optuna.exceptions.StorageInternalError("connection refused")
        real(trial_id)

    monkeypatch.setattr(storage, "record_heartbeat", flaky)
    with adapter.heartbeat(study, trial):
        time.sleep(4.5)  # two failed beats, then good ones: alive past the 2 s grace
        adapter.fail_stale(study)
        assert study.trials[0].state == TrialState.RUNNING
    assert len(calls) >= 4


def test_a_storage_call_that_lost_its_connection_is_tried_again_and_a_data_error_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial's report while the database restarts is stored once it answers again; an error
    about the data itself goes to the caller at once."""
    import sqlalchemy.exc

    from tunelab.engines.optuna import retrying

    monkeypatch.setattr(retrying, "FIRST_WAIT_SECONDS", 0.01)
    study = optuna.create_study(
        storage=retrying.RetryingRDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}"), study_name="s"
    )
    trial = study.ask()
    lost = sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("server closed the connection"))
    too_long = sqlalchemy.exc.DataError("UPDATE", {}, Exception("value too long for type"))
    errors: list[Exception] = [lost, lost]
    calls = []
    store = optuna.storages.RDBStorage.set_trial_intermediate_value

    def restarting(self: optuna.storages.RDBStorage, *args: object) -> object:
        calls.append(args)
        if errors:
            raise optuna.exceptions.StorageInternalError("during the commit") from errors.pop(0)
        return store(self, *args)

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_intermediate_value", restarting)
    trial.report(0.5, step=1)
    assert len(calls) == 3  # two lost connections, then stored
    assert study.trials[0].intermediate_values == {1: 0.5}
    errors.append(too_long)
    calls.clear()
    with pytest.raises(optuna.exceptions.StorageInternalError):
        trial.report(0.6, step=2)
    assert len(calls) == 1 and study.trials[0].intermediate_values == {1: 0.5}


def test_a_storage_call_made_inside_a_retried_one_is_retried_only_by_the_outer_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RDBStorage's methods call one another; nested retries would multiply the waits."""
    import sqlalchemy.exc

    from tunelab.engines.optuna import retrying

    monkeypatch.setattr(retrying, "FIRST_WAIT_SECONDS", 0.001)
    study = optuna.create_study(
        storage=retrying.RetryingRDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}"), study_name="s"
    )
    trial = study.ask()
    checks = []

    def unreachable(self: optuna.storages.RDBStorage, *args: object) -> None:
        checks.append(args)
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(optuna.storages.RDBStorage, "check_trial_is_updatable", unreachable)
    with pytest.raises(optuna.exceptions.StorageInternalError):
        study.tell(trial, 0.5)
    assert len(checks) == retrying.WRITE_ATTEMPTS  # not WRITE_ATTEMPTS squared
