"""Workers on hosts that are really apart (tests/hosts.py): own network namespace, host name,
folder and HOME each; PostgreSQL and the MLflow server reached only through their addresses.

Each host runs `tunelab tune` on its own copy of the experiment and the data, as a person would
on each machine of a cluster; the storage URL and the tracking URI come from the environment.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest

from conftest import Services, free_port, storage_proxy_process
from hosts import Host, Network
from test_workers import SPACE
from tunelab.engines.optuna.proxy import LOCK_PREFIX
from tunelab.record.names import MetricName, Role, TagKey
from tunelab.record.query import Query
from tunelab.record.store import Tracker

pytestmark = pytest.mark.slow

EXPERIMENT = """
name: NAME
search_space: space.yaml
engine: {name: optuna, sampler: random}
budget: {trials: TRIALS, max_epochs: EPOCHS}
dataset: {npz: data/tiny.npz}
validation_size: 500
seed: 11
"""
FAST_HEARTBEAT = {"TUNELAB_HEARTBEAT_SECONDS": "1", "TUNELAB_HEARTBEAT_GRACE_SECONDS": "4"}
# a heartbeat every second, but a grace longer than the server outages the tests cause
SLOW_GRACE = {"TUNELAB_HEARTBEAT_SECONDS": "1", "TUNELAB_HEARTBEAT_GRACE_SECONDS": "30"}


def place(host: Host, name: str, trials: int, epochs: int, tiny_npz: Path) -> Path:
    """The host's own copy of the experiment, its search space and the data."""
    (host.folder / "data").mkdir(exist_ok=True)
    shutil.copy(tiny_npz, host.folder / "data" / "tiny.npz")
    (host.folder / "space.yaml").write_text(textwrap.dedent(SPACE).replace("EPOCHS", str(epochs)))
    text = textwrap.dedent(EXPERIMENT).replace("NAME", name).replace("TRIALS", str(trials))
    (host.folder / f"{name}.yaml").write_text(text.replace("EPOCHS", str(epochs)))
    return host.folder / f"{name}.yaml"


def tune(host: Host, experiment: Path, services: Services, **env: str) -> subprocess.Popen[str]:
    """`tunelab tune` on the host, pointed at the services' network addresses."""
    urls = {
        "TUNELAB_OPTUNA_STORAGE": services.storage_url,
        "MLFLOW_TRACKING_URI": services.tracking_uri,
    }
    return host.popen([sys.executable, "-m", "tunelab", "tune", experiment.name], {**urls, **env})


def finish(worker: subprocess.Popen[str], limit: float = 420) -> str:
    """Wait for a host's `tunelab tune`; its output, after checking it succeeded."""
    out, errors = worker.communicate(timeout=limit)
    assert worker.returncode == 0, errors[-3000:]
    return f"{out}\n{errors}"


@pytest.fixture()
def two_hosts(
    network: tuple[Network, Services], tmp_path: Path
) -> Iterator[tuple[Host, Host, Services]]:
    """Two hosts on the services' network, removed after the test."""
    net, services = network
    try:
        yield net.host("host-a", tmp_path / "a"), net.host("host-b", tmp_path / "b"), services
    finally:
        net.remove_hosts()


def study_of(name: str, services: Services) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=services.storage_url)


def runs(name: str, services: Services, role: Role) -> list:  # type: ignore[type-arg]
    return Tracker(services.tracking_uri).search(name, Query.of(role=role))


def checkpoints(host: Host) -> list[Path]:
    """Model files a host keeps in its own folder (Keras' config folder is not one)."""
    return [path for path in host.folder.rglob("*.keras") if path.is_file()]


