"""How a model is trained, whatever builds it: `TrainingConfig`. Defaults = the classic baseline's.

The classic Keras MNIST CNN trains with Adadelta at rate 1.0, batch 128, 12 epochs, no schedule,
no augmentation. Every field is a scalar a search space can name directly, for any factory; a
factory that returns a compiled model keeps its own optimizer and loss, and then only the
schedule-free fields (batch size, epochs, augmentation, precision) apply (`validate` refuses a
space that searches the others). Augmentation happens in the input pipeline, never inside the
model, so exported models contain none of it. This module imports no Keras.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.errors import UserError

Optimizer = Literal["adadelta", "sgd", "rmsprop", "adam", "adamw"]
Schedule = Literal["constant", "cosine", "one_cycle"]
Precision = Literal["float32", "mixed_bfloat16"]
RequestedPrecision = Literal["auto", "float32", "mixed_bfloat16"]
DEFAULT_EPOCHS = 12
# fields that only matter when tunelab compiles the model (not for a factory's compiled model)
COMPILE_FIELDS = (
    "optimizer",
    "learning_rate",
    "momentum",
    "weight_decay",
    "lr_schedule",
    "warmup_epochs",
    "label_smoothing",
    "snapshot_cycles",
)


class ConfigFieldError(UserError, ValueError):
    """A value that cannot be used: names the field, the problem and the offending value."""

    def __init__(self, field: str, problem: str, value: object) -> None:
        self.field, self.problem, self.value = field, problem, value
        super().__init__(f"{field}: {problem} (got {value!r})")


class TrainingConfig(BaseModel):
    """Optimizer, schedule, batch, epochs, augmentation and numerics of one training."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    optimizer: Optimizer = Field("adadelta", description="the baseline's is Adadelta, rate 1.0")
    learning_rate: float = Field(1.0, gt=0.0, le=10.0, description="peak rate of a schedule")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="sgd and rmsprop only")
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0, description="decoupled weight decay")
    lr_schedule: Schedule = Field("constant", description="over the whole training")
    warmup_epochs: float = Field(0.0, ge=0.0, le=100.0, description="linear warm-up (epochs)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="of the training targets")
    batch_size: int = Field(128, ge=1, le=65536, description="training images per step")
    epochs: int = Field(DEFAULT_EPOCHS, ge=1, le=1000, description="passes over the training set")
    augment_translation: float = Field(0.0, ge=0.0, le=0.5, description="max shift, image fraction")
    augment_rotation: float = Field(0.0, ge=0.0, le=180.0, description="max rotation, degrees")
    augment_zoom: float = Field(0.0, ge=0.0, lt=0.5, description="max zoom in or out, fraction")
    augment_flip: bool = Field(
        False, description="mirror half the images left to right (clothes, scenes; not digits)"
    )
    augment_cutout: float = Field(
        0.0,
        ge=0.0,
        le=0.75,
        description="side of a square zeroed at a random place in each image, image fraction",
    )
    weight_averaging: Literal["none", "ema", "swa"] = Field(
        "none",
        description="the model delivered and scored: the last weights, their moving average "
        "(EMA, every batch) or their average over the last epochs (SWA)",
    )
    ema_momentum: float = Field(0.999, ge=0.9, lt=1.0, description="of EMA, per batch")
    swa_share: float = Field(
        0.25, gt=0.0, le=1.0, description="SWA averages the epoch ends of this last share"
    )
    snapshot_cycles: int = Field(
        1,
        ge=1,
        le=20,
        description="the schedule (warm-up and decay) runs this many times in a row; each "
        "cycle's end but the last is kept as an ensemble member (snapshot ensemble)",
    )
    # numerics: an experiment setting (not searched); exported models are always float32
    precision: Precision = Field("float32", description="float32 or mixed_bfloat16")

    @model_validator(mode="after")
    def _check_trainable(self) -> TrainingConfig:
        if self.momentum and self.optimizer not in ("sgd", "rmsprop"):
            raise ValueError(
                f"momentum: only sgd and rmsprop use it; set it to 0 for {self.optimizer} "
                f"(got {self.momentum})"
            )
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs: must be shorter than the training ({self.epochs} epochs) "
                f"(got {self.warmup_epochs})"
            )
        if self.snapshot_cycles > 1 and self.lr_schedule == "constant":
            raise ValueError(
                "snapshot_cycles: restarts need a schedule that decays; set lr_schedule to "
                f"cosine or one_cycle (got {self.snapshot_cycles})"
            )
        if self.snapshot_cycles > self.epochs:
            raise ValueError(
                f"snapshot_cycles: at most one cycle per epoch ({self.epochs} epochs) "
                f"(got {self.snapshot_cycles})"
            )
        return self

    def with_epochs(self, epochs: int) -> TrainingConfig:
        """This training `epochs` long (a shortened search schedule, a refit's planned length).

        The learning-rate schedule spans `epochs`, so a shorter one still decays to its end; a
        shortened warm-up keeps its share of the training, a longer schedule keeps its warm-up
        in epochs.
        """
        warmup = self.warmup_epochs * min(1.0, epochs / self.epochs)
        cycles = min(self.snapshot_cycles, epochs)
        return parse_training(
            {
                **self.model_dump(),
                "epochs": epochs,
                "warmup_epochs": warmup,
                "snapshot_cycles": cycles,
            }
        )


def fit_schedule(values: dict[str, Any], most_epochs: int | None) -> dict[str, Any]:
    """Training values whose schedule is at most `most_epochs` long (see `with_epochs`)."""
    epochs = int(values.get("epochs", DEFAULT_EPOCHS))
    if most_epochs is None or epochs <= most_epochs:
        return values
    warmup = float(values.get("warmup_epochs", 0.0))
    shortened = {**values, "epochs": most_epochs, "warmup_epochs": warmup * most_epochs / epochs}
    if "snapshot_cycles" in values:
        shortened["snapshot_cycles"] = min(int(values["snapshot_cycles"]), most_epochs)
    return shortened


def parse_training(values: dict[str, Any]) -> TrainingConfig:
    """A TrainingConfig, pydantic's report turned into one `field: problem (got value)` error."""
    try:
        return TrainingConfig(**values)
    except ValidationError as error:
        raise first_field_error(error, values) from None


def first_field_error(error: ValidationError, values: dict[str, Any]) -> ConfigFieldError:
    """The first problem pydantic found (field or model level), as a ConfigFieldError."""
    detail = error.errors()[0]
    if detail["loc"]:
        field = ".".join(str(part) for part in detail["loc"])
        problem = detail["msg"]
        if detail["type"] == "extra_forbidden":
            problem = "not a setting of this model or its training"
        return ConfigFieldError(field, problem, detail.get("input", values.get(field)))
    # a model-level check: its message is already "field: problem (got value)"
    message = str(detail["msg"]).removeprefix("Value error, ")
    field, _, rest = message.partition(": ")
    problem, _, got = rest.rpartition(" (got ")
    return ConfigFieldError(field, problem or rest, values.get(field, got.rstrip(")")))
