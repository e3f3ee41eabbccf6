"""A user's own model factory: a small residual network of depthwise-separable convolutions.

tunelab calls `build` with the parameters a trial chose (from space.yaml) plus `input_shape` and
`num_classes`, and trains what it returns: here an uncompiled Keras model, so tunelab compiles
it with the experiment's optimizer, schedule and loss (a compiled model would keep its own).
Pixels arrive as float32 in [0, 255], as `keras.utils.image_dataset_from_directory` gives them.
"""

from __future__ import annotations

from typing import Any

import keras


def build(
    width: int = 32,
    blocks: int = 2,
    dropout: float = 0.2,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
) -> Any:
    """Stem conv, `blocks` residual blocks of two separable convs, global pooling, softmax."""
    layers = keras.layers
    inputs = keras.Input(shape=input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    for _ in range(blocks):
        skip = x
        x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(layers.Add()([x, skip]))
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="digits_resnet")
