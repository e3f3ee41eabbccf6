"""Where tunelab talks to people: stderr, lines never broken by rich's wrapping.

A terminal wraps long lines itself; a log file (CI, a cluster's log collector) keeps each line
whole, so a link or a one-line error stays on one line, and nothing carries terminal decorations
(progress bars, timestamps, source locations) unless stderr is a terminal.
"""

from __future__ import annotations

from rich.console import Console


def user_console(*, quiet: bool = False) -> Console:
    """The console for progress, notes and errors (stderr; `quiet`: says nothing)."""
    return Console(stderr=True, soft_wrap=True, quiet=quiet)
