"""The suite's fork server (tests/support/fork_server.py): a command forked from it behaves as
the same command in a new interpreter, which is what the fault and worker tests rely on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import fork_server
import pytest

REPORT = """
import atexit, os, sys, threading, time
atexit.register(lambda: print("atexit ran", flush=True))
threading.Thread(target=lambda: (time.sleep(0.3), print("thread joined"))).start()
print(sys.argv, sys.path[0], os.getcwd(), os.environ.get("PROBE"), sys.stdin.read().strip())
print("on stderr", file=sys.stderr)
raise SystemExit(int(sys.argv[1]))
"""
WAIT = """
import sys, time
print("ready", flush=True)
time.sleep(60)
"""


def test_a_forked_command_sees_and_ends_as_in_a_new_interpreter(tmp_path: Path) -> None:
    """argv, sys.path, working folder, environment, standard streams, non-daemon threads,
    atexit handlers and the exit status: the same as `python -c` started anew."""
    argv = [sys.executable, "-c", REPORT, "3", "x"]
    options = {
        "cwd": tmp_path,
        "env": {**os.environ, "PROBE": "seen", "TF_CPP_MIN_LOG_LEVEL": "3"},
        "input": "from stdin",
        "capture_output": True,
        "text": True,
        "timeout": 180,
    }
    real = subprocess.run(argv, **options)  # type: ignore[call-overload]
    forked = fork_server.run(argv, **options)
    assert real.returncode == 3 and "thread joined" in real.stdout
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        real.returncode,
        real.stdout,
        real.stderr,
    )
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    environment = options["env"]
    with fork_server.popen(argv, cwd=tmp_path, env=environment, text=True, **pipes) as process:
        assert isinstance(process, fork_server.ForkedPopen)  # this test forks, not execs
        process.communicate("again", timeout=60)
        assert process.cpu_seconds is not None and process.cpu_seconds < 5


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_forked_command_dies_of_the_signal_sent_to_it(tmp_path: Path, signum: int) -> None:
    """Signalled mid-run, the forked process ends with the status a new interpreter ends with
    (Ctrl-C: KeyboardInterrupt, then death by SIGINT)."""
    codes = []
    for start in (subprocess.Popen, fork_server.popen):
        process = start(
            [sys.executable, "-c", WAIT],
            cwd=tmp_path,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        process.send_signal(signum)
        codes.append(process.wait(timeout=30))
        process.stdout.close()
    assert codes == [-signum, -signum]


def test_commands_a_fork_cannot_reproduce_start_a_new_interpreter() -> None:
    """`-X` options, other programs and `preexec_fn` get subprocess.Popen itself."""
    for argv, options in (
        ([sys.executable, "-X", "importtime", "-c", "pass"], {}),
        (["true"], {}),
        ([sys.executable, "-c", "pass"], {"preexec_fn": os.getpid}),
    ):
        with fork_server.popen(argv, stderr=subprocess.DEVNULL, **options) as process:
            assert not isinstance(process, fork_server.ForkedPopen)
            assert process.wait(timeout=60) == 0
