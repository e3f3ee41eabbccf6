"""Optuna's gRPC storage proxy as a study storage: its lock, its heartbeats, exact budgets.

The proxy is Optuna's own server (`tunelab storage-proxy`, or `proxy.serve` in-process) over a
SQLite file under tmp_path; every worker reaches the study only through `grpc://host:port`.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

import tunelab.engines.optuna.proxy as proxy
import tunelab.engines.optuna.study as study_module
from conftest import free_port, storage_proxy_process
from test_workers import write_experiment
from tunelab.define.urls import check_storage_url, is_proxy_url
from tunelab.engines.optuna.adapter import fail_stale, heartbeat
from tunelab.engines.optuna.lock import StudyLock
from tunelab.record.query import Query
from tunelab.record.store import Tracker


@pytest.fixture
def proxy_url(tmp_path: Path) -> Iterator[str]:
    """A proxy on a free local port over a fresh SQLite study storage."""
    port = free_port()
    server = proxy.serve(f"sqlite:///{tmp_path / 'behind.db'}", "127.0.0.1", port)
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_a_proxy_url_is_a_storage_and_one_without_its_port_is_refused_in_one_line() -> None:
    assert check_storage_url("grpc://optuna-proxy.internal:13000") is None
    assert is_proxy_url("GRPC://optuna-proxy.internal:13000")  # as the check reads the scheme
    for wrong in ("grpc://optuna-proxy.internal", "grpc://h:13000/db", "grpc://:13000"):
        problem = check_storage_url(wrong)
        assert problem is not None and "\n" not in problem and "grpc://host:port" in problem


def test_the_study_lock_through_the_proxy_admits_one_worker_at_a_time(proxy_url: str) -> None:
    """Four workers (each its own client and lock) enter the same study's lock 20 times in all:
    never two inside at once, every entry made, no lock study left behind."""
    inside, most, entries = [0], [0], [0]
    guard = threading.Lock()

    def worker() -> None:
        lock = StudyLock(proxy_url, "shared")
        for _ in range(5):
            with lock():
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.02)
                with guard:
                    inside[0] -= 1
                    entries[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert entries[0] == 20 and most[0] == 1
    names = [s.study_name for s in study_module.connect_storage(proxy_url).get_all_studies()]
    assert not [name for name in names if name.startswith(proxy.LOCK_PREFIX)]


def test_a_lock_whose_holder_died_is_broken_after_the_lease_and_a_live_holder_is_waited_for(
    proxy_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy, "LOCK_LEASE_SECONDS", 1.5)
    monkeypatch.setattr(proxy, "LOCK_BEAT_SECONDS", 0.2)
    storage = study_module.connect_storage(proxy_url)
    # a holder that died inside the lock: its lock study exists and never beats
    storage.create_new_study([StudyDirection.MINIMIZE], proxy.LOCK_PREFIX + "dead")
    started, waited = time.monotonic(), [0.0]

    def take() -> None:
        with StudyLock(proxy_url, "dead")():
            waited[0] = time.monotonic() - started

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    taker.join(timeout=20)
    assert not taker.is_alive(), "the dead holder's lock was never broken"
    assert waited[0] >= 1.5  # not before the lease ran out

    # a live holder keeps the lock for longer than the lease: the next one waits for it
    released = threading.Event()
    holding = threading.Event()

    def holder() -> None:
        with StudyLock(proxy_url, "alive")():
            holding.set()
            time.sleep(4.0)
            released.set()

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(30)
    with StudyLock(proxy_url, "alive")():
        assert released.is_set(), "entered while a beating holder was inside"
    thread.join()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask() as the engine does
def test_a_trial_whose_worker_stopped_beating_behind_the_proxy_is_failed_and_queued_again(
    proxy_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GrpcStorageProxy has no heartbeat of its own: a dead worker's trial would stay RUNNING
    for ever. Here the trial that stops beating is failed and retried with its parameters; the
    one that beats is left alone."""
    monkeypatch.setattr(study_module, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(study_module, "GRACE_SECONDS", 3)
    storage = study_module.connect_storage(proxy_url)
    study = optuna.create_study(storage=storage, study_name="beats")
    dead = study.ask()
    dead.suggest_float("x", 0.0, 1.0)
    alive = study.ask()
    with heartbeat(study, alive):
        with heartbeat(study, dead):
            time.sleep(1.5)  # both beat, then the first worker dies
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            fail_stale(study)
            if study.trials[dead.number].state == TrialState.FAIL:
                break
            time.sleep(0.5)
        trials = study.trials
    assert trials[dead.number].state == TrialState.FAIL
    assert trials[alive.number].state == TrialState.RUNNING
    retries = [t for t in trials if t.state == TrialState.WAITING]
    assert len(retries) == 1 and retries[0].params == dead.params


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_proxy_command_stops_at_once_on_ctrl_c_and_sigterm(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """A serving proxy ends within seconds of the signal, with the interrupted status (130) and
    its one closing line, not a traceback (a Ctrl-C swallowed by a server callback left it
    running)."""
    port = free_port()
    server = storage_proxy_process(f"sqlite:///{tmp_path / 'behind.db'}", port)
    try:
        study_module.connect_storage(f"grpc://127.0.0.1:{port}").get_all_studies()
        signalled = time.monotonic()
        server.send_signal(stop)
        output, _ = server.communicate(timeout=20)
        assert time.monotonic() - signalled < 10
    finally:
        server.kill()
    assert server.returncode == 130, output.decode()[-2000:]
    assert b"interrupted" in output
    assert b"Traceback" not in output, output.decode()[-2000:]


def test_a_proxy_nobody_answers_at_is_one_line_and_nothing_is_recorded(
    tmp_path: Path,
    tiny_npz: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from test_hostile_inputs import run

    monkeypatch.setattr(proxy, "READY_SECONDS", 2.0)
    experiment = write_experiment(tmp_path, "alone", 2, 1, f"grpc://127.0.0.1:{free_port()}")
    data = f"dataset: {{npz: {tiny_npz}}}\nvalidation_size: 500\n"
    experiment.write_text(experiment.read_text() + data)
    store = tmp_path / "store" / "m.db"
    arguments = ["tune", str(experiment), "--tracking-uri", f"sqlite:///{store}"]
    code, error = run(arguments, capsys)
    errors = [line for line in error.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in error, error
    assert error.splitlines()[-1] == errors[0]
    assert "no gRPC storage proxy answered at grpc://127.0.0.1:" in errors[0]
    assert "tunelab storage-proxy" in error
    assert not Tracker(f"sqlite:///{store}").search_all(Query())  # no sweep, no run
