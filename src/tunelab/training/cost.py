"""What a model costs to train per image, counted from the built Keras model, for any factory.

Forward FLOPs are twice the multiply-adds of the layers that do arithmetic on every pixel:
convolutions (plain, depthwise, separable) and dense layers, read from each layer's input and
output shapes (nested models are walked). Training an image costs about three forward passes
(forward, gradients of activations and of weights); batch norm, activations and pooling are
memory-bound and left out. A layer tunelab cannot count (a custom layer's own arithmetic) adds
nothing, so the count is floored at two FLOP per parameter; deadlines correct any error after a
training's first measured step. For the built-in CNN this equals counting its `layer_plan`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from tunelab.define.run_config import RunConfig

TRAINING_PASSES = 3


def training_flops(config: RunConfig) -> float:
    """FLOP to train `config`'s model on one image (its forward count times three)."""
    return TRAINING_PASSES * forward_flops(config)


def forward_flops(config: RunConfig) -> float:
    """FLOP of one image's forward pass through `config`'s model (built once, then cached)."""
    return _counts(config.model_key())[0]


def parameters(config: RunConfig) -> int:
    """How many parameters `config`'s model has (built once, then cached)."""
    return int(_counts(config.model_key())[1])


@functools.cache
def _counts(model_key: str) -> tuple[float, float]:
    import json

    from tunelab.training.factory import call_factory, factory_of

    factory, params, shape, classes = json.loads(model_key)
    config = RunConfig(
        factory=factory, params=params, input_shape=tuple(shape), num_classes=classes
    )
    model = call_factory(config, factory_of(config), "float32")
    return model_forward_flops(model), float(model.count_params())


def model_forward_flops(model: Any) -> float:
    """Forward FLOP per image of a built Keras model (see the module doc)."""
    counted = sum(_layer_flops(layer) for layer in _leaves(model))
    return float(max(counted, 2 * model.count_params()))


def _leaves(model: Any) -> list[Any]:
    found = []
    for layer in getattr(model, "layers", []):
        found.extend(_leaves(layer) if getattr(layer, "layers", None) else [layer])
    return found


def _layer_flops(layer: Any) -> float:
    import keras

    try:
        inputs, outputs = layer.input.shape, layer.output.shape
    except Exception:  # a layer without one input and output (an InputLayer, a custom one)
        return 0.0
    if not outputs or any(d is None for d in outputs[1:]) or any(d is None for d in inputs[1:]):
        return 0.0
    positions = float(math.prod(outputs[1:-1]))
    in_channels, out_channels = float(inputs[-1]), float(outputs[-1])
    if isinstance(layer, keras.layers.SeparableConv2D):
        depth = in_channels * float(layer.depth_multiplier)
        kernel = float(math.prod(layer.kernel_size))
        return 2.0 * positions * (depth * kernel + depth * out_channels)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return 2.0 * positions * out_channels * float(math.prod(layer.kernel_size))
    if isinstance(layer, keras.layers.Conv2D):
        groups = float(getattr(layer, "groups", 1) or 1)
        kernel = float(math.prod(layer.kernel_size))
        return 2.0 * positions * out_channels * kernel * in_channels / groups
    if isinstance(layer, keras.layers.Dense):
        rows = float(math.prod(inputs[1:-1])) if len(inputs) > 2 else 1.0
        return 2.0 * rows * in_channels * out_channels
    return 0.0
