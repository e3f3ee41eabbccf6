"""Several workers on one study in PostgreSQL, logging to one MLflow tracking server.

The services are the project's own: `scripts/services.sh start` runs PostgreSQL and `mlflow
server` (PostgreSQL backend, file artifacts) on free ports under a temporary directory, as
`make services` does for users. Workers are real processes, forked from a server that has
loaded the libraries already (tests/support/fork_server.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fork_server
import optuna
import pytest

from conftest import Services, free_port
from tunelab.engines.sweep import SWEEP_LEDGER
from tunelab.record.ledger import Ledger
from tunelab.record.names import PARENT_RUN_TAG, Role, TagKey
from tunelab.record.query import Query
from tunelab.record.store import Tracker

SPACE = """
parameters:
  dense_units: {type: int, low: 8, high: 32}
fixed: {optimizer: adam, learning_rate: 0.002, filters: 4, epochs: EPOCHS, batch_size: 256}
"""
EXPERIMENT = """
name: NAME
search_space: space.yaml
engine: {name: optuna, sampler: random}
budget: {trials: TRIALS, max_epochs: EPOCHS}
storage: STORAGE
seed: 11
"""
WORKER = """
import sys
from pathlib import Path
from tunelab.define.data import load_npz_splits
from tunelab.engines.launch import run_sweep
from tunelab.define.experiment import load_experiment
spec = load_experiment(sys.argv[1])
splits = load_npz_splits(Path(sys.argv[2]), validation_size=500)
print(run_sweep(spec, splits=splits, tracking_uri=sys.argv[3], show_progress=False))
"""


def write_experiment(folder: Path, name: str, trials: int, epochs: int, storage: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(textwrap.dedent(SPACE).replace("EPOCHS", str(epochs)))
    text = (
        textwrap.dedent(EXPERIMENT)
        .replace("NAME", name)
        .replace("TRIALS", str(trials))
        .replace("EPOCHS", str(epochs))
        .replace("STORAGE", storage)
    )
    (folder / f"{name}.yaml").write_text(text)
    return folder / f"{name}.yaml"


def start_workers(
    count: int,
    experiment: Path,
    tiny_npz: Path,
    services: Services,
    separate_folders: bool = False,
    **env: str,
) -> list[subprocess.Popen[bytes]]:
    """`count` worker processes; with `separate_folders`, each in a working folder of its own
    (as on different machines: nothing local is shared)."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    workers = []
    for index in range(count):
        folder = experiment.parent / f"machine_{index}" if separate_folders else experiment.parent
        folder.mkdir(exist_ok=True)
        workers.append(
            fork_server.popen(
                [
                    sys.executable,
                    "-c",
                    WORKER,
                    str(experiment),
                    str(tiny_npz),
                    services.tracking_uri,
                ],
                cwd=folder,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    return workers


def finish(workers: list[subprocess.Popen[bytes]], limit: float = 420) -> None:
    deadline = time.monotonic() + limit
    for worker in workers:
        _, errors = worker.communicate(timeout=max(1.0, deadline - time.monotonic()))
        assert worker.returncode == 0, errors.decode()[-3000:]


def mlflow_record(services: Services, experiment: str) -> tuple[list, list]:  # type: ignore[type-arg]
    tracker = Tracker(services.tracking_uri)
    parents = tracker.search(experiment, Query.of(role=Role.SWEEP))
    trials = tracker.search(experiment, Query.of(role=Role.TRIAL))
    return parents, trials


def first_epoch_logged(tracker: Tracker, experiment: str) -> bool:
    """Whether the experiment's first trial run has logged an epoch (a fault may come now)."""
    runs = tracker.search(experiment, Query.of(role=Role.TRIAL))
    return bool(runs and tracker.metric_steps(runs[0].info.run_id, "loss"))


def assert_resumed_exactly(study: optuna.Study, tracker: Tracker, budget: int) -> None:
    """After an outage and a relaunch: the budget complete, no trial or run left RUNNING, each
    trial recorded complete once."""
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == budget
    assert optuna.trial.TrialState.RUNNING not in states
    runs = tracker.search(study.study_name, Query())
    assert all(r.info.status != "RUNNING" for r in runs), [r.info.run_name for r in runs]
    finished = [
        r.data.tags[TagKey.TRIAL_NUMBER]
        for r in runs
        if r.data.tags.get(TagKey.TRIAL_STATE) == "complete"
    ]
    assert len(finished) == len(set(finished)) == budget


@contextmanager
def peak_connections(database: str) -> Iterator[list[int]]:
    """Sample PostgreSQL's open connections (every client: workers, locks, the MLflow server,
    a storage proxy) twice a second while the block runs; the list holds the peak and the
    server's limit. Also read by benchmarks/workers.py."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(database, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as probe:
        limit = int(probe.execute(sqlalchemy.text("SHOW max_connections")).scalar_one())
    peak, done = [0, limit], threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            with engine.connect() as probe:
                count = probe.execute(sqlalchemy.text("SELECT count(*) FROM pg_stat_activity"))
                peak[0] = max(peak[0], int(count.scalar_one()))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("count", [8])  # two on separate hosts: tests/test_hosts.py
def test_workers_share_one_study_with_exact_counts_and_one_parent(
    count: int, services: Services, tiny_npz: Path, tmp_path: Path
) -> None:
    name, budget = f"workers{count}", count + 1  # the last trial: one worker of eight gets it
    experiment = write_experiment(tmp_path / name, name, budget, 1, services.storage_url)
    with peak_connections(services.storage_url) as peak:
        finish(start_workers(count, experiment, tiny_npz, services))
    print(f"{count} workers: at most {peak[0]} PostgreSQL connections of {peak[1]}")
    assert 0 < peak[0] < peak[1]  # the load never reached PostgreSQL's limit
    study = optuna.load_study(study_name=name, storage=services.storage_url)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == budget  # none lost, none extra
    assert len(study.trials) == budget  # nothing asked beyond the budget
    numbers = [t.number for t in study.trials]
    assert len(set(numbers)) == len(numbers)
    parents, trials = mlflow_record(services, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # started at once, one parent
    assert len(trials) == budget
    assert {r.data.tags[PARENT_RUN_TAG] for r in trials} == {parents[0].info.run_id}
    assert sorted(int(r.data.tags[TagKey.TRIAL_NUMBER]) for r in trials) == sorted(numbers)
    assert all(r.data.tags[TagKey.TRIAL_STATE] == "complete" for r in trials)
    assert parents[0].data.metrics["trials_complete"] == budget
    # the storage password is in the experiment file and the environment, and nowhere in MLflow
    for run in [*parents, *trials]:
        fields = [*run.data.params.values(), *run.data.tags.values(), *run.data.metrics]
        assert not any(services.password in str(value) for value in fields)
    tracker = Tracker(services.tracking_uri)
    parent_id = parents[0].info.run_id
    # the study's plots are on the parent (drawn by the worker that closed it)
    assert "plots/optimization_history.png" in tracker.list_artifacts(parent_id, "plots")
    logged = tracker.client.download_artifacts(parent_id, f"experiment/{name}.yaml", str(tmp_path))
    text = Path(logged).read_text()
    assert services.password not in text and "tunelab:***@127.0.0.1" in text


@pytest.mark.slow
def test_an_unreachable_database_is_one_clear_line_without_the_password(tmp_path: Path) -> None:
    from tunelab.engines.optuna.study import connect_storage
    from tunelab.engines.sweep import SweepError

    url = f"postgresql://tunelab:hunter2@127.0.0.1:{free_port()}/optuna"
    with pytest.raises(SweepError) as refused:
        connect_storage(url)
    message = str(refused.value)
    assert "hunter2" not in message and "tunelab:***@127.0.0.1" in message
    assert "make services" in message and len(message.splitlines()) == 1


@pytest.mark.slow
def test_a_database_that_comes_back_during_the_retries_is_connected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy.exc

    import tunelab.engines.optuna.study as study

    real, calls = study.RetryingRDBStorage, []

    def restarting(url: str, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        if len(calls) < 3:  # the server is still restarting: connection refused twice
            raise sqlalchemy.exc.OperationalError("connect", {}, Exception("connection refused"))
        return real(url, **kwargs)

    monkeypatch.setattr(study, "RetryingRDBStorage", restarting)
    monkeypatch.setattr(study, "CONNECT_FIRST_WAIT_SECONDS", 0.2)
    storage = study.connect_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert isinstance(storage, real) and len(calls) == 3
    assert calls[1] - calls[0] >= 0.2 and calls[2] - calls[1] >= 0.4  # backed off, doubling


def test_tune_workers_passes_the_storage_in_the_environment_not_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunelab.cli import main
    from tunelab.engines.optuna import workers

    experiment = write_experiment(tmp_path, "cli", 4, 1, "postgresql://u:topsecret@h/db")
    seen: dict[str, object] = {}

    def fake_popen(command: list[str], env: dict[str, str]) -> object:
        seen.setdefault("commands", []).append(command)  # type: ignore[union-attr]
        seen["env"] = env

        class Done:
            def wait(self) -> int:
                return 0

            def poll(self) -> int:
                return 0

        return Done()

    def fake_prepare(spec: object, study: str, storage: str, tracking: str) -> None:
        assert "commands" not in seen, "stores are created before any worker starts"
        seen["prepared"] = (storage, tracking)

    monkeypatch.setattr(workers.subprocess, "Popen", fake_popen)
    monkeypatch.setattr(workers, "prepare_stores", fake_prepare)
    tracking = "http://mlflow:trackingsecret@h:5050"
    main(["tune", str(experiment), "--workers", "3", "--trials", "4", "--tracking-uri", tracking])
    assert seen["prepared"] == ("postgresql://u:topsecret@h/db", tracking)
    commands = seen["commands"]
    assert isinstance(commands, list) and len(commands) == 3
    assert all("topsecret" not in " ".join(c) for c in commands)
    assert all("trackingsecret" not in " ".join(c) for c in commands)
    assert all(c[-2:] == ["--trials", "4"] for c in commands)
    env = seen["env"]
    assert isinstance(env, dict) and env["TUNELAB_OPTUNA_STORAGE"].endswith("u:topsecret@h/db")
    assert env["MLFLOW_TRACKING_URI"] == tracking


def test_workers_are_refused_for_a_keras_tuner_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tunelab.cli import main

    (tmp_path / "space.yaml").write_text(textwrap.dedent(SPACE).replace("EPOCHS", "1"))
    (tmp_path / "kt.yaml").write_text(
        "name: kt\nsearch_space: space.yaml\nengine: {name: kerastuner, tuner: random}\n"
        "budget: {trials: 2}\n"
    )
    with pytest.raises(SystemExit) as ended:
        main(["tune", str(tmp_path / "kt.yaml"), "--workers", "2"])
    assert ended.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "several workers need an Optuna experiment" in error and len(error.splitlines()) == 1


def test_workers_get_one_gpu_each_round_robin(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.engines.optuna.workers import gpu_devices, worker_environment

    base = {"PATH": "/bin"}
    assert worker_environment(base, 3, []) == base  # no GPU: nothing changes
    pinned = [worker_environment(base, i, ["0", "1"])["CUDA_VISIBLE_DEVICES"] for i in range(5)]
    assert pinned == ["0", "1", "0", "1", "0"]
    assert worker_environment(base, 0, ["0"])["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the user's own restriction is kept
    assert gpu_devices() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert gpu_devices() == []


@pytest.mark.slow
def test_hosts_with_their_own_copy_of_a_user_factory_share_a_study_and_a_changed_copy_is_refused(
    services: Services, tiny_splits: Any, tmp_path: Path
) -> None:
    """Each host has its own folder: its copy of the user's factory module, data and experiment
    file (the storage named in it), and reaches the study and MLflow only by their URLs."""
    from test_user_projects import EXPERIMENT as USER_EXPERIMENT
    from test_user_projects import project
    from tunelab.define.model import source_digest

    text = USER_EXPERIMENT.replace("budget: {trials: 2}", "budget: {trials: 4}")
    text += f"storage: {services.storage_url}\n"
    hosts = [project(tmp_path / f"host_{i}", tiny_splits, experiment=text) for i in range(3)]
    module = hosts[2].parent / "models" / "mymodels.py"
    module.write_text(module.read_text() + "\n# a different version on the third host\n")

    tracking = ["--tracking-uri", services.tracking_uri]

    def tune(experiment: Path) -> subprocess.Popen[str]:
        return fork_server.popen(
            [sys.executable, "-m", "tunelab", "tune", str(experiment), "--quiet", *tracking],
            cwd=experiment.parent,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    first = [tune(h) for h in hosts[:2]]
    for worker in first:
        _, errors = worker.communicate(timeout=420)
        assert worker.returncode == 0, errors[-3000:]
    study = optuna.load_study(study_name="userproj", storage=services.storage_url)
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 4
    assert len(study.trials) == 4
    parents, trials = mlflow_record(services, "userproj")
    assert len(parents) == 1 and len(trials) == 4
    sha = source_digest(hosts[0].parent / "models" / "mymodels.py")
    assert {r.data.tags[TagKey.FACTORY_SHA256] for r in trials} == {sha}
    changed = tune(hosts[2])
    _, errors = changed.communicate(timeout=120)
    lines = [line for line in errors.splitlines() if line.strip()]
    assert changed.returncode == 2 and len(lines) == 1, errors[-3000:]
    assert "not the code this sweep trained with" in lines[0]
    assert len(optuna.load_study(study_name="userproj", storage=services.storage_url).trials) == 4


@pytest.mark.slow
def test_workers_on_one_machine_hold_the_exact_budget_with_the_file_lock(
    tmp_path: Path, tiny_npz: Path
) -> None:
    """`tunelab tune --workers 3` on the embedded SQLite stores: the study's file lock keeps the
    trial count exact (no trial lost, none beyond the budget), one parent run; the workers'
    launches overlap, and the sweep's clock counts the time they ran together once."""
    experiment = write_experiment(tmp_path, "onemachine", 5, 1, f"sqlite:///{tmp_path / 'o.db'}")
    data = f"dataset: {{npz: {tiny_npz}}}\nvalidation_size: 500\n"
    experiment.write_text(experiment.read_text() + data)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "tunelab", "tune", str(experiment), "--workers", "3"]
    started = time.time()
    done = subprocess.run(
        [*command, "--quiet", "--tracking-uri", uri],
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        timeout=420,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    study = optuna.load_study(study_name="onemachine", storage=f"sqlite:///{tmp_path / 'o.db'}")
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 5
    assert len(study.trials) == 5
    tracker = Tracker(uri)
    parents = tracker.search("onemachine", Query.of(role=Role.SWEEP))
    trials = tracker.search("onemachine", Query.of(role=Role.TRIAL))
    assert len(parents) == 1 and len(trials) == 5
    assert sorted(int(r.data.tags[TagKey.TRIAL_NUMBER]) for r in trials) == list(range(5))
    wall = time.time() - started
    ledger = Ledger(tracker, parents[0].info.run_id, SWEEP_LEDGER)
    launches = ledger.intervals()
    assert len(launches) == 3  # one per worker
    assert all(started <= begin < end <= started + wall for begin, end in launches)
    together = sum(end - begin for begin, end in launches)
    spent = ledger.spent()  # what the time budget is charged
    assert spent < 0.8 * together  # they ran at the same time ...
    assert spent <= wall  # ... and the clock counts that time once


@pytest.mark.slow
def test_a_database_down_longer_than_the_retries_stops_the_sweep_in_one_line_and_it_resumes(
    services: Services, tmp_path: Path, tiny_splits: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL down for 15 s while the retries give up after about 6 s: the sweep stops with
    one line that says what to do (no traceback, no password); the same command afterwards
    finishes the budget exactly, the interrupted trial finished once, no run left RUNNING."""
    from conftest import quiet_sweep
    from tunelab.define.experiment import load_experiment
    from tunelab.engines.optuna import retrying
    from tunelab.errors import UserError

    monkeypatch.setattr(retrying, "FIRST_WAIT_SECONDS", 0.2)  # tries 0.2, 0.4, ... 3.2 s apart
    path = write_experiment(tmp_path, "outage", 3, 8, services.storage_url)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)

    def outage() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if first_epoch_logged(tracker, "outage"):
                services.script("restart-postgres", "15")
                return
            time.sleep(0.2)

    cut = threading.Thread(target=outage)
    cut.start()
    with pytest.raises(UserError) as stopped:
        quiet_sweep(load_experiment(path), tiny_splits, tracking_uri=uri)
    cut.join()
    line = str(stopped.value)
    assert "\n" not in line and "lost the Optuna storage" in line and "resume" in line, line
    assert services.password not in line
    quiet_sweep(load_experiment(path), tiny_splits, tracking_uri=uri)
    study = optuna.load_study(study_name="outage", storage=services.storage_url)
    assert_resumed_exactly(study, tracker, 3)


@pytest.mark.slow
def test_a_tracking_server_down_longer_than_its_retries_stops_the_sweep_in_one_line_and_it_resumes(
    services: Services, tmp_path: Path, tiny_npz: Path
) -> None:
    """The MLflow server down for 15 s while MLflow's client gives up after about 3 s:
    `tunelab tune` stops with one error line that says what to do (no traceback, no password),
    exit 2; once the server is back the same command finishes the budget exactly, each trial
    recorded complete once, no run left RUNNING on the server."""
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    path = write_experiment(tmp_path, "trackerdown", 3, 8, storage)
    path.write_text(path.read_text() + f"dataset: {{npz: {tiny_npz}}}\nvalidation_size: 500\n")
    command = [sys.executable, "-m", "tunelab", "tune", str(path), "--quiet"]
    environment = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "MLFLOW_TRACKING_URI": services.tracking_uri,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # 1 s, then 2 s apart: gives up in about 3 s
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    tracker = Tracker(services.tracking_uri)
    worker = fork_server.popen(
        command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 180
    while not first_epoch_logged(tracker, "trackerdown"):
        assert worker.poll() is None and time.monotonic() < deadline, "no epoch before the cut"
        time.sleep(0.2)
    services.script("restart-mlflow", "15")
    _, errors = worker.communicate(timeout=300)
    lines = [line for line in errors.decode().splitlines() if line.strip()]
    assert worker.returncode == 2, errors.decode()[-3000:]
    assert "Traceback" not in errors.decode() and services.password not in errors.decode()
    assert lines[-1].startswith("error: ") and "run the same command again" in lines[-1]
    again = fork_server.run(command, cwd=tmp_path, env=environment, capture_output=True)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    study = optuna.load_study(study_name="trackerdown", storage=storage)
    assert_resumed_exactly(study, tracker, 3)
