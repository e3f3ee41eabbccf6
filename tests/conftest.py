"""Shared fixtures: the tiny real-MNIST subset, a temporary MLflow store, an isolated cache.

Everything that trains uses `tiny_splits` (3,000 official training images, 1,000 official test
images; see scripts/make_fixture.py); everything that writes goes under tmp_path.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).parent / "support"))  # as in the processes tests start

import fixed_speeds
import fork_server
import lean_imports
import mlflow_template
import short_refits

from hosts import Network
from hosts import unavailable as hosts_unavailable
from tunelab.define.data import Splits, array_digest, load_npz_splits, read_npz

lean_imports.install()  # before anything imports keras, as in the processes tests start

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...: pytest-xdist's processes
if WORKER:  # one TensorFlow thread per test process, so the suite's processes share the cores
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

FIXTURES = Path(__file__).parent / "fixtures"
TINY_NPZ = FIXTURES / "mnist_tiny.npz"
TINY_VALIDATION = 500


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In a parallel run (`-n`, pytest-xdist), the tests that share a session's servers run in one
    worker, one after another: the hosts' bridge and services (restarted, cut off and filled by
    tests/test_hosts.py) in one, `scripts/services.sh`'s own in another."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "network" in fixtures:
            item.add_marker(pytest.mark.xdist_group("hosts"))
        elif "services" in fixtures:
            item.add_marker(pytest.mark.xdist_group("services"))


SETTLE_AFTER_CPU_SECONDS = 1.0


def settle_the_heap() -> None:
    """Collect what the last test left, then hide the survivors from the garbage collector.

    Every training leaves its traced graphs behind for good (about 15,000 objects that no
    collection frees and no module refers to: TensorFlow's C++ side holds them), and each later
    full collection (`fresh_session` runs one before every model) walks all of them again: late
    in a suite process that was 0.4 s a training. What survives a test's end lives as long as the
    process, so it is frozen (`gc.freeze`), as `fresh_session` freezes what exists at its first
    call. Only after tests that used a second of CPU: the others leave little to walk."""
    gc.collect()
    gc.freeze()


CPU_LOG = os.environ.get("TUNELAB_TEST_CPU_LOG")  # a file: each test's CPU seconds, appended


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After a test that used a second of CPU, settle the heap (`settle_the_heap`).

    With TUNELAB_TEST_CPU_LOG set, one JSON line per test: the CPU seconds of its pytest
    process and of the processes it started and waited for, its wall time, when it ended and in
    which of pytest-xdist's processes (children forked by tests/support/fork_server.py count as
    started). On two shared cores a test's wall time says how busy the others were; its CPU
    says what it costs."""
    before, forked_before = os.times(), fork_server.forked_cpu_seconds[0]
    yield
    after, forked = os.times(), fork_server.forked_cpu_seconds[0] - forked_before
    if after.user + after.system - before.user - before.system > SETTLE_AFTER_CPU_SECONDS:
        settle_the_heap()
    if CPU_LOG:
        line = {
            "test": item.nodeid,
            "own": after.user + after.system - before.user - before.system,
            "started": after.children_user + after.children_system
            - before.children_user - before.children_system + forked,
            "wall": after.elapsed - before.elapsed,
            "ended": time.time(),  # when, and in which process: the suite's timeline
            "process": WORKER,
        }  # fmt: skip
        with open(CPU_LOG, "a") as log:
            log.write(json.dumps(line) + "\n")


@pytest.fixture(scope="session", autouse=True)
def _fixed_speeds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Trainings decide their precision from fixed speeds (tests/support/fixed_speeds.py), in
    this process and in every process it starts."""
    from tunelab.training import precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "images_per_second", fixed_speeds.images_per_second)
        patch.setenv(fixed_speeds.VARIABLE, "1")
        patch.setenv("TUNELAB_DATA_DIR", str(tmp_path_factory.mktemp("session-cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def _fork_servers(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The processes tests start through tests/support/fork_server.py are forked from servers
    that keep their sockets and logs here."""
    fork_server.use(tmp_path_factory.mktemp("fork-servers"))


@pytest.fixture(scope="session", autouse=True)
def _short_refits() -> Iterator[None]:
    """Final refits of at most four epochs (tests/support/short_refits.py), in this process and
    in every process it starts."""
    import tunelab.pipeline.plan

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tunelab.pipeline.plan, "MAX_FINAL_EPOCHS", short_refits.EPOCHS)
        patch.setenv(short_refits.VARIABLE, "1")
        yield


