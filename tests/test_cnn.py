"""The built-in CNN factory: the default config is the classic baseline; impossible configs never
build; costs are counted from the built model; precision is per model and never leaks."""

from __future__ import annotations

from typing import Any

import pytest

from tunelab.define.cnn import RECIPE, RECIPE_TRAINING, CnnConfig, count_parameters, parse_cnn
from tunelab.define.run_config import RunConfig, cnn_run_config
from tunelab.define.training import ConfigFieldError, TrainingConfig, parse_training
from tunelab.training.cost import training_flops
from tunelab.training.factory import build_model, serving_model


def build_cnn(cnn: CnnConfig, training: TrainingConfig | None = None) -> Any:
    """The built-in CNN compiled as tunelab trains it."""
    return build_model(cnn_run_config(cnn, training), steps_per_epoch=10)


def flat(values: dict[str, Any]) -> RunConfig:
    """A run config from one flat mapping of architecture and training values."""
    return RunConfig.from_flat_cnn(values)


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
    assert model.count_params() == 1_199_882 == count_parameters(cfg)
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
    assert (TrainingConfig().batch_size, TrainingConfig().epochs) == (128, 12)


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
        },
        {"dense_layers": 0, "conv_dropout": 0.0, "dense_dropout": 0.0, "pooling": "none"},
        # the deepest valid stack: 28 -> 26 -> 13 -> 11 -> 5 -> 3 -> 1
        {"conv_blocks": 3, "convs_per_block": 1, "filters": 8},
        # strided downsampling, bias-free convs, a conv head; three convs per block
        {
            "conv_blocks": 2,
            "convs_per_block": 3,
            "batch_norm": True,
            "conv_bias": False,
            "pooling": "strided",
            "head": "conv",
            "dense_layers": 1,
            "filter_growth_per": "block",
        },
        {
            "conv_blocks": 3,
            "convs_per_block": 4,
            "padding": "same",
            "pooling": "strided",
            "filters": 8,
            "filter_growth_per": "block",
            "strided_kernel_size": 3,
            "head": "conv",
            "head_filters": 32,
            "dense_layers": 0,
        },
        {"filters": 1, "filter_growth": 1.0, "dense_units": 1},
    ],
)
def test_parameter_count_from_config_matches_keras(overrides: dict[str, Any]) -> None:
    cfg = CnnConfig(**overrides)
    assert build_cnn(cfg).count_params() == count_parameters(cfg)


@pytest.mark.parametrize(
    ("shape", "classes"), [((8, 8, 1), 10), ((32, 24, 3), 4), ((64, 64, 3), 2)]
)
def test_the_seed_cnn_fits_any_image_shape_and_class_count(
    shape: tuple[int, int, int], classes: int
) -> None:
    model = build_model(cnn_run_config(input_shape=shape, num_classes=classes), 10)
    assert tuple(model.input_shape[1:]) == shape and model.output_shape[-1] == classes
    assert model.count_params() == count_parameters(CnnConfig(), shape, classes)


def test_every_optimizer_and_schedule_builds() -> None:
    for optimizer in ("adadelta", "sgd", "rmsprop", "adam", "adamw"):
        momentum = 0.9 if optimizer in ("sgd", "rmsprop") else 0.0
        training = TrainingConfig(
            optimizer=optimizer,
            learning_rate=1e-3,
            momentum=momentum,
            weight_decay=1e-4,
            lr_schedule="cosine",
        )
        model = build_cnn(CnnConfig(), training)
        assert type(model.optimizer).__name__.lower() == optimizer


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"conv_blocks": 4}, "conv_blocks: the 28x28 image shrinks to nothing in block 3"),
        (
            {"conv_blocks": 6, "padding": "same"},
            "conv_blocks: the 28x28 image shrinks to nothing in block 5",
        ),
        ({"kernel_size": 4}, "kernel_size: must be odd (got 4)"),
        ({"momentum": 0.9}, "momentum: only sgd and rmsprop use it"),
        ({"dropuot": 0.2}, "dropuot: not a setting of this model or its training (got 0.2)"),
        ({"conv_dropout": 1.0}, "conv_dropout: Input should be less than 1 (got 1.0)"),
        (
            {"optimizer": "lion"},
            "optimizer: Input should be 'adadelta', 'sgd', 'rmsprop', 'adam' or 'adamw'",
        ),
    ],
)
def test_impossible_configs_are_refused_with_one_line(values: dict[str, Any], message: str) -> None:
    training = {k: v for k, v in values.items() if k in TrainingConfig.model_fields}
    parse = parse_training if training else parse_cnn
    with pytest.raises(ConfigFieldError) as caught:
        parse(training or values)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_configs_are_frozen_and_comparable() -> None:
    assert CnnConfig() == parse_cnn({})
    with pytest.raises(Exception, match="frozen"):
        CnnConfig().filters = 3  # type: ignore[misc]
    with pytest.raises(Exception, match="frozen"):
        TrainingConfig().epochs = 3  # type: ignore[misc]


