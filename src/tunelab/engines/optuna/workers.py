"""`tunelab tune --workers N`: N local worker processes of one sweep, sharing its storage.

Each worker is the plain `tunelab tune EXPERIMENT` command (they cooperate through the study's
storage and lock; see `optuna.engine.run_optuna_sweep`), started with the storage and tracking
URLs in the environment rather than on its command line, where `ps` would show a password to
every user. Every store is created once, here, before the workers start: workers that create
MLflow's or Optuna's tables at the same moment race (on SQLite one of them dies in a schema
migration). Ctrl-C reaches every worker (one process group); SIGTERM to this process is passed
on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tunelab.define.experiment import ExperimentSpec
from tunelab.engines.launch import STORAGE_ENV
from tunelab.engines.optuna.engine import check_storage, open_study
from tunelab.record.names import TRACKING_URI_ENV
from tunelab.record.store import Tracker


def prepare_stores(spec: ExperimentSpec, study: str, storage_url: str, tracking_uri: str) -> None:
    """Create the MLflow store and experiment and the Optuna study before any worker starts."""
    Tracker(tracking_uri).experiment_id(spec.name)
    check_storage(storage_url)
    train_size = spec.train_size or 60_000 - spec.validation_size
    open_study(spec, study, storage_url, train_size)


def run_workers(
    experiment: Path,
    count: int,
    *,
    storage_url: str,
    tracking_uri: str | None,
    arguments: list[str],
    spec: ExperimentSpec,
    study: str | None = None,
) -> list[int]:
    """Start `count` workers of `tunelab tune experiment *arguments`; their exit codes."""
    from tunelab.record.store import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    prepare_stores(spec, study or spec.name, storage_url, uri)
    environment = {**os.environ, STORAGE_ENV: storage_url, TRACKING_URI_ENV: uri}
    command = [sys.executable, "-m", "tunelab", "tune", str(experiment), "--quiet", *arguments]
    workers = [subprocess.Popen(command, env=environment) for _ in range(count)]

    def pass_on(signum: int, frame: Any) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        codes = []
        for worker in workers:
            while True:
                try:
                    codes.append(worker.wait())
                    break
                except KeyboardInterrupt:
                    continue  # the workers got the Ctrl-C too; wait for them to record it
        return codes
    finally:
        signal.signal(signal.SIGTERM, previous)