@pytest.fixture(scope="session", autouse=True)
def _mlflow_schema_once(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """New SQLite MLflow stores get a copy of one migrated schema, in this process and in every
    process it starts (tests/support/mlflow_template.py)."""
    support = Path(__file__).parent / "support"
    template = tmp_path_factory.mktemp("mlflow-schema") / "migrated.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(mlflow_template.VARIABLE, str(template))
        patch.setenv(
            "PYTHONPATH",
            os.pathsep.join(filter(None, [str(support), os.environ.get("PYTHONPATH")])),
        )
        mlflow_template.install()
        yield


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's cache or tracking store, or writes outside tmp_path."""
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TUNELAB_OFFLINE", "1")  # no test fetches data from the network
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_npz() -> Path:
    """The fixture file, checked against the digests recorded when it was made."""
    manifest = json.loads((FIXTURES / "mnist_tiny.json").read_text())
    arrays = read_npz(TINY_NPZ).by_name()
    for name, digest in manifest["sha256"].items():
        assert array_digest(arrays[name]) == digest, f"fixture array {name} changed"
    return TINY_NPZ


@pytest.fixture(scope="session")
def tiny_splits(tiny_npz: Path) -> Splits:
    """2,500 training, 500 validation and 1,000 test images of real MNIST."""
    return load_npz_splits(tiny_npz, validation_size=TINY_VALIDATION)


@pytest.fixture()
def tracking_uri(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite MLflow store under tmp_path."""
    yield f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@dataclass(frozen=True)
class Services:
    """PostgreSQL and an MLflow server started by the project's own script."""

    storage_url: str
    tracking_uri: str
    password: str
    folder: Path
    trace: Path | None  # strace's record of every process the script started (if strace exists)
    script_env: dict[str, str]  # the environment `scripts/services.sh` ran with (to restart them)

    def script(self, *command: str) -> None:
        """Run `scripts/services.sh <command>` on these services (restart-postgres 5, ...)."""
        script = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"
        done = subprocess.run(["bash", str(script), *command], env=self.script_env, text=True,
                              capture_output=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """`scripts/services.sh start` on free ports in a temporary folder, as `make services` does."""
    yield from start_services(tmp_path_factory.mktemp("services"))


@pytest.fixture(scope="session")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, Services]]:
    """A bridge for hosts apart (tests/hosts.py) and the services listening on its address."""
    reason = hosts_unavailable()
    if reason:
        pytest.skip(reason)
    tag = str(os.getpid() % 10000)
    worker = int(WORKER.removeprefix("gw") or 0)  # each worker of a parallel run its own subnet
    net = Network(tag, 20 + (50 * worker + os.getpid() % 50) % 230).up()
    _stop_when_gone(os.getpid(), net.teardown_command())
    try:
        yield from start_services(
            tmp_path_factory.mktemp("netservices"),
            host=net.gateway,
            clients=net.cidr,
            network=net,
            traced=False,
        )
    finally:
        net.down()


def start_services(
    folder: Path,
    host: str = "",
    clients: str = "",
    network: Network | None = None,
    traced: bool = True,
) -> Iterator[Any]:
    """`scripts/services.sh start` on free ports in `folder` (listening on `host` too, and
    accepting `clients`), stopped when the session ends or its pytest process is killed.

    When `traced` and strace is installed, the script runs under `strace -f -e execve`, so the
    security test can read the command line of every process it started (the MLflow server's
    workers too).
    """
    if os.geteuid() == 0:  # the server runs as user postgres: let it traverse pytest's folders
        for parent in [folder, *folder.parents]:
            if parent == Path(tempfile.gettempdir()):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
    script = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"
    env = {
        **os.environ,
        "TUNELAB_SERVICES_DIR": str(folder),
        "TUNELAB_PG_PORT": str(free_port()),
        "TUNELAB_MLFLOW_PORT": str(free_port()),
        "TUNELAB_VENV_BIN": str(Path(sys.executable).parent),
        # one web process, not the script's two: each loads MLflow's server at every start and
        # restart (3.5-3.9 CPU-s on 2 cores of an AMD EPYC Zen 4), and one serves the suite
        "TUNELAB_MLFLOW_WORKERS": "1",
        **({"TUNELAB_SERVICES_HOST": host} if host else {}),
        **({"TUNELAB_SERVICES_CLIENTS": clients} if clients else {}),
    }
    trace = folder / "services.strace" if traced and shutil.which("strace") else None
    prefix = strace_execve(trace) if trace else []
    tracer = subprocess.Popen(
        [*prefix, "bash", str(script), "start"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while (
        not (folder / "env").is_file() or "MLFLOW_TRACKING_URI" not in (folder / "env").read_text()
    ):
        assert time.monotonic() < deadline, "services did not start"
        if tracer.poll() is not None and tracer.returncode != 0:
            raise AssertionError(tracer.stderr.read().decode()[-2000:] if tracer.stderr else "")
        time.sleep(0.5)
    _detach(tracer)  # every server process has started: the record is complete
    # a watchdog stops them even when this pytest process is killed and no `finally` runs
    _stop_when_gone(os.getpid(), f"bash '{script}' stop", env)
    values = dict(
        line.removeprefix("export ").split("=", 1)
        for line in (folder / "env").read_text().splitlines()
        if line.startswith("export ")
    )
    services = Services(
        values["TUNELAB_OPTUNA_STORAGE"],
        values["MLFLOW_TRACKING_URI"],
        (folder / "pg_password").read_text().strip(),
        folder,
        trace,
        env,
    )
    try:
        yield (network, services) if network else services
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True)


def strace_execve(record: Path) -> list[str]:
    """The strace prefix that writes every exec's command line, of the command and all it starts,
    to `record`. With seccomp-bpf the kernel stops the processes at execve only, not at every
    system call (TensorFlow's import runs 3x slower under plain `strace -f`)."""
    return ["strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=execve", "-s", "4096", "-o",
            str(record)]  # fmt: skip


def _stop_when_gone(pid: int, command: str, env: dict[str, str] | None = None) -> None:
    """A watchdog in its own session: when this pytest process is gone (even killed with
    SIGKILL, when no `finally` runs), it runs `command` (stops what the session started)."""
    watch = f"while kill -0 {pid} 2>/dev/null; do sleep 2; done; {command}"
    subprocess.Popen(
        ["bash", "-c", watch],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _detach(tracer: subprocess.Popen[bytes]) -> None:
    """Stop strace (the traced servers keep running) and let it flush its record."""
    if tracer.poll() is not None:
        return
    tracer.send_signal(signal.SIGINT)
    try:
        tracer.wait(timeout=15)
    except subprocess.TimeoutExpired:
        tracer.kill()  # the kernel detaches the tracees; they run on
        tracer.wait(timeout=15)


def flat_config(**values: Any) -> Any:
    """A built-in CNN run config from one flat mapping of architecture and training values
    (filters=8, optimizer="adam", epochs=2, ...), on MNIST-shaped images."""
    from tunelab.define.run_config import RunConfig

    return RunConfig.from_flat_cnn(values)


def wait_until_serving(url: str, process: subprocess.Popen[bytes], seconds: float = 180) -> None:
    """Wait until `url` answers 200 while `process` (the server) runs; AssertionError, with the
    end of its error output when that is piped, if it exits first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            errors = process.stderr.read().decode()[-2000:] if process.stderr else ""
            raise AssertionError(f"{process.args!r} exited with {process.returncode}: {errors}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing answered {url} in {seconds:.0f} s")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for servers the tests start)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def storage_proxy_process(
    database: str, port: int, host: str = "127.0.0.1", output: Any = subprocess.PIPE
) -> subprocess.Popen[bytes]:
    """`tunelab storage-proxy` serving `database` at host:port, as a user starts it: the URL in
    its environment, never on its command line; its stdout and stderr together into `output`."""
    command = [sys.executable, "-m", "tunelab", "storage-proxy", "--host", host]
    return fork_server.popen(
        [*command, "--port", str(port)],
        env={**os.environ, "TUNELAB_OPTUNA_STORAGE": database, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=output,
        stderr=subprocess.STDOUT,
    )


def quiet_sweep(spec: Any, splits: Splits, **kwargs: Any) -> Any:
    """`run_sweep` on given splits with no display: how every test runs a sweep in-process."""
    from rich.console import Console

    from tunelab.engines.launch import run_sweep

    return run_sweep(
        spec, splits=splits, show_progress=False, console=Console(quiet=True), **kwargs
    )


@dataclass(frozen=True)
class RecordedSweep:
    """A tiny baseline and a tiny finished Optuna sweep in one MLflow store (see below)."""

    tracking_uri: str
    storage_url: str
    experiment: str
    parent_run_id: str
    best_run_id: str
    baseline_run_id: str
    folder: Path


RECORDED_SPACE = """
parameters:
  learning_rate: {type: categorical, values: [0.003, 0.001, 0.0003]}
fixed: {optimizer: adam, filters: 8, dense_units: 16, epochs: 2, batch_size: 128}
"""
RECORDED_EXPERIMENT = """
name: recorded
search_space: space.yaml
engine: {name: optuna, sampler: grid, pruner: none}
budget: {trials: 3}
seed: 5
"""


@pytest.fixture(scope="session")
def _recorded_once(tmp_path_factory: pytest.TempPathFactory, tiny_splits: Splits) -> RecordedSweep:
    """The recorded sweep, made by the first process of the test run that needs it; the other
    pytest-xdist workers wait for it and read the same folder."""
    shared = tmp_path_factory.getbasetemp()
    if WORKER:  # every worker's base folder sits in the run's own
        shared = shared.parent
    with open(shared / "recorded.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made = shared / "recorded" / "made.json"
        if not made.exists():
            record_sweep(made.parent, tiny_splits)
        return RecordedSweep(**{**json.loads(made.read_text()), "folder": made.parent})


@pytest.fixture()
def recorded_sweep(_recorded_once: RecordedSweep, tmp_path: Path) -> RecordedSweep:
    """A tiny recorded baseline and sweep, read by the compare/reproduce/confirm/export tests.

    Recorded once per test run; each test gets its own copy of the stores (what it records,
    such as a crowned champion or an export, no other test sees), whose artifacts are read from
    the one recording.
    """
    return copy_recorded(_recorded_once, tmp_path / "recorded")


def copy_recorded(recorded: RecordedSweep, folder: Path) -> RecordedSweep:
    """`recorded` with its two stores and experiment files copied into `folder` (created)."""
    folder.mkdir()
    for name in ("mlflow.db", "optuna.db", "space.yaml", "recorded.yaml"):
        shutil.copy(recorded.folder / name, folder / name)
    return dataclasses.replace(
        recorded,
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        storage_url=f"sqlite:///{folder / 'optuna.db'}",
        folder=folder,
    )


def record_sweep(folder: Path, tiny_splits: Splits) -> None:
    """Record the baseline and the sweep in `folder`; their ids in `made.json` at the end.

    The baseline is the classic architecture trained one epoch on the fixture and tagged as the
    reference (the real one trains 12 epochs on 60,000 images); the sweep validates on the same
    split, so it has a bar to beat and McNemar has baseline predictions to compare with.
    """
    from tunelab.define.experiment import load_experiment
    from tunelab.record.names import Role, TagKey
    from tunelab.record.query import Query
    from tunelab.record.store import Tracker
    from tunelab.training.baseline import baseline_config, run_baseline

    shutil.rmtree(folder, ignore_errors=True)  # a process that died half-way left it
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    storage = f"sqlite:///{folder / 'optuna.db'}"
    tracker = Tracker(uri)
    baseline = run_baseline(
        tiny_splits, tracker, cfg=baseline_config(tiny_splits, 1), seed=0, log_model=False
    )
    tracker.client.set_tag(baseline.run_id, TagKey.REFERENCE, "true")
    (folder / "space.yaml").write_text(textwrap.dedent(RECORDED_SPACE))
    (folder / "recorded.yaml").write_text(textwrap.dedent(RECORDED_EXPERIMENT))
    spec = load_experiment(folder / "recorded.yaml")
    here = Path.cwd()
    os.chdir(folder)  # session fixtures run before the per-test chdir: keep checkpoints in tmp
    try:
        quiet_sweep(spec, tiny_splits, tracking_uri=uri, storage_url=storage)
    finally:
        os.chdir(here)
    [parent] = tracker.search("recorded", Query.of(role=Role.SWEEP))
    made = {
        "tracking_uri": uri,
        "storage_url": storage,
        "experiment": "recorded",
        "parent_run_id": parent.info.run_id,
        "best_run_id": parent.data.tags[TagKey.BEST_RUN_ID],
        "baseline_run_id": baseline.run_id,
    }
    (folder / "made.json").write_text(json.dumps(made))
