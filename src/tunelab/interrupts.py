"""A stop asked for by a signal (SIGTERM, or Ctrl-C's SIGINT), remembered for the training loop.

A signal handler that raises KeyboardInterrupt can have it land in a finaliser or a
weak-reference callback, where Python prints "Exception ignored" and goes on: the stop would be
lost and the sweep would run to its end. The request is therefore also remembered here, and the
training loop raises it at its next batch (`tunelab.training.callbacks.StopWhenAsked`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

_asked = False


def asked() -> bool:
    """Whether a signal has asked this process to stop."""
    return _asked


def stop_on_signals() -> None:
    """SIGTERM and SIGINT end the command like Ctrl-C: KeyboardInterrupt now, and again at the
    next training batch should the first one be swallowed."""

    def stop(signum: int, frame: FrameType | None) -> None:
        global _asked
        _asked = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def wait_for_stop_signal(still_running: Callable[[float], bool]) -> None:
    """Block until SIGINT or SIGTERM, then raise KeyboardInterrupt from here, in the caller.

    For a command that only serves (a gRPC proxy): its handlers merely set a flag, so the
    interrupt cannot land in one of the server's callbacks and be swallowed there while the
    server goes on. `still_running(timeout)` waits up to `timeout` seconds and says whether the
    server still runs; the wait also ends when the server stops by itself."""

    def remember(signum: int, frame: FrameType | None) -> None:
        global _asked
        _asked = True

    signal.signal(signal.SIGTERM, remember)
    signal.signal(signal.SIGINT, remember)
    while not _asked and still_running(1.0):
        pass
    if _asked:
        raise KeyboardInterrupt
