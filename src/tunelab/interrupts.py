"""A stop asked for by a signal (SIGTERM, or Ctrl-C's SIGINT), remembered for the training loop.

A signal handler that raises KeyboardInterrupt can have it land in a finaliser or a
weak-reference callback, where Python prints "Exception ignored" and goes on: the stop would be
lost and the sweep would run to its end. The request is therefore also remembered here, and the
training loop raises it at its next batch (`tunelab.training.callbacks.StopWhenAsked`).
"""

from __future__ import annotations

import signal
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
