"""Wall-clock budgets across launches: how much time the launches of a piece of work have spent.

A budget is the summed running time of every launch of a sweep (or of `tunelab run`), so an
interrupted sweep resumed later continues with what is left, not with a fresh budget. Each
launch keeps one tag on the run it works for, `tunelab.launch.<ledger>.<id>` = "start,end"
(seconds since the epoch), and moves its end forward as it works (`touch`, after every training
step). The time spent is the length of the union of those intervals: workers running side by
side count once, and a launch killed with SIGKILL loses at most the time since its last touch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tunelab.record.names import TagKey
from tunelab.record.store import RunHandle, Tracker

TOUCH_EVERY_SECONDS = 5.0  # at most one tag write in this time


def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


@dataclass
class Launch:
    """One launch's interval, kept on the run as it goes."""

    run: RunHandle
    key: str
    start: float
    _last_touch: float = field(default=0.0)

    def touch(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_touch >= TOUCH_EVERY_SECONDS:
            self.run.set_tags({self.key: f"{self.start:.3f},{now:.3f}"})
            self._last_touch = now

    def elapsed(self) -> float:
        return time.time() - self.start


class Ledger:
    """The launches of one piece of work (`name`: sweep, run, run.search, ...) on one run."""

    def __init__(self, tracker: Tracker, run_id: str, name: str) -> None:
        self.tracker, self.run_id, self.name = tracker, run_id, name
        self.prefix = f"{TagKey.LAUNCH_PREFIX}{name}."

    def intervals(self) -> list[tuple[float, float]]:
        run = self.tracker.get_run(self.run_id)
        if run is None:
            return []
        found = []
        for key, value in run.data.tags.items():
            if not key.startswith(self.prefix):
                continue
            try:
                start, end = (float(part) for part in value.split(","))
            except ValueError:
                continue  # not one of ours
            found.append((start, end))
        return found

    def spent(self, also: Launch | None = None) -> float:
        """Seconds spent by all launches, with `also` (a launch under way) counted up to now."""
        intervals = self.intervals()
        if also is not None:  # its stored end may lag: the union takes the longer one
            intervals.append((also.start, time.time()))
        return union_seconds(intervals)

    @contextmanager
    def launch(self) -> Iterator[Launch]:
        """Record a launch from now until the block ends (or the process dies)."""
        key = f"{self.prefix}{uuid.uuid4().hex[:10]}"
        launch = Launch(RunHandle(self.tracker.client, self.run_id), key, time.time())
        launch.touch(force=True)
        try:
            yield launch
        finally:
            launch.touch(force=True)