def wait_for_checkpoint(
    name: str, services: Services, workers: list[subprocess.Popen[str]]
) -> optuna.trial.FrozenTrial:
    """Wait until a running trial has saved an epoch on the tracking server; that trial."""
    tracker = Tracker(services.tracking_uri)
    deadline = time.monotonic() + 240
    while True:
        for worker in workers:  # a worker that ended early says why
            if worker.poll() is not None:
                _, errors = worker.communicate()
                raise AssertionError(f"a worker ended ({worker.returncode}): {errors[-3000:]}")
        assert time.monotonic() < deadline, "no trial saved a checkpoint in 240 s"
        running = tracker.search(name, Query.of(role=Role.TRIAL, status="RUNNING"))
        for run in running:
            if tracker.list_artifacts(run.info.run_id, "checkpoint"):
                number = int(run.data.tags[TagKey.TRIAL_NUMBER])
                return study_of(name, services).trials[number]
        time.sleep(0.2)


def busy_host(
    hosts: tuple[Host, Host, Services], name: str, budget: int, tiny_npz: Path
) -> tuple[list[subprocess.Popen[str]], int, optuna.trial.FrozenTrial]:
    """Both hosts sweep `budget` trials of 8 epochs with a fast heartbeat; once a trial has
    saved a checkpoint: both workers, the index of the host training that trial, the trial."""
    first, second, services = hosts
    workers = [
        tune(h, place(h, name, budget, 8, tiny_npz), services, **FAST_HEARTBEAT)
        for h in (first, second)
    ]
    trial = wait_for_checkpoint(name, services, workers)
    return workers, [first.name, second.name].index(trial.user_attrs["host"]), trial


def test_a_host_killed_mid_trial_is_continued_by_the_other_host_from_its_checkpoint(
    two_hosts: tuple[Host, Host, Services], tiny_npz: Path
) -> None:
    first, second, services = two_hosts
    name, budget = "hostkilled", 3
    workers, busy, _ = busy_host(two_hosts, name, budget, tiny_npz)
    victim_host = (first, second)[busy].name
    workers[busy].kill()
    workers[busy].wait()
    finish(workers[1 - busy])
    study = study_of(name, services)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == budget
    [killed] = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert "fail_reason" not in killed.user_attrs  # its heartbeat went silent: nothing else told
    [retry] = [t for t in study.trials if t.system_attrs.get("retry_history") == [killed.number]]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["host"] != victim_host
    by_number = {int(r.data.tags[TagKey.TRIAL_NUMBER]): r for r in runs(name, services, Role.TRIAL)}
    assert by_number[killed.number].info.status == "FAILED"
    resumed = by_number[retry.number]
    assert resumed.data.metrics["resumed_from_epoch"] >= 1  # continued from the dead host's epoch
    assert resumed.data.metrics["epochs_trained"] == 8
    assert all(r.info.status != "RUNNING" for r in by_number.values())
    assert not checkpoints(first) and not checkpoints(second)


def test_a_host_cut_off_longer_than_its_heartbeat_comes_back_without_finishing_a_trial_twice(
    two_hosts: tuple[Host, Host, Services], tiny_npz: Path
) -> None:
    first, second, services = two_hosts
    name, budget = "hostcut", 3
    workers, busy, cut_trial = busy_host(two_hosts, name, budget, tiny_npz)
    cut = (first, second)[busy]
    cut.disconnect()
    time.sleep(20)  # five times the grace: the other host finds the silent trial and retries it
    cut.connect()
    outputs = dict(zip((first.name, second.name), (finish(w) for w in workers), strict=True))
    study = study_of(name, services)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == budget  # the budget held exactly
    [taken] = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert taken.number == cut_trial.number  # failed once, by the other host's heartbeat check
    [retry] = [t for t in study.trials if t.system_attrs.get("retry_history") == [taken.number]]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.user_attrs["host"] != cut.name
    by_number = {int(r.data.tags[TagKey.TRIAL_NUMBER]): r for r in runs(name, services, Role.TRIAL)}
    assert len(by_number) == len(study.trials)
    # the cut-off attempt did not finish its trial a second time when it came back
    assert by_number[taken.number].info.status == "FAILED"
    assert (
        "taken over by another worker" in by_number[taken.number].data.tags[TagKey.FAILURE_REASON]
    )
    assert by_number[retry.number].data.metrics["resumed_from_epoch"] >= 1
    assert all(r.info.status != "RUNNING" for r in by_number.values())
    # the host that came back said what happened, in one line, and went on
    [line] = [x for x in outputs[cut.name].splitlines() if "stopped on this worker" in x]
    assert f"trial {taken.number} stopped on this worker: taken over by another worker" in line
    assert not checkpoints(first) and not checkpoints(second)


