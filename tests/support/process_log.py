"""With TUNELAB_TEST_PROCESS_LOG set to an absolute path, every Python process the suite starts
appends one JSON line to it when it exits: its command, CPU seconds, wall seconds and whether it
loaded TensorFlow (the processes run in folders of their own, so a relative path would scatter the
lines). What the suite's processes cost, beside the per-test figures of TUNELAB_TEST_CPU_LOG."""

from __future__ import annotations

import atexit
import json
import os
import sys
import time

VARIABLE = "TUNELAB_TEST_PROCESS_LOG"


def install() -> None:
    """Write this process's line at exit (processes killed with SIGKILL write none)."""
    path, started = os.environ[VARIABLE], time.time()

    def write() -> None:
        cpu = os.times()
        line = {
            "argv": sys.argv[:4],
            "cpu": round(cpu.user + cpu.system, 2),
            "wall": round(time.time() - started, 2),
            "tensorflow": "tensorflow" in sys.modules,
            "pid": os.getpid(),
        }
        with open(path, "a") as log:
            log.write(json.dumps(line) + "\n")

    atexit.register(write)
