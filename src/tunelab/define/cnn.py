"""The model factory: a typed, validated `CnnConfig` and a pure `build_cnn(cfg) -> keras.Model`.

The default `CnnConfig()` is the classic Keras MNIST CNN (the baseline):
Conv2D(32, 3x3, relu) -> Conv2D(64, 3x3, relu) -> MaxPool(2) -> Dropout(0.25) -> Flatten ->
Dense(128, relu) -> Dropout(0.5) -> Dense(10, softmax), Adadelta(learning_rate=1.0), batch 128,
12 epochs; 1,199,882 parameters.

Every tunable knob is a scalar field, so a search space can name it directly. Filters grow
geometrically: conv layer j (counting all conv layers, `filter_growth_per="conv"`) or block i
(`filter_growth_per="block"`) gets `filters * filter_growth ** j` filters. The baseline is
`filters=32, filter_growth=2.0` per conv, giving 32 then 64.

This module knows nothing of trials, search libraries, tracking or files.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.errors import UserError

Optimizer = Literal["adadelta", "sgd", "rmsprop", "adam", "adamw"]
Activation = Literal["relu", "elu", "gelu", "swish", "leaky_relu"]
Pooling = Literal["max", "avg", "none"]
Head = Literal["flatten", "global_average"]
Schedule = Literal["constant", "cosine"]

POOL_SIZE = 2


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
    convs_per_block: int = Field(2, ge=1, le=4, description="conv layers per block")
    filters: int = Field(32, ge=1, le=1024, description="filters of the first conv layer")
    filter_growth: float = Field(2.0, ge=1.0, le=4.0, description="filter multiplier per step")
    filter_growth_per: Literal["conv", "block"] = Field("conv", description="what a step is")
    kernel_size: int = Field(3, ge=1, le=9, description="square kernel side (odd)")
    padding: Literal["valid", "same"] = "valid"
    batch_norm: bool = Field(False, description="BatchNormalization after each conv")
    activation: Activation = "relu"
    pooling: Pooling = Field("max", description="2x2 pooling at the end of each block")
    conv_dropout: float = Field(0.25, ge=0.0, lt=1.0, description="dropout after each block")
    head: Head = Field("flatten", description="how feature maps become a vector")
    dense_layers: int = Field(1, ge=0, le=4)
    dense_units: int = Field(128, ge=1, le=8192)
    dense_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    # optimisation
    optimizer: Optimizer = "adadelta"
    learning_rate: float = Field(1.0, gt=0.0, le=10.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="sgd and rmsprop only")
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0, description="decoupled weight decay")
    lr_schedule: Schedule = "constant"
    batch_size: int = Field(128, ge=1, le=65536)
    epochs: int = Field(12, ge=1, le=1000)
    # data augmentation (training only; off by default)
    augment_translation: float = Field(0.0, ge=0.0, le=0.5, description="max shift, image fraction")
    augment_rotation: float = Field(0.0, ge=0.0, le=180.0, description="max rotation, degrees")
    # the data's shape
    image_size: int = Field(28, ge=1)
    num_classes: int = Field(10, ge=2)

    @model_validator(mode="after")
    def _check_buildable(self) -> CnnConfig:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: must be odd (got {self.kernel_size})")
        if self.momentum and self.optimizer not in ("sgd", "rmsprop"):
            raise ValueError(
                f"momentum: only sgd and rmsprop use it; set it to 0 for {self.optimizer} "
                f"(got {self.momentum})"
            )
        side = self.image_size
        for block in range(self.conv_blocks):
            for _ in range(self.convs_per_block):
                side = side if self.padding == "same" else side - (self.kernel_size - 1)
            if self.pooling != "none":
                side //= POOL_SIZE
            if side < 1:
                raise ValueError(
                    f"conv_blocks: the {self.image_size}px image shrinks to nothing in block "
                    f"{block + 1}; use fewer blocks, padding 'same' or a smaller kernel "
                    f"(got {self.conv_blocks})"
                )
        return self

    def conv_filters(self) -> list[list[int]]:
        """Filters of every conv layer, grouped by block."""
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


def count_parameters(cfg: CnnConfig) -> int:
    """Parameter count computed from the config alone (no Keras), equal to model.count_params()."""
    total, channels, side = 0, 1, cfg.image_size
    for block in cfg.conv_filters():
        for filters in block:
            total += cfg.kernel_size**2 * channels * filters + filters
            if cfg.batch_norm:
                total += 4 * filters
            channels = filters
            if cfg.padding == "valid":
                side -= cfg.kernel_size - 1
        if cfg.pooling != "none":
            side //= POOL_SIZE
    width = channels * side * side if cfg.head == "flatten" else channels
    for _ in range(cfg.dense_layers):
        total += width * cfg.dense_units + cfg.dense_units
        width = cfg.dense_units
    return total + width * cfg.num_classes + cfg.num_classes


def build_cnn(cfg: CnnConfig, steps_per_epoch: int | None = None) -> Any:
    """Build and compile the model `cfg` describes.

    Args:
        cfg: the configuration; already validated, so it can be built.
        steps_per_epoch: batches per epoch, needed for the cosine schedule's decay length.

    Returns:
        A compiled keras.Model taking raw pixels (N, 28, 28, 1) in [0, 255] and returning class
        probabilities; rescaling and augmentation are layers of the model.
    """
    import keras  # imported here so that importing tunelab.define.cnn stays cheap

    layers = keras.layers
    inputs = keras.Input(shape=(cfg.image_size, cfg.image_size, 1), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if cfg.augment_translation > 0:
        shift = cfg.augment_translation
        x = layers.RandomTranslation(shift, shift, fill_mode="constant", name="shift")(x)
    if cfg.augment_rotation > 0:
        x = layers.RandomRotation(cfg.augment_rotation / 360.0, fill_mode="constant", name="rot")(x)
    for b, block in enumerate(cfg.conv_filters(), start=1):
        for c, filters in enumerate(block, start=1):
            x = layers.Conv2D(
                filters,
                cfg.kernel_size,
                padding=cfg.padding,
                name=f"conv{b}_{c}",
                activation=None if cfg.batch_norm else _activation(cfg.activation),
            )(x)
            if cfg.batch_norm:
                x = layers.BatchNormalization(name=f"bn{b}_{c}")(x)
                x = layers.Activation(_activation(cfg.activation), name=f"act{b}_{c}")(x)
        if cfg.pooling == "max":
            x = layers.MaxPooling2D(POOL_SIZE, name=f"pool{b}")(x)
        elif cfg.pooling == "avg":
            x = layers.AveragePooling2D(POOL_SIZE, name=f"pool{b}")(x)
        if cfg.conv_dropout > 0:
            x = layers.Dropout(cfg.conv_dropout, name=f"drop{b}")(x)
    if cfg.head == "flatten":
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    for d in range(1, cfg.dense_layers + 1):
        x = layers.Dense(cfg.dense_units, activation=_activation(cfg.activation), name=f"dense{d}")(
            x
        )
        if cfg.dense_dropout > 0:
            x = layers.Dropout(cfg.dense_dropout, name=f"dense_drop{d}")(x)
    outputs = layers.Dense(cfg.num_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="tunelab_cnn")
    model.compile(
        optimizer=build_optimizer(cfg, steps_per_epoch),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def serving_model(model: Any, cfg: CnnConfig) -> Any:
    """The trained model without its augmentation layers, for export and serving.

    Augmentation is an identity at inference, but its random-transform ops stay in an exported
    graph (TFLite cannot convert ImageProjectiveTransformV3) and carry seed-generator state. The
    same config without augmentation builds the identical inference path; weights are copied
    layer by layer by name, so its predictions are the trained model's.
    """
    plain = build_cnn(
        cfg.model_copy(update={"augment_translation": 0.0, "augment_rotation": 0.0}),
        steps_per_epoch=1,  # only the optimizer's schedule needs it; inference never steps
    )
    for layer in plain.layers:
        weights = model.get_layer(layer.name).get_weights()
        if weights:
            layer.set_weights(weights)
    return plain


def _activation(name: Activation) -> str:
    return "leaky_relu" if name == "leaky_relu" else name


def build_optimizer(cfg: CnnConfig, steps_per_epoch: int | None = None) -> Any:
    """The keras optimizer for `cfg`, with its learning-rate schedule."""
    import keras

    rate: Any = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        if steps_per_epoch is None:
            raise ValueError("the cosine schedule needs steps_per_epoch")
        rate = keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate, decay_steps=max(1, steps_per_epoch * cfg.epochs)
        )
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


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    return max(1, math.ceil(train_size / batch_size))