def test_two_hosts_share_one_study_exactly_while_postgresql_and_then_the_mlflow_server_restart(
    two_hosts: tuple[Host, Host, Services], tiny_npz: Path
) -> None:
    """Two hosts sweep 6 trials of 6 epochs. Once one has saved a checkpoint, PostgreSQL goes
    down for 6 s (`scripts/services.sh restart-postgres 6`: SQLAlchemy's pre-ping reconnects,
    storage calls are retried, heartbeats that fail are beaten again), then the MLflow server
    for 4 s while trials log (MLflow's client retries with backoff). Nothing is lost, failed,
    repeated or left RUNNING, both hosts trained, and neither wrote through a shared folder."""
    first, second, services = two_hosts
    name, budget, epochs = "apart", 6, 6
    workers = [
        tune(h, place(h, name, budget, epochs, tiny_npz), services, **SLOW_GRACE)
        for h in (first, second)
    ]
    wait_for_checkpoint(name, services, workers)
    services.script("restart-postgres", "6")
    assert all(w.poll() is None for w in workers), "the sweep ended before the second outage"
    services.script("restart-mlflow", "4")
    outputs = [finish(worker) for worker in workers]
    study = study_of(name, services)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * budget, [
        t.user_attrs.get("fail_reason") for t in study.trials
    ]  # none lost, failed, repeated or beyond the budget
    assert {t.user_attrs["host"] for t in study.trials} == {"host-a", "host-b"}  # both worked
    trials = runs(name, services, Role.TRIAL)
    assert sorted(int(r.data.tags[TagKey.TRIAL_NUMBER]) for r in trials) == list(range(budget))
    assert all(r.info.status == "FINISHED" for r in trials)
    tracker = Tracker(services.tracking_uri)
    for run in trials:  # every epoch's metric reached the server, once
        steps = tracker.metric_steps(run.info.run_id, MetricName.VAL_ACCURACY)
        assert [step for step, _ in steps] == list(range(1, epochs + 1)), run.info.run_name
    [parent] = runs(name, services, Role.SWEEP)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == budget
    for output in outputs:
        assert "Traceback" not in output, output[-3000:]
    # nothing was written through a shared folder: each host holds only what it was given
    for host in (first, second):
        assert not list(host.folder.rglob("*.db")) and not checkpoints(host)


def test_two_hosts_share_one_study_exactly_through_the_storage_proxy(
    two_hosts: tuple[Host, Host, Services], network: tuple[Network, Services], tiny_npz: Path
) -> None:
    """`tunelab storage-proxy` serves the PostgreSQL study on the bridge's address (its URL in
    the proxy's environment); each host reaches the study only at grpc://bridge:port, its
    study lock and heartbeats through the proxy too. A budget of 4 trials holds exactly across
    the hosts, both train, one sweep parent records them, nothing stays RUNNING."""
    first, second, services = two_hosts
    net, _ = network
    name, budget, port = "proxied", 4, free_port()
    proxy = storage_proxy_process(services.storage_url, port, host=net.gateway)
    try:
        through = {"TUNELAB_OPTUNA_STORAGE": f"grpc://{net.gateway}:{port}"}
        workers = [
            tune(h, place(h, name, budget, 3, tiny_npz), services, **through)
            for h in (first, second)
        ]
        outputs = [finish(worker) for worker in workers]
    finally:
        proxy.send_signal(signal.SIGINT)
        proxy_output, _ = proxy.communicate(timeout=30)
    study = study_of(name, services)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * budget
    assert {t.user_attrs["host"] for t in study.trials} == {"host-a", "host-b"}  # both worked
    trials = runs(name, services, Role.TRIAL)
    assert sorted(int(r.data.tags[TagKey.TRIAL_NUMBER]) for r in trials) == list(range(budget))
    assert all(r.info.status == "FINISHED" for r in trials)
    [parent] = runs(name, services, Role.SWEEP)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == budget
    assert not [s for s in optuna.get_all_study_names(services.storage_url) if LOCK_PREFIX in s]
    for output in [*outputs, proxy_output.decode()]:  # no traceback, no library's "experimental"
        assert "Traceback" not in output and "Warning" not in output, output[-3000:]
    for host in (first, second):
        assert not list(host.folder.rglob("*.db")) and not checkpoints(host)


