"""Batch-norm statistics recomputed before a validation is read ("precise BN", Wu & Johnson 2021).

Keras starts a batch-norm layer's moving variance at 1 and mean at 0 and moves them by
`1 - momentum` a batch: at momentum 0.99 and batch 128, 68 % of that start is still there after
5,000 images, so a model validated early scores near chance whatever it learnt, and a pruner
or sampler reading that rung decides by noise (measured: the hand recipe scored 0.106 at 15,000
images with 0.99, 0.948 with 0.9; `benchmarks/rungs.py`). Before every validation of a training
that validates, each batch-norm layer's moving mean and variance are replaced by the average of
its batch statistics over a fixed set of training images (the first `IMAGES` of the training
split, not augmented), computed with the weights frozen: only the statistics change.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import numpy.typing as npt

IMAGES = 4096  # training images the statistics are computed from
BATCH = 256


def batch_norm_layers(model: Any) -> list[Any]:
    """Every BatchNormalization layer of `model`, nested models included."""
    found = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif getattr(layer, "layers", None):
            found.extend(batch_norm_layers(layer))
    return found


def recompute_batch_norm(model: Any, images: npt.NDArray[Any], batch: int = BATCH) -> int:
    """Replace every batch-norm layer's moving statistics by the mean of its batch statistics
    over `images` (weights untouched); returns how many layers it changed.

    Batch i is given momentum (i - 1) / i, so after the last batch each moving statistic is the
    average over all batches: the running mean of the layer's own update rule.
    """
    layers = batch_norm_layers(model)
    if not layers or len(images) == 0:
        return 0
    saved = [layer.momentum for layer in layers]
    # dropout off meanwhile: the statistics are those inference sees, and no random draw moves
    # the dropout layers' seed generators (the training goes on exactly as it would have)
    dropouts = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.Dropout)]
    rates = [layer.rate for layer in dropouts]
    try:
        for layer in dropouts:
            layer.rate = 0.0
        for index, start in enumerate(range(0, len(images), batch), start=1):
            for layer in layers:
                layer.momentum = (index - 1) / index
            model(np.asarray(images[start : start + batch], dtype="float32"), training=True)
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum
        for layer, rate in zip(dropouts, rates, strict=True):
            layer.rate = rate
    return len(layers)


def _all_layers(model: Any) -> list[Any]:
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found.extend(_all_layers(layer) if getattr(layer, "layers", None) else [])
    return found


class PreciseBatchNorm(keras.callbacks.Callback):  # type: ignore[misc]
    """Recomputes the batch-norm statistics from `images` before each validation of a fit."""

    def __init__(self, images: npt.NDArray[Any]) -> None:
        super().__init__()
        self.images = images

    def on_test_begin(self, logs: dict[str, float] | None = None) -> None:
        recompute_batch_norm(self.model, self.images)
