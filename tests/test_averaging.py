"""Weight averaging (EMA, SWA) as a training option of any factory: the delivered weights are
the average, not the last ones, and they export with parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import flat_config
from tunelab.define.data import Splits
from tunelab.delivery.formats import write_and_check
from tunelab.training.train import train_and_validate

SMALL = {
    "filters": 4,
    "dense_units": 16,
    "epochs": 3,
    "batch_size": 128,
    "optimizer": "adam",
    "batch_norm": True,
    "conv_bias": False,
    "learning_rate": 3e-3,
}


@pytest.mark.slow
@pytest.mark.parametrize("averaging", ["ema", "swa"])
def test_averaged_weights_differ_from_the_last_ones_and_export_with_parity(
    averaging: str, tiny_splits: Splits, tmp_path: Path
) -> None:
    plain = train_and_validate(flat_config(**SMALL), tiny_splits, seed=4)
    averaged_config = flat_config(
        **SMALL, weight_averaging=averaging, ema_momentum=0.95, swa_share=0.7
    )
    averaged = train_and_validate(averaged_config, tiny_splits, seed=4)
    assert plain.ok and averaged.ok
    last = [np.asarray(v) for v in plain.model.trainable_variables]
    mean = [np.asarray(v) for v in averaged.model.trainable_variables]
    assert any(not np.allclose(a, b) for a, b in zip(last, mean, strict=True))
    assert averaged.best_val_accuracy is not None and averaged.best_val_accuracy > 0.15
    images = tiny_splits.test.x[:200]
    reference = np.asarray(averaged.model.predict(images.astype("float32"), verbose=0))
    for fmt in ("keras", "onnx"):
        check = write_and_check(
            averaged.model, fmt, tmp_path, images, tiny_splits.test.y[:200], reference
        )
        assert check.ok, check.problem


def shifted(images: np.ndarray, down: int, right: int) -> np.ndarray:
    """Images moved by (down, right) pixels, the uncovered border zero."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    out[:, max(down, 0) : h + min(down, 0), max(right, 0) : w + min(right, 0)] = images[
        :, max(-down, 0) : h + min(-down, 0), max(-right, 0) : w + min(-right, 0)
    ]
    return out


@pytest.mark.slow
def test_test_time_shifts_average_the_image_and_its_shifts_in_every_format(
    tiny_splits: Splits, tmp_path: Path
) -> None:
    from tunelab.delivery.formats import FORMATS
    from tunelab.delivery.tta import SHIFTS, with_test_time_shifts

    config = flat_config(filters=4, dense_units=8, epochs=1, optimizer="adam")
    model = train_and_validate(config, tiny_splits, seed=1).model
    tta = with_test_time_shifts(model, 1)
    images = tiny_splits.test.x[:100].astype("float32")
    views = [images] + [shifted(images, down, right) for down, right in SHIFTS]
    expected = np.mean([np.asarray(model.predict(v, verbose=0)) for v in views], axis=0)
    got = np.asarray(tta.predict(images, verbose=0))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    for fmt in FORMATS:
        check = write_and_check(tta, fmt, tmp_path, images, tiny_splits.test.y[:100], got)
        assert check.ok, (fmt, check.problem)