@pytest.fixture()
def small_artifact_disk(network: tuple[Network, Services]) -> Iterator[Path]:
    """The MLflow server's artifact folder on a 4 MiB tmpfs (earlier artifacts hidden under it
    meanwhile); yields the mount point."""
    _, services = network
    folder = services.folder / "artifacts"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@contextmanager
def kept_full(disk: Path) -> Iterator[None]:
    """The disk stays full while the block runs: whatever the server frees, a filler takes."""
    done = threading.Event()

    def fill() -> None:
        with open(disk / "filler", "wb", buffering=0) as filler:
            while not done.is_set():
                try:
                    filler.write(b"\0" * 4096)
                except OSError:
                    done.wait(0.02)

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        (disk / "filler").unlink()


def test_a_full_artifact_disk_stops_the_sweep_in_one_line_and_the_retry_uses_a_whole_checkpoint(
    two_hosts: tuple[Host, Host, Services], tiny_npz: Path, small_artifact_disk: Path
) -> None:
    """The disk fills while trial 0 trains: its checkpoints stop (one line) and it trains on;
    its record cannot be stored at its end, so the sweep stops with one error line, the trial
    failed and queued, nothing RUNNING. With room again, the same command retries it from its
    last whole checkpoint (a zip the full disk cut short is skipped) and completes the budget."""
    first, _, services = two_hosts
    name, budget = "diskfull", 2
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", **SLOW_GRACE}  # the server answers 500
    experiment = place(first, name, budget, 8, tiny_npz)
    worker = tune(first, experiment, services, **quick)
    wait_for_checkpoint(name, services, [worker])
    with kept_full(small_artifact_disk):
        out, errors = worker.communicate(timeout=420)
    assert worker.returncode == 2, errors[-3000:]
    assert "Traceback" not in errors
    said = [line for line in f"{out}\n{errors}".splitlines() if "not stored" in line]
    assert len(said) == 1 and said[0].startswith("trial 0: checkpoint of step")
    last = errors.strip().splitlines()[-1]
    assert last.startswith("error: ") and "run the same command again" in last
    study = study_of(name, services)
    assert [t.state for t in study.trials] == [
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.WAITING,  # its retry, queued
    ]
    assert all(r.info.status == "FAILED" for r in runs(name, services, Role.TRIAL))
    finish(tune(first, experiment, services, **quick))  # room again: the same command
    study = study_of(name, services)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == budget
    retry = study.trials[1]
    assert retry.params == study.trials[0].params and retry.system_attrs["retry_history"] == [0]
    by_number = {int(r.data.tags[TagKey.TRIAL_NUMBER]): r for r in runs(name, services, Role.TRIAL)}
    assert by_number[1].data.metrics["resumed_from_epoch"] >= 1  # a whole checkpoint, restored
    assert by_number[1].data.metrics["epochs_trained"] == 8
    assert all(r.info.status != "RUNNING" for r in by_number.values())
