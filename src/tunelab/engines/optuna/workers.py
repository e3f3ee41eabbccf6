"""`tunelab tune --workers N`: N local worker processes of one sweep, sharing its storage.

On a machine with GPUs each worker gets one device (round-robin: worker i sees GPU i mod G
through CUDA_VISIBLE_DEVICES, with memory growth on), so N workers do not all grab every GPU;
more workers than GPUs share devices in turn. Without a GPU nothing changes.

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
from tunelab.engines.optuna.study import check_storage, open_study
from tunelab.record.names import TRACKING_URI_ENV
from tunelab.record.store import Tracker


def prepare_stores(spec: ExperimentSpec, study: str, storage_url: str, tracking_uri: str) -> None:
    """Create the MLflow store and experiment and the Optuna study before any worker starts."""
    Tracker(tracking_uri).experiment_id(spec.name)
    check_storage(storage_url)
    # the pruner built here is not stored with the study: its resource size does not matter
    open_study(spec, study, storage_url, spec.train_size or 1)


def gpu_devices() -> list[str]:
    """The GPUs this machine offers workers: CUDA_VISIBLE_DEVICES if set, else the driver's."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    driver = Path("/proc/driver/nvidia/gpus")
    if driver.is_dir():
        return [str(index) for index, _ in enumerate(sorted(driver.iterdir()))]
    return []


def worker_environment(base: dict[str, str], index: int, devices: list[str]) -> dict[str, str]:
    """Worker `index`'s environment: one GPU of `devices` (round-robin), memory growth on."""
    if not devices:
        return dict(base)
    return {
        **base,
        "CUDA_VISIBLE_DEVICES": devices[index % len(devices)],
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    }


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
    devices = gpu_devices()
    workers = [
        subprocess.Popen(command, env=worker_environment(environment, index, devices))
        for index in range(count)
    ]

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
