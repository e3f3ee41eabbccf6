"""The built-in CNN's architecture: a typed, validated `CnnConfig` and its layers, without Keras.

The default `CnnConfig()` is the classic Keras MNIST CNN (the baseline) on 28x28 grey images:
Conv2D(32, 3x3, relu) -> Conv2D(64, 3x3, relu) -> MaxPool(2) -> Dropout(0.25) -> Flatten ->
Dense(128, relu) -> Dropout(0.5) -> Dense(10, softmax); 1,199,882 parameters. How it trains
(Adadelta 1.0, batch 128, 12 epochs) is a `tunelab.define.training.TrainingConfig`: the built-in
CNN is one model factory among others (`tunelab.training.cnn`), and any data's shape and classes
fit it, since `layer_plan` takes them.

Every tunable knob is a scalar field, so a search space can name it directly. Filters grow
geometrically: conv layer j (counting all conv layers, `filter_growth_per="conv"`) or block i
(`filter_growth_per="block"`) gets `filters * filter_growth ** j` filters. The baseline is
`filters=32, filter_growth=2.0` per conv, giving 32 then 64.

What wins on MNIST can be said too (see `RECIPE`): blocks of three convolutions whose last one is
strided (`pooling="strided"`, a 5x5 `strided_kernel_size`) instead of pooling, batch norm with
bias-free convolutions, and a final convolution over the whole remaining map (`head="conv"`)
instead of dense layers.

`layer_plan(cfg, input_shape, num_classes)` lists every layer with its shapes; validation,
`count_parameters` and the Keras builder all read it, so the counts are those of the built model
by construction. This module imports no Keras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.define.training import ConfigFieldError, TrainingConfig, first_field_error

Activation = Literal["relu", "elu", "gelu", "swish", "leaky_relu"]
Pooling = Literal["max", "avg", "none", "strided"]
Head = Literal["flatten", "global_average", "conv"]

POOL_SIZE = 2
STRIDE = 2
DEFAULT_SHAPE = (28, 28, 1)  # MNIST's: what a configuration is checked against without data
DEFAULT_CLASSES = 10
Shape = tuple[int, int, int]


class CnnConfig(BaseModel):
    """The built-in CNN's architecture. Defaults = the classic baseline's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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

    @model_validator(mode="after")
    def _check_buildable(self) -> CnnConfig:
        for field in ("kernel_size", "strided_kernel_size"):
            if getattr(self, field) % 2 == 0:
                raise ValueError(f"{field}: must be odd (got {getattr(self, field)})")
        layer_plan(self)  # raises for geometry that shrinks a 28x28 image to nothing
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


# --- the layers a config describes ------------------------------------------------------


@dataclass(frozen=True)
class ConvLayer:
    name: str
    filters: int
    kernel: tuple[int, int]
    stride: int
    padding: str
    in_channels: int
    out_size: tuple[int, int]
    bias: bool
    batch_norm: bool

    @property
    def parameters(self) -> int:
        bias = self.filters if self.bias else 0
        norm = 4 * self.filters if self.batch_norm else 0  # gamma, beta, moving mean, variance
        return self.kernel[0] * self.kernel[1] * self.in_channels * self.filters + bias + norm


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


Layer = ConvLayer | PoolLayer | DropoutLayer | FlattenLayer | DenseLayer


