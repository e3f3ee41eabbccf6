"""A sweep process killed with SIGKILL mid-trial: the same command resumes, losing nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import fork_server
import optuna
import pytest

from conftest import Services, quiet_sweep
from tunelab.define.data import Splits
from tunelab.define.experiment import load_experiment
from tunelab.record.names import PARENT_RUN_TAG, Role, TagKey
from tunelab.record.query import Query
from tunelab.record.store import Tracker

SPACE = """
parameters:
  dense_units: {type: int, low: 8, high: 32}
fixed: {optimizer: adam, learning_rate: 0.002, filters: 8, epochs: 30, batch_size: 64}
"""
EXPERIMENT = """
name: crash
search_space: space.yaml
engine: {name: optuna, sampler: random}
budget: {trials: 2, max_epochs: 2}
"""
WORKER = """
import sys
from dataclasses import replace
from pathlib import Path
from tunelab.define.data import load_npz_splits
from tunelab.engines.launch import run_sweep
from tunelab.define.experiment import load_experiment
spec = load_experiment(sys.argv[1])
splits = load_npz_splits(Path(sys.argv[2]), validation_size=500)
# 30 epochs a trial: long enough to be killed in the middle of the first one
spec = replace(spec, budget=spec.budget.model_copy(update={"max_epochs": 30}))
run_sweep(spec, splits=splits, tracking_uri=sys.argv[3], storage_url=sys.argv[4],
          show_progress=False)
