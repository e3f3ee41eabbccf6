"""How tunelab compiles a factory's model: optimizer, learning-rate schedule, loss, metrics.

Every field comes from a `TrainingConfig`; the schedules span the training's epochs, so a
shortened schedule still warms up and decays to its end. Learning-rate schedules and the
label-smoothed loss are registered Keras objects, so a saved model loads back with them.
"""

from __future__ import annotations

import math
from typing import Any

import keras

from tunelab.define.training import TrainingConfig

PACKAGE = "tunelab"
ONE_CYCLE_WARMUP = 0.3  # share of a one-cycle schedule spent rising, unless warmup_epochs says
ONE_CYCLE_START = 25.0  # the rate starts at peak / this
ONE_CYCLE_END = 1e4  # and anneals to peak / this


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    return max(1, math.ceil(train_size / batch_size))


@keras.saving.register_keras_serializable(package=PACKAGE)
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc]
    """Linear rise from peak/25 to the peak, then cosine annealing to peak/1e4 (Smith's 1cycle)."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int) -> None:
        self.peak, self.total_steps, self.warmup_steps = peak, total_steps, max(1, warmup_steps)

    def __call__(self, step: Any) -> Any:
        from keras import ops

        step = ops.cast(step, "float32")
        start, end = self.peak / ONE_CYCLE_START, self.peak / ONE_CYCLE_END
        rising = start + (self.peak - start) * step / self.warmup_steps
        progress = ops.clip(
            (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps), 0.0, 1.0
        )
        falling = end + (self.peak - end) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, rising, falling)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class SmoothedSparseCrossentropy(keras.losses.Loss):  # type: ignore[misc]
    """Cross-entropy against labels smoothed by `smoothing` (integer labels, probabilities out).

    Keras' sparse cross-entropy has no label smoothing; this is (1 - s) * CE + s * mean over
    classes of -log p, the same as smoothing one-hot targets.
    """

    def __init__(self, smoothing: float, name: str = "smoothed_sparse_crossentropy") -> None:
        super().__init__(name=name)
        self.smoothing = smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        from keras import ops

        probabilities = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0)
        logs = ops.log(probabilities)
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        chosen = -ops.take_along_axis(logs, ops.expand_dims(labels, -1), axis=-1)[:, 0]
        uniform = -ops.mean(logs, axis=-1)
        return (1.0 - self.smoothing) * chosen + self.smoothing * uniform

    def get_config(self) -> dict[str, Any]:
        return {"smoothing": self.smoothing, "name": self.name}


def accuracy_metric() -> Any:
    """The "accuracy" every training reports, made now rather than in the first traced step.

    Labels are class indices and outputs class probabilities, so Keras would resolve the string
    "accuracy" to this very metric, but only while tracing the first training step: a metric
    whose variables are created there makes TensorFlow trace the whole step a second time (a tiny
    training: 1.90-2.06 instead of 2.38-2.41 CPU-s, `benchmarks/first_step_trace.py`, float32,
    2 cores of an AMD EPYC Zen 4 with AVX-512 BF16).
    """
    return keras.metrics.SparseCategoricalAccuracy(name="accuracy")


def compile_model(model: Any, training: TrainingConfig, steps_per_epoch: int | None) -> None:
    """Compile a factory's model with the training's optimizer, schedule and loss."""
    model.compile(
        optimizer=build_optimizer(training, steps_per_epoch),
        loss=SmoothedSparseCrossentropy(training.label_smoothing)
        if training.label_smoothing
        else "sparse_categorical_crossentropy",
        metrics=[accuracy_metric()],
    )


def learning_rate(cfg: TrainingConfig, steps_per_epoch: int | None) -> Any:
    """The rate or schedule of `cfg`: its length is epochs x steps_per_epoch batches.

    A warm-up rises linearly from zero (one-cycle: from peak / 25) over `warmup_epochs`; a
    constant schedule then holds the rate (a cosine whose floor is the rate itself). With
    `snapshot_cycles` > 1 the whole schedule, warm-up included, is compressed into each of
    that many equal cycles, run one after another (`Restarts`).
    """
    if cfg.lr_schedule == "constant" and not cfg.warmup_epochs:
        return cfg.learning_rate
    if steps_per_epoch is None:
        raise ValueError(f"the {cfg.lr_schedule} schedule needs steps_per_epoch")
    cycles = cfg.snapshot_cycles
    cycle = cycle_steps(cfg, steps_per_epoch)
    single = _schedule(cfg, cycle, round(cfg.warmup_epochs * steps_per_epoch / cycles))
    return single if cycles == 1 or isinstance(single, float) else Restarts(single, cycle)


def cycle_steps(cfg: TrainingConfig, steps_per_epoch: int) -> int:
    """Steps of one of `cfg.snapshot_cycles` restarts over the whole training (the last may
    end a little early, never restart at the very end)."""
    return max(1, math.ceil(steps_per_epoch * cfg.epochs / cfg.snapshot_cycles))


def _schedule(cfg: TrainingConfig, total: int, warmup: int) -> Any:
    """One warm-up + decay of `total` steps (see `learning_rate`)."""
    if cfg.lr_schedule == "one_cycle":
        return OneCycle(cfg.learning_rate, total, warmup or round(ONE_CYCLE_WARMUP * total))
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=max(1, total - warmup),
            warmup_target=cfg.learning_rate,
            warmup_steps=warmup,
            alpha=1.0 if cfg.lr_schedule == "constant" else 0.0,
        )
    if cfg.lr_schedule == "constant":  # a warm-up shorter than one step
        return cfg.learning_rate
    return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=total)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Restarts(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc]
    """`schedule` again every `cycle_steps` steps: warm restarts (Loshchilov & Hutter 2017), the
    schedule of a snapshot ensemble (Huang et al. 2017), whose members are the cycles' ends."""

    def __init__(self, schedule: Any, cycle_steps: int) -> None:
        self.schedule, self.cycle_steps = schedule, max(1, cycle_steps)

    def __call__(self, step: Any) -> Any:
        from keras import ops

        step = ops.cast(step, "float32")
        return self.schedule(step - self.cycle_steps * ops.floor(step / self.cycle_steps))

    def get_config(self) -> dict[str, Any]:
        return {
            "schedule": keras.optimizers.schedules.serialize(self.schedule),
            "cycle_steps": self.cycle_steps,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Restarts:
        schedule = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(schedule, int(config["cycle_steps"]))


def build_optimizer(cfg: TrainingConfig, steps_per_epoch: int | None = None) -> Any:
    """The keras optimizer for `cfg`, with its learning-rate schedule."""
    rate = learning_rate(cfg, steps_per_epoch)
    decay = cfg.weight_decay or None
    if cfg.optimizer == "adadelta":
        # rho and epsilon as in the classic example (Keras 2 defaults: 0.95, 1e-7)
        return keras.optimizers.Adadelta(rate, rho=0.95, epsilon=1e-7, weight_decay=decay)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=cfg.momentum, weight_decay=decay)
    if cfg.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(rate, momentum=cfg.momentum, weight_decay=decay)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(rate, weight_decay=decay)
    return keras.optimizers.AdamW(rate, weight_decay=cfg.weight_decay)
