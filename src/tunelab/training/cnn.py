"""The built-in CNN as a model factory: `build_cnn(input_shape, num_classes, **CnnConfig fields)`.

It builds what `tunelab.define.cnn.layer_plan` lists, uncompiled, for any image shape and class
count: the classic baseline by default, the hand recipe and everything between by its fields.
Pixels arrive in [0, 255]; rescaling is the model's first layer, augmentation is not a layer (it
happens in the input pipeline). Like any factory it knows nothing of precision: the caller sets
the dtype policy around the call (`tunelab.training.factory`).
"""

from __future__ import annotations

from typing import Any

import keras

from tunelab.define.cnn import (
    ConvLayer,
    DenseLayer,
    DropoutLayer,
    FlattenLayer,
    PoolLayer,
    layer_plan,
    parse_cnn,
)


def build_cnn(input_shape: tuple[int, int, int], num_classes: int, **params: Any) -> Any:
    """The built-in CNN with these `CnnConfig` fields (defaults: the classic baseline)."""
    cfg = parse_cnn(params)
    layers = keras.layers
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    activation = cfg.activation
    for layer in layer_plan(cfg, tuple(input_shape), num_classes):  # type: ignore[arg-type]
        if isinstance(layer, ConvLayer):
            x = layers.Conv2D(
                layer.filters,
                layer.kernel,
                strides=layer.stride,
                padding=layer.padding,
                use_bias=layer.bias,
                activation=None if layer.batch_norm else activation,
                name=layer.name,
            )(x)
            if layer.batch_norm:
                suffix = layer.name.removeprefix("conv").removeprefix("head_conv")
                x = layers.BatchNormalization(
                    momentum=cfg.batch_norm_momentum, name=f"bn{suffix or '_head'}"
                )(x)
                x = layers.Activation(activation, name=f"act{suffix or '_head'}")(x)
        elif isinstance(layer, PoolLayer):
            pool = layers.MaxPooling2D if layer.kind == "max" else layers.AveragePooling2D
            x = pool(2, name=layer.name)(x)
        elif isinstance(layer, DropoutLayer):
            x = layers.Dropout(layer.rate, name=layer.name)(x)
        elif isinstance(layer, FlattenLayer):
            flat = layers.Flatten if layer.kind == "flatten" else layers.GlobalAveragePooling2D
            x = flat(name=layer.name)(x)
        elif isinstance(layer, DenseLayer):
            x = layers.Dense(
                layer.units,
                activation="softmax" if layer.output else activation,
                name=layer.name,
                dtype="float32" if layer.output else None,  # probabilities stay float32
            )(x)
    return keras.Model(inputs, x, name="tunelab_cnn")
