"""Deadlines: a wall-clock instant, and the estimate that decides whether one more step fits.

A budget is a promise (architecture rule 8): no training step starts that cannot finish before
its deadline. `StepTimer` predicts a step's seconds from what this training measured (its
slowest recent rate, so a noisy machine errs on the safe side); before its first step, from the
model's FLOPs per image and the speed measured on earlier trainings (`flop_rate`), else a
conservative default for two CPU cores. If a prediction is wrong, the deadline is overrun by at
most the one step that was allowed to start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tunelab.training.cost import TRAINING_PASSES

# training FLOP/s assumed before anything was measured: below what two Zen 4 cores reach on the
# baseline (about 1.3e11, see docs/results.md), so a first estimate is too long rather than short
DEFAULT_FLOP_RATE = 8e10
STARTUP_SECONDS = 4.0  # first step of a model: building, tracing the train and eval functions
SAFETY = 1.1  # predictions are stretched by this much


@dataclass(frozen=True)
class Deadline:
    """The moment (seconds since the epoch) by which work must be over."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.time() + seconds)

    def remaining(self) -> float:
        return self.at - time.time()

    def passed(self) -> bool:
        return self.remaining() <= 0


@dataclass
class StepTimer:
    """Seconds a training step will take: measured once it has run one, estimated before."""

    flops_per_image: float  # to train on one image (`tunelab.training.cost.training_flops`)
    validation_images: int
    flop_rate: float | None = None
    _per_image: list[float] = field(default_factory=list)
    _validation: list[float] = field(default_factory=list)

    def observe(self, images: int, train_seconds: float, validation_seconds: float) -> None:
        if images > 0 and train_seconds > 0:
            self._per_image.append(train_seconds / images)
        self._validation.append(validation_seconds)

    def seconds_for(self, images: int) -> float:
        """Predicted seconds of a step that trains on `images` and then validates."""
        if self._per_image:
            # the first step also traced the train and eval functions: once a later step was
            # measured, it no longer speaks for the steps to come
            per_image = max(self._per_image[1:][-2:] or self._per_image)
            validation = max(self._validation[1:][-2:] or self._validation)
            return SAFETY * (images * per_image + validation)
        rate = self.flop_rate or DEFAULT_FLOP_RATE
        train = images * self.flops_per_image / rate
        validation = self.validation_images * self.flops_per_image / TRAINING_PASSES / rate
        return SAFETY * (train + validation) + STARTUP_SECONDS

    def seconds_for_steps(self, images: list[int]) -> float:
        """Predicted seconds of consecutive steps training on `images` each (one start-up)."""
        total = sum(self.seconds_for(count) for count in images)
        if not self._per_image and images:
            total -= STARTUP_SECONDS * (len(images) - 1)
        return total

    def measured_flop_rate(self) -> float | None:
        """Training FLOP/s this training achieved (for the next one's first estimate)."""
        if not self._per_image:
            return None
        return self.flops_per_image * len(self._per_image) / sum(self._per_image)
