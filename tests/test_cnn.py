"""The model factory: the default config is the classic baseline; impossible configs never build."""

from __future__ import annotations

from typing import Any

import pytest

from tunelab.define.cnn import CnnConfig, CnnConfigError, build_cnn, count_parameters, parse_config

BASELINE_LAYERS = [
    ("Conv2D", 32),
    ("Conv2D", 64),
    ("MaxPooling2D", None),
    ("Dropout", 0.25),
    ("Flatten", None),
    ("Dense", 128),
    ("Dropout", 0.5),
    ("Dense", 10),
]


def describe(layer: Any) -> tuple[str, Any]:
    kind = type(layer).__name__
    detail = (
        getattr(layer, "filters", None)
        or getattr(layer, "units", None)
        or getattr(layer, "rate", None)
    )
    return kind, detail


def test_default_config_is_the_classic_keras_mnist_cnn() -> None:
    cfg = CnnConfig()
    model = build_cnn(cfg)
    assert model.count_params() == 1_199_882
    trainable = [
        describe(layer)
        for layer in model.layers
        if type(layer).__name__ not in ("InputLayer", "Rescaling")
    ]
    assert trainable == BASELINE_LAYERS
    assert [layer.kernel_size for layer in model.layers if type(layer).__name__ == "Conv2D"] == [
        (3, 3)
    ] * 2
    assert model.layers[-1].activation.__name__ == "softmax"
    optimizer = model.optimizer
    assert type(optimizer).__name__ == "Adadelta" and float(optimizer.learning_rate) == 1.0
    assert (cfg.batch_size, cfg.epochs) == (128, 12)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "conv_blocks": 3,
            "padding": "same",
            "batch_norm": True,
            "head": "global_average",
            "dense_layers": 2,
        },
        {
            "conv_blocks": 2,
            "convs_per_block": 1,
            "filter_growth_per": "block",
            "kernel_size": 5,
            "pooling": "avg",
            "augment_rotation": 10.0,
            "augment_translation": 0.1,
        },
        {"dense_layers": 0, "conv_dropout": 0.0, "dense_dropout": 0.0, "pooling": "none"},
        # the deepest valid stack: 28 -> 26 -> 13 -> 11 -> 5 -> 3 -> 1
        {"conv_blocks": 3, "convs_per_block": 1, "filters": 8},
        {"filters": 1, "filter_growth": 1.0, "dense_units": 1},
    ],
)
def test_parameter_count_from_config_matches_keras(overrides: dict[str, Any]) -> None:
    cfg = CnnConfig(**overrides)
    assert build_cnn(cfg, steps_per_epoch=10).count_params() == count_parameters(cfg)


def test_every_optimizer_and_schedule_builds() -> None:
    for optimizer in ("adadelta", "sgd", "rmsprop", "adam", "adamw"):
        momentum = 0.9 if optimizer in ("sgd", "rmsprop") else 0.0
        cfg = CnnConfig(
            optimizer=optimizer,
            learning_rate=1e-3,
            momentum=momentum,
            weight_decay=1e-4,
            lr_schedule="cosine",
        )
        assert type(build_cnn(cfg, steps_per_epoch=5).optimizer).__name__.lower() == optimizer


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"conv_blocks": 4}, "conv_blocks: the 28px image shrinks to nothing in block 3"),
        (
            {"conv_blocks": 6, "padding": "same"},
            "conv_blocks: the 28px image shrinks to nothing in block 5",
        ),
        ({"kernel_size": 4}, "kernel_size: must be odd (got 4)"),
        ({"momentum": 0.9}, "momentum: only sgd and rmsprop use it"),
        ({"dropuot": 0.2}, "dropuot: not a CnnConfig field (got 0.2)"),
        ({"conv_dropout": 1.0}, "conv_dropout: Input should be less than 1 (got 1.0)"),
        (
            {"optimizer": "lion"},
            "optimizer: Input should be 'adadelta', 'sgd', 'rmsprop', 'adam' or 'adamw'",
        ),
    ],
)
def test_impossible_configs_are_refused_with_one_line(values: dict[str, Any], message: str) -> None:
    with pytest.raises(CnnConfigError) as caught:
        parse_config(values)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_configs_are_frozen_and_comparable() -> None:
    assert CnnConfig() == parse_config({})
    with pytest.raises(Exception, match="frozen"):
        CnnConfig().epochs = 3  # type: ignore[misc]


def test_serving_model_drops_augmentation_and_predicts_like_the_trained_model() -> None:
    import numpy as np

    from tunelab.define.cnn import serving_model

    cfg = parse_config(
        {
            "filters": 8,
            "dense_units": 16,
            "augment_rotation": 8.0,
            "augment_translation": 0.1,
            "lr_schedule": "cosine",
            "optimizer": "adam",
            "learning_rate": 0.001,
            "batch_norm": True,
        }
    )
    trained = build_cnn(cfg, steps_per_epoch=10)
    plain = serving_model(trained, cfg)
    assert {"rot", "shift"} <= {layer.name for layer in trained.layers}
    assert not {"rot", "shift"} & {layer.name for layer in plain.layers}
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)).astype("float32")
    np.testing.assert_array_equal(
        plain.predict(images, verbose=0), trained.predict(images, verbose=0)
    )
