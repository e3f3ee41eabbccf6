"""Test-time augmentation inside the exported model: the averaged softmax of the image and its
one-pixel shifts (up, down, left, right), as one Keras model of standard layers; for a model that
trained on mirrored images (`augment_flip`), of the mirrored image and its shifts too.

Speed-record trainers average predictions over small shifts; it can also flip a correct
prediction, so it is off by default (`pipeline.test_time_shifts`, `export --test-time-shifts`)
and measured before anyone relies on it (docs/results.md). Shifts are zero padding plus a crop,
the mirror a fixed permutation of the columns (a frozen dense layer across the width), so every
format (Keras, SavedModel, TFLite, ONNX) exports and checks it like any model, and loading it
needs nothing of tunelab.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))  # (down, right) in pixels


def _shift(x: Any, down: int, right: int, name: str) -> Any:
    """The image moved by (down, right) pixels, the uncovered border zero."""
    pad = ((max(down, 0), max(-down, 0)), (max(right, 0), max(-right, 0)))
    crop = ((max(-down, 0), max(down, 0)), (max(-right, 0), max(right, 0)))
    padded = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return keras.layers.Cropping2D(crop, name=f"{name}_crop")(padded)


def _mirror(x: Any, name: str) -> Any:
    """The image mirrored left to right: its columns permuted by a frozen dense layer applied
    across the width (exact in float32: each output pixel is one input pixel times 1)."""
    width = int(x.shape[2])
    across = keras.layers.Permute((1, 3, 2), name=f"{name}_across")(x)  # rows, channels, columns
    flip = keras.layers.Dense(
        width, use_bias=False, trainable=False, dtype="float32", name=f"{name}_columns"
    )
    flipped = flip(across)
    flip.set_weights([np.eye(width, dtype="float32")[::-1]])
    return keras.layers.Permute((1, 3, 2), name=f"{name}_back")(flipped)


def views_per_image(pixels: int, mirrored: bool = False) -> int:
    """How many times a delivered model looks at each image: once, or (with shifts of `pixels`)
    the image and each of its shifts, twice that when the mirrored image joins them."""
    if not pixels:
        return 1
    return (1 + len(SHIFTS)) * (2 if mirrored else 1)


def with_test_time_shifts(model: Any, pixels: int = 1, mirrored: bool = False) -> Any:
    """`model` averaged over the unshifted image and its four shifts by `pixels`, and with
    `mirrored` over the mirrored image and its four shifts as well."""
    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name="image")
    views = [("shift", inputs)]
    if mirrored:
        views.append(("mirror_shift", _mirror(inputs, "mirror")))
    outputs = []
    for prefix, image in views:
        outputs.append(model(image))
        for index, (down, right) in enumerate(SHIFTS):
            shifted = _shift(image, down * pixels, right * pixels, f"{prefix}{index}")
            outputs.append(model(shifted))
    averaged = keras.layers.Average(name="probabilities")(outputs)
    return keras.Model(inputs, averaged, name=f"{model.name}_tta")
