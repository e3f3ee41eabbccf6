"""A sweep's numerics and this machine's speed: decided once, recorded on the sweep's parent run.

`precision: auto` is decided by measuring the experiment's representative model (its first
enqueued point, else the middle of its space) in float32 and in bfloat16 on this machine
(`tunelab.training.precision`). The decision is recorded on the sweep's parent run with both
speeds, so later launches and workers on other hosts train in the same numerics; a worker whose
machine measures the other way says so in one line and follows the record.

The same measurement gives this machine's training speed (FLOP per second of the representative
model, in the chosen precision): the first estimate of every step time, schedule and budget
before a training has measured its own steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tunelab.define.data import Splits, default_data_dir
from tunelab.define.experiment import ExperimentSpec
from tunelab.define.run_config import RunConfig
from tunelab.define.space import Scalar
from tunelab.training.cost import training_flops
from tunelab.training.factory import Factory, build_model
from tunelab.training.precision import BFLOAT16, FLOAT32, PrecisionChoice, SpeedProbe, Speeds

PRECISION_PARAM = "precision"
REQUESTED_PARAM = "precision_requested"
SPEED_METRICS = {
    FLOAT32: "images_per_second_float32",
    BFLOAT16: "images_per_second_bfloat16",
}


@dataclass(frozen=True)
class Numerics:
    """The precision a sweep trains in and this machine's measured training speed."""

    choice: PrecisionChoice
    reference_flops: float  # training FLOP per image of the representative model

    @property
    def precision(self) -> str:
        return self.choice.precision

    @property
    def flop_rate(self) -> float:
        """Training FLOP per second on this machine, in the sweep's precision."""
        return self.choice.speeds.of(self.precision) * self.reference_flops

    def seconds_per_image(self, cfg: RunConfig) -> float:
        """Estimated training seconds per image of `cfg` (before it measured itself)."""
        return training_flops(cfg) / self.flop_rate

    def recorded_params(self) -> dict[str, object]:
        return {PRECISION_PARAM: self.precision, REQUESTED_PARAM: self.choice.requested}

    def recorded_metrics(self) -> dict[str, float]:
        speeds = self.choice.speeds
        return {SPEED_METRICS[FLOAT32]: speeds.float32, SPEED_METRICS[BFLOAT16]: speeds.bfloat16}


def representative_config(
    spec: ExperimentSpec, splits: Splits, precision: str = FLOAT32
) -> RunConfig:
    """The configuration that stands for the experiment's models (see the module doc)."""
    point = spec.representative_point(splits.input_shape, splits.num_classes)
    return config_of(spec, point, precision, splits)


def config_of(
    spec: ExperimentSpec, point: Mapping[str, Scalar], precision: str, splits: Splits
) -> RunConfig:
    """The config of a point of the experiment's space, trained in `precision` on `splits`."""
    return spec.with_precision(precision).run_config(point, splits.input_shape, splits.num_classes)


def speed_probe(cfg: RunConfig, factory: Factory | None = None) -> SpeedProbe:
    """Measures `cfg`'s training speed (any precision) on synthetic images of its shape."""

    def build(precision: str) -> object:
        return build_model(cfg.with_precision(precision), steps_per_epoch=100, factory=factory)

    return SpeedProbe(
        build=build,
        model_key=cfg.model_key() + f"|batch {cfg.training.batch_size}",
        input_shape=cfg.input_shape,
        num_classes=cfg.num_classes,
        batch_size=cfg.training.batch_size,
        cache_folder=default_data_dir(),
    )


def measure_numerics(spec: ExperimentSpec, splits: Splits, factory: Factory) -> Numerics:
    """Measure this machine and decide the precision the experiment asks for (no record)."""
    cfg = representative_config(spec, splits)
    choice = speed_probe(cfg, factory).choose(spec.precision)
    return Numerics(choice, float(training_flops(cfg)))


def follow_record(
    numerics: Numerics, recorded: str | None, report: Callable[[str], None]
) -> Numerics:
    """The numerics to train in: the sweep's recorded precision if it has one (with a line when
    this machine measures the other way), else this machine's decision (with its note)."""
    choice = numerics.choice
    if recorded is not None and recorded != choice.precision:
        if choice.requested == "auto":
            report(
                f"this machine measures {choice.speeds.describe()} and would train in "
                f"{choice.precision}; following the sweep's recorded precision {recorded}"
            )
        return Numerics(
            PrecisionChoice(choice.requested, recorded, choice.speeds, choice.machine),
            numerics.reference_flops,
        )
    if recorded is None:
        note = choice.note()
        if note:
            report(note)
    return numerics


def recorded_speeds(params: Mapping[str, str], metrics: Mapping[str, float]) -> Speeds | None:
    """The speeds a parent run recorded with its precision (None if it recorded none)."""
    if PRECISION_PARAM not in params:
        return None
    return Speeds(
        float(metrics.get(SPEED_METRICS[FLOAT32], 0.0)),
        float(metrics.get(SPEED_METRICS[BFLOAT16], 0.0)),
    )
