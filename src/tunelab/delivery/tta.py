"""Test-time augmentation inside the exported model: the averaged softmax of the image and its
one-pixel shifts (up, down, left, right), as one Keras model of standard layers.

Speed-record trainers average predictions over small shifts; it can also flip a correct
prediction, so it is off by default (`pipeline.test_time_shifts`, `export --test-time-shifts`)
and measured before anyone relies on it (docs/results.md). Shifts are zero padding plus a crop,
so every format (Keras, SavedModel, TFLite, ONNX) exports and checks it like any model.
"""

from __future__ import annotations

from typing import Any

import keras

SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))  # (down, right) in pixels


def _shift(x: Any, down: int, right: int, name: str) -> Any:
    """The image moved by (down, right) pixels, the uncovered border zero."""
    pad = ((max(down, 0), max(-down, 0)), (max(right, 0), max(-right, 0)))
    crop = ((max(-down, 0), max(down, 0)), (max(-right, 0), max(right, 0)))
    padded = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return keras.layers.Cropping2D(crop, name=f"{name}_crop")(padded)


def views_per_image(pixels: int) -> int:
    """How many times a delivered model looks at each image: once, or (with shifts of `pixels`)
    the image and each of its shifts."""
    return 1 + len(SHIFTS) if pixels else 1


def with_test_time_shifts(model: Any, pixels: int = 1) -> Any:
    """`model` averaged over the unshifted image and its four shifts by `pixels`."""
    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name="image")
    outputs = [model(inputs)]
    for index, (down, right) in enumerate(SHIFTS):
        shifted = _shift(inputs, down * pixels, right * pixels, f"shift{index}")
        outputs.append(model(shifted))
    averaged = keras.layers.Average(name="probabilities")(outputs)
    return keras.Model(inputs, averaged, name=f"{model.name}_tta")
