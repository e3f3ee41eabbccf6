"""The model configuration: a typed, validated `CnnConfig` and its layers, without Keras.

The default `CnnConfig()` is the classic Keras MNIST CNN (the baseline):
Conv2D(32, 3x3, relu) -> Conv2D(64, 3x3, relu) -> MaxPool(2) -> Dropout(0.25) -> Flatten ->
Dense(128, relu) -> Dropout(0.5) -> Dense(10, softmax), Adadelta(learning_rate=1.0), batch 128,
12 epochs; 1,199,882 parameters.

Every tunable knob is a scalar field, so a search space can name it directly. Filters grow
geometrically: conv layer j (counting all conv layers, `filter_growth_per="conv"`) or block i
(`filter_growth_per="block"`) gets `filters * filter_growth ** j` filters. The baseline is
`filters=32, filter_growth=2.0` per conv, giving 32 then 64.

What wins on MNIST can be said too (see `RECIPE`): blocks of three convolutions whose last one is
strided (`pooling="strided"`, a 5x5 `strided_kernel_size`) instead of pooling, batch norm with
bias-free convolutions, a final convolution over the whole remaining map (`head="conv"`) instead
of dense layers, label smoothing, cosine or one-cycle schedules with warm-up, and augmentation
(applied in the input pipeline, never inside the model).

`layer_plan(cfg)` lists every layer with its shapes; validation, `count_parameters`,
`training_flops` and the Keras builder (`tunelab.training.model`) all read it, so the counts are
those of the built model by construction. This module imports no Keras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.errors import UserError

Optimizer = Literal["adadelta", "sgd", "rmsprop", "adam", "adamw"]
Activation = Literal["relu", "elu", "gelu", "swish", "leaky_relu"]
Pooling = Literal["max", "avg", "none", "strided"]
Head = Literal["flatten", "global_average", "conv"]
Schedule = Literal["constant", "cosine", "one_cycle"]
Precision = Literal["float32", "mixed_bfloat16"]
RequestedPrecision = Literal["auto", "float32", "mixed_bfloat16"]

PUBLISHED_TEST_ACCURACY = 0.9925  # the classic Keras MNIST CNN, as its example reports it
POOL_SIZE = 2
STRIDE = 2
DEFAULT_EPOCHS = 12
# a training image costs about three forward passes (forward, gradients of activations and of
# weights); batch norm and activations are memory-bound and left out of the count
TRAINING_PASSES = 3


class CnnConfigError(UserError, ValueError):
    """A config that cannot be built: names the field, the problem and the offending value."""

    def __init__(self, field: str, problem: str, value: object) -> None:
        self.field, self.problem, self.value = field, problem, value
        super().__init__(f"{field}: {problem} (got {value!r})")


class CnnConfig(BaseModel):
    """Everything that defines one model and how it is trained. Defaults = the baseline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # architecture
    conv_blocks: int = Field(1, ge=1, le=6, description="blocks of convs, each ending in pooling")
    convs_per_block: int = Field(2, ge=1, le=6, description="conv layers per block")
    filters: int = Field(32, ge=1, le=1024, description="filters of the first conv layer")
    filter_growth: float = Field(2.0, ge=1.0, le=4.0, description="filter multiplier per step")
    filter_growth_per: Literal["conv", "block"] = Field("conv", description="what a step is")
    kernel_size: int = Field(3, ge=1, le=9, description="square kernel side (odd)")
    padding: Literal["valid", "same"] = Field("valid", description="of the non-strided convs")
    batch_norm: bool = Field(False, description="BatchNormalization after each conv")
    batch_norm_momentum: float = Field(
        0.99,
        ge=0.0,
        lt=1.0,
        description="of the moving statistics used at validation; 0.9 settles them within a "
        "few dozen steps (rungs inside the first epoch need that), 0.99 (Keras) takes hundreds",
    )
    conv_bias: bool = Field(True, description="bias in conv layers (batch norm makes it redundant)")
    activation: Activation = Field("relu", description="after each conv and dense layer")
    pooling: Pooling = Field(
        "max", description="end of each block: 2x2 max/avg pooling, none, or a strided last conv"
    )
    strided_kernel_size: int = Field(5, ge=1, le=9, description="kernel of the strided conv (odd)")
    conv_dropout: float = Field(0.25, ge=0.0, lt=1.0, description="dropout after each block")
    head: Head = Field("flatten", description="how feature maps become a vector")
    head_filters: int = Field(128, ge=1, le=8192, description="filters of the conv head")
    dense_layers: int = Field(1, ge=0, le=4, description="hidden dense layers before the output")
    dense_units: int = Field(128, ge=1, le=8192, description="width of each dense layer")
    dense_dropout: float = Field(0.5, ge=0.0, lt=1.0, description="after dense layers, conv head")
    # optimisation
    optimizer: Optimizer = Field("adadelta", description="the baseline's is Adadelta, rate 1.0")
    learning_rate: float = Field(1.0, gt=0.0, le=10.0, description="peak rate of a schedule")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="sgd and rmsprop only")
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0, description="decoupled weight decay")
    lr_schedule: Schedule = Field("constant", description="over the whole training")
    warmup_epochs: float = Field(0.0, ge=0.0, le=100.0, description="linear warm-up (epochs)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="of the training targets")
    batch_size: int = Field(128, ge=1, le=65536, description="training images per step")
    epochs: int = Field(DEFAULT_EPOCHS, ge=1, le=1000, description="passes over the training set")
    # data augmentation, in the input pipeline (training only; off by default)
    augment_translation: float = Field(0.0, ge=0.0, le=0.5, description="max shift, image fraction")
    augment_rotation: float = Field(0.0, ge=0.0, le=180.0, description="max rotation, degrees")
    augment_zoom: float = Field(0.0, ge=0.0, lt=0.5, description="max zoom in or out, fraction")
    # numerics: an experiment setting (not searched); exported models are always float32
    precision: Precision = Field("float32", description="float32 or per-layer mixed_bfloat16")
    # the data's shape
    image_size: int = Field(28, ge=1, description="side of the square input images")
    num_classes: int = Field(10, ge=2, description="output classes")

    @model_validator(mode="after")
    def _check_buildable(self) -> CnnConfig:
        for field in ("kernel_size", "strided_kernel_size"):
            if getattr(self, field) % 2 == 0:
                raise ValueError(f"{field}: must be odd (got {getattr(self, field)})")
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
        layer_plan(self)  # raises for geometry that shrinks the image to nothing
        return self

    def conv_filters(self) -> list[list[int]]:
        """Filters of every conv layer of the blocks, grouped by block."""
        out: list[list[int]] = []
        for block in range(self.conv_blocks):
            row = []
            for conv in range(self.convs_per_block):
                step = (
                    block
                    if self.filter_growth_per == "block"
                    else block * self.convs_per_block + conv
                )
                row.append(max(1, round(self.filters * self.filter_growth**step)))
            out.append(row)
        return out

    def as_params(self) -> dict[str, Any]:
        """Flat dict of every field, for logging."""
        return self.model_dump()


# --- the layers a config describes ------------------------------------------------------


@dataclass(frozen=True)
class ConvLayer:
    name: str
    filters: int
    kernel: int
    stride: int
    padding: str
    in_channels: int
    out_side: int
    bias: bool
    batch_norm: bool

    @property
    def parameters(self) -> int:
        bias = self.filters if self.bias else 0
        norm = 4 * self.filters if self.batch_norm else 0  # gamma, beta, moving mean, variance
        return self.kernel**2 * self.in_channels * self.filters + bias + norm

    @property
    def multiply_adds(self) -> int:
        return self.out_side**2 * self.filters * self.kernel**2 * self.in_channels


@dataclass(frozen=True)
class PoolLayer:
    name: str
    kind: Literal["max", "avg"]


@dataclass(frozen=True)
class DropoutLayer:
    name: str
    rate: float


@dataclass(frozen=True)
class FlattenLayer:
    name: str
    kind: Literal["flatten", "global_average"]


@dataclass(frozen=True)
class DenseLayer:
    name: str
    units: int
    in_features: int
    output: bool = False  # the softmax classifier (float32 under mixed precision)

    @property
    def parameters(self) -> int:
        return self.in_features * self.units + self.units

    @property
    def multiply_adds(self) -> int:
        return self.in_features * self.units


Layer = ConvLayer | PoolLayer | DropoutLayer | FlattenLayer | DenseLayer


def _conv_side(side: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return math.ceil(side / stride)
    return (side - kernel) // stride + 1


def layer_plan(cfg: CnnConfig) -> list[Layer]:
    """Every layer of the model after the input's rescaling, in order, with its shapes.

    Raises:
        ValueError: "field: problem (got value)" when the image shrinks to nothing.
    """
    plan: list[Layer] = []
    side, channels = cfg.image_size, 1
    for b, block in enumerate(cfg.conv_filters(), start=1):
        for c, filters in enumerate(block, start=1):
            strided = cfg.pooling == "strided" and c == len(block)
            kernel = cfg.strided_kernel_size if strided else cfg.kernel_size
            padding = "same" if strided else cfg.padding
            stride = STRIDE if strided else 1
            side = _conv_side(side, kernel, stride, padding)
            _check_side(cfg, side, b)
            plan.append(
                ConvLayer(
                    f"conv{b}_{c}",
                    filters,
                    kernel,
                    stride,
                    padding,
                    channels,
                    side,
                    cfg.conv_bias,
                    cfg.batch_norm,
                )
            )
            channels = filters
        if cfg.pooling in ("max", "avg"):
            side //= POOL_SIZE
            _check_side(cfg, side, b)
            plan.append(PoolLayer(f"pool{b}", "max" if cfg.pooling == "max" else "avg"))
        if cfg.conv_dropout > 0:
            plan.append(DropoutLayer(f"drop{b}", cfg.conv_dropout))
    if cfg.head == "conv":
        plan.append(
            ConvLayer(
                "head_conv",
                cfg.head_filters,
                side,
                1,
                "valid",
                channels,
                1,
                cfg.conv_bias,
                cfg.batch_norm,
            )
        )
        plan.append(FlattenLayer("flatten", "flatten"))
        width = cfg.head_filters
        if cfg.dense_dropout > 0:
            plan.append(DropoutLayer("head_drop", cfg.dense_dropout))
    elif cfg.head == "flatten":
        plan.append(FlattenLayer("flatten", "flatten"))
        width = channels * side * side
    else:
        plan.append(FlattenLayer("gap", "global_average"))
        width = channels
    for d in range(1, cfg.dense_layers + 1):
        plan.append(DenseLayer(f"dense{d}", cfg.dense_units, width))
        width = cfg.dense_units
        if cfg.dense_dropout > 0:
            plan.append(DropoutLayer(f"dense_drop{d}", cfg.dense_dropout))
    plan.append(DenseLayer("probabilities", cfg.num_classes, width, output=True))
    return plan


def _check_side(cfg: CnnConfig, side: int, block: int) -> None:
    if side < 1:
        raise ValueError(
            f"conv_blocks: the {cfg.image_size}px image shrinks to nothing in block {block}; use "
            f"fewer blocks, padding 'same' or a smaller kernel (got {cfg.conv_blocks})"
        )


def count_parameters(cfg: CnnConfig) -> int:
    """Parameter count computed from the config alone (no Keras), equal to model.count_params()."""
    return sum(
        layer.parameters for layer in layer_plan(cfg) if isinstance(layer, (ConvLayer, DenseLayer))
    )


def forward_flops(cfg: CnnConfig) -> int:
    """Floating-point operations of one image's forward pass (2 per multiply-add)."""
    return 2 * sum(
        layer.multiply_adds
        for layer in layer_plan(cfg)
        if isinstance(layer, (ConvLayer, DenseLayer))
    )


def training_flops(cfg: CnnConfig) -> int:
    """Operations to train on one image (forward and backward): what an epoch costs per image."""
    return TRAINING_PASSES * forward_flops(cfg)


def fit_schedule(values: dict[str, Any], most_epochs: int | None) -> dict[str, Any]:
    """Config values whose schedule is at most `most_epochs` long: a complete shorter schedule.

    The learning-rate schedule spans the configuration's `epochs`, so fewer epochs already decay
    to the end; the warm-up shrinks in proportion, so it keeps its share of the training.
    """
    epochs = int(values.get("epochs", DEFAULT_EPOCHS))
    if most_epochs is None or epochs <= most_epochs:
        return values
    warmup = float(values.get("warmup_epochs", 0.0))
    return {**values, "epochs": most_epochs, "warmup_epochs": warmup * most_epochs / epochs}


def with_epochs(cfg: CnnConfig, epochs: int) -> CnnConfig:
    """`cfg` trained for `epochs` (a refit's planned length): shortened as `fit_schedule` does;
    a longer schedule keeps its warm-up in epochs."""
    values = fit_schedule(cfg.model_dump(), epochs)
    return parse_config({**values, "epochs": epochs})


def parse_config(values: dict[str, Any]) -> CnnConfig:
    """Build a CnnConfig, turning pydantic's report into one `field: problem (got value)` error."""
    try:
        return CnnConfig(**values)
    except ValidationError as error:
        raise first_config_error(error, values) from None


def first_config_error(error: ValidationError, values: dict[str, Any]) -> CnnConfigError:
    """The first problem pydantic found, as a CnnConfigError."""
    detail = error.errors()[0]
    if detail["loc"]:
        field = ".".join(str(part) for part in detail["loc"])
        problem = detail["msg"]
        if detail["type"] == "extra_forbidden":
            problem = "not a CnnConfig field"
        return CnnConfigError(field, problem, detail.get("input", values.get(field)))
    # a model-level check: its message is already "field: problem (got value)"
    message = str(detail["msg"]).removeprefix("Value error, ")
    field, _, rest = message.partition(": ")
    problem, _, got = rest.rpartition(" (got ")
    return CnnConfigError(field, problem or rest, values.get(field, got.rstrip(")")))


# The widely shared hand recipe (see docs/results.md): 326,826 parameters, ~91 MFLOP a training
# image. Two 3x3 convs and a strided 5x5 conv per block (32 then 64 filters), each with batch norm
# and ReLU and no bias, dropout 0.4, a 4x4 conv of 128 as the head; Adam 3e-3, cosine decay over
# 15 epochs after half an epoch of warm-up, batch 128, pad-and-crop translation by 2 pixels.
RECIPE = CnnConfig(
    conv_blocks=2,
    convs_per_block=3,
    filters=32,
    filter_growth=2.0,
    filter_growth_per="block",
    kernel_size=3,
    padding="valid",
    batch_norm=True,
    conv_bias=False,
    pooling="strided",
    strided_kernel_size=5,
    conv_dropout=0.4,
    head="conv",
    head_filters=128,
    dense_layers=0,
    dense_dropout=0.4,
    optimizer="adam",
    learning_rate=3e-3,
    lr_schedule="cosine",
    warmup_epochs=0.5,
    batch_size=128,
    epochs=15,
    augment_translation=2 / 28,
)