def test_the_hand_recipe_is_a_config_with_its_published_parameter_count() -> None:
    """326,826 parameters, counted without Keras and by Keras; its layers as the recipe says."""
    assert count_parameters(RECIPE) == 326_826
    model = build_cnn(RECIPE, RECIPE_TRAINING)
    assert model.count_params() == 326_826
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert [(c.filters, c.kernel_size[0], c.strides[0], c.padding, c.use_bias) for c in convs] == [
        (32, 3, 1, "valid", False),
        (32, 3, 1, "valid", False),
        (32, 5, 2, "same", False),
        (64, 3, 1, "valid", False),
        (64, 3, 1, "valid", False),
        (64, 5, 2, "same", False),
        (128, 4, 1, "valid", False),  # the head: one conv over the remaining 4x4 map
    ]
    assert not any(type(layer).__name__ == "MaxPooling2D" for layer in model.layers)
    assert sum(type(layer).__name__ == "BatchNormalization" for layer in model.layers) == 7
    assert [layer.units for layer in model.layers if type(layer).__name__ == "Dense"] == [10]


def test_flops_per_training_image() -> None:
    """What an epoch costs per image, counted from the built model: the seed model ~72 MFLOP,
    the recipe ~91 MFLOP (as counted from their layer plans)."""
    assert training_flops(cnn_run_config()) / 1e6 == pytest.approx(72.2, abs=0.5)
    assert training_flops(cnn_run_config(RECIPE)) / 1e6 == pytest.approx(91.0, abs=0.5)


def test_precision_is_per_model_and_never_leaks_into_the_next_model() -> None:
    import keras

    mixed = build_cnn(RECIPE, RECIPE_TRAINING.model_copy(update={"precision": "mixed_bfloat16"}))
    conv = next(layer for layer in mixed.layers if type(layer).__name__ == "Conv2D")
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    assert mixed.layers[-1].compute_dtype == "float32"  # probabilities stay float32
    assert keras.config.dtype_policy().name == "float32"
    plain = build_cnn(RECIPE, RECIPE_TRAINING)
    assert all(layer.compute_dtype == "float32" for layer in plain.layers)


def test_serving_copy_is_float32_and_predicts_like_the_trained_model() -> None:
    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)).astype("float32")
    cfg = cnn_run_config(RECIPE, RECIPE_TRAINING).with_precision("mixed_bfloat16")
    trained = build_model(cfg, 10)
    plain = serving_model(trained, cfg)
    assert all(layer.compute_dtype == "float32" for layer in plain.layers)
    np.testing.assert_allclose(
        plain.predict(images, verbose=0), trained.predict(images, verbose=0), atol=2e-2
    )
    exact_cfg = cnn_run_config(RECIPE, RECIPE_TRAINING)
    exact = build_model(exact_cfg, 10)
    np.testing.assert_array_equal(
        serving_model(exact, exact_cfg).predict(images, verbose=0),
        exact.predict(images, verbose=0),
    )


@pytest.mark.parametrize(
    ("schedule", "warmup", "first", "peak_step", "last_below"),
    [
        ("cosine", 0.0, 1e-2, 0, 1e-4),  # no warm-up: starts at the peak
        ("cosine", 1.0, 0.0, 10, 1e-4),  # one epoch (10 steps) rising from zero
        ("one_cycle", 0.0, 1e-2 / 25, 30, 1e-5),  # 30 % of 100 steps rising from peak / 25
        ("constant", 2.0, 0.0, 20, 1.1e-2),  # a warm-up, then the rate held to the end
    ],
)
def test_learning_rate_schedules_run_to_their_end(
    schedule: str, warmup: float, first: float, peak_step: int, last_below: float
) -> None:
    from tunelab.training.model import learning_rate

    cfg = TrainingConfig(
        optimizer="adam", learning_rate=1e-2, lr_schedule=schedule, warmup_epochs=warmup, epochs=10
    )
    rate = learning_rate(cfg, steps_per_epoch=10)
    assert float(rate(0)) == pytest.approx(first, abs=1e-7)
    assert float(rate(peak_step)) == pytest.approx(1e-2, rel=1e-3)
    assert float(rate(100)) < last_below


def test_label_smoothing_matches_smoothed_one_hot_targets() -> None:
    import keras
    import numpy as np

    from tunelab.training.model import SmoothedSparseCrossentropy

    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype="float32")
    labels = np.array([0, 2])
    ours = SmoothedSparseCrossentropy(0.1)(labels, probabilities)
    reference = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(
        np.eye(3)[labels], probabilities
    )
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)


def test_a_warm_up_must_end_before_training_does() -> None:
    with pytest.raises(ConfigFieldError, match="warmup_epochs: must be shorter"):
        parse_training({"lr_schedule": "cosine", "warmup_epochs": 12.0})


def test_a_shortened_schedule_keeps_its_warm_up_share_and_a_longer_one_its_warm_up() -> None:
    shorter = RECIPE_TRAINING.with_epochs(5)
    assert (shorter.epochs, shorter.warmup_epochs) == (5, pytest.approx(0.5 * 5 / 15))
    longer = RECIPE_TRAINING.with_epochs(30)
    assert (longer.epochs, longer.warmup_epochs) == (30, 0.5)


def test_records_of_earlier_versions_read_as_run_configs() -> None:
    """A flat CNN config (architecture, training and shape in one) splits into its parts."""
    config = flat({"filters": 8, "optimizer": "adam", "epochs": 2, "image_size": 28})
    assert config.builtin and config.cnn().filters == 8
    assert (config.training.optimizer, config.training.epochs) == ("adam", 2)
    assert config.input_shape == (28, 28, 1)
    assert RunConfig.read(config.model_dump_json()) == config