def _conv_side(side: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return math.ceil(side / stride)
    return (side - kernel) // stride + 1


def layer_plan(
    cfg: CnnConfig, input_shape: Shape = DEFAULT_SHAPE, num_classes: int = DEFAULT_CLASSES
) -> list[Layer]:
    """Every layer of the model after the input's rescaling, in order, with its shapes.

    Raises:
        ValueError: "field: problem (got value)" when the image shrinks to nothing.
    """
    plan: list[Layer] = []
    height, width, channels = input_shape
    for b, block in enumerate(cfg.conv_filters(), start=1):
        for c, filters in enumerate(block, start=1):
            strided = cfg.pooling == "strided" and c == len(block)
            kernel = cfg.strided_kernel_size if strided else cfg.kernel_size
            padding = "same" if strided else cfg.padding
            stride = STRIDE if strided else 1
            height = _conv_side(height, kernel, stride, padding)
            width = _conv_side(width, kernel, stride, padding)
            _check_side(cfg, input_shape, min(height, width), b)
            plan.append(
                ConvLayer(
                    f"conv{b}_{c}",
                    filters,
                    (kernel, kernel),
                    stride,
                    padding,
                    channels,
                    (height, width),
                    cfg.conv_bias,
                    cfg.batch_norm,
                )
            )
            channels = filters
        if cfg.pooling in ("max", "avg"):
            height, width = height // POOL_SIZE, width // POOL_SIZE
            _check_side(cfg, input_shape, min(height, width), b)
            plan.append(PoolLayer(f"pool{b}", "max" if cfg.pooling == "max" else "avg"))
        if cfg.conv_dropout > 0:
            plan.append(DropoutLayer(f"drop{b}", cfg.conv_dropout))
    if cfg.head == "conv":
        plan.append(
            ConvLayer(
                "head_conv",
                cfg.head_filters,
                (height, width),
                1,
                "valid",
                channels,
                (1, 1),
                cfg.conv_bias,
                cfg.batch_norm,
            )
        )
        plan.append(FlattenLayer("flatten", "flatten"))
        features = cfg.head_filters
        if cfg.dense_dropout > 0:
            plan.append(DropoutLayer("head_drop", cfg.dense_dropout))
    elif cfg.head == "flatten":
        plan.append(FlattenLayer("flatten", "flatten"))
        features = channels * height * width
    else:
        plan.append(FlattenLayer("gap", "global_average"))
        features = channels
    for d in range(1, cfg.dense_layers + 1):
        plan.append(DenseLayer(f"dense{d}", cfg.dense_units, features))
        features = cfg.dense_units
        if cfg.dense_dropout > 0:
            plan.append(DropoutLayer(f"dense_drop{d}", cfg.dense_dropout))
    plan.append(DenseLayer("probabilities", num_classes, features, output=True))
    return plan


def _check_side(cfg: CnnConfig, input_shape: Shape, side: int, block: int) -> None:
    if side < 1:
        height, width, _ = input_shape
        raise ValueError(
            f"conv_blocks: the {height}x{width} image shrinks to nothing in block {block}; use "
            f"fewer blocks, padding 'same' or a smaller kernel (got {cfg.conv_blocks})"
        )


def count_parameters(
    cfg: CnnConfig, input_shape: Shape = DEFAULT_SHAPE, num_classes: int = DEFAULT_CLASSES
) -> int:
    """Parameter count computed from the config alone (no Keras), equal to model.count_params()."""
    return sum(
        layer.parameters
        for layer in layer_plan(cfg, input_shape, num_classes)
        if isinstance(layer, (ConvLayer, DenseLayer))
    )


def check_fits(cfg: CnnConfig, input_shape: Shape, num_classes: int) -> None:
    """Refuse a configuration whose layers do not fit this data's images (one line)."""
    try:
        layer_plan(cfg, input_shape, num_classes)
    except ValueError as error:
        field, _, rest = str(error).partition(": ")
        problem, _, _ = rest.rpartition(" (got ")
        raise ConfigFieldError(field, problem, getattr(cfg, field, None)) from None


def parse_cnn(values: dict[str, Any]) -> CnnConfig:
    """A CnnConfig, pydantic's report turned into one `field: problem (got value)` error."""
    try:
        return CnnConfig(**values)
    except ValidationError as error:
        raise first_field_error(error, values) from None


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
)
RECIPE_TRAINING = TrainingConfig(
    optimizer="adam",
    learning_rate=3e-3,
    lr_schedule="cosine",
    warmup_epochs=0.5,
    batch_size=128,
    epochs=15,
    augment_translation=2 / 28,
)
