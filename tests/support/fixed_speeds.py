"""Fixed training speeds instead of timed steps, in the suite and in the processes it starts.

`precision: auto` (and every launch's estimates) time a few training steps of the model in both
precisions: a few seconds of CPU in each `tunelab` process, which on two cores shared by the
suite's processes is slow and says nothing about the feature under test. The suite therefore
gives every process the same fixed speeds, float32 the faster; the tests of the measurement
itself (tests/test_budget_on_any_machine.py) call the real function or their own speeds.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from on_import import patch_on_import

VARIABLE = "TUNELAB_TEST_FIXED_SPEEDS"  # set: the processes the suite starts use fixed speeds
MODULE = "tunelab.training.precision"
SPEEDS = {"float32": 2000.0, "mixed_bfloat16": 1000.0}  # images/s: float32 the faster


def images_per_second(
    build: Any, precision: str, input_shape: Any, num_classes: int, batch_size: int
) -> float:
    """The fixed speed of `precision`, whatever the model."""
    return SPEEDS[precision]


def _patch(precision: ModuleType) -> None:
    precision.images_per_second = images_per_second


def install() -> None:
    """Fixed speeds in this process (now, or once tunelab's precision module loads)."""
    patch_on_import(MODULE, _patch)
