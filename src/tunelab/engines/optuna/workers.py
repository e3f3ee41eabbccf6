"""`tunelab tune --workers N`: N local worker processes of one sweep, sharing its storage.

Each worker is the plain `tunelab tune EXPERIMENT` command (they cooperate through the study's
storage and lock; see `optuna_engine.run_optuna_sweep`), started with the storage URL in the
environment rather than on its command line, where `ps` would show a password to every user.
Ctrl-C reaches every worker (one process group); SIGTERM to this process is passed on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tunelab.engines.launch import STORAGE_ENV


def run_workers(
    experiment: Path, count: int, *, storage_url: str, arguments: list[str]
) -> list[int]:
    """Start `count` workers of `tunelab tune experiment *arguments`; their exit codes."""
    environment = {**os.environ, STORAGE_ENV: storage_url}
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