"""


def start_worker(script: str, folder: Path, *args: object) -> subprocess.Popen[bytes]:
    """A real worker process running `script` on `folder`/crash.yaml, to be killed."""
    return fork_server.popen(
        [sys.executable, "-c", script, str(folder / "crash.yaml"), *map(str, args)],
        cwd=folder,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for_running_trial(
    storage: str, process: subprocess.Popen[bytes], limit: float = 120
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert process.poll() is None, "the worker ended before it could be killed"
        try:
            study = optuna.load_study(study_name="crash", storage=storage)
            running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            if running and running[0].user_attrs.get("mlflow_run_id"):
                return
        except KeyError:
            pass  # the study does not exist yet
        time.sleep(0.5)
    raise AssertionError("no trial started in time")


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume(tmp_path: Path, tiny_npz: Path, tiny_splits: Splits) -> None:
    (tmp_path / "space.yaml").write_text(textwrap.dedent(SPACE))
    (tmp_path / "crash.yaml").write_text(textwrap.dedent(EXPERIMENT))
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    worker = start_worker(WORKER, tmp_path, tiny_npz, uri, storage)
    try:
        wait_for_running_trial(storage, worker)
        time.sleep(2)  # let it get into training
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    tracker = Tracker(uri)
    [parent] = tracker.search("crash", Query.of(role=Role.SWEEP))
    assert parent.info.status == "RUNNING"  # nothing could close it: SIGKILL
    quiet_sweep(
        load_experiment(tmp_path / "crash.yaml"), tiny_splits, tracking_uri=uri, storage_url=storage
    )
    study = optuna.load_study(study_name="crash", storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1  # the killed trial
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2  # the budget, met after resuming
    assert optuna.trial.TrialState.RUNNING not in states
    runs = tracker.search("crash", Query())
    assert all(r.info.status != "RUNNING" for r in runs)
    killed = [
        r for r in runs if r.data.tags.get(TagKey.FAILURE_REASON, "").startswith("the worker")
    ]
    assert len(killed) == 1 and killed[0].data.tags[PARENT_RUN_TAG] == parent.info.run_id
    assert killed[0].info.status == "FAILED"
    assert len(tracker.search("crash", Query.of(role=Role.SWEEP))) == 1


KT_EXPERIMENT = """
name: crash
search_space: space.yaml
engine: {name: kerastuner, tuner: random}
budget: {trials: 2, max_epochs: 2}
"""
KT_WORKER = WORKER.replace("storage_url=sys.argv[4],", "state_dir=Path(sys.argv[4]),")


def wait_for_running_child(uri: str, process: subprocess.Popen[bytes], limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert process.poll() is None, "the worker ended before it could be killed"
        try:
            running = Tracker(uri).search("crash", Query.of(role=Role.TRIAL, status="RUNNING"))
            if running:
                return
        except Exception:
            pass  # the store is still being created
        time.sleep(0.5)
    raise AssertionError("no trial started in time")


@pytest.mark.slow
def test_keras_tuner_sigkill_mid_trial_then_resume(
    tmp_path: Path, tiny_npz: Path, tiny_splits: Splits
) -> None:
    (tmp_path / "space.yaml").write_text(textwrap.dedent(SPACE))
    (tmp_path / "crash.yaml").write_text(textwrap.dedent(KT_EXPERIMENT))
    uri, state = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "keras_tuner"
    worker = start_worker(KT_WORKER, tmp_path, tiny_npz, uri, state)
    try:
        wait_for_running_child(uri, worker)
        time.sleep(2)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    tracker = Tracker(uri)
    [parent] = tracker.search("crash", Query.of(role=Role.SWEEP))
    assert parent.info.status == "RUNNING"
    quiet_sweep(
        load_experiment(tmp_path / "crash.yaml"),
        tiny_splits,
        tracking_uri=uri,
        state_dir=state,
    )
    runs = tracker.search("crash", Query())
    assert all(r.info.status != "RUNNING" for r in runs)
    killed = [
        r for r in runs if r.data.tags.get(TagKey.FAILURE_REASON, "").startswith("the worker")
    ]
    assert len(killed) == 1 and killed[0].info.status == "FAILED"
    assert killed[0].data.tags[PARENT_RUN_TAG] == parent.info.run_id
    complete = [r for r in runs if r.data.tags.get(TagKey.TRIAL_STATE) == "complete"]
    assert len(complete) == 2  # the budget, met after resuming; the killed trial ran again
    [parent] = tracker.search("crash", Query.of(role=Role.SWEEP))
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(("saved_epoch", "resumed"), [(1, True), (5, False)])
def test_a_retried_trial_resumes_from_its_checkpoint_unless_past_the_epoch_cap(
    tmp_path: Path, tiny_splits: Splits, saved_epoch: int, resumed: bool, monkeypatch: Any
) -> None:
    """The dead attempt saved step `saved_epoch` on its MLflow run; this launch caps trials at 2.

    The retry runs in another working directory than the dead attempt: the checkpoint comes
    from the tracking store, not from a local folder.
    """
    from tunelab.engines.optuna.study import open_study, retry_crashed
    from tunelab.training.checkpoints import CheckpointWriter
    from tunelab.training.factory import build_model

    space = SPACE.replace("epochs: 30", "epochs: 2")
    (tmp_path / "space.yaml").write_text(textwrap.dedent(space))
    (tmp_path / "crash.yaml").write_text(
        textwrap.dedent(EXPERIMENT).replace("trials: 2", "trials: 1")
    )
    spec = load_experiment(tmp_path / "crash.yaml")
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    tracker = Tracker(uri)
    dead_run = tracker.create_run(
        "crash", "dead attempt", tags={TagKey.ROLE: Role.TRIAL, TagKey.TRIAL_NUMBER: "0"}
    )
    tracker.end_run(dead_run, "FAILED")
    study = open_study(spec, "crash", storage, len(tiny_splits.train))
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL,
            params={"dense_units": 16},
            distributions={"dense_units": optuna.distributions.IntDistribution(8, 32)},
            user_attrs={"mlflow_run_id": dead_run},
        )
    )
    retry_crashed(study, study.trials[0])  # what the heartbeat does for a dead worker
    decided = spec.with_precision("float32")
    cfg = decided.run_config({"dense_units": 16}, tiny_splits.input_shape, 10).with_epochs(2)
    model = build_model(cfg, steps_per_epoch=20)
    model.fit(tiny_splits.train.x[:256], tiny_splits.train.y[:256], verbose=0)
    history = {"loss": [1.0] * saved_epoch, "val_accuracy": [0.5] * saved_epoch}
    CheckpointWriter(tracker, dead_run).save(model, saved_epoch, history, 1.0)
    elsewhere = tmp_path / "another_machine"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    quiet_sweep(spec, tiny_splits, tracking_uri=uri, storage_url=storage)
    study = optuna.load_study(study_name="crash", storage=storage)
    [retry] = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert retry.params == {"dense_units": 16}
    runs = tracker.search("crash", Query.of(role=Role.TRIAL))
    [run] = [r for r in runs if r.data.tags.get(TagKey.RETRIES_TRIAL) == "0"]
    assert run.data.metrics["epochs_trained"] == 2
    assert ("resumed_from_epoch" in run.data.metrics) is resumed
    if resumed:
        steps = tracker.metric_steps(run.info.run_id, "val_accuracy")
        assert steps[0] == (1, 0.5)  # the dead attempt's epoch, then this attempt's own
    # every attempt's checkpoint is gone once the trial ended
    assert not tracker.list_artifacts(dead_run, "checkpoint")
    assert not tracker.list_artifacts(run.info.run_id, "checkpoint")


@pytest.mark.slow
def test_tune_stopped_by_sigterm_then_by_ctrl_c_closes_its_runs_and_the_same_command_resumes(
    tmp_path: Path, tiny_npz: Path
) -> None:
    """`tunelab tune` (the command line and its signal handler) gets SIGTERM in the middle of a
    trial, and the same command, relaunched, gets SIGINT in the middle of the next: each time
    it says so in one line and exits 130 (Typer returned that code and the process exited 0:
    job controllers saw success), the trial is failed with its reason, no run stays RUNNING;
    the same command then meets the budget exactly."""
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    stop_and_resume(
        [signal.SIGTERM, signal.SIGINT],
        tmp_path,
        tiny_npz,
        uri,
        storage,
        ["--tracking-uri", uri, "--storage", storage],
        {},
    )


@pytest.mark.slow
def test_ctrl_c_on_postgresql_and_the_mlflow_server_closes_its_runs_and_the_same_command_resumes(
    services: Services, tmp_path: Path, tiny_npz: Path
) -> None:
    """The same on the services' PostgreSQL study and MLflow server, reached through the
    environment as `make services` sets it up."""
    where = {
        "TUNELAB_OPTUNA_STORAGE": services.storage_url,
        "MLFLOW_TRACKING_URI": services.tracking_uri,
    }
    stop_and_resume(
        [signal.SIGINT], tmp_path, tiny_npz, services.tracking_uri, services.storage_url, [], where
    )


def stop_and_resume(
    signals: list[int],
    folder: Path,
    tiny_npz: Path,
    uri: str,
    storage: str,
    store_options: list[str],
    store_environment: dict[str, str],
) -> None:
    """Signal `tunelab tune` mid-trial, once per launch, check what it closed and said each
    time, then run it again to the end."""
    (folder / "space.yaml").write_text(textwrap.dedent(SPACE).replace("30", "300"))
    data = f"dataset: {{npz: {tiny_npz}}}\nvalidation_size: 500\n"
    experiment = textwrap.dedent(EXPERIMENT) + data
    # 300-epoch trials: the signal comes in the middle of one
    (folder / "crash.yaml").write_text(experiment.replace("max_epochs: 2", "max_epochs: 300"))
    command = [sys.executable, "-m", "tunelab", "tune", "crash.yaml", "--quiet", *store_options]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **store_environment}
    tracker = Tracker(uri)
    for launch, signum in enumerate(signals, start=1):
        worker = fork_server.popen(
            command, cwd=folder, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            wait_for_running_trial(storage, worker)
            time.sleep(2)  # into the training
            worker.send_signal(signum)
            out, errors = worker.communicate(timeout=60)
        finally:
            worker.kill()
        assert worker.returncode == 130, errors.decode()[-2000:]
        said = (out + errors).decode()
        assert "interrupted: finished work is recorded; the same command resumes" in said
        runs = tracker.search("crash", Query())
        assert runs and all(r.info.status != "RUNNING" for r in runs)
        stopped = [
            r for r in runs if r.data.tags.get(TagKey.FAILURE_REASON, "").startswith("interr")
        ]
        assert len(stopped) == launch  # one trial a launch, failed with its reason
        assert all(r.info.status == "KILLED" for r in stopped)  # MLflow's word for it
    (folder / "crash.yaml").write_text(experiment)  # 2-epoch trials from here: a quick test
    again = fork_server.run(command, cwd=folder, env=environment, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    states = [t.state for t in optuna.load_study(study_name="crash", storage=storage).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert optuna.trial.TrialState.RUNNING not in states
    assert all(r.info.status != "RUNNING" for r in tracker.search("crash", Query()))
    assert len(tracker.search("crash", Query.of(role=Role.SWEEP))) == 1
