"""The PostgreSQL password reaches no command line, log line, MLflow field, artifact or message.

The services are the project's own (`scripts/services.sh start`, PostgreSQL behind a generated
password, an MLflow server whose backend store is that PostgreSQL). Every process the script and
tunelab start is traced with `strace -f -e execve` (the MLflow server's workers and tunelab's
worker processes included), so every command line is read, not a sample of `ps`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import Services, free_port, quiet_sweep, strace_execve, wait_until_serving
from tunelab.define.data import Splits
from tunelab.define.experiment import load_experiment
from tunelab.record.query import Query
from tunelab.record.store import Tracker

pytestmark = pytest.mark.slow

SPACE = """
parameters:
  learning_rate: {type: categorical, values: [0.003, 0.001]}
fixed: {optimizer: adam, filters: 4, dense_units: 8, epochs: 1, batch_size: 256}
"""
EXPERIMENT = """
name: secrets
search_space: space.yaml
engine: {name: optuna, sampler: grid}
budget: {trials: 2}
storage: STORAGE
"""
EXECVE = re.compile(r'execve\("[^"]*", \[(.*?)\]')


def command_lines(trace: Path) -> list[str]:
    """Every argv strace recorded (one string per exec)."""
    return [m.group(1) for m in EXECVE.finditer(trace.read_text(errors="replace"))]


def traced(
    command: list[str], trace: Path, env: dict[str, str], seconds: float, serves: str = ""
) -> str:
    """Run `command` under strace for at most `seconds` (a server: until `serves`, its URL,
    answers); its output (stdout and stderr)."""
    process = subprocess.Popen(
        [*strace_execve(trace), *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        if serves:  # stopped once it serves: every process it needs to serve has started
            try:
                wait_until_serving(serves, process, seconds)
            finally:
                os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    return output.decode(errors="replace")


@pytest.fixture()
def experiment(tmp_path: Path, services: Services) -> Path:
    (tmp_path / "space.yaml").write_text(textwrap.dedent(SPACE))
    text = textwrap.dedent(EXPERIMENT).replace("STORAGE", services.storage_url)
    (tmp_path / "secrets.yaml").write_text(text)
    return tmp_path / "secrets.yaml"


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_no_command_line_carries_the_password(
    services: Services, experiment: Path, tmp_path: Path
) -> None:
    assert services.trace is not None
    started = command_lines(services.trace)
    assert any("mlflow" in line and "server" in line for line in started)  # it was traced
    assert any("postgres" in line for line in started)
    env = {
        **os.environ,
        "TUNELAB_OPTUNA_STORAGE": services.storage_url,
        "MLFLOW_TRACKING_URI": services.tracking_uri,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    tunelab = [sys.executable, "-m", "tunelab"]
    ui_port, dashboard_port = free_port(), free_port()
    outputs = {
        # the workers start, then stop on the missing dataset (tests are offline): their
        # command lines are what counts here
        "workers": traced(
            [*tunelab, "tune", str(experiment), "--workers", "2"],
            tmp_path / "workers.strace",
            env,
            240,
        ),
        # the URLs come from the environment, as a user passes secrets: the command lines the
        # test types hold no password, so any password found was put there by tunelab
        "ui": traced(
            [*tunelab, "ui", "--port", str(ui_port)],
            tmp_path / "ui.strace",
            {**env, "MLFLOW_TRACKING_URI": services.storage_url.replace("/optuna", "/mlflow")},
            120,
            serves=f"http://127.0.0.1:{ui_port}/health",
        ),
        "dashboard": traced(
            [*tunelab, "dashboard", "--port", str(dashboard_port)],
            tmp_path / "dash.strace",
            env,
            120,
            serves=f"http://127.0.0.1:{dashboard_port}/",
        ),
    }
    lines = started + [
        line
        for name in ("workers", "ui", "dash")
        for line in command_lines(tmp_path / f"{name}.strace")
    ]
    workers = [line for line in command_lines(tmp_path / "workers.strace")]
    # the command typed, and one `tunelab tune ... --quiet` per worker it started
    assert sum('"--workers"' in line for line in workers) >= 1
    assert sum('"tune"' in line and '"--quiet"' in line for line in workers) == 2
    assert any("mlflow" in line and "ui" in line for line in lines)
    assert [line for line in lines if services.password in line] == []
    for name, output in outputs.items():
        assert services.password not in output, name
    # and the services' own logs hold no password either
    logs = list(services.folder.rglob("*.log"))
    assert {"postgres.log", "mlflow.log"} <= {log.name for log in logs}
    for log in logs:
        assert services.password.encode() not in log.read_bytes(), log.name


def test_no_record_artifact_or_message_carries_the_password(
    services: Services, experiment: Path, tiny_splits: Splits, tmp_path: Path
) -> None:
    from tunelab.analysis.report import build_report
    from tunelab.delivery.export import export_model, resolve_source
    from tunelab.record.recorded import find_sweep

    spec = load_experiment(experiment)
    result = quiet_sweep(spec, tiny_splits, tracking_uri=services.tracking_uri)
    assert services.password not in result.summary()
    tracker = Tracker(services.tracking_uri)
    source, _ = resolve_source(tracker, "secrets")
    export_model(
        tracker, source, tiny_splits, out=tmp_path / "bundle", formats=("keras",), register=False
    )
    sweep = find_sweep(tracker, "secrets")
    page = build_report(tracker, sweep)
    assert services.password not in page
    runs = tracker.search("secrets", Query())
    assert len(runs) >= 4  # parent, two trials, the export
    for run in runs:
        fields = [
            *run.data.params.values(),
            *run.data.tags.values(),
            *run.data.params,
            *run.data.tags,
            *map(str, run.data.metrics),
        ]
        assert not [f for f in fields if services.password in str(f)], run.info.run_name
        with tempfile.TemporaryDirectory() as folder:
            local = Path(tracker.client.download_artifacts(run.info.run_id, "", folder))
            for path in local.rglob("*"):
                if path.is_file():
                    assert services.password.encode() not in path.read_bytes(), path.name
    for path in (tmp_path / "bundle").rglob("*"):
        if path.is_file():
            assert services.password.encode() not in path.read_bytes(), path.name


def test_no_error_message_carries_the_password(
    services: Services, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tunelab.cli import main

    secret = services.password
    wrong_port = services.storage_url.replace(
        services.storage_url.split(":")[-1].split("/")[0], str(free_port())
    )
    cases = [
        ["compare", "secrets", "--tracking-uri", f"http://u:{secret}@127.0.0.1:{free_port()}"],
        ["dashboard", "--storage", f"postgres://tunelab:{secret}@127.0.0.1/optuna"],
        ["dashboard", "--storage", f"postgresql+psycopg2://tunelab:{secret}@127.0.0.1/optuna"],
        ["compare", "secrets", "--tracking-uri", wrong_port.replace("/optuna", "/mlflow")],
    ]
    for arguments in cases:
        with pytest.raises(SystemExit):
            main(arguments)
        error = capsys.readouterr().err
        assert error.strip() and secret not in error, arguments
    from tunelab.engines.optuna.study import connect_storage
    from tunelab.engines.sweep import SweepError

    started = time.monotonic()
    with pytest.raises(SweepError) as refused:
        connect_storage(wrong_port)
    assert secret not in str(refused.value) and time.monotonic() - started < 30
